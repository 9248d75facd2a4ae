"""Ships spooled audit events to the collector: at least once, in order, never dropped.

Loop: read the committed lines after the cursor (one batch, at most ``batch_events`` events
and ``batch_bytes`` bytes), ``POST {collector}/v1/events`` with the pod's projected
ServiceAccount token as ``Authorization: Bearer``, and move the durable cursor only when the
collector acknowledges every event of the batch (accepted + duplicates + conflicts = batch).
A resend after a lost acknowledgement is harmless: the collector drops ids it already has and
counts them as duplicates.

Failures (connection refused, timeouts, 5xx, 401/403, a malformed acknowledgement) are counted
in ``aiguard_audit_delivery_failures_total{reason}`` and retried with exponential backoff and
full jitter (``backoff_base`` doubling up to ``backoff_max``; a ``Retry-After`` is honoured).
Nothing is ever skipped: a batch the collector refuses stays at the head of the spool, the
spool depth and delivery lag grow, and the alerts on them fire.

The token file is re-read when its modification time changes (the kubelet rotates projected
tokens at 80 % of their lifetime) and after a 401. The CA bundle is re-read after a failed
certificate verification (``reason="tls"``): a rotated collector CA is picked up on the next
attempt, without a restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from pathlib import Path
from typing import Final

import aiohttp

from aiguard_api import audit
from aiguard_sidecar.audit.spool import Batch, Spool, SpoolUnavailable
from aiguard_sidecar.metrics import Metrics

log = logging.getLogger("aiguard.sidecar.audit")

TOKEN_CHECK_SECONDS: Final = 10.0
"""How often the token file's modification time is looked at."""


class DeliveryError(Exception):
    def __init__(self, reason: str, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.retry_after = retry_after


class TokenFile:
    """The projected ServiceAccount token, re-read when the kubelet rotates it."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._token: str | None = None
        self._mtime: float | None = None
        self._checked = 0.0

    async def get(self, *, force: bool = False) -> str | None:
        if self.path is None:
            return None
        now = time.monotonic()
        if force or self._token is None or now - self._checked >= TOKEN_CHECK_SECONDS:
            self._checked = now
            self._token, self._mtime = await asyncio.to_thread(
                self._read, self._token, self._mtime, force
            )
        return self._token

    def _read(
        self, token: str | None, mtime: float | None, force: bool
    ) -> tuple[str | None, float | None]:
        assert self.path is not None
        try:
            st = self.path.stat()
            if not force and token is not None and st.st_mtime == mtime:
                return token, mtime
            return self.path.read_text().strip() or None, st.st_mtime
        except OSError as e:
            raise DeliveryError("token", f"cannot read {self.path}: {e.strerror}") from e


class Shipper:
    def __init__(
        self,
        spool: Spool,
        *,
        url: str,
        metrics: Metrics,
        token_file: Path | None,
        ca_file: Path | None = None,
        batch_events: int = 500,
        batch_bytes: int = 1 << 20,
        timeout: float = 10.0,
        backoff_base: float = 0.2,
        backoff_max: float = 30.0,
    ) -> None:
        self.spool = spool
        self.url = url.rstrip("/") + audit.EVENTS_PATH
        self.metrics = metrics
        self.token = TokenFile(token_file)
        self.ca_file = ca_file
        self.batch_events = min(batch_events, audit.MAX_BATCH_EVENTS)
        self.batch_bytes = min(batch_bytes, audit.MAX_BATCH_BYTES)
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._session: aiohttp.ClientSession | None = None
        self._failures = 0
        self.delivered = 0
        """Events acknowledged since start (tests, logs)."""

    async def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            ctx: ssl.SSLContext | bool = True
            if self.ca_file is not None:
                ctx = await asyncio.to_thread(ssl.create_default_context, cafile=str(self.ca_file))
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx, limit=2),
                timeout=self.timeout,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # ── the loop ─────────────────────────────────────────────────────────────────────────────

    async def run(self) -> None:
        """Ship until cancelled."""
        while True:
            if self.spool.depth() <= 0:
                self.spool.committed.clear()
                if self.spool.depth() <= 0:
                    await self.spool.committed.wait()
                continue
            try:
                if await self.ship_once() == 0:
                    # Pending by the counters, yet nothing readable after the cursor: never
                    # spin on it (the spool logged what is missing); keep retrying slowly.
                    raise DeliveryError(
                        "spool_read", f"{self.spool.depth()} events pending but unreadable"
                    )
            except DeliveryError as e:
                await self._failed(e)

    async def ship_once(self) -> int:
        """Send one batch; returns how many events were acknowledged (0: nothing pending).
        Raises :class:`DeliveryError`."""
        try:
            batch = await asyncio.to_thread(
                self.spool.read_batch, max_events=self.batch_events, max_bytes=self.batch_bytes
            )
        except (OSError, SpoolUnavailable, ValueError) as e:
            raise DeliveryError("spool_read", f"cannot read the spool: {e}") from e
        if batch is None:
            return 0
        await self._post(batch)
        await asyncio.to_thread(self.spool.ack, batch)
        self.delivered += len(batch.lines)
        if self._failures:
            log.info(
                "audit delivery recovered",
                extra={"fields": {"failed_attempts": self._failures, "url": self.url}},
            )
        self._failures = 0
        return len(batch.lines)

    async def flush(self, within: float) -> bool:
        """Ship what is pending, for at most ``within`` seconds; True when nothing is left."""
        deadline = time.monotonic() + within
        while self.spool.depth() > 0 and time.monotonic() < deadline:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    if await self.ship_once() == 0:
                        break
            except (DeliveryError, TimeoutError):
                return False
        return self.spool.depth() <= 0

    async def _post(self, batch: Batch) -> None:
        session = await self._open()
        body = b'{"events":[' + b",".join(batch.lines) + b"]}"
        for attempt in (1, 2):
            token = await self.token.get(force=attempt == 2)
            headers = {"Content-Type": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            try:
                async with session.post(self.url, data=body, headers=headers) as resp:
                    text = await resp.text()
                    status = resp.status
                    retry_after = _retry_after(resp.headers.get("Retry-After"))
            except TimeoutError as e:
                raise DeliveryError("timeout", f"no answer from {self.url}") from e
            except aiohttp.ClientConnectorCertificateError as e:
                # The collector's certificate no longer verifies against the CA bundle as read:
                # the CA may have been rotated. Read the bundle again on the next attempt.
                await self.close()
                raise DeliveryError("tls", f"{self.url}: {e}") from e
            except aiohttp.ClientError as e:
                raise DeliveryError("connect", f"{self.url}: {e}") from e
            if status == 401 and attempt == 1:
                continue  # the token may have rotated under us: read it again, once
            break
        if status == 401:
            raise DeliveryError("unauthorized", f"401 from {self.url}: {text[:300]}")
        if status == 403:
            raise DeliveryError("forbidden", f"403 from {self.url}: {text[:300]}")
        if status >= 500 or status == 429:
            raise DeliveryError(
                "http_5xx" if status >= 500 else "http_4xx",
                f"{status} from {self.url}: {text[:300]}",
                retry_after=retry_after,
            )
        if status != 200:
            raise DeliveryError("http_4xx", f"{status} from {self.url}: {text[:300]}")
        try:
            ack = json.loads(text)
            counted = int(ack["accepted"]) + int(ack["duplicates"]) + int(ack.get("conflicts", 0))
        except (ValueError, KeyError, TypeError) as e:
            raise DeliveryError("bad_ack", f"unreadable acknowledgement: {text[:300]}") from e
        if counted != len(batch.lines):
            raise DeliveryError(
                "bad_ack",
                f"the collector acknowledged {counted} of {len(batch.lines)} events",
            )

    async def _failed(self, e: DeliveryError) -> None:
        self._failures += 1
        self.metrics.audit_delivery_failures.labels(e.reason).inc()
        delay = min(self.backoff_max, self.backoff_base * 2 ** min(self._failures - 1, 30))
        delay = random.uniform(0, delay)  # noqa: S311 - jitter, not security
        if e.retry_after is not None:
            delay = max(delay, min(e.retry_after, self.backoff_max))
        log.warning(
            "audit delivery failed; retrying",
            extra={
                "fields": {
                    "reason": e.reason,
                    "error": str(e),
                    "attempt": self._failures,
                    "retry_in": round(delay, 3),
                    "pending": self.spool.depth(),
                }
            },
        )
        await asyncio.sleep(delay)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None

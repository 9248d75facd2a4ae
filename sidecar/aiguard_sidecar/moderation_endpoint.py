"""The external moderation endpoint (``guardrails.{input,output}.moderation.endpointSecretRef``):
an OpenAI ``/v1/moderations``-format service asked about the text beside the local classifier.

::

    client = await ModerationEndpoint.load(cfg.moderation, secret_path)   # at policy load
    findings = await client.check(segments)        # guarding.py, after the local engine
    await client.close()

Request: ``POST {URL}`` with ``{"input": [text, ...], "model": endpointModel?}`` and
``Authorization: Bearer KEY`` when ``endpointApiKeySecretRef`` is set; TLS always verified
(``endpointCaSecretRef`` or the system trust store), TLS ≥ 1.2, ``endpointTimeoutSeconds`` for
the whole call. Response: ``{"results": [{"flagged", "categories", "category_scores"}, ...]}``,
one result per input. A category the endpoint flags (``categories[name]`` true; sub-categories
such as ``hate/threatening`` or ``self-harm/intent`` count for their parent) becomes a finding
``("moderation", category)`` with the policy's action for that category; categories the
policy does not list are ignored. The texts sent are those the local guardrails already
redacted (the endpoint is a third party: it sees what the provider would see).

Any failure (connection, TLS, timeout, HTTP error, a body that is not the format) raises
:class:`EndpointError` naming what failed, never the text; the caller applies
``spec.failureMode``. Nothing here blocks the event loop: the Secrets and the CA are read in a
worker thread when the policy loads, and again every ``REFRESH_SECONDS`` on use (a rotated key,
URL or CA is picked up; one gone keeps the last good settings).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
from yarl import URL

from aiguard_api.errors import ConfigError
from aiguard_api.policy_types import DetectAction
from aiguard_api.view import ModerationGuardrail, SecretKeyRef
from aiguard_sidecar.exchange import dumps, loads
from aiguard_sidecar.guardrails.base import Decision, Finding, Role, Segment, Verdict
from aiguard_sidecar.upstream import build_context

log = logging.getLogger("aiguard.sidecar.moderation")

GUARDRAIL: Final = "moderation"
ENDPOINT_ERROR: Final = "endpoint_error"
"""Finding type of a failed call under ``failureMode: open`` (counted, then allowed)."""
MAX_RESPONSE_BYTES: Final = 4 << 20
REFRESH_SECONDS = 5.0
"""How often the endpoint's Secrets are read again (rotation)."""
SKIPPED_ROLES: Final = frozenset({Role.SYSTEM})  # as the local classifier

_DECISION: Final[dict[DetectAction, Decision]] = {
    DetectAction.BLOCK: Decision.BLOCK,
    DetectAction.REVIEW: Decision.REVIEW,
    DetectAction.FLAG: Decision.ALLOW,
}

SecretPath = Callable[[str, str], Path]


class EndpointError(Exception):
    """The endpoint could not answer usefully (the message names why, never the text)."""


@dataclass(frozen=True, slots=True)
class _Settings:
    url: URL
    api_key: str | None
    ssl: ssl.SSLContext
    model: str | None
    timeout: float


def _read(secret_path: SecretPath, ref: SecretKeyRef, what: str) -> bytes:
    try:
        return secret_path(ref.name, ref.key).read_bytes()
    except OSError as e:
        raise ConfigError(
            f"{what}: Secret {ref.name} key {ref.key} is not mounted ({type(e).__name__})"
        ) from e


_Raw = tuple[bytes, bytes | None, bytes | None]  # URL, key, CA: as read from the Secrets


def _read_all(cfg: ModerationGuardrail, secret_path: SecretPath, side: str) -> _Raw:
    """Blocking (files): called in a worker thread."""
    assert cfg.endpoint_secret_ref is not None
    where = f"spec.guardrails.{side}.moderation"
    raw = _read(secret_path, cfg.endpoint_secret_ref, f"{where}.endpointSecretRef")
    key_raw = ca = None
    if cfg.endpoint_api_key_secret_ref is not None:
        key_raw = _read(
            secret_path, cfg.endpoint_api_key_secret_ref, f"{where}.endpointApiKeySecretRef"
        )
    if cfg.endpoint_ca_secret_ref is not None:
        ca = _read(secret_path, cfg.endpoint_ca_secret_ref, f"{where}.endpointCaSecretRef")
    return raw, key_raw, ca


def _settings(cfg: ModerationGuardrail, raw_all: _Raw, side: str) -> _Settings:
    """Blocking (CA parsing): called in a worker thread."""
    where = f"spec.guardrails.{side}.moderation"
    raw, key_raw, ca = raw_all
    text = raw.decode("utf-8", "replace").strip()
    try:
        url = URL(text)
    except ValueError as e:
        raise ConfigError(f"{where}.endpointSecretRef: not a URL") from e
    if url.scheme != "https" or not url.host:
        raise ConfigError(f"{where}.endpointSecretRef: the endpoint URL must be https://HOST/...")
    key = (key_raw.decode("utf-8", "replace").strip() or None) if key_raw is not None else None
    try:
        context = build_context("1.2", ca)
    except (ValueError, ssl.SSLError) as e:
        raise ConfigError(f"{where}.endpointCaSecretRef: not a usable CA bundle") from e
    return _Settings(url, key, context, cfg.endpoint_model, cfg.endpoint_timeout_seconds)


def _parent(name: str) -> str:
    """``hate/threatening`` → ``hate``; ``self-harm/intent`` → ``self-harm``."""
    return name.split("/", 1)[0]


class ModerationEndpoint:
    """One policy version's client for one direction's endpoint. See the module docstring."""

    def __init__(
        self,
        cfg: ModerationGuardrail,
        secret_path: SecretPath,
        side: str,
        raw: _Raw,
        settings: _Settings,
        session: aiohttp.ClientSession,
    ) -> None:
        self.actions: dict[str, DetectAction] = {c.value: a for c, a in cfg.categories.items()}
        self._cfg, self._secret_path, self._side = cfg, secret_path, side
        self._raw = raw
        self._session = session
        self._use(settings)
        self._checked = asyncio.get_running_loop().time()

    def _use(self, settings: _Settings) -> None:
        self._s = settings
        self._headers = {"content-type": "application/json"}
        if settings.api_key:
            self._headers["authorization"] = f"Bearer {settings.api_key}"

    @classmethod
    async def load(
        cls, cfg: ModerationGuardrail, secret_path: SecretPath, side: str
    ) -> ModerationEndpoint:
        """Read the Secrets and build the TLS context (in a worker thread); a missing Secret
        or a bad URL or CA is a ``ConfigError`` (the policy is not taken)."""
        loop = asyncio.get_running_loop()
        raw = await loop.run_in_executor(None, _read_all, cfg, secret_path, side)
        settings = await loop.run_in_executor(None, _settings, cfg, raw, side)
        connector = aiohttp.TCPConnector(limit=32, ttl_dns_cache=60)
        session = aiohttp.ClientSession(connector=connector, trust_env=False)
        return cls(cfg, secret_path, side, raw, settings, session)

    async def _refresh(self) -> None:
        """Rotated Secrets (URL, key, CA) are picked up: every ``REFRESH_SECONDS`` the files
        are read again in a worker thread, and the settings rebuilt when they changed. A
        Secret gone or unusable keeps the last good settings (logged)."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._checked < REFRESH_SECONDS:
            return
        self._checked = loop.time()  # concurrent calls do not refresh again meanwhile
        try:
            raw = await loop.run_in_executor(
                None, _read_all, self._cfg, self._secret_path, self._side
            )
            if raw == self._raw:
                return
            settings = await loop.run_in_executor(None, _settings, self._cfg, raw, self._side)
        except ConfigError as e:
            log.warning(
                "moderation endpoint Secret not usable; keeping the last good settings",
                extra={"fields": {"direction": self._side, "error": str(e)}},
            )
            return
        self._raw = raw
        self._use(settings)
        log.info(
            "moderation endpoint Secrets reloaded", extra={"fields": {"direction": self._side}}
        )

    async def close(self) -> None:
        await self._session.close()

    async def check(self, segments: Sequence[Segment]) -> Verdict:
        """Findings for the categories the endpoint flags (raises :class:`EndpointError`)."""
        verdict = Verdict()
        picked = [s for s in segments if s.role not in SKIPPED_ROLES and s.text.strip()]
        if not picked or not self.actions:
            return verdict
        body: dict[str, Any] = {"input": [s.text for s in picked]}
        if self._s.model:
            body["model"] = self._s.model
        await self._refresh()
        results = await self._post(body, len(picked))
        for seg, result in zip(picked, results, strict=True):
            categories = result.get("categories")
            scores = result.get("category_scores")
            if not isinstance(categories, Mapping):
                raise EndpointError("a result has no categories object")
            best: dict[str, float] = {}
            for name, flagged in categories.items():
                cat = _parent(str(name))
                if flagged is not True or cat not in self.actions:
                    continue
                score = scores.get(name) if isinstance(scores, Mapping) else None
                value = float(score) if isinstance(score, int | float) else 1.0
                best[cat] = max(best.get(cat, 0.0), value)
            for cat, score in sorted(best.items()):
                action = self.actions[cat]
                verdict.findings.append(
                    Finding(GUARDRAIL, cat, seg.index, 0, 0, round(score, 4), action.value)
                )
                decision = _DECISION[action]
                if decision > verdict.decision:
                    verdict.decision = decision
                    verdict.reason = (
                        f"{GUARDRAIL}: {cat} in segment {seg.index} (external endpoint)"
                    )
        return verdict

    async def _post(self, body: dict[str, Any], n: int) -> list[Mapping[str, Any]]:
        s = self._s
        try:
            async with asyncio.timeout(s.timeout):
                async with self._session.post(
                    s.url, data=dumps(body), headers=self._headers, ssl=s.ssl
                ) as resp:
                    if resp.status != 200:
                        raise EndpointError(f"the endpoint answered HTTP {resp.status}")
                    raw = await resp.content.read(MAX_RESPONSE_BYTES + 1)
        except TimeoutError:
            raise EndpointError(f"no answer within {s.timeout:g} s") from None
        except aiohttp.ClientSSLError as e:
            raise EndpointError(f"TLS failed ({type(e).__name__})") from None
        except (aiohttp.ClientError, OSError) as e:
            raise EndpointError(f"cannot reach the endpoint ({type(e).__name__})") from None
        if len(raw) > MAX_RESPONSE_BYTES:
            raise EndpointError("the response is too large")
        try:
            doc = loads(raw)
        except ValueError:
            raise EndpointError("the response is not JSON") from None
        results = doc.get("results") if isinstance(doc, dict) else None
        if not isinstance(results, list) or len(results) != n:
            raise EndpointError("the response has no results list with one result per input")
        if not all(isinstance(r, dict) for r in results):
            raise EndpointError("a result is not an object")
        return results


def error_verdict(side: str, error: EndpointError, *, closed: bool = False) -> Verdict:
    """``failureMode: open``: the failure is a counted, allowed finding (audit and metrics).
    ``closed`` (``mode: audit``): a block, which the pipeline records without enforcing."""
    log.warning(
        "moderation endpoint failed",
        extra={
            "fields": {
                "direction": side,
                "error": str(error),
                "failure_mode": "closed" if closed else "open",
            }
        },
    )
    if closed:
        return Verdict(
            decision=Decision.BLOCK,
            findings=[Finding(GUARDRAIL, ENDPOINT_ERROR, -1, 0, 0, 1.0, "block")],
            reason=f"{GUARDRAIL}: the external endpoint failed; failureMode closed",
        )
    return Verdict(findings=[Finding(GUARDRAIL, ENDPOINT_ERROR, -1, 0, 0, 1.0, "allow")])

"""The upstream side: key custody, TLS, headers, and one HTTP attempt.

Key custody
    The client's credentials (``authorization``, ``x-api-key``, ``api-key``), cookies, and the
    identity headers are dropped before forwarding (:func:`forward_headers`); the provider key
    is read from its mounted Secret file. :class:`SecretFiles` keeps every watched file's
    content in memory and a background task re-stats them every second (in a worker thread),
    re-reading a file whose inode, size or mtime changed (a Kubernetes Secret update swaps
    the ``..data`` symlink: new inode). The hot path only reads the cached value. Key values
    are never logged or put in an error message; only paths are.

TLS
    Certificates are always verified. :class:`TLSContexts` builds one ``SSLContext`` per
    (minimum version, CA bundle): TLS 1.3 minimum unless the provider says 1.2, the system
    roots or the provider's ``caSecretRef`` bundle instead of them, and the SNI/verification
    name override passed per request. Contexts are built off the event loop. The negotiated
    version and cipher of each response's connection are read from its ``ssl_object``.

One attempt
    :func:`send` makes one request over the process's keep-alive provider connections
    (``upstream_http.ProviderClient``: no redirects, no environment proxy), with the
    provider's timeouts, and turns every client-side failure into an :class:`UpstreamFailure`
    (connect, TLS, timeout, reset, a body cut short, a response that is not HTTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import aiohttp

from aiguard_sidecar.providers.base import UpstreamCall
from aiguard_sidecar.routing import Failure
from aiguard_sidecar.upstream_http import (
    BadResponse,
    ConnectFailure,
    ProviderClient,
    ProviderResponse,
    Timeouts,
)

log = logging.getLogger("aiguard.sidecar.upstream")

SECRET_POLL_SECONDS: Final = 1.0
MAX_SECRET_BYTES: Final = 1 << 20

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
CLIENT_CREDENTIALS: Final = frozenset({"authorization", "x-api-key", "api-key", "cookie"})
"""Never forwarded: the client's placeholder keys (or real ones it should not have)."""

_DROP_REQUEST: Final = (
    HOP_BY_HOP
    | CLIENT_CREDENTIALS
    | {
        "host",
        "content-length",
        "expect",
        "accept-encoding",  # the sidecar negotiates its own and decodes for parsing
        "openai-organization",  # tied to the key owner, not the app
        "openai-project",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-real-ip",
    }
)
_DROP_RESPONSE: Final = HOP_BY_HOP | {
    "content-length",
    "content-encoding",  # bodies are decoded
    "set-cookie",  # provider cookies are not the app's business
    "server",
    "date",
    "alt-svc",
    "strict-transport-security",
}
_INTERNAL_PREFIX: Final = "x-aiguard-"


def _connection_tokens(headers: Mapping[str, str]) -> frozenset[str]:
    value = headers.get("connection") or headers.get("Connection")
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(","))


def forward_headers(
    client: Mapping[str, str], *, strip: frozenset[str], extra: Mapping[str, str]
) -> dict[str, str]:
    """The client's headers minus credentials, hop-by-hop, identity and ``x-aiguard-*`` ones,
    plus ``extra`` (the dialect's defaults; they never override the client's own values,
    except that the caller adds the auth header last)."""
    drop = _DROP_REQUEST
    listed = _connection_tokens(client)
    out: dict[str, str] = {}
    for name, value in client.items():
        lower = name.lower()
        if lower in drop or lower in strip or lower in listed or lower.startswith(_INTERNAL_PREFIX):
            continue
        out[lower] = value
    for name, value in extra.items():
        out.setdefault(name, value)
    return out


def response_headers(upstream: Mapping[str, str]) -> dict[str, str]:
    """Headers of the provider's response worth relaying to the client."""
    listed = _connection_tokens(upstream)
    return {
        name: value
        for name, value in upstream.items()
        if (lower := name.lower()) not in _DROP_RESPONSE and lower not in listed
    }


# ── secret files ─────────────────────────────────────────────────────────────────────────────


Signature = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


@dataclass(slots=True)
class _File:
    signature: Signature | None = None
    data: bytes | None = None
    error: str | None = None
    key: str | None = None  # ``key_text(data)``, computed once per content


def _scan(files: Mapping[Path, Signature | None]) -> dict[Path, _File]:
    """Stat every file; read the ones whose signature changed. Runs in a worker thread."""
    changed: dict[Path, _File] = {}
    for path, known in files.items():
        try:
            st = os.stat(path)
        except OSError as e:
            changed[path] = _File(None, None, e.strerror or type(e).__name__)
            continue
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if sig == known:
            continue
        if st.st_size > MAX_SECRET_BYTES:
            changed[path] = _File(sig, None, f"larger than {MAX_SECRET_BYTES} bytes")
            continue
        try:
            changed[path] = _File(sig, path.read_bytes())
        except OSError as e:
            changed[path] = _File(None, None, e.strerror or type(e).__name__)
    return changed


ChangeListener = Callable[[Path, bytes | None], Awaitable[None]]


class SecretFiles:
    """Mounted secret files, cached in memory and refreshed in the background."""

    def __init__(self, *, on_reload: Callable[[bool], None] | None = None) -> None:
        self._files: dict[Path, _File] = {}
        self._listeners: list[ChangeListener] = []
        self._on_reload = on_reload
        self._lock = asyncio.Lock()

    def get(self, path: Path) -> bytes | None:
        """The file's content as last read, or None (missing, unreadable). No I/O."""
        f = self._files.get(path)
        return None if f is None else f.data

    def key(self, path: Path) -> str | None:
        """The file's content as a provider key (see :func:`key_text`), or None. No I/O."""
        f = self._files.get(path)
        return None if f is None else f.key

    def error(self, path: Path) -> str | None:
        f = self._files.get(path)
        return "not watched" if f is None else f.error

    def on_change(self, listener: ChangeListener) -> None:
        self._listeners.append(listener)

    async def watch(self, paths: Iterable[Path]) -> None:
        """Watch exactly ``paths`` from now on; files not read before are read now."""
        wanted = set(paths)
        async with self._lock:
            for gone in set(self._files) - wanted:
                del self._files[gone]
            new = {p: None for p in wanted if p not in self._files}
            if new:
                found = await asyncio.to_thread(_scan, new)
                for path in new:
                    self._apply(path, found.get(path, _File()), initial=True)

    async def refresh(self) -> None:
        """One pass over every watched file (the background task calls this every second)."""
        async with self._lock:
            if not self._files:
                return
            known = {p: f.signature for p, f in self._files.items()}
            changed = await asyncio.to_thread(_scan, known)
            for path, f in changed.items():
                if path in self._files:
                    old = self._files[path]
                    if f.signature is None and old.signature is None and f.error == old.error:
                        continue  # still missing: stay quiet
                    await self._changed(path, f)

    async def run(self, interval: float = SECRET_POLL_SECONDS) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:
                log.exception("secret refresh failed")

    def _apply(self, path: Path, f: _File, *, initial: bool) -> None:
        f.key = key_text(f.data)
        self._files[path] = f
        if f.data is not None:
            log.info("secret file loaded", extra={"fields": {"path": str(path)}})
        else:
            fields = {"path": str(path), "error": f.error}
            log.warning("secret file unavailable", extra={"fields": fields})
        if self._on_reload is not None and not initial:
            self._on_reload(f.data is not None)

    async def _changed(self, path: Path, f: _File) -> None:
        old = self._files.get(path)
        self._apply(path, f, initial=False)
        if old is not None and old.data == f.data:
            return
        for listener in self._listeners:
            try:
                await listener(path, f.data)
            except Exception:
                log.exception(
                    "secret change listener failed", extra={"fields": {"path": str(path)}}
                )


def key_text(data: bytes | None) -> str | None:
    """A provider key from its file: surrounding whitespace removed; None when empty or when
    it contains control characters (which would break or inject into an HTTP header)."""
    if not data:
        return None
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if not text or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return None
    return text


# ── TLS ──────────────────────────────────────────────────────────────────────────────────────

_TLS_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def build_context(min_version: str, ca_pem: bytes | None) -> ssl.SSLContext:
    """A verifying client context. Blocking (reads the system trust store): run in a thread."""
    if ca_pem is not None:
        ctx = ssl.create_default_context(cadata=ca_pem.decode("ascii", "replace"))
    else:
        ctx = ssl.create_default_context()
    ctx.minimum_version = _TLS_VERSIONS[min_version]
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class TLSContexts:
    """``SSLContext`` per minimum version (system roots) or per (version, CA file), built off
    the event loop by :meth:`prepare`; :meth:`get` is a dictionary lookup."""

    def __init__(self) -> None:
        self._system: dict[str, ssl.SSLContext] = {}
        self._custom: dict[tuple[str, Path], tuple[bytes, ssl.SSLContext]] = {}

    async def prepare(
        self, min_version: str, ca_path: Path | None, ca_pem: bytes | None
    ) -> ssl.SSLContext:
        """Build (or find) the context; raises ``ssl.SSLError``/``ValueError`` for a bad CA."""
        found = self.get(min_version, ca_path, ca_pem)
        if found is not None:
            return found
        ctx = await asyncio.to_thread(build_context, min_version, ca_pem)
        if ca_path is None:
            self._system[min_version] = ctx
        elif ca_pem is not None:
            self._custom[(min_version, ca_path)] = (ca_pem, ctx)
        return ctx

    def get(
        self, min_version: str, ca_path: Path | None, ca_pem: bytes | None
    ) -> ssl.SSLContext | None:
        """The prepared context, or None when it is not built (yet) for this CA content."""
        if ca_path is None:
            return self._system.get(min_version)
        entry = self._custom.get((min_version, ca_path))
        if entry is None or ca_pem is None:
            return None
        pem, ctx = entry
        return ctx if pem is ca_pem or pem == ca_pem else None


def tls_info(response: ProviderResponse) -> tuple[str | None, str | None]:
    """Negotiated TLS version and cipher of the connection that carried ``response``."""
    return response.tls_version, response.tls_cipher


# ── one attempt ──────────────────────────────────────────────────────────────────────────────


class UpstreamFailure(Exception):
    """An attempt that produced no HTTP response (or a broken one). ``detail`` is safe to log
    and show: it names the failure, never a key or content."""

    def __init__(self, failure: Failure, detail: str, *, tls: bool = False) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail
        self.tls = tls


def _ssl_reason(exc: BaseException) -> str:
    inner = getattr(exc, "os_error", None) or getattr(exc, "certificate_error", None) or exc
    reason = getattr(inner, "reason", None) or getattr(inner, "verify_message", None)
    return str(reason) if reason else type(inner).__name__


def classify(exc: BaseException, *, https: bool = False) -> UpstreamFailure:
    """An aiohttp/OS exception as an :class:`UpstreamFailure`."""
    if isinstance(exc, ConnectFailure):
        kind = Failure.TIMEOUT if exc.timeout else Failure.CONNECT
        return UpstreamFailure(kind, exc.detail, tls=exc.tls)
    if isinstance(exc, BadResponse):
        return UpstreamFailure(Failure.CONNECT, str(exc))
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return UpstreamFailure(
            Failure.CONNECT, f"TLS certificate verification failed ({_ssl_reason(exc)})", tls=True
        )
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError) or (
        isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ssl.SSLError)
    ):
        return UpstreamFailure(
            Failure.CONNECT, f"TLS handshake failed ({_ssl_reason(exc)})", tls=True
        )
    if isinstance(exc, TimeoutError):  # includes aiohttp's ServerTimeoutError
        return UpstreamFailure(Failure.TIMEOUT, "timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        why = (os_error.strerror or type(os_error).__name__) if os_error is not None else None
        if https and isinstance(os_error, ConnectionResetError):
            # A server that refuses the TLS version or cipher often just drops the connection.
            return UpstreamFailure(
                Failure.CONNECT,
                "the connection was reset during connect or TLS handshake (a provider limited "
                "to an older TLS version than tls.minVersion does this)",
            )
        return UpstreamFailure(Failure.CONNECT, f"cannot connect ({why or 'connection failed'})")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamFailure(Failure.CONNECT, "the provider closed the connection")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamFailure(Failure.CONNECT, "the response body was cut short")
    if isinstance(exc, aiohttp.ClientOSError | ConnectionError):
        return UpstreamFailure(Failure.CONNECT, "connection reset")
    return UpstreamFailure(Failure.CONNECT, type(exc).__name__)


UPSTREAM_ERRORS: Final = (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError)


async def send(
    client: ProviderClient,
    call: UpstreamCall,
    *,
    headers: Mapping[str, str],
    ssl_context: ssl.SSLContext | None,
    server_hostname: str | None,
    timeout: Timeouts,  # noqa: ASYNC109 - connect, read and total, applied by the client
) -> ProviderResponse:
    """One request. The caller reads (and releases) the response."""
    try:
        return await client.request(
            call.method,
            call.url,
            headers=headers,
            body=call.body,
            timeouts=timeout,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
        )
    except UPSTREAM_ERRORS as e:
        raise classify(e, https=call.url.scheme == "https") from e


async def discard(response: ProviderResponse, *, limit: int = 1 << 20) -> bytes:
    """Read a (small, error) body and free the connection; bodies over ``limit`` are cut."""
    chunks: list[bytes] = []
    size = 0
    try:
        while size < limit:
            chunk = await response.content.read(limit - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if not response.content.at_eof():
            response.close()
        return b"".join(chunks)
    except UPSTREAM_ERRORS:
        response.close()
        return b""
    finally:
        with contextlib.suppress(Exception):
            response.release()

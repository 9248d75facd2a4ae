"""Connections to the providers: a lean keep-alive HTTP/1.1 client for the hot path.

Every request the sidecar forwards goes through :meth:`ProviderClient.request`. It is the
part of ``aiohttp.ClientSession`` the sidecar needs and nothing more: no cookie jar,
redirects, environment proxies, tracing, middlewares or request object building, which cost
~100 µs of CPU per request (measured side by side: ``benchmarks/sidecar_proxy.py compare``).
The wire handling is aiohttp's own: each connection's protocol is
:class:`aiohttp.client_proto.ResponseHandler` — the llhttp parser, chunked and
``Content-Length`` framing, gzip/deflate decoding, :class:`aiohttp.StreamReader` bodies with
flow control (a slow client pauses reading from the provider), and the ``sock_read`` timer —
so the response a caller gets has the same ``content`` API and raises the same exceptions
(``ClientPayloadError``, ``ServerDisconnectedError``, ``SocketTimeoutError``) as before.

What is here
    * one pool of idle connections per (scheme, host, port, TLS context, SNI name); the most
      recently used is taken first; connections idle longer than ``keepalive_seconds``, closed
      by the provider, or whose last response was not read to its end are never reused;
    * ``limit`` requests in flight at once over all providers (callers past it wait);
    * the request written in one ``writelines`` (head and body), ``Host`` from the URL,
      ``Content-Length`` from the body, ``Accept-Encoding: gzip, deflate``;
    * timeouts as the policy states them: ``connect`` (TCP and TLS), ``read`` (waiting for
      the response head and between two reads of the body, aiohttp's ``sock_read``) and
      ``total`` (the whole exchange, body and stream included);
    * the TLS version and cipher of the connection on every response (for the audit event);
    * a request on a reused connection that the provider closed before answering is sent once
      more on a new connection when its method is idempotent (RFC 9112 §9.3.1), as aiohttp
      does; a ``POST`` is not (the failover policy decides).

Failures to connect raise :class:`ConnectFailure` (an ``OSError``, with ``tls`` set for a
TLS failure); everything after is aiohttp's exceptions, classified by ``upstream.classify``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Mapping
from typing import Final

from aiohttp import ClientError, ServerDisconnectedError, StreamReader
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import BaseTimerContext, TimeoutHandle
from aiohttp.http import RawResponseMessage
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDictProxy
from yarl import URL

__all__ = ["BadResponse", "ConnectFailure", "ProviderClient", "ProviderResponse", "Timeouts"]

READ_BUFSIZE: Final = 1 << 16
MAX_LINE: Final = 8190
MAX_FIELD: Final = 8190
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_EMPTY_BODY_METHODS: Final = frozenset({"HEAD"})

_PoolKey = tuple[str, str, int, ssl.SSLContext | None, str | None]


class Timeouts:
    """Seconds (``None``: no limit): ``connect`` (TCP + TLS), ``read`` (response head, and
    between reads of the body), ``total`` (the whole exchange)."""

    __slots__ = ("connect", "read", "total")

    def __init__(self, *, connect: float | None, read: float | None, total: float | None) -> None:
        self.connect = connect
        self.read = read
        self.total = total


class ConnectFailure(OSError):
    """No connection: refused, unreachable, DNS, timeout, or the TLS handshake failed
    (``tls``; ``verify`` when the certificate did not verify)."""

    def __init__(
        self, detail: str, *, tls: bool = False, verify: bool = False, timeout: bool = False
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.tls = tls
        self.verify = verify
        self.timeout = timeout


class BadResponse(ClientError):
    """The provider answered something that is not an HTTP response."""


class _Connection:
    __slots__ = ("idle_since", "key", "protocol", "tls_cipher", "tls_version", "transport")

    def __init__(
        self, key: _PoolKey, transport: asyncio.Transport, protocol: ResponseHandler
    ) -> None:
        self.key = key
        self.transport = transport
        self.protocol = protocol
        self.idle_since = 0.0
        obj = transport.get_extra_info("ssl_object")
        self.tls_version: str | None = obj.version() if obj is not None else None
        cipher = obj.cipher() if obj is not None else None
        self.tls_cipher: str | None = cipher[0] if cipher else None

    def usable(self) -> bool:
        return self.protocol.is_connected() and not self.protocol.should_close

    def close(self) -> None:
        self.protocol.close()


class ProviderResponse:
    """A provider's response: status, headers, and ``content`` (an aiohttp ``StreamReader``).

    The caller reads the body (``read()`` or ``content``) and then calls :meth:`release`
    (the connection goes back to the pool when the body was read to its end) or
    :meth:`close` (the connection is dropped: a broken stream, a client gone)."""

    __slots__ = (
        "_client",
        "_conn",
        "_done",
        "_timeout",
        "content",
        "headers",
        "reason",
        "status",
        "tls_cipher",
        "tls_version",
    )

    def __init__(
        self,
        client: ProviderClient,
        conn: _Connection,
        message: RawResponseMessage,
        payload: StreamReader,
        timeout: asyncio.TimerHandle | None,
    ) -> None:
        self._client = client
        self._conn = conn
        self._timeout = timeout
        self._done = False
        self.status: int = message.code
        self.reason: str = message.reason
        self.headers: CIMultiDictProxy[str] = message.headers
        self.content = payload
        self.tls_version = conn.tls_version
        self.tls_cipher = conn.tls_cipher
        if message.should_close:
            conn.protocol.force_close()

    @property
    def content_type(self) -> str:
        value = self.headers.get("Content-Type", "")
        return value.split(";", 1)[0].strip().lower() or "application/octet-stream"

    async def read(self) -> bytes:
        """The whole (decoded) body."""
        return await self.content.read()

    def release(self) -> None:
        """Done with the response: the connection is reused if its body was read whole."""
        if self._done:
            return
        self._finish(reuse=self.content.is_eof())

    def close(self) -> None:
        """Done with the response, and with its connection."""
        if not self._done:
            self._finish(reuse=False)

    def _finish(self, *, reuse: bool) -> None:
        self._done = True
        if self._timeout is not None:
            self._timeout.cancel()
        self._client._put_back(self._conn, reuse=reuse)


class ProviderClient:
    """The keep-alive connection pool of the process (one per sidecar)."""

    def __init__(self, *, limit: int = 1024, keepalive_seconds: float = 30.0) -> None:
        self.keepalive_seconds = keepalive_seconds
        self._idle: dict[_PoolKey, deque[_Connection]] = {}
        self._active: set[_Connection] = set()
        self._slots = asyncio.Semaphore(limit) if limit > 0 else None
        self._closed = False
        self._swept = 0.0

    # ── requests ─────────────────────────────────────────────────────────────────────────────

    async def request(
        self,
        method: str,
        url: URL,
        *,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> ProviderResponse:
        """Send one request; the response head is read, the body is the caller's."""
        if self._closed:
            raise ConnectFailure("the sidecar is shutting down")
        https = url.scheme == "https"
        if https and ssl_context is None:
            raise ValueError("an https request needs its TLS context")
        host = url.raw_host or ""
        port = url.port or (443 if https else 80)
        # The key holds the TLS context itself (not its id, which a new context could reuse):
        # a connection verified against a CA bundle that has since rotated is never taken
        # for a request that uses the new bundle.
        key: _PoolKey = (
            url.scheme,
            host,
            port,
            ssl_context if https else None,
            server_hostname if https else None,
        )
        head = _head(method, url, host, port, https, headers, body)
        loop = asyncio.get_running_loop()
        total = TimeoutHandle(loop, timeouts.total)
        deadline = total.start()
        timer = total.timer()
        slots = self._slots
        acquired = False
        conn: _Connection | None = None
        try:
            with timer:
                if slots is not None:  # (waiting for a slot counts against `total`)
                    await slots.acquire()
                    acquired = True
                conn, reused = await self._connection(key, url, timeouts.connect, ssl_context)
                while True:
                    try:
                        message, payload = await self._exchange(
                            conn, method, head, body, timeouts, timer
                        )
                        break
                    except ServerDisconnectedError:
                        if not (reused and method in IDEMPOTENT):
                            raise
                    self._drop(conn)
                    conn = None
                    conn, reused = await self._connection(
                        key, url, timeouts.connect, ssl_context, fresh=True
                    )
        except BaseException:
            if conn is not None:
                self._drop(conn)
            if deadline is not None:
                deadline.cancel()
            total.close()
            if acquired and slots is not None:
                slots.release()
            raise
        return ProviderResponse(self, conn, message, payload, deadline)

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        head: bytes,
        body: bytes | None,
        timeouts: Timeouts,
        timer: BaseTimerContext,
    ) -> tuple[RawResponseMessage, StreamReader]:
        proto = conn.protocol
        proto.set_response_params(
            timer=timer,
            skip_payload=method in _EMPTY_BODY_METHODS,
            read_until_eof=True,
            auto_decompress=True,
            read_timeout=timeouts.read,
            read_bufsize=READ_BUFSIZE,
            max_line_size=MAX_LINE,
            max_field_size=MAX_FIELD,
        )
        self._active.add(conn)
        conn.transport.writelines((head, body) if body else (head,))
        proto.start_timeout()  # sock_read: the provider has `read` seconds to answer
        while True:
            try:
                message, payload = await proto.read()
            except HttpProcessingError as e:
                raise BadResponse(f"the provider's response is not valid HTTP ({e.message})") from e
            if message.code < 100 or message.code > 199 or message.code == 101:
                return message, payload

    # ── the pool ─────────────────────────────────────────────────────────────────────────────

    async def _connection(
        self,
        key: _PoolKey,
        url: URL,
        connect_timeout: float | None,
        ssl_context: ssl.SSLContext | None,
        *,
        fresh: bool = False,
    ) -> tuple[_Connection, bool]:
        idle = self._idle.get(key)
        if idle and not fresh:
            now = asyncio.get_running_loop().time()
            while idle:
                conn = idle.pop()
                if conn.usable() and now - conn.idle_since < self.keepalive_seconds:
                    return conn, True
                conn.close()
            del self._idle[key]
        return await self._connect(key, url, connect_timeout, ssl_context), False

    async def _connect(
        self,
        key: _PoolKey,
        url: URL,
        connect_seconds: float | None,
        ssl_context: ssl.SSLContext | None,
    ) -> _Connection:
        loop = asyncio.get_running_loop()
        https = key[0] == "https"
        try:
            async with asyncio.timeout(connect_seconds):
                transport, protocol = await loop.create_connection(
                    lambda: ResponseHandler(loop),
                    key[1],
                    key[2],
                    ssl=ssl_context if https else None,
                    server_hostname=(key[4] or key[1]) if https else None,
                    ssl_handshake_timeout=connect_seconds if https else None,
                )
        except TimeoutError:
            raise ConnectFailure("timed out", timeout=True) from None
        except ssl.SSLCertVerificationError as e:
            reason = e.verify_message or e.reason or type(e).__name__
            raise ConnectFailure(
                f"TLS certificate verification failed ({reason})", tls=True, verify=True
            ) from e
        except ssl.SSLError as e:
            raise ConnectFailure(
                f"TLS handshake failed ({e.reason or type(e).__name__})", tls=True
            ) from e
        except ConnectionResetError as e:
            if https:  # a server refusing the TLS version or cipher often just drops it
                raise ConnectFailure(
                    "the connection was reset during connect or TLS handshake (a provider "
                    "limited to an older TLS version than tls.minVersion does this)"
                ) from e
            raise ConnectFailure(f"cannot connect ({e.strerror or 'connection reset'})") from e
        except OSError as e:
            why = e.strerror or (str(e) if str(e) else type(e).__name__)
            raise ConnectFailure(f"cannot connect ({why})") from e
        return _Connection(key, transport, protocol)

    def _put_back(self, conn: _Connection, *, reuse: bool) -> None:
        self._active.discard(conn)
        if self._slots is not None:
            self._slots.release()
        now = asyncio.get_running_loop().time()
        if now - self._swept >= min(self.keepalive_seconds, 1.0):
            self._sweep(now)
        if not reuse or self._closed or not conn.usable():
            conn.close()
            return
        conn.idle_since = now
        self._idle.setdefault(conn.key, deque()).append(conn)

    def _sweep(self, now: float) -> None:
        """Close idle connections past their keep-alive or closed by the provider, for every
        key: a key no request uses any more (a TLS context replaced when its CA bundle
        rotated, a provider gone from the policy) is dropped with its connections."""
        self._swept = now
        for key in list(self._idle):
            kept: deque[_Connection] = deque()
            for c in self._idle[key]:
                if c.usable() and now - c.idle_since < self.keepalive_seconds:
                    kept.append(c)
                else:
                    c.close()
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]

    def _drop(self, conn: _Connection) -> None:
        self._active.discard(conn)
        conn.close()

    def idle_connections(self) -> int:
        return sum(len(q) for q in self._idle.values())

    async def close(self) -> None:
        """Close every idle connection; requests still running close theirs when done."""
        self._closed = True
        for q in self._idle.values():
            while q:
                q.pop().close()
        self._idle.clear()
        for conn in list(self._active):
            with contextlib.suppress(Exception):
                conn.close()
        self._active.clear()


def _head(
    method: str,
    url: URL,
    host: str,
    port: int,
    https: bool,
    headers: Mapping[str, str],
    body: bytes | None,
) -> bytes:
    target = url.raw_path_qs or "/"
    default_port = 443 if https else 80
    host_value = host if port == default_port else f"{host}:{port}"
    if ":" in host and not host.startswith("["):  # an IPv6 literal
        host_value = f"[{host}]" if port == default_port else f"[{host}]:{port}"
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_value}"]
    has = {name.lower() for name in headers}
    for name, value in headers.items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
            raise ValueError(f"header {name[:64]!r} holds a line break")
        lines.append(f"{name}: {value}")
    if "accept-encoding" not in has:
        lines.append("Accept-Encoding: gzip, deflate")
    if "accept" not in has:
        lines.append("Accept: */*")
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body) if body else 0}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")  # (as aiohttp encodes)

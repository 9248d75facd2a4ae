"""The provider client (``upstream_http.ProviderClient``) against raw HTTP servers on
127.0.0.1 that do exactly what each test needs: keep-alive reuse and when a connection must
not be reused, the retry of an idempotent request on a connection the provider closed, the
connection limit, timeouts, decoding, framing errors. (Through the sidecar, with the SDKs and
the provider stand-in, the same client is exercised by tests/sidecar and tests/faults.)"""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
import trustme
from yarl import URL

from aiguard_sidecar.routing import Failure
from aiguard_sidecar.upstream import classify
from aiguard_sidecar.upstream_http import (
    BadResponse,
    ConnectFailure,
    ProviderClient,
    Timeouts,
)

T = Timeouts(connect=2.0, read=2.0, total=5.0)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]
"""Serves one request on connection number ``n``; returns whether to keep the connection."""


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return lines[0].encode(), headers, body


def response(body: bytes, *, status: str = "200 OK", extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


@dataclass
class Server:
    handler: Handler
    connections: int = 0
    requests: list[tuple[bytes, dict[str, str], bytes]] = field(default_factory=list)
    server: asyncio.Server | None = None

    @property
    def url(self) -> URL:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return URL(f"http://127.0.0.1:{port}/v1/chat/completions")

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = self.connections
        try:
            while True:
                try:
                    keep = await self.handler(reader, writer, n)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                await writer.drain()
                if not keep:
                    return
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    started: list[Server] = []

    async def start(handler: Handler) -> Server:
        s = Server(handler)
        s.server = await asyncio.start_server(s.serve, "127.0.0.1", 0)
        started.append(s)
        return s

    yield start
    for s in started:
        assert s.server is not None
        s.server.close()
        await s.server.wait_closed()


@pytest.fixture
async def client() -> AsyncIterator[ProviderClient]:
    c = ProviderClient(limit=16, keepalive_seconds=30)
    yield c
    await c.close()


def echo(server: list[Server]) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        line, headers, body = await read_request(reader)
        server[0].requests.append((line, headers, body))
        writer.write(response(b'{"n": %d, "len": %d}' % (n, len(body))))
        return True

    return handle


async def test_a_connection_is_reused_once_its_response_was_read_whole(
    serve: Callable[[Handler], Awaitable[Server]], client: ProviderClient
) -> None:
    box: list[Server] = []
    box.append(await serve(echo(box)))
    for _ in range(3):
        r = await client.request(
            "POST", box[0].url, headers={"authorization": "Bearer k"}, body=b"{}", timeouts=T
        )
        assert r.status == 200
        assert await r.read() == b'{"n": 1, "len": 2}'
        r.release()
    assert box[0].connections == 1
    assert client.idle_connections() == 1
    line, headers, body = box[0].requests[0]
    assert line == b"POST /v1/chat/completions HTTP/1.1"
    assert headers["host"] == f"127.0.0.1:{box[0].url.port}"
    assert headers["content-length"] == "2"
    assert headers["authorization"] == "Bearer k"
    assert headers["accept-encoding"] == "gzip, deflate"
    assert body == b"{}"


async def test_a_response_released_before_its_end_closes_its_connection(
    serve: Callable[[Handler], Awaitable[Server]], client: ProviderClient
) -> None:
    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await read_request(reader)
        writer.write(response(b"x" * 200_000))
        return True

    server = await serve(big)
    r = await client.request("POST", server.url, headers={}, body=b"{}", timeouts=T)
    assert await r.content.read(10) == b"x" * 10
    r.release()  # not read to its end: the rest of the body would be read as the next answer
    r = await client.request("POST", server.url, headers={}, body=b"{}", timeouts=T)
    assert len(await r.read()) == 200_000
    r.release()
    assert server.connections == 2


async def test_connection_close_and_provider_side_closes_are_not_reused(
    serve: Callable[[Handler], Awaitable[Server]], client: ProviderClient
) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await read_request(reader)
        writer.write(response(b"{}", extra="Connection: close\r\n"))
        return False

    server = await serve(once)
    for _ in range(3):
        r = await client.request("POST", server.url, headers={}, body=b"{}", timeouts=T)
        assert await r.read() == b"{}"
        r.release()
    assert server.connections == 3
    assert client.idle_connections() == 0


async def test_an_idempotent_request_is_resent_when_a_reused_connection_was_closed(
    serve: Callable[[Handler], Awaitable[Server]], client: ProviderClient
) -> None:
    # The provider answers one request per connection, then reads the next and hangs up
    # without answering (its idle timeout racing the request).
    async def one_then_drop(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> bool:
        await read_request(reader)
        if getattr(writer, "answered", False):
            return False
        writer.answered = True  # type: ignore[attr-defined]
        writer.write(response(b'{"n": %d}' % n))
        return True

    server = await serve(one_then_drop)
    models = server.url.with_path("/v1/models")
    r = await client.request("GET", models, headers={}, body=None, timeouts=T)
    assert await r.read() == b'{"n": 1}'
    r.release()
    r = await client.request("GET", models, headers={}, body=None, timeouts=T)
    assert await r.read() == b'{"n": 2}'  # resent on a new connection
    r.release()
    assert server.connections == 2
    with pytest.raises(aiohttp.ServerDisconnectedError) as info:  # a POST is not resent
        await client.request("POST", server.url, headers={}, body=b"{}", timeouts=T)
    assert classify(info.value).detail == "the provider closed the connection"
    assert server.connections == 2


async def test_requests_past_the_limit_wait_for_a_connection(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    box: list[Server] = []
    box.append(await serve(echo(box)))
    client = ProviderClient(limit=1)
    try:
        first = await client.request("POST", box[0].url, headers={}, body=b"{}", timeouts=T)
        second = asyncio.ensure_future(
            client.request("POST", box[0].url, headers={}, body=b"{}", timeouts=T)
        )
        for _ in range(50):  # let it run as far as it can
            await asyncio.sleep(0)
        assert not second.done()  # the one slot is taken
        await first.read()
        first.release()
        r = await asyncio.wait_for(second, 2)
        await r.read()
        r.release()
        assert box[0].connections == 1  # and it went over the same connection
    finally:
        await client.close()


async def test_a_provider_that_does_not_answer_times_out_on_read(
    serve: Callable[[Handler], Awaitable[Server]], client: ProviderClient
) -> None:
    done = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await read_request(reader)
        await done.wait()  # never answers while the client waits
        return False

    server = await serve(silent)
    try:
        with pytest.raises(TimeoutError) as info:
            await client.request(
                "POST",
                server.url,
                headers={},
                body=b"{}",
                timeouts=Timeouts(connect=1, read=0.2, total=3),
            )
    finally:
        done.set()
    assert classify(info.value).failure is Failure.TIMEOUT


async def test_the_total_timeout_cuts_a_stream_that_never_ends(
    serve: Callable[[Handler], Awaitable[Server]], client: ProviderClient
) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(100):  # an event every 50 ms: never idle past `read`
            writer.write(b"e\r\ndata: {}\n\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        return False

    server = await serve(trickle)
    r = await client.request(
        "POST",
        server.url,
        headers={},
        body=b"{}",
        timeouts=Timeouts(connect=1, read=1, total=0.5),
    )
    assert r.content_type == "text/event-stream"

    async def drain() -> None:
        while await r.content.readany():
            pass

    with pytest.raises(TimeoutError):
        await drain()
    r.close()


async def test_gzip_bodies_are_decoded_and_chunked_framing_is_read(
    serve: Callable[[Handler], Awaitable[Server]], client: ProviderClient
) -> None:
    payload = b'{"choices": []}' * 100
    packed = gzip.compress(payload)

    async def zipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await read_request(reader)
        half = len(packed) // 2
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n" % half
            + packed[:half]
            + b"\r\n"
            + b"%x\r\n" % (len(packed) - half)
            + packed[half:]
            + b"\r\n0\r\n\r\n"
        )
        return True

    server = await serve(zipped)
    r = await client.request("POST", server.url, headers={}, body=b"{}", timeouts=T)
    assert await r.read() == payload
    r.release()
    assert client.idle_connections() == 1


async def test_a_body_cut_short_is_a_payload_error_and_garbage_is_a_bad_response(
    serve: Callable[[Handler], Awaitable[Server]], client: ProviderClient
) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await read_request(reader)
        if n == 1:
            writer.write(response(b"x" * 100)[:-50])
        else:
            writer.write(b"SMTP ready\r\n\r\n")
        return False

    server = await serve(cut)
    r = await client.request("POST", server.url, headers={}, body=b"{}", timeouts=T)
    with pytest.raises(aiohttp.ClientPayloadError) as info:
        await r.read()
    r.close()
    assert classify(info.value).detail == "the response body was cut short"
    with pytest.raises(BadResponse) as bad:
        await client.request("POST", server.url, headers={}, body=b"{}", timeouts=T)
    assert "not valid HTTP" in classify(bad.value).detail


async def test_connect_failures_name_what_failed(client: ProviderClient) -> None:
    with pytest.raises(ConnectFailure) as info:  # nothing listens on port 9 here
        await client.request(
            "POST", URL("http://127.0.0.1:9/v1/x"), headers={}, body=b"{}", timeouts=T
        )
    f = classify(info.value)
    assert f.failure is Failure.CONNECT
    assert f.detail.startswith("cannot connect (")


async def test_a_header_holding_a_line_break_is_refused_before_anything_is_sent(
    serve: Callable[[Handler], Awaitable[Server]], client: ProviderClient
) -> None:
    box: list[Server] = []
    box.append(await serve(echo(box)))
    with pytest.raises(ValueError, match="line break"):
        await client.request(
            "POST", box[0].url, headers={"x-a": "1\r\nX-Injected: 1"}, body=b"{}", timeouts=T
        )
    assert box[0].connections == 0


async def test_tls_connections_are_verified_recorded_and_kept_per_tls_context(
    client: ProviderClient,
) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    box: list[Server] = []
    box.append(Server(echo(box)))
    box[0].server = await asyncio.start_server(box[0].serve, "127.0.0.1", 0, ssl=server_ctx)
    url = box[0].url.with_scheme("https")
    try:

        def trusting() -> ssl.SSLContext:
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            return ctx

        first, rotated = trusting(), trusting()
        for ctx in (first, first, rotated):
            r = await client.request(
                "POST", url, headers={}, body=b"{}", timeouts=T, ssl_context=ctx
            )
            assert (r.tls_version, bool(r.tls_cipher)) == ("TLSv1.3", True)
            await r.read()
            r.release()
        # one connection per context: a bundle that rotated never reuses the old one's
        assert box[0].connections == 2
        with pytest.raises(ConnectFailure) as info:  # the system roots do not know this CA
            await client.request(
                "POST", url, headers={}, body=b"{}", timeouts=T,
                ssl_context=ssl.create_default_context(),
            )  # fmt: skip
        f = classify(info.value)
        assert f.tls
        assert f.detail.startswith("TLS certificate verification failed")
    finally:
        box[0].server.close()
        await box[0].server.wait_closed()


async def test_environment_proxies_are_never_used(
    serve: Callable[[Handler], Awaitable[Server]],
    client: ProviderClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Provider traffic carries the provider key: it goes to the policy's provider and
    # nowhere else, whatever the pod's environment says.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    box: list[Server] = []
    box.append(await serve(echo(box)))
    r = await client.request("POST", box[0].url, headers={}, body=b"{}", timeouts=T)
    assert r.status == 200
    r.close()
    assert box[0].requests[0][0] == b"POST /v1/chat/completions HTTP/1.1"  # origin-form


async def test_idle_connections_of_a_key_no_longer_used_are_closed_and_dropped(
    serve: Callable[[Handler], Awaitable[Server]],
) -> None:
    # Keep-alive 0: every idle connection is past it at the next release. Requests to a
    # second provider (another key) sweep the first one's idle connection away: a key that
    # nothing asks for any more (a rotated TLS context, a removed provider) holds nothing.
    box: list[Server] = []
    box.append(await serve(echo(box)))
    other: list[Server] = []
    other.append(await serve(echo(other)))
    client = ProviderClient(limit=8, keepalive_seconds=0)
    try:
        r = await client.request("POST", box[0].url, headers={}, body=b"{}", timeouts=T)
        await r.read()
        r.release()
        assert client.idle_connections() == 1
        r = await client.request("POST", other[0].url, headers={}, body=b"{}", timeouts=T)
        await r.read()
        r.release()
        assert client.idle_connections() == 1  # the second provider's, just released
        assert len(client._idle) == 1
    finally:
        await client.close()

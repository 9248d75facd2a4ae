"""Hostile HTTP at the sidecar's port: request smuggling, CRLF and header injection, path
traversal, absolute-form and Host-header tricks. Whatever the request, the sidecar answers it
(or closes the connection) without crashing, and connects to nothing its policy does not name:
a canary listener on 127.0.0.1 that is *not* in the policy must never see a connection, and the
provider stand-in must never see a path or header the client smuggled in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest

from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import Sidecar

QUESTION = "What is the capital of France?"
BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": QUESTION}]}).encode()


class Canary:
    """A TCP listener nobody may connect to."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        async def seen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self._server = await asyncio.start_server(seen, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    c = Canary()
    await c.start()
    yield c
    await c.stop()


async def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, read what comes back until the sidecar closes or goes quiet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks: list[bytes] = []
        with contextlib.suppress(TimeoutError, ConnectionError):
            while chunk := await asyncio.wait_for(reader.read(65536), 3):
                chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def statuses(response: bytes) -> list[int]:
    return [int(line.split()[1]) for line in response.split(b"\r\n") if line.startswith(b"HTTP/1.")]


def post(path: str, *headers: str, body: bytes = BODY, host: str = "127.0.0.1") -> bytes:
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def cases(canary_port: int) -> dict[str, tuple[bytes, set[int]]]:
    """name → (raw request, acceptable statuses; an empty set: the connection may just close)."""
    canary = f"127.0.0.1:{canary_port}"
    smuggled = b"GET /openai/v1/models HTTP/1.1\r\nHost: x\r\n\r\n"
    return {
        "traversal-dotdot": (post("/openai/v1/../../v1/chat/completions"), {400, 404}),
        "traversal-encoded": (post("/openai/v1/%2e%2e/%2e%2e/admin/chat/completions"), {400, 404}),
        "traversal-after-route": (post("/openai/v1/chat/completions/../../models"), {400, 404}),
        "double-slash-host": (post(f"//{canary}/v1/chat/completions"), {400, 403, 404}),
        "azure-deployment-traversal": (
            post("/azure/openai/deployments/..%2f..%2fv1/chat/completions"),
            {400, 403, 404, 502},
        ),
        "azure-deployment-crlf": (
            post("/azure/openai/deployments/gpt%0d%0aX-Injected:%201/chat/completions"),
            {400, 403, 404, 502},
        ),
        "absolute-form-to-canary": (post(f"http://{canary}/openai/v1/chat/completions"), {403}),
        "connect-to-canary": (
            f"CONNECT {canary} HTTP/1.1\r\nHost: {canary}\r\n\r\n".encode(),
            {403, 400},
        ),
        # The Host header is not where the sidecar connects: the policy's provider is.
        "host-header-canary": (post("/openai/v1/chat/completions", host=canary), {200}),
        "cl-te-smuggling": (
            b"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
            {400},
        ),
        "two-content-lengths": (
            post("/openai/v1/chat/completions", "Content-Length: 3"),
            {400},
        ),
        "bare-cr-in-header": (
            post("/openai/v1/chat/completions", "X-Note: a\rX-Injected: 1"),
            {400},
        ),
        "obs-fold-header": (
            post("/openai/v1/chat/completions", "X-Note: a", " X-Injected: 1"),
            {400, 200},
        ),
        "nul-in-path": (post("/openai/v1/chat/completions%00.json"), {400, 404}),
        "huge-header": (post("/openai/v1/chat/completions", "X-Big: " + "a" * 200_000), {400, 431}),
        "model-with-crlf": (
            post(
                "/openai/v1/chat/completions",
                body=b'{"model":"gpt-4o\\r\\nX-Injected: 1","messages":[]}',
            ),
            {400},
        ),
    }


CASE_NAMES = list(cases(1))


@pytest.mark.parametrize("name", CASE_NAMES)
async def test_hostile_requests_never_reach_anything_outside_the_policy(
    sidecar: Sidecar, upstream: ProviderStandIn, canary: Canary, name: str
) -> None:
    data, acceptable = cases(canary.port)[name]
    response = await exchange(sidecar.server.port, data)
    got = statuses(response)
    if acceptable:
        assert got, f"no HTTP response to {name}: {response[:200]!r}"
        assert got[0] in acceptable, response[:400]
    assert len(got) <= 1, "a smuggled second request was answered"
    assert canary.connections == 0
    for seen in upstream.requests:
        assert seen.path == "/v1/chat/completions", seen.path
        assert "x-injected" not in seen.headers
        assert seen.api_key != "", seen
    # Unharmed: a normal request still works afterwards.
    ok = await exchange(sidecar.server.port, post("/openai/v1/chat/completions"))
    assert statuses(ok) == [200], ok[:300]
    assert canary.connections == 0

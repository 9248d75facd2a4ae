"""A local stand-in for the LLM provider APIs: OpenAI, Azure OpenAI and Anthropic.

Real provider APIs are unreachable from the test machine, so this is the one stand-in the project
allows. It speaks the providers' wire formats (JSON bodies, SSE streams, error envelopes, auth
headers) closely enough that the official ``openai`` and ``anthropic`` SDKs work against it
unmodified, and it can misbehave on demand (HTTP errors, slow headers, stalled or truncated
streams, TCP resets) so the sidecar's failover and streaming paths can be exercised for real.

Endpoints::

    POST /v1/chat/completions                       OpenAI chat (JSON or SSE)
    POST /v1/responses                              OpenAI Responses API (JSON or SSE)
    POST /v1/embeddings                             OpenAI embeddings (float or base64)
    POST /v1/moderations                            OpenAI moderation (``moderation_rules``)
    GET  /v1/models, /v1/models/{id}                OpenAI or Anthropic format (by headers)
    POST /v1/messages                               Anthropic messages (JSON or SSE)
    POST /v1/messages/count_tokens                  Anthropic token counting
    POST /openai/deployments/{d}/chat/completions   Azure OpenAI (``api-version`` required)
    POST /openai/deployments/{d}/embeddings         Azure OpenAI (``api-version`` required)
    POST /openai/responses                          Azure OpenAI (``api-version`` required)
    POST /openai/v1/{chat/completions,responses,embeddings}, GET /openai/v1/models
                                                    Azure OpenAI v1 API (no ``api-version``)
    GET|DELETE /v1/responses/{id}, /openai/responses/{id} (``api-version``),
               /openai/v1/responses/{id}            stored Responses API responses

Replies are deterministic: ``"echo: <last user text>"`` unless a scripted reply is set; usage is
counted in whitespace-separated words. Every request is recorded in ``ProviderStandIn.requests``.

Usage::

    async with ProviderStandIn(openai_keys=["sk-real"]) as upstream:
        client = AsyncOpenAI(base_url=upstream.openai_base_url, api_key="sk-real")
        upstream.fail_next(Fault.http(503))
        ...
        assert upstream.requests[-1].api_key == "sk-real"

    with ProviderStandIn.run_in_thread(chunk_delay=0.01) as handle:   # for sync code
        OpenAI(base_url=handle.standin.openai_base_url, api_key="x")

CLI (benchmarks, demo)::

    python -m tests.harness.standin --port 8443 --tls-cert cert.pem --tls-key key.pem
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import fnmatch
import hashlib
import json
import re
import signal
import socket
import ssl
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

from aiohttp import web
from multidict import CIMultiDictProxy

__all__ = [
    "DEFAULT_MODELS",
    "Fault",
    "FaultKind",
    "Operation",
    "Provider",
    "ProviderStandIn",
    "RecordedRequest",
    "Reply",
    "StandInThread",
    "ToolCall",
    "count_tokens",
    "main",
    "split_into_chunks",
]

HOST = "127.0.0.1"

Provider = Literal["openai", "azure", "anthropic"]
Operation = Literal[
    "chat",
    "responses",
    "response",
    "embeddings",
    "models",
    "model",
    "messages",
    "count_tokens",
    "moderations",
    "unknown",
]
FaultKind = Literal[
    "http",
    "slow_headers",
    "stall_stream",
    "truncate_stream",
    "reset",
    "slow_stream",
    "stream_error",
]

DEFAULT_MODELS: tuple[str, ...] = (
    "gpt-4o",
    "gpt-4o-mini",
    "text-embedding-3-small",
    "claude-sonnet-4-5",
    "claude-haiku-4-5",
)

MODERATION_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
_CREATED = 1_700_000_000  # a fixed creation time for listed models
_JSON = "application/json"


# ── faults ──────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Fault:
    """One misbehaviour for one request. Build with the class methods, not the constructor.

    Stream faults count *chunks* as content deltas: ``after_chunks=2`` means the client has
    received the stream preamble (role chunk / ``message_start`` / ``response.created`` …) and
    exactly two text deltas when the fault strikes. When ``after_chunks`` is at least the number
    of deltas, the fault strikes just before the terminal events. On a non-streamed request,
    ``stall_stream`` sends the headers and then stalls before the body, ``truncate_stream``
    sends the headers and half the body and closes, ``stream_error`` answers HTTP 500.
    """

    kind: FaultKind
    status: int = 0
    retry_after: float | None = None
    seconds: float = 0.0
    after_chunks: int = 0
    message: str | None = None
    body: str | None = None

    @classmethod
    def http(
        cls,
        status: int,
        *,
        retry_after: float | None = None,
        message: str | None = None,
        body: str | None = None,
    ) -> Fault:
        """Answer ``status`` with the provider's error envelope (or ``body`` verbatim)."""
        return cls("http", status=status, retry_after=retry_after, message=message, body=body)

    @classmethod
    def rate_limited(cls, retry_after: float = 1.0) -> Fault:
        """HTTP 429 with a ``Retry-After`` header."""
        return cls.http(429, retry_after=retry_after)

    @classmethod
    def slow_headers(cls, seconds: float) -> Fault:
        """Wait ``seconds`` before sending the response status line and headers."""
        return cls("slow_headers", seconds=seconds)

    @classmethod
    def stall_stream(cls, after_chunks: int, seconds: float) -> Fault:
        """Go silent for ``seconds`` after ``after_chunks`` deltas, then finish normally."""
        return cls("stall_stream", after_chunks=after_chunks, seconds=seconds)

    @classmethod
    def truncate_stream(cls, after_chunks: int) -> Fault:
        """Close the connection after ``after_chunks`` deltas, without any terminal event."""
        return cls("truncate_stream", after_chunks=after_chunks)

    @classmethod
    def reset(cls) -> Fault:
        """Abort the TCP connection (RST) without sending any response."""
        return cls("reset")

    @classmethod
    def slow_stream(cls, chunk_delay: float) -> Fault:
        """Sleep ``chunk_delay`` seconds before every delta of this one stream."""
        return cls("slow_stream", seconds=chunk_delay)

    @classmethod
    def stream_error(cls, after_chunks: int = 0, message: str | None = None) -> Fault:
        """Send the provider's in-stream error event after ``after_chunks`` deltas, then end."""
        return cls("stream_error", after_chunks=after_chunks, message=message)

    def __str__(self) -> str:
        if self.kind == "http":
            return f"http {self.status}"
        if self.kind in ("stall_stream", "truncate_stream", "stream_error"):
            return f"{self.kind}(after_chunks={self.after_chunks})"
        if self.kind in ("slow_headers", "slow_stream"):
            return f"{self.kind}({self.seconds}s)"
        return self.kind


FaultSpec = Fault | int
"""A fault, or a bare HTTP status as shorthand for ``Fault.http(status)``."""


def _as_fault(spec: FaultSpec) -> Fault:
    return Fault.http(spec) if isinstance(spec, int) else spec


# ── recorded requests ───────────────────────────────────────────────────────────────────────────


@dataclass
class RecordedRequest:
    """What the stand-in received, before any fault or auth decision."""

    seq: int
    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDictProxy[str]
    raw_body: bytes
    body: Any
    """The parsed JSON body, or ``None`` when the body was empty or not JSON."""
    provider: Provider
    operation: Operation
    tls_version: str | None
    """``"TLSv1.3"`` etc. when served over TLS, else ``None``."""
    received_at: float
    texts: tuple[str, ...] = ()
    """Every prompt text segment found in the body (system, messages, input), in order."""
    fault: Fault | None = None
    status: int | None = None
    """The status the stand-in answered; ``None`` while in flight or after a ``reset``."""

    @property
    def api_key(self) -> str | None:
        """The credential as the provider would read it (``x-api-key``, ``api-key``, Bearer)."""
        for name in ("x-api-key", "api-key"):
            value = self.headers.get(name)
            if value:
                return value
        auth = self.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            return auth[7:].strip()
        return None

    @property
    def model(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("model"), str):
            return str(self.body["model"])
        return None

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True

    @property
    def prompt_text(self) -> str:
        """All prompt text segments joined by newlines (handy for ``in`` assertions)."""
        return "\n".join(self.texts)


Reply = str | Sequence[str] | Callable[[RecordedRequest], str | Sequence[str]]


@dataclass(frozen=True)
class ToolCall:
    """A scripted tool call as the reply (``ProviderStandIn.tool_call``): the model calls
    ``name`` with the JSON ``arguments``, streamed in the given pieces (their concatenation
    must be the whole JSON text). Anthropic's non-streamed ``input`` is the parsed object."""

    name: str
    arguments: Sequence[str]

    @property
    def text(self) -> str:
        return "".join(self.arguments)


"""A scripted reply: a text (split into ``stream_chunks`` pieces), an explicit list of stream
chunks (used verbatim, so tests control chunk boundaries), or a function of the request."""


# ── text helpers ────────────────────────────────────────────────────────────────────────────────


def count_tokens(text: str) -> int:
    """The stand-in's deterministic token count: whitespace-separated words."""
    return len(text.split())


def _word_tokens(text: str) -> list[str]:
    """Words with their trailing whitespace; leading whitespace sticks to the first word."""
    tokens = re.findall(r"\S+\s*", text)
    lead = text[: len(text) - len(text.lstrip())]
    if tokens and lead:
        tokens[0] = lead + tokens[0]
    return tokens


def split_into_chunks(text: str, chunks: int) -> list[str]:
    """Split ``text`` into ``chunks`` pieces (on word boundaries when there are enough words,
    else evenly by characters). ``"".join(result) == text``; an empty text gives no chunks."""
    if not text:
        return []
    if chunks <= 1:
        return [text]
    words = _word_tokens(text)
    units: Sequence[str] = words if len(words) >= chunks else text
    count = min(chunks, len(units))
    size, extra = divmod(len(units), count)
    out: list[str] = []
    start = 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        out.append("".join(units[start:end]))
        start = end
    return out


def _first_words(text: str, limit: int) -> str:
    return "".join(_word_tokens(text)[:limit]).rstrip()


def _content_texts(content: Any) -> list[str]:
    """Text from a message ``content``: a string, or a list of text/input_text/tool parts."""
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    out.append(part["text"])
                elif "content" in part:  # anthropic tool_result
                    out.extend(_content_texts(part["content"]))
    return out


@dataclass(frozen=True)
class _Prompt:
    texts: tuple[str, ...]
    last_user: str


def _chat_prompt(body: Mapping[str, Any]) -> _Prompt:
    texts: list[str] = []
    last_user = ""
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        parts = _content_texts(message.get("content"))
        texts.extend(parts)
        if message.get("role") == "user":
            last_user = "\n".join(parts)
    return _Prompt(tuple(texts), last_user)


def _responses_prompt(body: Mapping[str, Any]) -> _Prompt:
    texts: list[str] = []
    last_user = ""
    if isinstance(body.get("instructions"), str):
        texts.append(body["instructions"])
    items = body.get("input")
    if isinstance(items, str):
        return _Prompt((*texts, items), items)
    for item in items or []:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("output"), str):  # function_call_output
            texts.append(item["output"])
            continue
        parts = _content_texts(item.get("content"))
        texts.extend(parts)
        if item.get("role") == "user":
            last_user = "\n".join(parts)
    return _Prompt(tuple(texts), last_user)


def _anthropic_prompt(body: Mapping[str, Any]) -> _Prompt:
    system = _content_texts(body.get("system"))
    chat = _chat_prompt(body)
    return _Prompt((*system, *chat.texts), chat.last_user)


def _embedding_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            return [" ".join(str(v) for v in value)]  # one pre-tokenised input
        return [v if isinstance(v, str) else " ".join(str(t) for t in v) for v in value]
    return []


def _embedding(text: str, dimensions: int) -> list[float]:
    raw = hashlib.shake_256(text.encode()).digest(2 * dimensions)
    vector = [int.from_bytes(raw[i : i + 2], "big") / 32767.5 - 1.0 for i in range(0, len(raw), 2)]
    norm = sum(v * v for v in vector) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in vector]


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


# ── error envelopes ─────────────────────────────────────────────────────────────────────────────

_OPENAI_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"
_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Bad request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", None, "Not found."),
    408: ("server_error", None, "Request timed out."),
    413: ("invalid_request_error", None, "Request too large."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests."),
    500: ("server_error", None, _OPENAI_SERVER_ERROR),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
    504: ("server_error", None, "Gateway timeout."),
}

_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Bad request."),
    401: ("authentication_error", "invalid x-api-key"),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}


class _HttpError(Exception):
    """Raised inside a handler to answer with the provider's error envelope."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        *,
        code: str | None = None,
        param: str | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message or str(status))
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type


def _error_payload(provider: Provider, err: _HttpError, request_id: str) -> dict[str, Any]:
    if provider == "anthropic":
        a_type, a_message = _ANTHROPIC_ERRORS.get(
            err.status,
            ("api_error", "Internal server error")
            if err.status >= 500
            else ("invalid_request_error", "Bad request."),
        )
        return {
            "type": "error",
            "error": {"type": err.error_type or a_type, "message": err.message or a_message},
            "request_id": request_id,
        }
    o_type, o_code, o_message = _OPENAI_ERRORS.get(
        err.status,
        ("server_error", None, "Server error.")
        if err.status >= 500
        else ("invalid_request_error", None, "Bad request."),
    )
    code = err.code if err.code is not None else o_code
    if provider == "azure":
        code = err.code or str(err.status)
    return {
        "error": {
            "message": err.message or o_message,
            "type": err.error_type or o_type,
            "param": err.param,
            "code": code,
        }
    }


# ── routing ─────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    provider: Provider | None  # None: decided by the request's auth headers
    operation: Operation
    needs_api_version: bool = False


def _route(
    method: str,
    path: str,
    provider: Provider | None,
    operation: Operation,
    *,
    api_version: bool = False,
) -> _Route:
    return _Route(method, re.compile(path + r"/?"), provider, operation, api_version)


_ROUTES: tuple[_Route, ...] = (
    _route("POST", r"/v1/chat/completions", "openai", "chat"),
    _route("POST", r"/v1/responses", "openai", "responses"),
    _route("GET", r"/v1/responses/(?P<response_id>[^/]+)", "openai", "response"),
    _route("DELETE", r"/v1/responses/(?P<response_id>[^/]+)", "openai", "response"),
    _route("POST", r"/v1/embeddings", "openai", "embeddings"),
    _route("POST", r"/v1/moderations", "openai", "moderations"),
    _route("GET", r"/v1/models", None, "models"),
    _route("GET", r"/v1/models/(?P<model>[^/]+)", None, "model"),
    _route("POST", r"/v1/messages", "anthropic", "messages"),
    _route("POST", r"/v1/messages/count_tokens", "anthropic", "count_tokens"),
    _route(
        "POST",
        r"/openai/deployments/(?P<deployment>[^/]+)/chat/completions",
        "azure",
        "chat",
        api_version=True,
    ),
    _route(
        "POST",
        r"/openai/deployments/(?P<deployment>[^/]+)/embeddings",
        "azure",
        "embeddings",
        api_version=True,
    ),
    _route("POST", r"/openai/responses", "azure", "responses", api_version=True),
    _route(
        "GET", r"/openai/responses/(?P<response_id>[^/]+)", "azure", "response", api_version=True
    ),
    _route(
        "DELETE",
        r"/openai/responses/(?P<response_id>[^/]+)",
        "azure",
        "response",
        api_version=True,
    ),
    _route("GET", r"/openai/v1/responses/(?P<response_id>[^/]+)", "azure", "response"),
    _route("DELETE", r"/openai/v1/responses/(?P<response_id>[^/]+)", "azure", "response"),
    _route("GET", r"/openai/models", "azure", "models", api_version=True),
    _route("POST", r"/openai/v1/chat/completions", "azure", "chat"),
    _route("POST", r"/openai/v1/responses", "azure", "responses"),
    _route("POST", r"/openai/v1/embeddings", "azure", "embeddings"),
    _route("GET", r"/openai/v1/models", "azure", "models"),
)


def _looks_anthropic(request: web.BaseRequest) -> bool:
    return "anthropic-version" in request.headers or "x-api-key" in request.headers


def _guess_provider(request: web.BaseRequest) -> Provider:
    if request.path.startswith("/openai"):
        return "azure"
    if request.path.startswith("/v1/messages") or _looks_anthropic(request):
        return "anthropic"
    return "openai"


# ── streams ─────────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class _Event:
    data: bytes
    delta: bool = False  # a content delta: the unit that `after_chunks` counts


def _sse(payload: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return head.encode() + b"data: " + _json_bytes(payload) + b"\n\n"


@dataclass
class _Stream:
    events: list[_Event]
    error_event: Callable[[int], bytes]
    """The provider's in-stream error (for ``Fault.stream_error``), given its event index."""


@dataclass
class _Exchange:
    """Per-request state shared by the handlers."""

    request: web.BaseRequest
    record: RecordedRequest
    provider: Provider
    route: _Route | None
    match: re.Match[str] | None
    fault: Fault | None
    request_id: str

    @property
    def body(self) -> dict[str, Any]:
        return self.record.body if isinstance(self.record.body, dict) else {}


# ── the server ──────────────────────────────────────────────────────────────────────────────────


class ProviderStandIn:
    """An aiohttp server on ``127.0.0.1`` speaking the OpenAI, Azure OpenAI and Anthropic APIs.

    Configuration attributes may be changed while it runs (also from another thread):
    ``reply``, ``stream_chunks``, ``chunk_delay``, ``served_model``, ``system_fingerprint``,
    ``models``, ``reject_unknown_models``, ``embedding_dimensions`` and ``api_keys``
    (per provider: ``None`` accepts any non-empty credential, a set demands one of its keys).
    """

    def __init__(
        self,
        *,
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        tls_maximum_version: ssl.TLSVersion | None = None,
        openai_keys: Iterable[str] | None = None,
        azure_keys: Iterable[str] | None = None,
        anthropic_keys: Iterable[str] | None = None,
        reply: Reply | None = None,
        stream_chunks: int = 4,
        chunk_delay: float = 0.0,
        served_model: str | None = None,
        system_fingerprint: str = "fp_standin",
        models: Sequence[str] = DEFAULT_MODELS,
        reject_unknown_models: bool = False,
        embedding_dimensions: int = 8,
    ) -> None:
        """``tls_maximum_version`` is applied to ``ssl_context`` (e.g. ``TLSv1_2`` to check that
        a client refuses the downgrade)."""
        if tls_maximum_version is not None:
            if ssl_context is None:
                raise ValueError("tls_maximum_version needs an ssl_context")
            ssl_context.maximum_version = tls_maximum_version
        self._port = port
        self._ssl_context = ssl_context
        self.api_keys: dict[Provider, frozenset[str] | None] = {
            "openai": None if openai_keys is None else frozenset(openai_keys),
            "azure": None if azure_keys is None else frozenset(azure_keys),
            "anthropic": None if anthropic_keys is None else frozenset(anthropic_keys),
        }
        self.reply: Reply | None = reply
        self.tool_call: ToolCall | None = None
        self.moderation_rules: dict[str, str] = {}
        """``/v1/moderations``: an input containing a key (case-insensitive) is flagged in the
        category it maps to (e.g. ``{"stab him": "violence/graphic"}``); nothing else is."""
        """When set, replies are this tool call instead of text (chat, responses, messages)."""
        self.stream_chunks = stream_chunks
        self.chunk_delay = chunk_delay
        self.served_model = served_model
        self.system_fingerprint = system_fingerprint
        self.models: list[str] = list(models)
        self.reject_unknown_models = reject_unknown_models
        self.embedding_dimensions = embedding_dimensions
        self.requests: list[RecordedRequest] = []
        self.stored_responses: dict[str, dict[str, Any]] = {}
        """Responses API responses created with ``store`` (not false), by id."""
        self._initial_config = self._config()

        self._lock = threading.Lock()
        self._queue: deque[tuple[str | None, Fault | None]] = deque()
        self._always: list[tuple[str | None, Fault]] = []
        self._seq = 0
        self._runner: web.AppRunner | None = None
        self._inflight: set[asyncio.Task[Any]] = set()

    # lifecycle ─────────────────────────────────────────────────────────────────────────────────

    async def start(self) -> None:
        if self._runner is not None:
            raise RuntimeError("already started")
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((HOST, self._port))
            self._port = sock.getsockname()[1]
            site = web.SockSite(runner, sock, ssl_context=self._ssl_context, backlog=1024)
            await site.start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for task in list(self._inflight):
            task.cancel()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start_in_thread(self) -> StandInThread:
        """Serve from a background thread with its own event loop (for sync code, benchmarks)."""
        return StandInThread(self)

    @classmethod
    def run_in_thread(cls, **options: Any) -> StandInThread:
        """``ProviderStandIn(**options).start_in_thread()``."""
        return cls(**options).start_in_thread()

    # addresses ─────────────────────────────────────────────────────────────────────────────────

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """``http(s)://127.0.0.1:PORT`` (no trailing slash)."""
        if self._runner is None:
            raise RuntimeError("the stand-in is not running")
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{HOST}:{self._port}"

    @property
    def openai_base_url(self) -> str:
        """``base_url`` for ``openai.OpenAI``."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """``base_url`` for ``anthropic.Anthropic``."""
        return self.url

    @property
    def azure_endpoint(self) -> str:
        """``azure_endpoint`` for ``openai.AzureOpenAI``."""
        return self.url

    # faults ────────────────────────────────────────────────────────────────────────────────────

    def fail_next(self, fault: FaultSpec, times: int = 1, *, path: str | None = None) -> None:
        """Apply ``fault`` to the next ``times`` requests (whose path matches ``path``, a
        ``fnmatch`` pattern such as ``"/v1/messages"`` or ``"/openai/deployments/*"``)."""
        self.enqueue(*([_as_fault(fault)] * times), path=path)

    def enqueue(self, *behaviours: FaultSpec | None, path: str | None = None) -> None:
        """Script the next requests in order; ``None`` serves one request normally. Scripts for
        different paths share one queue but each request only consumes an entry it matches."""
        with self._lock:
            self._queue.extend((path, None if b is None else _as_fault(b)) for b in behaviours)

    def fail_always(self, fault: FaultSpec, *, path: str | None = None) -> None:
        """Apply ``fault`` to every matching request not scripted otherwise, until cleared."""
        with self._lock:
            self._always.append((path, _as_fault(fault)))

    def clear_faults(self) -> None:
        with self._lock:
            self._queue.clear()
            self._always.clear()

    @property
    def pending_faults(self) -> int:
        """Scripted behaviours not consumed yet."""
        with self._lock:
            return len(self._queue)

    def clear_requests(self) -> None:
        self.requests.clear()

    def clear(self) -> None:
        """Forget recorded requests and faults and restore the constructor's configuration
        (for a stand-in shared between tests)."""
        self.clear_faults()
        self.clear_requests()
        self.stored_responses.clear()
        for name, value in self._initial_config.items():
            setattr(self, name, copy.copy(value))

    def _config(self) -> dict[str, Any]:
        return {
            "api_keys": dict(self.api_keys),
            "reply": self.reply,
            "tool_call": self.tool_call,
            "moderation_rules": dict(self.moderation_rules),
            "stream_chunks": self.stream_chunks,
            "chunk_delay": self.chunk_delay,
            "served_model": self.served_model,
            "system_fingerprint": self.system_fingerprint,
            "models": list(self.models),
            "reject_unknown_models": self.reject_unknown_models,
            "embedding_dimensions": self.embedding_dimensions,
        }

    def requests_to(self, path: str) -> list[RecordedRequest]:
        """Recorded requests whose path matches the ``fnmatch`` pattern ``path``."""
        return [r for r in self.requests if fnmatch.fnmatchcase(r.path, path)]

    @property
    def last_request(self) -> RecordedRequest:
        if not self.requests:
            raise LookupError("the stand-in has received no request")
        return self.requests[-1]

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for i, (pattern, behaviour) in enumerate(self._queue):
                if pattern is None or fnmatch.fnmatchcase(path, pattern):
                    del self._queue[i]
                    return behaviour
            for pattern, fault in self._always:
                if pattern is None or fnmatch.fnmatchcase(path, pattern):
                    return fault
        return None

    # request handling ──────────────────────────────────────────────────────────────────────────

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            return await self._serve(request)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        with self._lock:
            self._seq += 1
            seq = self._seq
        route, match = self._match(request)
        provider = route.provider if route and route.provider else _guess_provider(request)
        body: Any = None
        if raw:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        record = RecordedRequest(
            seq=seq,
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=request.headers,
            raw_body=raw,
            body=body,
            provider=provider,
            operation=route.operation if route else "unknown",
            tls_version=ssl_object.version() if ssl_object is not None else None,
            received_at=time.time(),
            texts=self._prompt(route, body).texts,
        )
        self.requests.append(record)
        record.fault = fault = self._take_fault(request.path)
        ex = _Exchange(request, record, provider, route, match, fault, f"req_standin{seq:06d}")

        if fault is not None and fault.kind == "reset":
            self._abort(request)
            return web.Response()
        if fault is not None and fault.kind == "slow_headers":
            await asyncio.sleep(fault.seconds)
        try:
            if fault is not None and fault.kind == "http":
                if fault.body is not None:
                    return self._finish(ex, self._raw_error(ex, fault))
                raise _HttpError(fault.status, fault.message)
            if fault is not None and fault.kind == "stream_error" and not record.stream:
                raise _HttpError(500, fault.message)
            result = await self._dispatch(ex, raw)
        except _HttpError as err:
            return self._finish(ex, self._error(ex, err, retry_after=_retry_after(fault)))
        if isinstance(result, _Stream):
            return await self._send_stream(ex, result)
        return await self._send_json(ex, result)

    def _match(self, request: web.BaseRequest) -> tuple[_Route | None, re.Match[str] | None]:
        path_hit: tuple[_Route | None, re.Match[str] | None] = (None, None)
        for route in _ROUTES:
            m = route.pattern.fullmatch(request.path)
            if m is None:
                continue
            if route.method == request.method:
                provider = route.provider
                if provider is None:
                    provider = "anthropic" if _looks_anthropic(request) else "openai"
                return _Route(
                    route.method, route.pattern, provider, route.operation, route.needs_api_version
                ), m
            path_hit = (None, m)
        return path_hit

    @staticmethod
    def _prompt(route: _Route | None, body: Any) -> _Prompt:
        if route is None or not isinstance(body, dict):
            return _Prompt((), "")
        if route.operation == "chat":
            return _chat_prompt(body)
        if route.operation == "responses":
            return _responses_prompt(body)
        if route.operation in ("messages", "count_tokens"):
            return _anthropic_prompt(body)
        if route.operation in ("embeddings", "moderations"):
            inputs = _embedding_inputs(body.get("input"))
            return _Prompt(tuple(inputs), inputs[-1] if inputs else "")
        return _Prompt((), "")

    async def _dispatch(self, ex: _Exchange, raw: bytes) -> dict[str, Any] | _Stream:
        request, route = ex.request, ex.route
        if route is None:
            if ex.match is not None:
                raise _HttpError(405, f"Method {request.method} not allowed for {request.path}.")
            if ex.provider == "azure":
                raise _HttpError(404, "Resource not found")
            raise _HttpError(
                404,
                "Not Found"
                if ex.provider == "anthropic"
                else f"Invalid URL ({request.method} {request.path})",
            )
        self._authenticate(ex)
        if route.needs_api_version and not request.query.get("api-version"):
            raise _HttpError(404, "Resource not found", code="404")
        if ex.provider == "anthropic" and not request.headers.get("anthropic-version"):
            raise _HttpError(400, "anthropic-version: header is required")
        if request.method == "POST" and not isinstance(ex.record.body, dict):
            raise _HttpError(
                400,
                "There was an error parsing the body: invalid JSON"
                if ex.provider == "anthropic"
                else "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON.)",
            )
        operation = route.operation
        if operation == "models":
            return self._list_models(ex)
        if operation == "model":
            return self._get_model(ex)
        if operation == "embeddings":
            return self._embeddings(ex)
        if operation == "moderations":
            return self._moderations(ex)
        if operation == "count_tokens":
            self._require(ex, "model", "messages")
            return {"input_tokens": sum(count_tokens(t) for t in ex.record.texts)}
        if operation == "chat":
            return self._chat(ex)
        if operation == "responses":
            return self._responses(ex)
        if operation == "response":
            return self._stored_response(ex)
        return self._messages(ex)

    def _stored_response(self, ex: _Exchange) -> dict[str, Any]:
        rid = ex.match.group("response_id") if ex.match else ""
        found = self.stored_responses.get(rid)
        if found is None:
            raise _HttpError(404, f"Response with id '{rid}' not found.")
        if ex.request.method == "DELETE":
            del self.stored_responses[rid]
            return {"id": rid, "object": "response", "deleted": True}
        return found

    # auth and validation ───────────────────────────────────────────────────────────────────────

    def _authenticate(self, ex: _Exchange) -> None:
        headers = ex.request.headers
        if ex.provider == "anthropic":
            key = headers.get("x-api-key") or _bearer(headers.get("authorization"))
            missing = "x-api-key header is required"
            wrong = "invalid x-api-key"
        elif ex.provider == "azure":
            key = headers.get("api-key") or _bearer(headers.get("authorization"))
            missing = wrong = (
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
                "to provide a valid key for an active subscription and use a correct regional "
                "API endpoint for your resource."
            )
        else:
            key = _bearer(headers.get("authorization"))
            missing = (
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                "or as the password field (with blank username) if you're accessing the API "
                "from your browser and are prompted for a username and password. You can "
                "obtain an API key from https://platform.openai.com/account/api-keys."
            )
            wrong = (
                "Incorrect API key provided. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
        if not key:
            raise _HttpError(401, missing, code=None if ex.provider == "openai" else "401")
        accepted = self.api_keys.get(ex.provider)
        if accepted is not None and key not in accepted:
            code = "invalid_api_key" if ex.provider == "openai" else None
            raise _HttpError(401, wrong, code=code)

    def _require(self, ex: _Exchange, *names: str) -> None:
        for name in names:
            if ex.body.get(name) is None:
                if ex.provider == "anthropic":
                    raise _HttpError(400, f"{name}: Field required")
                if name == "model":
                    raise _HttpError(400, "you must provide a model parameter")
                raise _HttpError(
                    400,
                    f"Missing required parameter: '{name}'.",
                    param=name,
                    code="missing_required_parameter",
                )

    def _check_model(self, ex: _Exchange, model: str) -> None:
        if not self.reject_unknown_models or model in self.models:
            return
        if ex.provider == "anthropic":
            raise _HttpError(404, f"model: {model}")
        if ex.provider == "azure":
            raise _HttpError(
                404,
                "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
                code="DeploymentNotFound",
            )
        raise _HttpError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )

    def _requested_model(self, ex: _Exchange) -> str:
        deployment = ex.match.groupdict().get("deployment") if ex.match else None
        model = ex.body.get("model")
        if deployment is not None:  # Azure: the deployment names the model
            self._check_model(ex, deployment)
            return str(model) if isinstance(model, str) and model else deployment
        self._require(ex, "model")
        if not isinstance(model, str):
            raise _HttpError(400, "model: Input should be a valid string", param="model")
        self._check_model(ex, model)
        return model

    def _served(self, requested: str) -> str:
        return self.served_model or requested

    # replies ───────────────────────────────────────────────────────────────────────────────────

    def _reply_chunks(self, ex: _Exchange, last_user: str, limit: Any) -> tuple[list[str], bool]:
        """The reply as stream chunks, and whether it was cut at the token limit."""
        reply = self.reply
        chunks: list[str]
        if callable(reply):
            reply = reply(ex.record)
        if reply is None:
            chunks = split_into_chunks(f"echo: {last_user}", self.stream_chunks)
        elif isinstance(reply, str):
            chunks = split_into_chunks(reply, self.stream_chunks)
        else:
            chunks = [c for c in reply if c]
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
            text = "".join(chunks)
            if count_tokens(text) > limit:
                return split_into_chunks(_first_words(text, limit), self.stream_chunks), True
        return chunks, False

    # OpenAI chat completions ───────────────────────────────────────────────────────────────────

    def _chat(self, ex: _Exchange) -> dict[str, Any] | _Stream:
        requested = self._requested_model(ex)
        self._require(ex, "messages")
        body = ex.body
        prompt = _chat_prompt(body)
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        chunks, cut = self._reply_chunks(ex, prompt.last_user, limit)
        text = "".join(chunks)
        finish = "length" if cut else "stop"
        tool = self.tool_call
        call_id = f"call_standin{ex.record.seq:06d}"
        if tool is not None:
            chunks, text, finish = list(tool.arguments), "", "tool_calls"
        prompt_tokens = sum(count_tokens(t) for t in prompt.texts)
        usage = _openai_usage(prompt_tokens, count_tokens(text))
        base = {
            "id": f"chatcmpl-standin{ex.record.seq:06d}",
            "created": int(time.time()),
            "model": self._served(requested),
            "system_fingerprint": self.system_fingerprint,
            "service_tier": "default",
        }
        azure = ex.provider == "azure"
        if not ex.record.stream:
            n = body.get("n")
            choices = n if isinstance(n, int) and n > 1 else 1
            choice_extra = {"content_filter_results": _AZURE_FILTERS} if azure else {}
            payload: dict[str, Any] = {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": i,
                        "message": {
                            "role": "assistant",
                            "content": None if tool else text,
                            "refusal": None,
                            "annotations": [],
                            **(
                                {
                                    "tool_calls": [
                                        {
                                            "id": call_id,
                                            "type": "function",
                                            "function": {"name": tool.name, "arguments": tool.text},
                                        }
                                    ]
                                }
                                if tool
                                else {}
                            ),
                        },
                        "logprobs": None,
                        "finish_reason": finish,
                        **choice_extra,
                    }
                    for i in range(choices)
                ],
                "usage": usage,
            }
            if azure:
                payload["prompt_filter_results"] = _AZURE_PROMPT_FILTERS
            return payload

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        extra = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return _sse({**base, "object": "chat.completion.chunk", "choices": [choice], **extra})

        events: list[_Event] = []
        if azure:  # Azure sends its prompt filter results first, with no choices
            events.append(
                _Event(
                    _sse(
                        {
                            "id": "",
                            "object": "",
                            "created": 0,
                            "model": "",
                            "choices": [],
                            "prompt_filter_results": _AZURE_PROMPT_FILTERS,
                        }
                    )
                )
            )
        if tool is not None:
            head = {"index": 0, "id": call_id, "type": "function"}
            first = {**head, "function": {"name": tool.name, "arguments": ""}}
            events.append(
                _Event(chunk({"role": "assistant", "content": None, "tool_calls": [first]}))
            )
            events.extend(
                _Event(
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    delta=True,
                )
                for piece in chunks
            )
        else:
            events.append(_Event(chunk({"role": "assistant", "content": "", "refusal": None})))
            events.extend(_Event(chunk({"content": piece}), delta=True) for piece in chunks)
        events.append(_Event(chunk({}, finish)))
        if include_usage:
            events.append(
                _Event(
                    _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
                )
            )
        events.append(_Event(b"data: [DONE]\n\n"))
        error = {
            "error": {
                "message": _OPENAI_SERVER_ERROR,
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
        return _Stream(events, lambda _: _sse(error))

    # OpenAI Responses API ──────────────────────────────────────────────────────────────────────

    def _responses(self, ex: _Exchange) -> dict[str, Any] | _Stream:
        requested = self._requested_model(ex)
        body = ex.body
        prompt = _responses_prompt(body)
        limit = body.get("max_output_tokens")
        chunks, cut = self._reply_chunks(ex, prompt.last_user, limit)
        text = "".join(chunks)
        seq = ex.record.seq
        message_id = f"msg_standin{seq:06d}"
        created = int(time.time())
        input_tokens = sum(count_tokens(t) for t in prompt.texts)
        output_tokens = count_tokens(text)

        def response(status: str, output: list[dict[str, Any]], usage: bool) -> dict[str, Any]:
            return {
                "id": f"resp_standin{seq:06d}",
                "object": "response",
                "created_at": created,
                "status": status,
                "background": False,
                "error": None,
                "incomplete_details": {"reason": "max_output_tokens"}
                if cut and status == "incomplete"
                else None,
                "instructions": body.get("instructions"),
                "max_output_tokens": limit,
                "model": self._served(requested),
                "output": output,
                "parallel_tool_calls": True,
                "previous_response_id": body.get("previous_response_id"),
                "reasoning": {"effort": None, "summary": None},
                "service_tier": "default",
                "store": body.get("store", True),
                "temperature": body.get("temperature", 1.0),
                "text": {"format": {"type": "text"}},
                "tool_choice": body.get("tool_choice", "auto"),
                "tools": body.get("tools", []),
                "top_p": body.get("top_p", 1.0),
                "truncation": "disabled",
                "usage": {
                    "input_tokens": input_tokens,
                    "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                    "output_tokens": output_tokens,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": input_tokens + output_tokens,
                }
                if usage
                else None,
                "user": None,
                "metadata": body.get("metadata") or {},
            }

        final_status = "incomplete" if cut else "completed"
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        item: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "status": final_status,
            "role": "assistant",
            "content": [part],
        }
        tool = self.tool_call
        if tool is not None:
            item = {
                "id": f"fc_standin{seq:06d}",
                "type": "function_call",
                "status": "completed",
                "call_id": f"call_standin{seq:06d}",
                "name": tool.name,
                "arguments": tool.text,
            }
        final = response(final_status, [item], usage=True)
        if body.get("store") is not False:
            self.stored_responses[final["id"]] = final
        if not ex.record.stream:
            return final

        counter = iter(range(1_000_000))

        def event(kind: str, **fields: Any) -> bytes:
            return _sse({"type": kind, "sequence_number": next(counter), **fields}, event=kind)

        if tool is not None:
            at = {"item_id": item["id"], "output_index": 0}
            return _Stream(
                [
                    _Event(event("response.created", response=response("in_progress", [], False))),
                    _Event(
                        event(
                            "response.output_item.added",
                            output_index=0,
                            item={**item, "status": "in_progress", "arguments": ""},
                        )
                    ),
                    *(
                        _Event(event("response.function_call_arguments.delta", **at, delta=p), True)
                        for p in tool.arguments
                    ),
                    _Event(
                        event("response.function_call_arguments.done", **at, arguments=tool.text)
                    ),
                    _Event(event("response.output_item.done", output_index=0, item=item)),
                    _Event(event("response.completed", response=final)),
                ],
                lambda index: _sse(
                    {
                        "type": "error",
                        "code": "server_error",
                        "message": _OPENAI_SERVER_ERROR,
                        "param": None,
                        "sequence_number": index,
                    },
                    event="error",
                ),
            )
        where = {"item_id": message_id, "output_index": 0, "content_index": 0}
        events = [
            _Event(event("response.created", response=response("in_progress", [], False))),
            _Event(event("response.in_progress", response=response("in_progress", [], False))),
            _Event(
                event(
                    "response.output_item.added",
                    output_index=0,
                    item={**item, "status": "in_progress", "content": []},
                )
            ),
            _Event(event("response.content_part.added", **where, part={**part, "text": ""})),
        ]
        events.extend(
            _Event(event("response.output_text.delta", **where, delta=piece, logprobs=[]), True)
            for piece in chunks
        )
        events += [
            _Event(event("response.output_text.done", **where, text=text, logprobs=[])),
            _Event(event("response.content_part.done", **where, part=part)),
            _Event(event("response.output_item.done", output_index=0, item=item)),
            _Event(
                event(
                    f"response.{final_status}",
                    response=response(final_status, [item], usage=True),
                )
            ),
        ]
        error = {
            "type": "error",
            "code": "server_error",
            "message": _OPENAI_SERVER_ERROR,
            "param": None,
        }
        return _Stream(
            events, lambda index: _sse({**error, "sequence_number": index}, event="error")
        )

    # OpenAI moderation ──────────────────────────────────────────────────────────────────────

    def _moderations(self, ex: _Exchange) -> dict[str, Any]:
        self._require(ex, "input")
        model = ex.body.get("model") or "omni-moderation-latest"
        results = []
        for text in _embedding_inputs(ex.body.get("input")):
            hits = {
                category
                for needle, category in self.moderation_rules.items()
                if needle.lower() in text.lower()
            }
            flagged = hits | {c.split("/", 1)[0] for c in hits}
            results.append(
                {
                    "flagged": bool(hits),
                    "categories": {c: c in flagged for c in MODERATION_CATEGORIES},
                    "category_scores": {
                        c: 0.97 if c in flagged else 0.001 for c in MODERATION_CATEGORIES
                    },
                    "category_applied_input_types": {c: ["text"] for c in MODERATION_CATEGORIES},
                }
            )
        return {"id": f"modr-standin{ex.record.seq:06d}", "model": model, "results": results}

    # OpenAI embeddings and models ──────────────────────────────────────────────────────────────

    def _embeddings(self, ex: _Exchange) -> dict[str, Any]:
        requested = self._requested_model(ex)
        self._require(ex, "input")
        body = ex.body
        inputs = _embedding_inputs(body.get("input"))
        if not inputs:
            raise _HttpError(400, "'input' : input must be a string or an array", param="input")
        dimensions = body.get("dimensions")
        if not isinstance(dimensions, int) or dimensions <= 0:
            dimensions = self.embedding_dimensions
        as_base64 = body.get("encoding_format") == "base64"
        data: list[dict[str, Any]] = []
        for index, text in enumerate(inputs):
            vector = _embedding(text, dimensions)
            encoded: list[float] | str = vector
            if as_base64:
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(count_tokens(t) for t in inputs)
        return {
            "object": "list",
            "data": data,
            "model": self._served(requested),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _model_entry(self, ex: _Exchange, model: str) -> dict[str, Any]:
        if ex.provider == "anthropic":
            return {
                "type": "model",
                "id": model,
                "display_name": model,
                "created_at": "2025-01-01T00:00:00Z",
            }
        owner = "anthropic" if model.startswith("claude") else "openai"
        return {"id": model, "object": "model", "created": _CREATED, "owned_by": owner}

    def _list_models(self, ex: _Exchange) -> dict[str, Any]:
        entries = [self._model_entry(ex, m) for m in self.models]
        if ex.provider == "anthropic":
            return {
                "data": entries,
                "has_more": False,
                "first_id": self.models[0] if self.models else None,
                "last_id": self.models[-1] if self.models else None,
            }
        return {"object": "list", "data": entries}

    def _get_model(self, ex: _Exchange) -> dict[str, Any]:
        model = ex.match.group("model") if ex.match else ""
        if model not in self.models:
            if ex.provider == "anthropic":
                raise _HttpError(404, f"model: {model}")
            raise _HttpError(
                404,
                f"The model '{model}' does not exist",
                param="model",
                code="model_not_found",
            )
        return self._model_entry(ex, model)

    # Anthropic messages ────────────────────────────────────────────────────────────────────────

    def _messages(self, ex: _Exchange) -> dict[str, Any] | _Stream:
        requested = self._requested_model(ex)
        self._require(ex, "max_tokens", "messages")
        body = ex.body
        prompt = _anthropic_prompt(body)
        chunks, cut = self._reply_chunks(ex, prompt.last_user, body.get("max_tokens"))
        text = "".join(chunks)
        stop_reason = "max_tokens" if cut else "end_turn"
        input_tokens = sum(count_tokens(t) for t in prompt.texts)
        output_tokens = count_tokens(text)
        tool = self.tool_call
        block: dict[str, Any] = {"type": "text", "text": text}
        if tool is not None:
            chunks, stop_reason = list(tool.arguments), "tool_use"
            block = {
                "type": "tool_use",
                "id": f"toolu_standin{ex.record.seq:06d}",
                "name": tool.name,
                "input": json.loads(tool.text),
            }
        message: dict[str, Any] = {
            "id": f"msg_standin{ex.record.seq:06d}",
            "type": "message",
            "role": "assistant",
            "model": self._served(requested),
            "content": [block],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": output_tokens,
                "service_tier": "standard",
            },
        }
        if not ex.record.stream:
            return message

        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {**message["usage"], "output_tokens": 1},
        }
        events = [
            _Event(_sse({"type": "message_start", "message": start}, "message_start")),
            _Event(
                _sse(
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {**block, "input": {}}
                        if tool
                        else {"type": "text", "text": ""},
                    },
                    "content_block_start",
                )
            ),
            _Event(_sse({"type": "ping"}, "ping")),
        ]
        events.extend(
            _Event(
                _sse(
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": piece}
                        if tool
                        else {"type": "text_delta", "text": piece},
                    },
                    "content_block_delta",
                ),
                delta=True,
            )
            for piece in chunks
        )
        events += [
            _Event(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop")),
            _Event(
                _sse(
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                        "usage": {
                            "input_tokens": input_tokens,
                            "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 0,
                            "output_tokens": output_tokens,
                        },
                    },
                    "message_delta",
                )
            ),
            _Event(_sse({"type": "message_stop"}, "message_stop")),
        ]
        error = {
            "type": "error",
            "error": {"type": "overloaded_error", "message": "Overloaded"},
            "request_id": ex.request_id,
        }
        return _Stream(events, lambda _: _sse(error, "error"))

    # responses on the wire ─────────────────────────────────────────────────────────────────────

    def _headers(self, ex: _Exchange) -> dict[str, str]:
        if ex.provider == "anthropic":
            return {"request-id": ex.request_id}
        headers = {"x-request-id": ex.request_id, "openai-processing-ms": "1"}
        if ex.provider == "azure":
            headers["apim-request-id"] = ex.request_id
        return headers

    def _finish(self, ex: _Exchange, response: web.StreamResponse) -> web.StreamResponse:
        ex.record.status = response.status
        return response

    def _error(self, ex: _Exchange, err: _HttpError, *, retry_after: str | None) -> web.Response:
        headers = self._headers(ex)
        if retry_after is not None:
            headers["retry-after"] = retry_after
        if (ex.provider == "anthropic" and err.status >= 500) or err.status == 429:
            headers["x-should-retry"] = "true"
        payload = _error_payload(ex.provider, err, ex.request_id)
        return web.Response(
            status=err.status, body=_json_bytes(payload), content_type=_JSON, headers=headers
        )

    def _raw_error(self, ex: _Exchange, fault: Fault) -> web.Response:
        headers = self._headers(ex)
        retry_after = _retry_after(fault)
        if retry_after is not None:
            headers["retry-after"] = retry_after
        body = fault.body or ""
        content_type = _JSON if body.lstrip().startswith("{") else "text/html"
        return web.Response(
            status=fault.status, text=body, content_type=content_type, headers=headers
        )

    async def _send_json(self, ex: _Exchange, payload: dict[str, Any]) -> web.StreamResponse:
        data = _json_bytes(payload)
        fault = ex.fault
        if fault is None or fault.kind not in ("stall_stream", "truncate_stream"):
            return self._finish(
                ex, web.Response(body=data, content_type=_JSON, headers=self._headers(ex))
            )
        response = web.StreamResponse(status=200, headers=self._headers(ex))
        response.content_type = _JSON
        response.content_length = len(data)
        ex.record.status = 200
        try:
            await response.prepare(ex.request)
            if fault.kind == "truncate_stream":
                await response.write(data[: len(data) // 2])
                self._close(ex.request)
                return response
            await asyncio.sleep(fault.seconds)
            await response.write(data)
        except ConnectionError:
            pass
        return response

    async def _send_stream(self, ex: _Exchange, stream: _Stream) -> web.StreamResponse:
        fault = ex.fault
        delay = self.chunk_delay
        if fault is not None and fault.kind == "slow_stream":
            delay = fault.seconds
        trigger = -1
        if fault is not None and fault.kind in ("stall_stream", "truncate_stream", "stream_error"):
            trigger = _trigger_index(stream.events, fault.after_chunks)
        headers = {**self._headers(ex), "Cache-Control": "no-cache"}
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = "text/event-stream"
        response.charset = "utf-8"
        ex.record.status = 200
        try:
            await response.prepare(ex.request)
            for index, event in enumerate(stream.events):
                if index == trigger and fault is not None:
                    if fault.kind == "truncate_stream":
                        self._close(ex.request)
                        return response
                    if fault.kind == "stream_error":
                        await response.write(stream.error_event(index))
                        await response.write_eof()
                        return response
                    await asyncio.sleep(fault.seconds)
                if event.delta and delay > 0:
                    await asyncio.sleep(delay)
                await response.write(event.data)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away; nothing left to tell it
        return response

    @staticmethod
    def _close(request: web.BaseRequest) -> None:
        """Close the connection gracefully (FIN) with no terminal chunk or event."""
        if request.transport is not None:
            request.transport.close()

    @staticmethod
    def _abort(request: web.BaseRequest) -> None:
        """Reset the connection: SO_LINGER 0 makes close() send RST instead of FIN."""
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


def _trigger_index(events: Sequence[_Event], after_chunks: int) -> int:
    """Index of the event before which a fault with ``after_chunks`` strikes."""
    seen = 0
    last_delta = -1
    for index, event in enumerate(events):
        if event.delta:
            if seen == after_chunks:
                return index
            seen += 1
            last_delta = index
    if last_delta >= 0:
        return last_delta + 1
    # no deltas at all: strike after the preamble (the first event)
    return min(1, len(events))


def _retry_after(fault: Fault | None) -> str | None:
    if fault is None or fault.retry_after is None:
        return None
    value = fault.retry_after
    return str(int(value)) if float(value).is_integer() else str(value)


def _bearer(value: str | None) -> str | None:
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip() or None
    return None


def _openai_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


_AZURE_FILTERS: dict[str, Any] = {
    name: {"filtered": False, "severity": "safe"}
    for name in ("hate", "self_harm", "sexual", "violence")
}
_AZURE_PROMPT_FILTERS: list[dict[str, Any]] = [
    {"prompt_index": 0, "content_filter_results": _AZURE_FILTERS}
]


# ── background thread ───────────────────────────────────────────────────────────────────────────


class StandInThread:
    """A :class:`ProviderStandIn` served from a daemon thread with its own event loop.

    Faults and configuration may be set from the calling thread through :attr:`standin`.
    """

    def __init__(self, standin: ProviderStandIn, *, startup_timeout: float = 10.0) -> None:
        self.standin = standin
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="provider-standin", daemon=True)
        self._thread.start()
        if not self._ready.wait(startup_timeout):
            raise TimeoutError("the provider stand-in did not start")
        if self._errors:
            self._thread.join()
            raise RuntimeError("the provider stand-in failed to start") from self._errors[0]

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            await self.standin.start()
        except BaseException as exc:  # reported to the starting thread
            self._errors.append(exc)
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await self.standin.stop()

    @property
    def url(self) -> str:
        return self.standin.url

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.standin.requests

    def stop(self, timeout: float = 10.0) -> None:
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(event.set)
        self._thread.join(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# ── CLI ─────────────────────────────────────────────────────────────────────────────────────────


def _tls_version(value: str) -> ssl.TLSVersion:
    versions = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
    if value not in versions:
        raise argparse.ArgumentTypeError("expected 1.2 or 1.3")
    return versions[value]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tests.harness.standin",
        description="Local stand-in for the OpenAI, Azure OpenAI and Anthropic APIs "
        "(listens on 127.0.0.1 only).",
    )
    p.add_argument("--port", type=int, default=0, help="port (default: an ephemeral one)")
    p.add_argument("--tls-cert", help="PEM certificate chain; serve HTTPS")
    p.add_argument("--tls-key", help="PEM private key for --tls-cert")
    p.add_argument(
        "--tls-max-version",
        type=_tls_version,
        metavar="{1.2,1.3}",
        help="highest TLS version offered (1.2 to test downgrade refusal)",
    )
    p.add_argument("--openai-key", action="append", help="accepted OpenAI key (repeatable)")
    p.add_argument("--azure-key", action="append", help="accepted Azure OpenAI key (repeatable)")
    p.add_argument("--anthropic-key", action="append", help="accepted Anthropic key (repeatable)")
    p.add_argument("--reply", help="fixed reply text instead of 'echo: <last user text>'")
    p.add_argument("--stream-chunks", type=int, default=4, help="deltas per streamed reply")
    p.add_argument("--chunk-delay", type=float, default=0.0, help="seconds before each delta")
    p.add_argument("--served-model", help="report this model instead of the requested one")
    return p


async def _serve_forever(standin: ProviderStandIn) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with standin:
        print(f"provider stand-in listening on {standin.url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    context: ssl.SSLContext | None = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            print("--tls-cert and --tls-key go together", file=sys.stderr)
            return 2
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    elif args.tls_max_version is not None:
        print("--tls-max-version needs --tls-cert and --tls-key", file=sys.stderr)
        return 2
    standin = ProviderStandIn(
        port=args.port,
        ssl_context=context,
        tls_maximum_version=args.tls_max_version,
        openai_keys=args.openai_key,
        azure_keys=args.azure_key,
        anthropic_keys=args.anthropic_key,
        reply=args.reply,
        stream_chunks=args.stream_chunks,
        chunk_delay=args.chunk_delay,
        served_model=args.served_model,
    )
    asyncio.run(_serve_forever(standin))
    return 0


if __name__ == "__main__":
    sys.exit(main())

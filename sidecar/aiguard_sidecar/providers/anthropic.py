"""Anthropic wire format: the Messages API.

Inbound paths (``ANTHROPIC_BASE_URL=http://127.0.0.1:15080/anthropic``)::

    POST /anthropic/v1/messages                Api.MESSAGES       operation chat
    POST /anthropic/v1/messages/count_tokens   Api.COUNT_TOKENS   operation chat (the content
                                                                  leaves the pod: same checks)
    GET  /anthropic/v1/models                  Api.MODELS         answered from the policy

Upstream (``anthropic`` providers): ``{baseURL}/v1/messages`` with the key in ``x-api-key`` and
``anthropic-version`` as the client sent it (``2023-06-01`` when it sent none).
"""

from __future__ import annotations

from typing import Any, Final

from aiguard_api.policy_types import Operation, ProviderType
from aiguard_sidecar.errors import ProxyError
from aiguard_sidecar.exchange import (
    Api,
    Exchange,
    ResponseInfo,
    Role,
    Segment,
    StreamEvent,
    Unscanned,
    WireFormat,
    dumps,
    role_of,
)
from aiguard_sidecar.providers.base import (
    Dialect,
    Inbound,
    StreamParser,
    UpstreamCall,
    body_for,
    load_json_object,
    require_model,
)

API_VERSION: Final = "2023-06-01"

_UNSCANNED: Final[dict[str, Unscanned]] = {
    "image": Unscanned.IMAGE,
    "document": Unscanned.FILE,
    "container_upload": Unscanned.FILE,
}
_SKIPPED: Final = frozenset({"thinking", "redacted_thinking"})
"""Signed model reasoning returned verbatim: not new content, and edits would break it."""

JSONPath = tuple[str | int, ...]


def _strings(ex: Exchange, value: Any, role: Role, path: JSONPath) -> None:
    """Every string leaf of a JSON value (tool inputs are arbitrary objects)."""
    if isinstance(value, str):
        ex.segments.append(Segment(value, role, path))
    elif isinstance(value, dict):
        for k, v in value.items():
            _strings(ex, v, role, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _strings(ex, v, role, (*path, i))


def _blocks(ex: Exchange, content: Any, role: Role, path: JSONPath) -> None:
    if isinstance(content, str):
        ex.segments.append(Segment(content, role, path))
        return
    if not isinstance(content, list):
        return
    for j, block in enumerate(content):
        if not isinstance(block, dict):
            ex.count_unscanned(Unscanned.UNKNOWN)
            continue
        kind = block.get("type")
        if not isinstance(kind, str):  # a list or an object: an unknown block, never a crash
            kind = None
        here = (*path, j)
        if kind == "text" and isinstance(block.get("text"), str):
            ex.segments.append(Segment(block["text"], role, (*here, "text")))
        elif kind == "tool_use":
            _strings(ex, block.get("input"), Role.TOOL_CALL, (*here, "input"))
        elif kind == "tool_result":
            _blocks(ex, block.get("content"), Role.TOOL_RESULT, (*here, "content"))
        elif kind == "document" and isinstance(block.get("source"), dict):
            _document(ex, block["source"], (*here, "source"))
        elif kind == "search_result":
            _blocks(ex, block.get("content"), Role.DOCUMENT, (*here, "content"))
        elif kind in _SKIPPED:
            continue
        else:
            ex.count_unscanned(_UNSCANNED.get(str(kind), Unscanned.UNKNOWN))


def _document(ex: Exchange, source: dict[str, Any], path: JSONPath) -> None:
    kind = source.get("type")
    if kind == "text" and isinstance(source.get("data"), str):
        ex.segments.append(Segment(source["data"], Role.DOCUMENT, (*path, "data")))
    elif kind == "content":
        _blocks(ex, source.get("content"), Role.DOCUMENT, (*path, "content"))
    else:  # base64 or URL PDFs, files
        ex.count_unscanned(Unscanned.FILE)


def _leaves(out: list[Segment], value: Any, path: JSONPath) -> None:
    """Every string leaf of a tool call's ``input`` object, as output segments."""
    if isinstance(value, str):
        out.append(Segment(value, Role.TOOL_CALL, path))
    elif isinstance(value, dict):
        for k, v in value.items():
            _leaves(out, v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _leaves(out, v, (*path, i))


def parse_messages(ex: Exchange, body: dict[str, Any]) -> None:
    system = body.get("system")
    if system is not None:
        _blocks(ex, system, Role.SYSTEM, ("system",))
    messages = body.get("messages")
    if isinstance(messages, list):
        for i, msg in enumerate(messages):
            if isinstance(msg, dict):
                _blocks(
                    ex, msg.get("content"), role_of(msg.get("role")), ("messages", i, "content")
                )
    ex.uses_tools = bool(body.get("tools"))


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _input_tokens(usage: dict[str, Any]) -> int | None:
    """All input tokens, cached or not (cache reads and writes are input too)."""
    base = _int(usage.get("input_tokens"))
    if base is None:
        return None
    cached = (_int(usage.get("cache_creation_input_tokens")) or 0) + (
        _int(usage.get("cache_read_input_tokens")) or 0
    )
    return base + cached


def _usage(info: ResponseInfo, usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    tokens = _input_tokens(usage)
    if tokens is not None:
        info.input_tokens = tokens
    out = _int(usage.get("output_tokens"))
    if out is not None:
        info.output_tokens = out


class MessagesStream(StreamParser):
    """``message_start``, ``content_block_delta``…, ``message_delta`` (usage), ``message_stop``."""

    def on_event(self, event: StreamEvent, obj: dict[str, Any]) -> None:
        info = self.info
        kind = obj.get("type")
        if kind == "content_block_delta":
            delta = obj.get("delta")
            if not isinstance(delta, dict):
                return
            index = obj.get("index", 0)
            dtype = delta.get("type")
            if dtype == "text_delta" and isinstance(delta.get("text"), str):
                self.delta(
                    event, index if isinstance(index, int) else 0, delta["text"], ("delta", "text")
                )
            elif dtype == "input_json_delta" and isinstance(delta.get("partial_json"), str):
                self.delta(
                    event,
                    f"{index}.input",
                    delta["partial_json"],
                    ("delta", "partial_json"),
                    Role.TOOL_CALL,
                    json_text=True,
                )
        elif kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                model = message.get("model")
                info.served_model = model if isinstance(model, str) and model else None
                info.response_id = message.get("id") if isinstance(message.get("id"), str) else None
                _usage(info, message.get("usage"))
        elif kind == "message_delta":
            _usage(info, obj.get("usage"))
            delta = obj.get("delta")
            if isinstance(delta, dict) and isinstance(delta.get("stop_reason"), str):
                info.finish_reasons.append(delta["stop_reason"])
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            error = obj.get("error")
            etype = error.get("type") if isinstance(error, dict) else None
            info.stream_error = etype if isinstance(etype, str) else "error"


class AnthropicInbound(Inbound):
    wire = WireFormat.ANTHROPIC

    def parse(self, api: Api, raw: bytes, *, path_model: str | None = None) -> Exchange:
        if api is Api.MODELS:
            return Exchange(self.wire, api, Operation.MODELS, "")
        body = load_json_object(raw)
        ex = Exchange(
            self.wire,
            api,
            Operation.CHAT,
            require_model(body),
            stream=api is Api.MESSAGES and body.get("stream") is True,
            body=body,
            raw=raw,
        )
        parse_messages(ex, body)
        return ex

    def parse_response(self, exchange: Exchange, raw: bytes) -> ResponseInfo:
        info = ResponseInfo()
        if exchange.api is Api.COUNT_TOKENS:
            return info  # {"input_tokens": N}: a count, not usage
        try:
            doc = load_json_object(raw, unique_keys=False)
        except ProxyError:
            info.unparsed = True
            return info
        info.doc = doc
        model = doc.get("model")
        info.served_model = model if isinstance(model, str) and model else None
        info.response_id = doc.get("id") if isinstance(doc.get("id"), str) else None
        _usage(info, doc.get("usage"))
        if isinstance(doc.get("stop_reason"), str):
            info.finish_reasons.append(doc["stop_reason"])
        content = doc.get("content")
        if isinstance(content, list):
            for k, block in enumerate(content):
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "text" and isinstance(block.get("text"), str):
                    info.segments.append(
                        Segment(block["text"], Role.OUTPUT, ("content", k, "text"))
                    )
                elif block.get("type") == "tool_use":
                    _leaves(info.segments, block.get("input"), ("content", k, "input"))
        return info

    def stream_parser(self, exchange: Exchange) -> StreamParser:
        return MessagesStream(exchange)

    def error_body(self, err: ProxyError) -> bytes:
        return dumps(
            {"type": "error", "error": {"type": err.kind.type_name, "message": err.message}}
        )

    def stream_error_event(self, err: ProxyError, exchange: Exchange) -> bytes:
        return b"event: error\ndata: " + self.error_body(err) + b"\n\n"

    def models_body(self, models: list[str]) -> bytes:
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"}
            for m in models
        ]
        return dumps(
            {
                "data": data,
                "has_more": False,
                "first_id": models[0] if models else None,
                "last_id": models[-1] if models else None,
            }
        )


class AnthropicDialect(Dialect):
    type = ProviderType.ANTHROPIC
    auth_header = "x-api-key"

    _DEFAULTS: Final = {"anthropic-version": API_VERSION}

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self._urls = {
            Api.MESSAGES: self.url("/v1/messages"),
            Api.COUNT_TOKENS: self.url("/v1/messages/count_tokens"),
        }

    def build(self, exchange: Exchange, model: str) -> UpstreamCall:
        url = self._urls.get(exchange.api)
        if url is None:
            raise self.unsupported(exchange)
        return UpstreamCall("POST", url, body_for(exchange, model=model), self._DEFAULTS)

"""OpenAI wire format: chat completions, Responses API, embeddings, models.

Inbound paths (``OPENAI_BASE_URL=http://127.0.0.1:15080/openai/v1``)::

    POST /openai/v1/chat/completions     Api.CHAT_COMPLETIONS   operation chat
    POST /openai/v1/responses            Api.RESPONSES          operation responses
    POST /openai/v1/embeddings           Api.EMBEDDINGS         operation embeddings
    GET  /openai/v1/models               Api.MODELS             answered from the policy
    GET  /openai/v1/models/{model}       Api.MODEL              forwarded
    GET  /openai/v1/responses/{id}       Api.RESPONSE           forwarded (see pipeline.py:
    DELETE /openai/v1/responses/{id}     Api.RESPONSE_DELETE      stored responses)

The same dialect serves ``openai`` and ``openai-compatible`` providers (vLLM, Ollama, ...):
``{baseURL}/chat/completions`` etc. with ``Authorization: Bearer KEY`` (none when keyless).
"""

from __future__ import annotations

import json
from typing import Any, Final
from urllib.parse import quote

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

OPERATION_OF: Final[dict[Api, Operation]] = {
    Api.CHAT_COMPLETIONS: Operation.CHAT,
    Api.RESPONSES: Operation.RESPONSES,
    Api.EMBEDDINGS: Operation.EMBEDDINGS,
    Api.MODELS: Operation.MODELS,
    Api.MODEL: Operation.MODELS,
    Api.RESPONSE: Operation.RESPONSES,
    Api.RESPONSE_DELETE: Operation.RESPONSES,
}
_BODILESS: Final = frozenset({Api.MODELS, Api.MODEL, Api.RESPONSE, Api.RESPONSE_DELETE})

# Content part types, by what a guardrail can do with them.
_TEXT_PARTS: Final = frozenset({"text", "input_text", "output_text"})
_UNSCANNED_PARTS: Final[dict[str, Unscanned]] = {
    "image_url": Unscanned.IMAGE,
    "input_image": Unscanned.IMAGE,
    "input_audio": Unscanned.AUDIO,
    "file": Unscanned.FILE,
    "input_file": Unscanned.FILE,
}
_DECODER: Final = json.JSONDecoder()


# ── request parsing ──────────────────────────────────────────────────────────────────────────


def _content(ex: Exchange, content: Any, role: Role, path: tuple[str | int, ...]) -> None:
    """Segments of a message ``content``: a string, or a list of typed parts."""
    if isinstance(content, str):
        ex.segments.append(Segment(content, role, path))
        return
    if not isinstance(content, list):
        return
    for j, part in enumerate(content):
        if isinstance(part, str):
            ex.segments.append(Segment(part, role, (*path, j)))
            continue
        if not isinstance(part, dict):
            ex.count_unscanned(Unscanned.UNKNOWN)
            continue
        kind = _str(part.get("type"))  # not a string (a list, an object): an unknown part
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            ex.segments.append(Segment(part["text"], role, (*path, j, "text")))
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            ex.segments.append(Segment(part["refusal"], role, (*path, j, "refusal")))
        else:
            ex.count_unscanned(_UNSCANNED_PARTS.get(str(kind), Unscanned.UNKNOWN))


def parse_chat(ex: Exchange, body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            continue
        role = role_of(msg.get("role"))
        _content(ex, msg.get("content"), role, ("messages", i, "content"))
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            for k, call in enumerate(calls):
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    ex.segments.append(
                        Segment(
                            fn["arguments"],
                            Role.TOOL_CALL,
                            ("messages", i, "tool_calls", k, "function", "arguments"),
                        )
                    )
        fc = msg.get("function_call")
        if isinstance(fc, dict) and isinstance(fc.get("arguments"), str):
            ex.segments.append(
                Segment(
                    fc["arguments"], Role.TOOL_CALL, ("messages", i, "function_call", "arguments")
                )
            )
    ex.uses_tools = bool(body.get("tools")) or bool(body.get("functions"))
    options = body.get("stream_options")
    ex.include_usage = isinstance(options, dict) and options.get("include_usage") is True


def parse_responses(ex: Exchange, body: dict[str, Any]) -> None:
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        ex.segments.append(Segment(instructions, Role.SYSTEM, ("instructions",)))
    items = body.get("input")
    if isinstance(items, str):
        ex.segments.append(Segment(items, Role.USER, ("input",)))
    elif isinstance(items, list):
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                ex.count_unscanned(Unscanned.UNKNOWN)
                continue
            kind = item.get("type", "message")
            if kind == "message" or (kind is None and "role" in item):
                _content(
                    ex, item.get("content"), role_of(item.get("role")), ("input", i, "content")
                )
            elif kind in ("function_call", "custom_tool_call"):
                field = "arguments" if kind == "function_call" else "input"
                if isinstance(item.get(field), str):
                    ex.segments.append(Segment(item[field], Role.TOOL_CALL, ("input", i, field)))
            elif kind in ("function_call_output", "custom_tool_call_output"):
                _content(ex, item.get("output"), Role.TOOL_RESULT, ("input", i, "output"))
            elif kind in ("reasoning", "item_reference"):
                continue  # opaque references to earlier output, not new content
            else:
                ex.count_unscanned(Unscanned.UNKNOWN)
    ex.uses_tools = bool(body.get("tools"))


def parse_embeddings(ex: Exchange, body: dict[str, Any]) -> None:
    value = body.get("input")
    if isinstance(value, str):
        ex.segments.append(Segment(value, Role.USER, ("input",)))
    elif isinstance(value, list):
        if value and all(isinstance(v, int) for v in value):
            ex.count_unscanned(Unscanned.TOKENS)
            return
        for i, v in enumerate(value):
            if isinstance(v, str):
                ex.segments.append(Segment(v, Role.USER, ("input", i)))
            else:
                ex.count_unscanned(Unscanned.TOKENS)


_PARSERS: Final = {
    Api.CHAT_COMPLETIONS: parse_chat,
    Api.RESPONSES: parse_responses,
    Api.EMBEDDINGS: parse_embeddings,
}


# ── responses ────────────────────────────────────────────────────────────────────────────────


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _usage_chat(info: ResponseInfo, usage: Any) -> None:
    if isinstance(usage, dict):
        info.input_tokens = _int(usage.get("prompt_tokens"))
        info.output_tokens = _int(usage.get("completion_tokens"))


def _usage_responses(info: ResponseInfo, usage: Any) -> None:
    if isinstance(usage, dict):
        info.input_tokens = _int(usage.get("input_tokens"))
        info.output_tokens = _int(usage.get("output_tokens"))


def read_chat_response(doc: dict[str, Any], info: ResponseInfo) -> None:
    info.response_id = _str(doc.get("id"))
    info.system_fingerprint = _str(doc.get("system_fingerprint"))
    _usage_chat(info, doc.get("usage"))
    choices = doc.get("choices")
    if not isinstance(choices, list):
        return
    for i, choice in enumerate(choices):
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("finish_reason"), str):
            info.finish_reasons.append(choice["finish_reason"])
        msg = choice.get("message")
        if not isinstance(msg, dict):
            continue
        for field in ("content", "refusal"):
            if isinstance(msg.get(field), str):
                info.segments.append(
                    Segment(msg[field], Role.OUTPUT, ("choices", i, "message", field))
                )
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            for k, call in enumerate(calls):
                fn = call.get("function") if isinstance(call, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    path = ("choices", i, "message", "tool_calls", k, "function", "arguments")
                    info.segments.append(Segment(fn["arguments"], Role.TOOL_CALL, path, True))


def read_responses_response(doc: dict[str, Any], info: ResponseInfo) -> None:
    info.response_id = _str(doc.get("id"))
    _usage_responses(info, doc.get("usage"))
    if isinstance(doc.get("status"), str):
        info.finish_reasons.append(doc["status"])
    output = doc.get("output")
    if not isinstance(output, list):
        return
    for k, item in enumerate(output):
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message" and isinstance(item.get("content"), list):
            for j, part in enumerate(item["content"]):
                if not isinstance(part, dict):
                    continue
                for field in ("text", "refusal"):
                    if isinstance(part.get(field), str):
                        path = ("output", k, "content", j, field)
                        info.segments.append(Segment(part[field], Role.OUTPUT, path))
        elif item.get("type") == "function_call" and isinstance(item.get("arguments"), str):
            info.segments.append(
                Segment(item["arguments"], Role.TOOL_CALL, ("output", k, "arguments"), True)
            )


def read_embeddings_tail(raw: bytes, info: ResponseInfo) -> None:
    """Model and usage of an embeddings response without parsing its (large) vectors.

    Vectors are numbers or base64 strings, neither contains a quote, so the last ``"usage"`` and
    ``"model"`` keys are the top-level ones; only the bytes after them are decoded.
    """
    for key in (b'"usage"', b'"model"'):
        at = raw.rfind(key)
        if at < 0:
            continue
        tail = raw[at + len(key) :].decode("utf-8", "replace").lstrip()
        if not tail.startswith(":"):
            continue
        try:
            value, _ = _DECODER.raw_decode(tail[1:].lstrip())
        except ValueError:
            continue
        if key == b'"usage"' and isinstance(value, dict):
            info.input_tokens = _int(value.get("prompt_tokens"))
            info.output_tokens = 0
        elif key == b'"model"' and isinstance(value, str):
            info.served_model = value or None


# ── streams ──────────────────────────────────────────────────────────────────────────────────


class ChatStream(StreamParser):
    """``chat.completion.chunk`` events; the sidecar asks for usage and hides it if unasked."""

    def on_event(self, event: StreamEvent, obj: dict[str, Any]) -> None:
        info = self.info
        error = obj.get("error")
        if error is not None:
            info.stream_error = _error_code(error)
            return
        if info.served_model is None:
            info.served_model = _str(obj.get("model"))
            info.response_id = _str(obj.get("id"))
        if info.system_fingerprint is None:
            info.system_fingerprint = _str(obj.get("system_fingerprint"))
        choices = obj.get("choices")
        usage = obj.get("usage")
        if usage is not None:
            _usage_chat(info, usage)
            if not choices and not self.exchange.include_usage:
                self.drop(event)
                return
        if not isinstance(choices, list):
            return
        for pos, choice in enumerate(choices):
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", pos)
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str) and content:
                    self.delta(event, index, content, ("choices", pos, "delta", "content"))
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    for k, call in enumerate(calls):
                        fn = call.get("function") if isinstance(call, dict) else None
                        args = fn.get("arguments") if isinstance(fn, dict) else None
                        if isinstance(args, str) and args:
                            self.delta(
                                event,
                                f"{index}.tool.{call.get('index', k)}",
                                args,
                                ("choices", pos, "delta", "tool_calls", k, "function", "arguments"),
                                Role.TOOL_CALL,
                                json_text=True,
                            )
                fc = delta.get("function_call")  # the deprecated single function call
                args = fc.get("arguments") if isinstance(fc, dict) else None
                if isinstance(args, str) and args:
                    self.delta(
                        event,
                        f"{index}.function",
                        args,
                        ("choices", pos, "delta", "function_call", "arguments"),
                        Role.TOOL_CALL,
                        json_text=True,
                    )
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                info.finish_reasons.append(reason)


_RESPONSE_DONE: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})


class ResponsesStream(StreamParser):
    """Responses API events (``response.output_text.delta`` ... ``response.completed``)."""

    def on_event(self, event: StreamEvent, obj: dict[str, Any]) -> None:
        info = self.info
        kind = _str(obj.get("type"))  # a provider's garbage (an object, a list) is no event kind
        if kind == "response.output_text.delta" or kind == "response.refusal.delta":
            text = obj.get("delta")
            if isinstance(text, str) and text:
                slot = f"{obj.get('output_index', 0)}.{obj.get('content_index', 0)}"
                self.delta(event, slot, text, ("delta",))
        elif kind == "response.function_call_arguments.delta":
            text = obj.get("delta")
            if isinstance(text, str) and text:
                slot = f"{obj.get('output_index', 0)}.args"
                self.delta(event, slot, text, ("delta",), Role.TOOL_CALL, json_text=True)
        elif kind in _SNAPSHOT_EVENTS:
            _snapshots(event, kind, obj)
        elif kind in _RESPONSE_DONE or kind == "response.created":
            response = obj.get("response")
            if isinstance(response, dict):
                info.served_model = _str(response.get("model")) or info.served_model
                info.response_id = _str(response.get("id")) or info.response_id
                if kind in _RESPONSE_DONE:
                    output = response.get("output")
                    if isinstance(output, list):
                        for k, item in enumerate(output):
                            _item_snapshots(event, item, k, ("response", "output", k))
                    _usage_responses(info, response.get("usage"))
                    if isinstance(response.get("status"), str):
                        info.finish_reasons.append(response["status"])
                    self.done = True
        elif kind == "error":
            info.stream_error = _str(obj.get("code")) or "error"


_SNAPSHOT_EVENTS: Final = frozenset(
    {
        "response.output_text.done",
        "response.refusal.done",
        "response.content_part.done",
        "response.function_call_arguments.done",
        "response.output_item.done",
    }
)


def _snapshots(event: StreamEvent, kind: str, obj: dict[str, Any]) -> None:
    """The closing events repeat the whole text of a slot: mark where (see ``snapshots``)."""
    oi = obj.get("output_index", 0)
    ci = obj.get("content_index", 0)
    if kind == "response.output_text.done" and isinstance(obj.get("text"), str):
        StreamParser.snapshot(event, f"{oi}.{ci}", obj["text"], ("text",))
    elif kind == "response.refusal.done" and isinstance(obj.get("refusal"), str):
        StreamParser.snapshot(event, f"{oi}.{ci}", obj["refusal"], ("refusal",))
    elif kind == "response.content_part.done":
        part = obj.get("part")
        if isinstance(part, dict):
            for field in ("text", "refusal"):
                if isinstance(part.get(field), str):
                    StreamParser.snapshot(event, f"{oi}.{ci}", part[field], ("part", field))
    elif kind == "response.function_call_arguments.done" and isinstance(obj.get("arguments"), str):
        StreamParser.snapshot(event, f"{oi}.args", obj["arguments"], ("arguments",))
    elif kind == "response.output_item.done":
        _item_snapshots(event, obj.get("item"), oi, ("item",))


def _item_snapshots(event: StreamEvent, item: Any, oi: Any, path: tuple[str | int, ...]) -> None:
    if not isinstance(item, dict):
        return
    if item.get("type") == "function_call" and isinstance(item.get("arguments"), str):
        StreamParser.snapshot(event, f"{oi}.args", item["arguments"], (*path, "arguments"))
        return
    content = item.get("content")
    if item.get("type") != "message" or not isinstance(content, list):
        return
    for j, part in enumerate(content):
        if isinstance(part, dict):
            for field in ("text", "refusal"):
                if isinstance(part.get(field), str):
                    StreamParser.snapshot(
                        event, f"{oi}.{j}", part[field], (*path, "content", j, field)
                    )


def _error_code(error: Any) -> str:
    if isinstance(error, dict):
        return _str(error.get("code")) or _str(error.get("type")) or "error"
    return "error"


# ── the inbound adapter ──────────────────────────────────────────────────────────────────────


class OpenAIInbound(Inbound):
    wire = WireFormat.OPENAI

    def parse(self, api: Api, raw: bytes, *, path_model: str | None = None) -> Exchange:
        operation = OPERATION_OF[api]
        if api in _BODILESS:
            # Stored responses: the model comes from what the sidecar remembers of the id.
            return Exchange(self.wire, api, operation, path_model or "")
        body = load_json_object(raw)
        model = path_model if path_model is not None else require_model(body)
        ex = Exchange(
            self.wire, api, operation, model, stream=body.get("stream") is True, body=body, raw=raw
        )
        _PARSERS[api](ex, body)
        return ex

    def parse_response(self, exchange: Exchange, raw: bytes) -> ResponseInfo:
        info = ResponseInfo()
        if exchange.api is Api.EMBEDDINGS:
            read_embeddings_tail(raw, info)
            return info
        try:
            doc = load_json_object(raw, unique_keys=False)
        except ProxyError:
            info.unparsed = True
            return info
        info.doc = doc
        info.served_model = _str(doc.get("model"))
        if exchange.api is Api.CHAT_COMPLETIONS:
            read_chat_response(doc, info)
        elif exchange.api is Api.RESPONSES:
            read_responses_response(doc, info)
        elif exchange.api is Api.RESPONSE:
            # Its output goes through the output guardrails like a new one; its usage was
            # accounted when it was created, not now.
            read_responses_response(doc, info)
            info.input_tokens = info.output_tokens = None
        return info

    def stream_parser(self, exchange: Exchange) -> StreamParser:
        if exchange.api is Api.RESPONSES:
            return ResponsesStream(exchange)
        return ChatStream(exchange)

    def error_body(self, err: ProxyError) -> bytes:
        return dumps(
            {
                "error": {
                    "message": err.message,
                    "type": err.kind.type_name,
                    "param": err.param,
                    "code": err.code,
                }
            }
        )

    def stream_error_event(self, err: ProxyError, exchange: Exchange) -> bytes:
        if exchange.api is Api.RESPONSES:
            payload = {
                "type": "error",
                "code": err.code,
                "message": err.message,
                "param": None,
                "sequence_number": 0,
            }
            return b"event: error\ndata: " + dumps(payload) + b"\n\n"
        return b"data: " + self.error_body(err) + b"\n\n"

    def models_body(self, models: list[str]) -> bytes:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "aiguard"} for m in models]
        return dumps({"object": "list", "data": data})


# ── the upstream dialect ─────────────────────────────────────────────────────────────────────

_SUFFIX: Final[dict[Api, str]] = {
    Api.CHAT_COMPLETIONS: "/chat/completions",
    Api.RESPONSES: "/responses",
    Api.EMBEDDINGS: "/embeddings",
}


class OpenAIDialect(Dialect):
    """``openai`` and ``openai-compatible`` providers."""

    auth_header = "authorization"

    def __init__(self, base_url: str, *, type: ProviderType = ProviderType.OPENAI) -> None:
        super().__init__(base_url)
        self.type = type
        self._urls = {api: self.url(suffix) for api, suffix in _SUFFIX.items()}

    def auth_value(self, key: str) -> str:
        return f"Bearer {key}"

    def build(self, exchange: Exchange, model: str) -> UpstreamCall:
        api = exchange.api
        if api is Api.MODEL:
            return UpstreamCall("GET", self.url("/models/" + quote(model, safe="")), None, {})
        if api is Api.RESPONSE or api is Api.RESPONSE_DELETE:
            stored = self.url("/responses/" + quote(exchange.resource_id or "", safe=""))
            return UpstreamCall("GET" if api is Api.RESPONSE else "DELETE", stored, None, {})
        url = self._urls.get(api)
        if url is None:
            raise self.unsupported(exchange)
        usage = api is Api.CHAT_COMPLETIONS and exchange.stream and not exchange.include_usage
        return UpstreamCall("POST", url, body_for(exchange, model=model, include_usage=usage), {})

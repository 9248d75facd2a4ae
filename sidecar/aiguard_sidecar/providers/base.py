"""What every provider adapter provides, and the pieces they share.

Two kinds of adapter, because what the client speaks and where the request goes are separate:

* :class:`Inbound` — one per client wire format (OpenAI, Azure OpenAI, Anthropic). Parses a
  request body once into an :class:`~aiguard_sidecar.exchange.Exchange`, parses responses (JSON
  and SSE) into :class:`~aiguard_sidecar.exchange.ResponseInfo`, renders errors in the format.
* :class:`Dialect` — one per provider type (``openai``, ``openai-compatible``,
  ``azure-openai``, ``anthropic``). Builds the upstream request: URL, body (model rewrite),
  the auth header for the provider key.

A request in OpenAI format (including Azure paths) goes only to providers whose dialect speaks
OpenAI; Anthropic format only to Anthropic providers (:data:`COMPATIBLE`). Adapters make no
policy decisions.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from yarl import URL

from aiguard_api.policy_types import ProviderType
from aiguard_sidecar import errors
from aiguard_sidecar.errors import ProxyError
from aiguard_sidecar.exchange import (
    Api,
    EventAction,
    Exchange,
    JSONDecodeError,
    ResponseInfo,
    Role,
    Segment,
    StreamEvent,
    TextDelta,
    WireFormat,
    dumps,
    loads,
)
from aiguard_sidecar.providers.sse import parse_block

COMPATIBLE: Final[Mapping[WireFormat, frozenset[ProviderType]]] = {
    WireFormat.OPENAI: frozenset(
        {ProviderType.OPENAI, ProviderType.AZURE_OPENAI, ProviderType.OPENAI_COMPATIBLE}
    ),
    WireFormat.ANTHROPIC: frozenset({ProviderType.ANTHROPIC}),
}
"""Provider types a request of each wire format may be sent to."""

WIRE_OF: Final[Mapping[ProviderType, WireFormat]] = {
    t: wire for wire, types in COMPATIBLE.items() for t in types
}


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):  # rare: find which key, for the message
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return doc


_UNIQUE_KEYS: Final = json.JSONDecoder(object_pairs_hook=_unique_keys)


def load_json_object(raw: bytes, *, unique_keys: bool = True) -> dict[str, Any]:
    """The request body as a JSON object, or a 400.

    Hostile bodies are refused, not crashed on: nesting deeper than the parser's recursion
    limit is a 400, and so is an object with a duplicate key (``unique_keys``). The raw bytes
    go upstream unchanged when nothing rewrites them, and a provider whose parser keeps the
    *first* of two ``messages`` (or ``model``) would act on text the guardrails never saw.
    """
    try:
        # Provider responses (unique_keys off: their bytes are relayed as they are) go through
        # orjson; request bodies through json, whose pairs hook finds a repeated key.
        # (json.loads with a hook would build a decoder and its scanner for every body.)
        doc = (
            _UNIQUE_KEYS.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
            if unique_keys
            else loads(raw)
        )
    except _DuplicateKey as e:
        raise errors.invalid(
            f"aiguard: the request body repeats the key {str(e)[:64]!r}",
            code="invalid_json",
        ) from None
    except RecursionError:
        raise errors.invalid(
            "aiguard: the request body is nested too deeply", code="invalid_json"
        ) from None
    except (ValueError, UnicodeDecodeError):
        raise errors.invalid(
            "aiguard: the request body is not valid JSON", code="invalid_json"
        ) from None
    if not isinstance(doc, dict):
        raise errors.invalid("aiguard: the request body must be a JSON object", code="invalid_json")
    if unique_keys and not _is_strict_json(raw) and _has_lone_surrogate(doc):
        # Valid JSON, but not text: it cannot be scanned, hashed for the audit trail or
        # re-encoded for the provider as UTF-8. (A \uD83D\uDE00 pair is one character.)
        raise errors.invalid(
            "aiguard: the request body holds a lone UTF-16 surrogate (\\uD800-\\uDFFF without "
            "its pair), which is not a character",
            code="invalid_json",
        )
    return doc


def _is_strict_json(raw: bytes) -> bool:
    """Whether orjson reads ``raw``: it refuses a lone surrogate, escaped or UTF-8-encoded, which
    Python's json reads. Only a body orjson refuses is searched for one (it may also have been
    refused for ``NaN`` or a number out of a double's range). One orjson pass over the bytes costs
    a tenth of a regular-expression search for the escape (4 vs 40 µs on 8 KB)."""
    try:
        loads(raw)
    except JSONDecodeError:
        return False
    return True


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


MAX_MODEL_CHARS: Final = 256


def require_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise errors.invalid(
            "aiguard: the request names no model (a non-empty string `model` is required)",
            code="missing_model",
            param="model",
        )
    if len(model) > MAX_MODEL_CHARS or not model.isprintable():
        # A model name is matched against route patterns, goes into URLs (Azure), metrics,
        # logs and audit events: control characters (CR/LF…) have no business there.
        raise errors.invalid(
            "aiguard: the model name has control characters or is longer than "
            f"{MAX_MODEL_CHARS} characters",
            code="invalid_model",
            param="model",
        )
    return model


# ── inbound ──────────────────────────────────────────────────────────────────────────────────


class StreamParser(abc.ABC):
    """Reads one response stream event by event, accumulating a :class:`ResponseInfo`."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.info = ResponseInfo()
        self.done = False
        self._texts: dict[int | str, list[str]] = {}
        self._roles: dict[int | str, Role] = {}

    def feed(self, block: bytes) -> StreamEvent:
        """One complete event block → the event, its text deltas, and what to do with it."""
        name, data = parse_block(block)
        if data is None:
            return StreamEvent(block, name, None)
        if data == "[DONE]":
            self.done = True
            return StreamEvent(block, name, None)
        try:
            obj = loads(data)
        except ValueError:  # orjson.JSONDecodeError (also past its nesting limit)
            return StreamEvent(block, name, None)
        event = StreamEvent(block, name, obj)
        if isinstance(obj, dict):
            self.on_event(event, obj)
        return event

    @abc.abstractmethod
    def on_event(self, event: StreamEvent, obj: dict[str, Any]) -> None:
        """Record what the event says (usage, model, text); set ``event.deltas``/``action``."""

    def add_text(self, slot: int | str, text: str, role: Role = Role.OUTPUT) -> None:
        texts = self._texts.get(slot)
        if texts is None:
            self._texts[slot] = [text]
            self._roles[slot] = role
        else:
            texts.append(text)

    def delta(
        self,
        event: StreamEvent,
        slot: int | str,
        text: str,
        path: tuple[str | int, ...],
        role: Role = Role.OUTPUT,
        *,
        json_text: bool = False,
    ) -> None:
        """Record output text carried by ``event`` (tool-call arguments too: the output
        guardrails see them as they stream, ``json_text`` marks them as JSON source)."""
        self.add_text(slot, text, role)
        d = TextDelta(slot, text, path, json_text)
        if event.deltas:
            event.deltas = [*event.deltas, d]
        else:
            event.deltas = [d]

    @staticmethod
    def snapshot(
        event: StreamEvent, slot: int | str, text: str, path: tuple[str | int, ...]
    ) -> None:
        """``event`` repeats the whole text of ``slot`` at ``path`` (a closing event)."""
        event.snapshots = [*event.snapshots, TextDelta(slot, text, path)]

    def finish(self) -> ResponseInfo:
        """The accumulated response; output segments are joined per slot."""
        self.info.segments = [
            Segment("".join(parts), self._roles[slot], ("stream", slot))
            for slot, parts in self._texts.items()
        ]
        return self.info

    @staticmethod
    def drop(event: StreamEvent) -> None:
        event.action = EventAction.DROP


class Inbound(abc.ABC):
    """A client wire format: request parsing, response parsing, error rendering."""

    wire: WireFormat

    @abc.abstractmethod
    def parse(self, api: Api, raw: bytes, *, path_model: str | None = None) -> Exchange:
        """Parse a request body once. ``path_model``: a model or deployment named in the path."""

    @abc.abstractmethod
    def parse_response(self, exchange: Exchange, raw: bytes) -> ResponseInfo:
        """Read a successful JSON response."""

    @abc.abstractmethod
    def stream_parser(self, exchange: Exchange) -> StreamParser:
        """A parser for a successful streamed response."""

    @abc.abstractmethod
    def error_body(self, err: ProxyError) -> bytes:
        """``err`` in this format's error envelope."""

    @abc.abstractmethod
    def stream_error_event(self, err: ProxyError, exchange: Exchange) -> bytes:
        """An in-stream error event, for an upstream that broke after the stream started."""

    @abc.abstractmethod
    def models_body(self, models: list[str]) -> bytes:
        """The model list the sidecar answers itself (models the caller may use)."""


# ── upstream ─────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """One upstream request, before credentials and client headers are added."""

    method: str
    url: URL
    body: bytes | None
    headers: Mapping[str, str]
    """Headers the dialect needs beyond the client's (defaults such as a version)."""


class Dialect(abc.ABC):
    """A provider type's request shape. One instance per configured provider."""

    type: ProviderType
    auth_header: str
    """The header that carries the provider key."""

    def __init__(self, base_url: str) -> None:
        self.base = base_url.rstrip("/")

    @abc.abstractmethod
    def build(self, exchange: Exchange, model: str) -> UpstreamCall:
        """The request for ``exchange`` asking this provider for ``model``.

        Raises a 502 :class:`ProxyError` if this provider type cannot serve ``exchange.api``.
        """

    def auth_value(self, key: str) -> str:
        return key

    def unsupported(self, exchange: Exchange) -> ProxyError:
        return errors.bad_gateway(
            f"aiguard: provider type {self.type.value} does not serve the {exchange.api.value} API",
            code="unsupported_operation",
        )

    def url(self, suffix: str) -> URL:
        return URL(self.base + suffix, encoded=True)


def body_for(exchange: Exchange, *, model: str | None, include_usage: bool = False) -> bytes | None:
    """The upstream body: the client's bytes unless something must change.

    ``model`` sets the body's ``model`` (aliasing/pinning, Azure paths); ``include_usage`` adds
    ``stream_options.include_usage`` so a stream reports usage the sidecar can account.
    The exchange's own body is never mutated here: a failover may build another request.
    """
    body = exchange.body
    if body is None:
        return None
    set_model = model is not None and body.get("model") != model
    if not (set_model or include_usage or exchange.modified):
        return exchange.raw
    out = dict(body)
    if set_model:
        out["model"] = model
    if include_usage:
        options = out.get("stream_options")
        out["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    return dumps(out)

"""The provider-neutral view of one request and its response.

A provider adapter (``providers/``) parses a request body once into an :class:`Exchange`: the
operation, the requested model, whether it streams or declares tools, and every piece of text
as a :class:`Segment` whose ``path`` locates it inside the parsed JSON. Everything after the
adapter (identity, access, rate limits, guardrails, audit) works on the exchange only; a
guardrail that redacts calls :meth:`Exchange.set_text` and the adapter re-serialises the body
without the guardrail knowing which provider format it came from.

Responses are described the same way by :class:`ResponseInfo` (served model, usage, output
segments), built from a JSON body or incrementally from stream events (:class:`StreamEvent`).

Pure data and pure functions: no I/O, no aiohttp.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from aiguard_api.policy_types import Operation

JSONPath = tuple[str | int, ...]
"""Keys and list indices from the document root to a string value."""


class WireFormat(enum.StrEnum):
    """The API dialect a client speaks. Azure OpenAI speaks the OpenAI format."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"


class Api(enum.StrEnum):
    """The provider endpoint a request is for (finer than the access rule's operation)."""

    CHAT_COMPLETIONS = "chat.completions"  # OpenAI / Azure / compatible
    RESPONSES = "responses"  # OpenAI Responses API
    EMBEDDINGS = "embeddings"
    MODELS = "models"  # list (answered by the sidecar from the policy)
    MODEL = "model"  # retrieve one
    RESPONSE = "responses.retrieve"  # OpenAI Responses API: a stored response, by id
    RESPONSE_DELETE = "responses.delete"
    MESSAGES = "messages"  # Anthropic
    COUNT_TOKENS = "messages.count_tokens"  # Anthropic: tokens a messages request would use


class Role(enum.StrEnum):
    """Where a piece of text came from. Same vocabulary as ``guardrails.base.Role``."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL_CALL = "tool_call"  # arguments the model asked a tool to run with
    TOOL_RESULT = "tool_result"  # what a tool returned: indirect injection lives here
    DOCUMENT = "document"  # retrieved or attached text
    OUTPUT = "output"  # text the provider generated


class Unscanned(enum.StrEnum):
    """Content parts no text guardrail can read. Counted, audited, never silently dropped."""

    IMAGE = "image"
    AUDIO = "audio"
    FILE = "file"  # PDFs and other binary documents
    TOKENS = "tokens"  # pre-tokenised input (embeddings)
    UNKNOWN = "unknown"  # a part type this sidecar version does not know


@dataclass(slots=True)
class Segment:
    """One piece of text. ``path`` locates it in the JSON document it came from."""

    text: str
    role: Role
    path: JSONPath
    json_text: bool = False
    """The text is JSON source (tool-call arguments): a value put into it must be escaped."""


def role_of(value: Any, default: Role = Role.USER) -> Role:
    """Map a provider's message role onto :class:`Role`."""
    if value in ("system", "developer"):
        return Role.SYSTEM
    if value == "assistant":
        return Role.ASSISTANT
    if value in ("tool", "function"):
        return Role.TOOL_RESULT
    if value == "user":
        return Role.USER
    return default


def get_at(doc: Any, path: JSONPath) -> Any:
    """The value at ``path`` in ``doc`` (raises ``KeyError``/``IndexError``/``TypeError``)."""
    node = doc
    for step in path:
        node = node[step]
    return node


def set_at(doc: Any, path: JSONPath, value: Any) -> None:
    """Replace the value at ``path`` in ``doc`` (which must exist)."""
    if not path:
        raise ValueError("cannot replace the document root")
    parent = get_at(doc, path[:-1])
    last = path[-1]
    if isinstance(parent, dict) and isinstance(last, str):
        parent[last] = value
        return
    if not (isinstance(parent, list) and isinstance(last, int)):
        raise TypeError(f"path {path!r} does not lead to a list item or object member")
    parent[last] = value


CHARS_PER_TOKEN: Final = 4
"""Rough estimate for budgets before the provider reports real usage."""


def dumps(doc: Any) -> bytes:
    """Compact JSON as providers accept it (UTF-8, no ASCII escaping)."""
    return orjson.dumps(doc)


def loads(raw: bytes | str) -> Any:
    """Parse JSON (``orjson``: several times faster than ``json`` on request bodies).

    Stricter than ``json``: ``NaN``/``Infinity`` are refused (as the providers refuse them);
    integers beyond 64 bits become floats (no provider parameter takes one)."""
    return orjson.loads(raw)


JSONDecodeError: Final = orjson.JSONDecodeError
"""Raised by :func:`loads` (a ``ValueError``)."""


@dataclass(slots=True)
class Exchange:
    """One parsed request.

    ``body`` is the parsed JSON object (``None`` for bodiless requests such as ``GET``), ``raw``
    the bytes as received: when nothing rewrites the body, those bytes go upstream unchanged.
    """

    wire: WireFormat
    api: Api
    operation: Operation
    model: str
    stream: bool = False
    uses_tools: bool = False
    body: dict[str, Any] | None = None
    raw: bytes = b""
    segments: list[Segment] = field(default_factory=list)
    unscanned: dict[Unscanned, int] = field(default_factory=dict)
    include_usage: bool = False
    """The client itself asked for usage in a stream (OpenAI ``stream_options``)."""
    deployment: str | None = None
    """Azure OpenAI: the deployment named in the path."""
    resource_id: str | None = None
    """The stored object a request names in its path (a Responses API response id)."""
    modified: bool = False
    """A guardrail rewrote text: the body must be serialised again."""
    pseudonyms: dict[str, str] = field(default_factory=dict)
    """Placeholder → original value of the values the input guardrails pseudonymised
    (``pii.pseudonymize``), to restore them in the response. Content: it lives only in memory
    for this request and is never logged, audited or captured."""

    def set_text(self, segment: Segment, text: str) -> None:
        """Rewrite one segment's text in the body (redaction, masking)."""
        if self.body is None:
            raise ValueError("this request has no body to rewrite")
        set_at(self.body, segment.path, text)
        segment.text = text
        self.modified = True

    def count_unscanned(self, kind: Unscanned) -> None:
        self.unscanned[kind] = self.unscanned.get(kind, 0) + 1

    @property
    def input_chars(self) -> int:
        return sum(len(s.text) for s in self.segments)

    @property
    def est_input_tokens(self) -> int:
        """An estimate of the input tokens, for rate limiting before usage is known."""
        return self.input_chars // CHARS_PER_TOKEN + 1


@dataclass(slots=True)
class ResponseInfo:
    """What a response said about itself: used for metrics, rate limits and audit."""

    served_model: str | None = None
    system_fingerprint: str | None = None
    response_id: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reasons: list[str] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    """Output text. For a JSON body the paths point into it; for a stream, one segment per
    output slot (choice or content block) with the text accumulated from the deltas and a
    symbolic path ``("stream", slot)``."""
    stream_error: str | None = None
    """A provider error reported inside a stream (its type or code, no content)."""
    doc: dict[str, Any] | None = None
    """The parsed JSON body of a non-streamed response (what segment paths point into)."""
    unparsed: bool = False
    """A successful response the adapter could not read (not JSON, not an object, nested too
    deeply): no output guardrail could see its text, so the policy's failureMode decides."""
    modified: bool = False

    def set_text(self, segment: Segment, text: str) -> None:
        """Rewrite one output segment (output redaction); the body is then re-serialised."""
        if self.doc is None:
            raise ValueError("only a JSON response body can be rewritten")
        set_at(self.doc, segment.path, text)
        segment.text = text
        self.modified = True

    @property
    def output_chars(self) -> int:
        return sum(len(s.text) for s in self.segments)

    def output_tokens_or_estimate(self) -> int:
        if self.output_tokens is not None:
            return self.output_tokens
        return self.output_chars // CHARS_PER_TOKEN


@dataclass(slots=True)
class TextDelta:
    """A piece of output text inside one stream event."""

    slot: int | str
    """Which output it extends: a choice index, a content block index, or an item key."""
    text: str
    path: JSONPath
    """Where the text sits inside the event's ``data`` object."""
    json_text: bool = False
    """The text is a fragment of JSON source (streamed tool-call arguments)."""


class EventAction(enum.Enum):
    FORWARD = "forward"  # send the event bytes as received
    DROP = "drop"  # the client must not see it (e.g. a usage chunk it did not ask for)


@dataclass(slots=True)
class StreamEvent:
    """One server-sent event: its raw bytes and, when it carries JSON, the parsed object."""

    raw: bytes
    name: str | None
    data: Any
    deltas: Sequence[TextDelta] = ()
    snapshots: Sequence[TextDelta] = ()
    """The whole text of a slot repeated by a closing event (the Responses API's ``*.done``
    and ``response.completed``): a stream guard sets it to the text the client was sent."""
    action: EventAction = EventAction.FORWARD
    modified: bool = False

    def set_text(self, delta: TextDelta, text: str) -> None:
        """Rewrite the text of one delta (output redaction); :meth:`render` then re-encodes."""
        set_at(self.data, delta.path, text)
        delta.text = text
        self.modified = True

    def render(self) -> bytes:
        """The bytes to send: the original ones unless a guardrail rewrote the event."""
        if not self.modified:
            return self.raw
        head = f"event: {self.name}\n".encode() if self.name else b""
        return head + b"data: " + dumps(self.data) + b"\n\n"

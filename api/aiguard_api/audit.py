"""The audit event: aiguard's evidence of one decided request, and how its chain is checked.

Schema ``aiguard.dev/audit/v1``. One event per request the sidecar decided (allowed, denied,
failed), written to the sidecar's spool before the response completes, shipped to the
collector, kept there for the policy's ``audit.retentionDays``. Content is never in an event:
only hashes of it, counts of what the guardrails found, and metadata.

Wire form: one JSON object, keys sorted, no whitespace (the canonical form below), one object
per line in spool segments and exports (JSON lines)::

    {"aiguard.decisions":[...],"gen_ai.request.model":"gpt-4o",...,"hash":"sha256:…",
     "id":"0197…","instance":"team-a/chatbot-5d9c-abcde/8c1f…","prev_hash":"sha256:…",
     "schema":"aiguard.dev/audit/v1","sequence":42,"time":"2025-06-01T12:00:00.123456Z"}

Envelope (the chain)
--------------------
=============  ======================================================================
``schema``     ``aiguard.dev/audit/v1``; fields are only ever added within v1
``id``         UUIDv7 (RFC 9562): time-ordered, unique; the collector's idempotency key
``time``       when the event was written (RFC 3339, UTC, microseconds, ``Z``)
``instance``   ``NAMESPACE/POD/BOOT``: one sidecar's chain. BOOT is created with the spool
               and kept in it, so a restarted sidecar container continues its chain
               (OpenTelemetry ``service.instance.id``)
``sequence``   1, 2, 3 … per instance, no gaps
``prev_hash``  ``hash`` of the event with the previous sequence; :data:`GENESIS` for 1
``hash``       ``sha256:`` + SHA-256 over the canonical JSON of the event without ``hash``
=============  ======================================================================

Canonical JSON: ``json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
encoded as UTF-8 (:func:`canonical`). Verifiers hash the object they parsed, so JSON
whitespace or key order in a store does not matter; any change of a value does.

Attributes, and the OpenTelemetry names they follow
---------------------------------------------------
OpenTelemetry semantic-convention names are used where one exists (GenAI, k8s, HTTP, TLS,
user, error); ``aiguard.*`` otherwise. Absent values are ``null``.

======================================  ===================================================
key                                     meaning (OpenTelemetry: as named, unless noted)
======================================  ===================================================
``k8s.namespace.name``                  the pod's namespace (OTel resource attribute)
``k8s.pod.name``                        the pod
``aiguard.workload.service_account``    the pod's ServiceAccount (no OTel name exists)
``user.id``                             the verified end user (JWT ``sub`` / trusted header)
``aiguard.user.groups``                 the user's groups (OTel's ``user.roles`` means
                                        something else)
``aiguard.identity.source``             ``jwt`` | ``header`` | ``workload``
``aiguard.request.id``                  the ``x-aiguard-request-id`` the client saw
``aiguard.request.start_time``          when the request arrived (RFC 3339)
``http.request.method``, ``url.path``   the client's request line
``aiguard.api``                         ``chat.completions`` | ``responses`` | ``messages``…
``gen_ai.operation.name``               ``chat`` | ``responses`` | ``embeddings`` | ``models``
``aiguard.stream``                      the response was streamed (SSE)
``gen_ai.provider.name``                ``openai`` | ``anthropic`` | ``azure.ai.openai`` |
                                        ``openai_compatible`` (well-known value)
``aiguard.provider``                    the provider's name in the policy
``aiguard.route``                       the policy route that matched
``gen_ai.request.model``                the model the client asked for
``aiguard.target.model``                the model asked of the provider (route mapping)
``gen_ai.response.model``               the model that answered (as the provider says)
``gen_ai.response.id``                  the provider's response id
``openai.response.system_fingerprint``  the provider's system fingerprint
``aiguard.model.drift``                 optional (absent in older events: same as ``null``).
                                        ``null``, or when this response's served model or
                                        fingerprint changed for its route, provider and
                                        requested model: {previous_model,
                                        previous_fingerprint} (see ``aiguard_sidecar.drift``
                                        for what counts as a change)
``gen_ai.response.finish_reasons``      list of finish reasons
``gen_ai.usage.input_tokens``           tokens in (provider-reported)
``gen_ai.usage.output_tokens``          tokens out (provider-reported)
``aiguard.input.hash``                  hash of the input text (:func:`content_hash`)
``aiguard.output.hash``                 hash of the output text
``aiguard.input.chars``                 characters of input text hashed
``aiguard.output.chars``                characters of output text hashed
``aiguard.capture.hash``                optional: SHA-256 of the redacted content captured
                                        with this event (``audit.contentCapture:
                                        redacted``); the content itself travels beside the
                                        event as ``aiguard.capture`` ({input, output:
                                        [[role, text]...], masked: {TYPE: n}}), outside the
                                        hash, and is stored encrypted and purged apart
``aiguard.hash.key_id``                 ``null``: plain SHA-256; else the first 16 hex digits
                                        of SHA-256(key): which ``audit.hashKeySecretRef``
                                        key the HMACs used
``aiguard.unscanned``                   {kind: count} of parts no guardrail could read
``aiguard.decisions``                   every decision: {stage, allowed, rule, reason,
                                        enforced}; reasons never carry content
``aiguard.findings``                    guardrail findings as counts: {direction,
                                        guardrail, type, action, count}
``aiguard.failover.path``               each upstream attempt: {provider, model, outcome,
                                        status, seconds}
``tls.protocol.name``                   ``tls`` when the upstream used TLS
``tls.protocol.version``                ``1.3`` …
``tls.cipher``                          the negotiated cipher suite (OpenSSL name)
``http.response.status_code``           the status the client got
``aiguard.outcome``                     ``ok`` or the reason code (``access_denied``…)
``error.type``                          = outcome when not ``ok``; ``null`` otherwise
``aiguard.latency_seconds``             request arrival to the event (response end)
``aiguard.upstream_seconds``            time spent in upstream attempts
``aiguard.ttft_seconds``                time to the first output token (streams)
``aiguard.policy.name``                 the AIPolicy (in ``k8s.namespace.name``)
``aiguard.policy.hash``                 the compiled policy's content hash
``aiguard.mode``                        ``enforce`` | ``audit``
======================================  ===================================================

Content hashes: :func:`content_hash` over :func:`canonical_segments` — the JSON array of
``[role, text]`` pairs in request order, canonical JSON, UTF-8 — with SHA-256
(``sha256:<hex>``) or, when the policy names ``audit.hashKeySecretRef``, HMAC-SHA-256 with
that key (``hmac-sha256:<hex>``) so that short secrets cannot be recovered by guessing. The
text is as it stood when the request was decided (after any redaction in ``enforce`` mode),
i.e. what was sent upstream; output text as the client received it.

Chains and their checking
-------------------------
:func:`verify_chain` is pure: events (parsed JSON objects) in, :class:`Problem` list out,
each naming the exact event (instance, sequence, id, position in the input). Retention
purges delete a prefix of a chain; the collector records each purge, and a
:class:`ChainStart` built from that record (:meth:`PurgeRecord.starts`) says where the chain
now legitimately begins.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import itertools
import json
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

SCHEMA: Final = "aiguard.dev/audit/v1"
PURGE_SCHEMA: Final = "aiguard.dev/audit-purge/v1"
GENESIS: Final = "sha256:" + "0" * 64
"""``prev_hash`` of an instance's first event (sequence 1)."""
HASH_PREFIX: Final = "sha256:"

# The collector.
COLLECTOR_PORT: Final = 15093
COLLECTOR_AUDIENCE: Final = "aiguard.dev/collector"
"""Audience of the projected ServiceAccount token a sidecar presents to the collector."""
COLLECTOR_TOKEN_FILE: Final = "/var/run/secrets/aiguard/collector/token"  # noqa: S105 - a path
"""Where injection mounts that token in the sidecar (a projected volume)."""
EVENTS_PATH: Final = "/v1/events"
APPROVALS_PATH: Final = "/v1/approvals"
"""Human review: sidecars ``POST`` approval requests, then long-poll ``GET {path}/{ns}/{name}``."""
MAX_BATCH_EVENTS: Final = 1000
"""Most events one ``POST /v1/events`` may carry."""
MAX_BATCH_BYTES: Final = 8 << 20

# Envelope keys.
ID: Final = "id"
TIME: Final = "time"
INSTANCE: Final = "instance"
SEQUENCE: Final = "sequence"
PREV_HASH: Final = "prev_hash"
HASH: Final = "hash"
ENVELOPE: Final = ("schema", ID, TIME, INSTANCE, SEQUENCE, PREV_HASH, HASH)

# Attribute keys used by code (the sidecar writes them, the collector indexes them).
NAMESPACE: Final = "k8s.namespace.name"
POD: Final = "k8s.pod.name"
SERVICE_ACCOUNT: Final = "aiguard.workload.service_account"
POLICY_NAME: Final = "aiguard.policy.name"
CAPTURE: Final = "aiguard.capture"
"""Redacted content (``audit.contentCapture: redacted``): travels with the event from the sidecar
to the collector but is not part of the hashed event; the collector stores it encrypted,
apart from the event, and purges it sooner. The event carries :data:`CAPTURE_HASH`."""
CAPTURE_HASH: Final = "aiguard.capture.hash"
MODEL_DRIFT: Final = "aiguard.model.drift"


# --------------------------------------------------------------------------- canonical form


def canonical(obj: Any) -> bytes:
    """The canonical JSON bytes of ``obj`` (sorted keys, compact, UTF-8, no ASCII escaping)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(event: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` over the canonical JSON of ``event`` without its ``hash`` key (and
    without :data:`CAPTURE`, which the event binds through :data:`CAPTURE_HASH`)."""
    body = {k: v for k, v in event.items() if k not in (HASH, CAPTURE)}
    return HASH_PREFIX + hashlib.sha256(canonical(body)).hexdigest()


def capture_hash(capture: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of a content capture."""
    return HASH_PREFIX + hashlib.sha256(canonical(capture)).hexdigest()


def hash_and_line(event: Mapping[str, Any]) -> tuple[str, bytes]:
    """The hash of ``event`` (which has no ``hash`` key) and the canonical JSON line of the
    event with it, encoding the body once: sorted keys put ``hash`` between the keys that
    sort before it and those after, so both documents are spliced from the same two parts.
    A :data:`CAPTURE` is left out of the hash and put into the line."""
    if CAPTURE in event:
        own = event_hash(event)
        return own, canonical({**event, HASH: own}) + b"\n"
    low = canonical({k: v for k, v in event.items() if k < HASH})[1:-1]
    high = canonical({k: v for k, v in event.items() if k > HASH})[1:-1]
    body = b"{" + b",".join(x for x in (low, high) if x) + b"}"
    own = HASH_PREFIX + hashlib.sha256(body).hexdigest()
    item = b'"hash":"' + own.encode() + b'"'
    return own, b"{" + b",".join(x for x in (low, item, high) if x) + b"}\n"


def canonical_segments(segments: Iterable[tuple[str, str]]) -> bytes:
    """The canonical form content hashes are taken over: ``[[role, text], ...]``."""
    return canonical([[role, text] for role, text in segments])


def content_hash(segments: Iterable[tuple[str, str]], key: bytes | None = None) -> str:
    """SHA-256 (``sha256:…``) or, with ``key``, HMAC-SHA-256 (``hmac-sha256:…``) of the
    canonical form of ``segments``. Auditors recompute it from a prompt they hold."""
    data = canonical_segments(segments)
    if key:
        return "hmac-sha256:" + hmac.new(key, data, hashlib.sha256).hexdigest()
    return HASH_PREFIX + hashlib.sha256(data).hexdigest()


def key_id(key: bytes) -> str:
    """Names a hash key without revealing it (first 16 hex digits of its SHA-256)."""
    return hashlib.sha256(key).hexdigest()[:16]


def format_time(ts: float) -> str:
    """Unix seconds → ``2025-06-01T12:00:00.123456Z``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str) -> float:
    """RFC 3339 (``Z`` or an offset) → Unix seconds. ValueError when it is not one."""
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        raise ValueError(f"time {value!r} has no zone")
    return dt.timestamp()


# --------------------------------------------------------------------------- ids


class EventIds:
    """UUIDv7 (RFC 9562) generator, strictly increasing within a process even when the clock
    stands still or steps back (the 12-bit ``rand_a`` field is a counter within a
    millisecond, method 1 of the RFC). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ms = 0
        self._counter = 0

    def new(self, now: float | None = None) -> str:
        ms = int((time.time() if now is None else now) * 1000)
        with self._lock:
            if ms <= self._ms:
                ms = self._ms
                self._counter += 1
                if self._counter > 0xFFF:  # 4096 ids in one millisecond: borrow the next
                    ms += 1
                    self._counter = 0
            else:
                self._counter = 0
            self._ms = ms
            counter = self._counter
        rand_b = int.from_bytes(os.urandom(8)) & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
_CONTENT_HASH = re.compile(r"^(sha256|hmac-sha256):[0-9a-f]{64}$")


def instance_id(namespace: str, pod: str, boot_id: str) -> str:
    return f"{namespace}/{pod}/{boot_id}"


# --------------------------------------------------------------------------- verification


class ProblemKind(enum.StrEnum):
    INVALID = "invalid"  # not an audit event (missing or malformed envelope)
    EDITED = "edited"  # its hash does not match its content
    BROKEN_LINK = "broken_link"  # prev_hash is not the previous event's hash
    GAP = "gap"  # sequences missing before this event
    REORDERED = "reordered"  # appears after an event with a higher sequence
    DUPLICATE = "duplicate"  # the same event (id) more than once
    CONFLICT = "conflict"  # two different events with one sequence (a fork)
    TRUNCATED = "truncated"  # the chain ends before the head the collector saw


@dataclass(frozen=True, slots=True)
class ChainStart:
    """Where a chain legitimately begins when a purge deleted its prefix."""

    sequence: int
    prev_hash: str
    purge_id: str | None = None


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    instance: str
    sequence: int | None
    id: str | None
    position: int | None
    """Index of the event in the input (0-based; a line number minus one for a file)."""
    message: str

    def __str__(self) -> str:
        at = f"{self.instance} #{self.sequence}" if self.sequence is not None else self.instance
        pos = f" (input item {self.position + 1})" if self.position is not None else ""
        ident = f" id {self.id}" if self.id else ""
        return f"{self.kind.value}: {at}{ident}{pos}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "instance": self.instance,
            "sequence": self.sequence,
            "id": self.id,
            "position": self.position,
            "message": self.message,
        }


@dataclass(frozen=True, slots=True)
class _Seen:
    position: int
    sequence: int
    id: str
    prev_hash: str
    hash: str


def _envelope(event: Any) -> tuple[str, int, str, str, str] | str:
    """(instance, sequence, id, prev_hash, hash) or the reason the envelope is unusable."""
    if not isinstance(event, Mapping):
        return "not a JSON object"
    if event.get("schema") != SCHEMA:
        return f"schema is {event.get('schema')!r}, expected {SCHEMA!r}"
    inst, seq, ident = event.get(INSTANCE), event.get(SEQUENCE), event.get(ID)
    prev, own = event.get(PREV_HASH), event.get(HASH)
    if not isinstance(inst, str) or not inst:
        return "no instance"
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return f"sequence {seq!r} is not a positive integer"
    if not isinstance(ident, str) or not ident:
        return "no id"
    if not isinstance(prev, str) or not isinstance(own, str):
        return "no prev_hash or hash"
    return inst, seq, ident, prev, own


def verify_chain(
    events: Iterable[Any],
    *,
    starts: Mapping[str, ChainStart] | None = None,
    heads: Mapping[str, int] | None = None,
) -> list[Problem]:
    """Check hash chains; return every problem found (empty: the chains are intact).

    ``events`` are parsed JSON objects in the order they were stored or exported (each
    instance's events in sequence order; instances may interleave). Per instance:

    * each event's ``hash`` must match its content (else ``edited``);
    * the same ``id`` twice is a ``duplicate``; two different events with one sequence a
      ``conflict``; an event after one with a higher sequence ``reordered`` (the rest of the
      check then uses sequence order, so a reordering alone reports only itself);
    * the chain must start at sequence 1 with :data:`GENESIS`, or where ``starts`` (from
      purge records) says; each next event must have the next sequence (else ``gap``) and
      link to its predecessor's hash (else ``broken_link``);
    * ``heads`` (instance → the highest sequence the collector received): a chain that ends
      before it was ``truncated`` (deleted at the end).
    """
    starts = starts or {}
    problems: list[Problem] = []
    chains: dict[str, list[_Seen]] = {}
    for position, event in enumerate(events):
        env = _envelope(event)
        if isinstance(env, str):
            inst = event.get(INSTANCE) if isinstance(event, Mapping) else None
            problems.append(
                Problem(
                    ProblemKind.INVALID,
                    str(inst or "?"),
                    None,
                    None,
                    position,
                    env,
                )
            )
            continue
        inst, seq, ident, prev, own = env
        actual = event_hash(event)
        if actual != own:
            problems.append(
                Problem(
                    ProblemKind.EDITED,
                    inst,
                    seq,
                    ident,
                    position,
                    f"content does not match its hash (stored {own[:19]}…, computed "
                    f"{actual[:19]}…): the event was changed after it was written",
                )
            )
        chains.setdefault(inst, []).append(_Seen(position, seq, ident, prev, own))

    for inst, seen in chains.items():
        problems.extend(_verify_one(inst, seen, starts.get(inst), (heads or {}).get(inst)))
    problems.sort(key=lambda p: p.position if p.position is not None else 1 << 62)
    return problems


def _verify_one(
    inst: str, seen: Sequence[_Seen], start: ChainStart | None, head: int | None
) -> list[Problem]:
    out: list[Problem] = []
    highest: _Seen | None = None
    by_id: dict[str, _Seen] = {}
    by_seq: dict[int, _Seen] = {}
    for s in seen:
        if s.id in by_id:
            first = by_id[s.id]
            out.append(
                Problem(
                    ProblemKind.DUPLICATE,
                    inst,
                    s.sequence,
                    s.id,
                    s.position,
                    f"the same event as input item {first.position + 1}",
                )
            )
            continue
        by_id[s.id] = s
        if s.sequence in by_seq:
            other = by_seq[s.sequence]
            out.append(
                Problem(
                    ProblemKind.CONFLICT,
                    inst,
                    s.sequence,
                    s.id,
                    s.position,
                    f"sequence {s.sequence} is also event {other.id} (input item "
                    f"{other.position + 1}): two different events claim one place",
                )
            )
            continue
        by_seq[s.sequence] = s
        if highest is not None and s.sequence < highest.sequence:
            out.append(
                Problem(
                    ProblemKind.REORDERED,
                    inst,
                    s.sequence,
                    s.id,
                    s.position,
                    f"appears after sequence {highest.sequence} (input item "
                    f"{highest.position + 1})",
                )
            )
        if highest is None or s.sequence > highest.sequence:
            highest = s

    ordered = sorted(by_seq.values(), key=lambda s: s.sequence)
    if not ordered:
        return out
    first = ordered[0]
    if first.sequence == 1:
        expected_prev: str | None = GENESIS
        origin = "the genesis hash"
    elif start is not None and first.sequence == start.sequence:
        expected_prev = start.prev_hash
        origin = f"the last event deleted by purge {start.purge_id}"
    else:
        expected_prev = None
        begin = start.sequence if start is not None and start.sequence < first.sequence else 1
        why = (
            f"the chain starts at {begin} (purge {start.purge_id})"
            if start is not None and start.sequence < first.sequence
            else "no purge record covers them"
        )
        out.append(
            Problem(
                ProblemKind.GAP,
                inst,
                first.sequence,
                first.id,
                first.position,
                f"events {begin}..{first.sequence - 1} are missing before it ({why})",
            )
        )
    if expected_prev is not None and first.prev_hash != expected_prev:
        out.append(
            Problem(
                ProblemKind.BROKEN_LINK,
                inst,
                first.sequence,
                first.id,
                first.position,
                f"prev_hash is not {origin}",
            )
        )
    for before, s in itertools.pairwise(ordered):
        if s.sequence != before.sequence + 1:
            missing = (
                f"event {before.sequence + 1} is"
                if s.sequence == before.sequence + 2
                else f"events {before.sequence + 1}..{s.sequence - 1} are"
            )
            out.append(
                Problem(
                    ProblemKind.GAP,
                    inst,
                    s.sequence,
                    s.id,
                    s.position,
                    f"{missing} missing before it (deleted, or not yet delivered)",
                )
            )
        elif s.prev_hash != before.hash:
            out.append(
                Problem(
                    ProblemKind.BROKEN_LINK,
                    inst,
                    s.sequence,
                    s.id,
                    s.position,
                    f"prev_hash does not match the hash of sequence {before.sequence} "
                    f"(id {before.id}): that event was replaced or edited and re-hashed",
                )
            )
    last = ordered[-1]
    if head is not None and last.sequence < head:
        out.append(
            Problem(
                ProblemKind.TRUNCATED,
                inst,
                last.sequence,
                last.id,
                last.position,
                f"the chain ends at {last.sequence} but the collector received up to {head}",
            )
        )
    return out


# --------------------------------------------------------------------------- the schema

# The event and purge-record models (pydantic) live in :mod:`aiguard_api.audit_records` and are
# loaded on first use: ``audit.AuditEvent`` works as before, and the sidecar, which imports this
# module for its constants and hashing only, never loads pydantic.
_RECORDS: Final = frozenset(
    {
        "Attempt",
        "AuditEvent",
        "DecisionRecord",
        "FindingCount",
        "ModelDrift",
        "PurgeRecord",
        "PurgedChain",
    }
)

if TYPE_CHECKING:
    from aiguard_api.audit_records import (
        Attempt as Attempt,
    )
    from aiguard_api.audit_records import (
        AuditEvent as AuditEvent,
    )
    from aiguard_api.audit_records import (
        DecisionRecord as DecisionRecord,
    )
    from aiguard_api.audit_records import (
        FindingCount as FindingCount,
    )
    from aiguard_api.audit_records import (
        ModelDrift as ModelDrift,
    )
    from aiguard_api.audit_records import (
        PurgedChain as PurgedChain,
    )
    from aiguard_api.audit_records import (
        PurgeRecord as PurgeRecord,
    )


def __getattr__(name: str) -> Any:
    if name in _RECORDS:
        from aiguard_api import audit_records

        return getattr(audit_records, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

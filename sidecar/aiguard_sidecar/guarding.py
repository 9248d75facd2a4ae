"""The policy's guardrails behind the pipeline's hooks (``hooks.py``), over the engine
(``guardrails/engine.py``): the default guardrails of a real ``aiguard-sidecar``.

::

    factory = engine_guardrails                  # a hooks.GuardrailsFactory
    g = factory(cfg)                             # cheap: nothing is compiled yet
    await g.prepare()                            # runtime.build: engines built in a worker
                                                 # thread (Hyperscan compiles take seconds)

Input: every exchange segment (system, user, assistant, tool calls, tool results, documents)
plus the request facts (size, max tokens, parameters, tools) and the unscannable counts go
through the input engine. BLOCK → a block naming the guardrail and type; REVIEW → a
``review`` decision: the pipeline holds the request for a person (``review.py``), with any
redactions already applied; REDACT → the edits go back through the segments' locators
(``Exchange.set_text``). In ``mode: audit`` nothing is rewritten. Output cannot be held for
review: an output REVIEW is a block.

Output: a JSON response is scanned whole. A stream is scanned at every event carrying text;
events are held and released with their text rewritten by the redactions found so far (a match
across chunk boundaries is caught while it is still held). When they are released depends on
``guardrails.output.streaming.release``:

* ``window``: events are held while no more than ``holdbackChars`` characters are held (the
  oldest goes out once more than that follow it);
* ``adaptive`` (default): an event goes out as soon as none of its text can be the unfinished
  start of a value the scanners look for (:meth:`_StreamGuard._safe_cut`): prose flows word by
  word (a word goes once whitespace or ``!?,;)`` follows it: until then it may still become an
  email address or a key), a run with digits waits until ``NUMBER_CONTEXT`` characters follow
  it (numbers written in groups, context words after them), and a match touching the end (it
  may still grow) waits. Never more than ``holdbackChars`` is held. Chains that scan for
  shapes the sidecar cannot know (NER, custom patterns, deny lists, deny keywords) always use
  ``window``.

An event without text (finish, usage, terminal) releases everything held. A block ends the
stream (the pipeline writes the provider's error event); held text is never sent.

Tool-call arguments stream as deltas too (their slots hold JSON source). Closing events that
repeat a slot's whole text (the Responses API's ``*.done``, ``response.completed``) are set to
the text the client was sent.

Pseudonyms (``pii.pseudonymize``): the input verdict's placeholder → value mapping stays on
the exchange for this request only (enforce mode); the originals are put back into the
response the app receives, JSON (:func:`restore_response`) or streamed (a replacement in the
holdback, so a placeholder cut across events is restored too). Audit counts them as
``("pii", ENTITY, "restore")``; the mapping itself is never logged, audited or captured.

External moderation endpoint (``moderation.endpointSecretRef``, ``moderation_endpoint.py``):
asked after the local engine, about the text as it redacted it, unless the engine already
blocks. A streamed response is sent to it once, whole, when the provider's stream ends
(``_StreamGuard.finish``): the text has reached the client by then (the finish event released
the holdback), but a flagged answer never completes — its terminal event gives way to an error
event, which the SDKs raise, and the audit event records the block.
Its flagged categories take the policy's per-category action; an error or timeout is
``failureMode``'s: closed raises (the pipeline answers 503; in a stream: the error event;
in ``mode: audit`` a recorded block, not enforced), open is an ``endpoint_error`` finding,
counted and allowed.

Engines are cached process-wide by the guardrails section of the policy (and the content of
the Secrets it read), so a reload that changes only routes or limits does not recompile.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiguard_api.errors import ConfigError
from aiguard_api.policy_types import FailureMode, Mode, StreamRelease
from aiguard_api.view import AIPolicySpec, OutputGuardrails, SecretKeyRef, SidecarConfig
from aiguard_sidecar import hooks, review
from aiguard_sidecar.exchange import Exchange, ResponseInfo, StreamEvent, TextDelta, set_at
from aiguard_sidecar.exchange import Role as ExRole
from aiguard_sidecar.exchange import Segment as ExSegment
from aiguard_sidecar.guardrails import patterns, pii
from aiguard_sidecar.guardrails.base import (
    Decision,
    Direction,
    Finding,
    Replacement,
    Role,
    ScanContext,
    Segment,
    Verdict,
)
from aiguard_sidecar.guardrails.engine import Engine, Engines, build_engines
from aiguard_sidecar.guardrails.validation import RequestFacts
from aiguard_sidecar.moderation_endpoint import (
    ENDPOINT_ERROR,
    EndpointError,
    ModerationEndpoint,
    error_verdict,
)

log = logging.getLogger("aiguard.sidecar.guarding")

OFF_LOOP_CHARS: Final = 16384
"""Requests with more text than this are scanned in a worker thread, not on the event loop."""
REVIEW_REASON: Final = "output cannot be held for human review: blocked"
RESTORE: Final = "restore"
"""The action of the ``("pii", ENTITY, "restore", n)`` counts: pseudonyms put back."""
_PARTIAL: Final = re.compile(r"<[A-Z0-9_]*")
_WARMUP: Final = "warm up: bob@example.com 4111 1111 1111 1111 AKIAIOSFODNN7EXAMPLE ignore that"
_CACHE_SIZE: Final = 4


# ── building engines (off the event loop, cached) ────────────────────────────────────────────


@dataclass(slots=True)
class _Built:
    engines: Engines
    secrets: dict[SecretKeyRef, bytes | None]  # what the build read, to detect rotation


_cache: collections.OrderedDict[str, _Built] = collections.OrderedDict()
_cache_lock = threading.Lock()


SecretPath = Callable[[str, str], Path]


def _read_file(secret_path: SecretPath, ref: SecretKeyRef) -> bytes | None:
    try:
        return secret_path(ref.name, ref.key).read_bytes()
    except OSError:
        return None


def build_cached(spec: AIPolicySpec, secret_path: SecretPath) -> Engines:
    """Build (or reuse) the engines of ``spec``. Blocking: call it in a worker thread."""
    # The view's repr (dataclasses: aiguard_api.view) names every field and value, nested
    # sections too: equal specs, equal repr.
    key = hashlib.sha256(f"{spec.failure_mode.value}\n{spec.guardrails!r}".encode()).hexdigest()
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and all(_read_file(secret_path, r) == v for r, v in hit.secrets.items()):
            _cache.move_to_end(key)
            return hit.engines
        read: dict[SecretKeyRef, bytes | None] = {}

        def read_secret(ref: SecretKeyRef) -> bytes:
            data = _read_file(secret_path, ref)
            read[ref] = data
            if data is None:
                raise ConfigError(f"Secret {ref.name} key {ref.key} is missing")
            return data

        engines = build_engines(spec, read_secret=read_secret)
        for engine, role in ((engines.input, Role.USER), (engines.output, Role.OUTPUT)):
            # First calls load lazy state (tables, classifier weights): not on a request.
            engine.check([Segment(0, _WARMUP, role)], ScanContext(engine.direction))
        _cache[key] = _Built(engines, read)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return engines


def engine_guardrails(cfg: SidecarConfig) -> hooks.Guardrails:
    """The default :data:`~aiguard_sidecar.hooks.GuardrailsFactory` of the sidecar."""
    return EngineGuardrails(cfg)


# ── verdict → hook decision ──────────────────────────────────────────────────────────────────


def _counts(findings: Sequence[Finding]) -> tuple[tuple[str, str, str, int], ...]:
    if not findings:
        return ()
    c = collections.Counter((f.guardrail, f.type, f.action) for f in findings)
    return tuple((g, t, a, n) for (g, t, a), n in sorted(c.items()))


def _rule(side: str, verdict: Verdict) -> str:
    name = verdict.reason.split(":", 1)[0].strip() if verdict.reason else ""
    if not name or " " in name:
        top = [f for f in verdict.findings if f.action in ("block", "review")] or verdict.findings
        name = top[0].guardrail if top else ""
    return f"guardrails.{side}.{name}" if name else f"guardrails.{side}"


def _summary(findings: Sequence[Finding]) -> str:
    kinds = sorted({f"{f.guardrail}: {f.type} ({f.action})" for f in findings})
    return "; ".join(kinds[:8]) + ("; ..." if len(kinds) > 8 else "")


def decision_of(side: str, verdict: Verdict) -> hooks.GuardDecision:
    """The hook decision for an engine verdict (edits are the caller's business)."""
    counts = _counts(verdict.findings)
    n = len(verdict.findings)
    if verdict.decision is Decision.BLOCK:
        return hooks.GuardDecision(
            hooks.Verdict.BLOCK, _rule(side, verdict), verdict.reason, n, counts
        )
    if verdict.decision is Decision.REVIEW and side == "input":
        return hooks.GuardDecision(
            hooks.Verdict.REVIEW, _rule(side, verdict), verdict.reason, n, counts
        )
    if verdict.decision is Decision.REVIEW:
        reason = f"{verdict.reason}; {REVIEW_REASON}" if verdict.reason else REVIEW_REASON
        return hooks.GuardDecision(hooks.Verdict.BLOCK, _rule(side, verdict), reason, n, counts)
    if not n:
        return hooks.ALLOW
    return hooks.GuardDecision(
        hooks.Verdict.ALLOW, _rule(side, verdict), _summary(verdict.findings), n, counts
    )


# ── request facts ────────────────────────────────────────────────────────────────────────────


def _tool_name(tool: Any) -> str | None:
    if not isinstance(tool, dict):
        return None
    fn = tool.get("function")
    name = fn.get("name") if isinstance(fn, dict) else tool.get("name")
    return name if isinstance(name, str) else (str(tool.get("type")) if "type" in tool else None)


def request_facts(exchange: Exchange) -> RequestFacts:
    body = exchange.body or {}
    max_tokens = None
    for k in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        v = body.get(k)
        if isinstance(v, int) and not isinstance(v, bool):
            max_tokens = v if max_tokens is None else max(max_tokens, v)
    messages = body.get("messages", body.get("input"))
    tools = body.get("tools")
    names = tuple(n for t in tools if (n := _tool_name(t))) if isinstance(tools, list) else ()
    return RequestFacts(
        body_bytes=len(exchange.raw),
        max_tokens=max_tokens,
        n_messages=len(messages) if isinstance(messages, list) else int(messages is not None),
        parameters=frozenset(body),
        tools=names,
    )


# ── the hooks ────────────────────────────────────────────────────────────────────────────────


class EngineGuardrails:
    """:class:`~aiguard_sidecar.hooks.Guardrails` over one policy version's engines."""

    def __init__(self, cfg: SidecarConfig) -> None:
        self.cfg = cfg
        self.enforce = cfg.spec.mode is Mode.ENFORCE
        self.holdback = cfg.spec.guardrails.output.streaming.holdback_chars
        self.adaptive = adaptive_release(cfg.spec.guardrails.output)
        review_cfg = cfg.spec.guardrails.input.review
        self.review_tools = review_cfg.enabled and bool(review_cfg.tools)
        self.restore_tools = cfg.spec.guardrails.input.pii.restore_tool_arguments
        self._engines: Engines | None = None
        self._endpoints: dict[str, ModerationEndpoint] = {}
        """External moderation endpoints by side (``moderation_endpoint.py``)."""
        self.failure_open = cfg.spec.failure_mode is FailureMode.OPEN
        self._output_ctx: dict[str | None, ScanContext] = {}
        """The scan context of streamed output by model (immutable: shared by streams)."""

    async def prepare(self) -> None:
        """Build the engines in a worker thread (``runtime.build`` awaits this)."""
        loop = asyncio.get_running_loop()
        try:
            self._engines = await loop.run_in_executor(
                None, build_cached, self.cfg.spec, self.cfg.secret_path
            )
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"spec.guardrails: cannot build the guardrails: {e}") from e
        for side in ("input", "output"):
            moderation = getattr(self.cfg.spec.guardrails, side).moderation
            if moderation.enabled and moderation.endpoint_secret_ref is not None:
                self._endpoints[side] = await ModerationEndpoint.load(
                    moderation, self.cfg.secret_path, side
                )
        for engine in (self._engines.input, self._engines.output):
            if engine.unavailable:
                log.warning(
                    "guardrails enabled but unavailable; failureMode decides",
                    extra={
                        "fields": {
                            "direction": engine.direction.value,
                            "guardrails": engine.unavailable,
                        }
                    },
                )

    @property
    def engines(self) -> Engines:
        if self._engines is None:
            raise RuntimeError("guardrails not prepared")
        return self._engines

    async def check_input(self, exchange: Exchange) -> hooks.GuardDecision:
        engine = self.engines.input
        # No scanner in the chain: validation and the unscannable count still apply, but no
        # segment copies are made (engine.check returns before reading them).
        segments = (
            [Segment(i, s.text, Role(s.role.value)) for i, s in enumerate(exchange.segments)]
            if engine.guardrails
            else []
        )
        unscannable = {k.value: n for k, n in exchange.unscanned.items()}
        tools = review.tool_names(exchange) if self.review_tools else frozenset()
        ctx = ScanContext(Direction.INPUT, exchange.model or None, tools)
        verdict = engine.validate(request_facts(exchange))
        if exchange.input_chars > OFF_LOOP_CHARS or engine.cpu_heavy:
            loop = asyncio.get_running_loop()
            scanned = await loop.run_in_executor(
                None, lambda: engine.check(segments, ctx, unscannable=unscannable)
            )
        else:
            scanned = engine.check(segments, ctx, unscannable=unscannable)
        verdict.merge(scanned)
        await self._ask_endpoint("input", verdict, exchange.segments)
        decision = decision_of("input", verdict)
        if verdict.decision in (Decision.REDACT, Decision.REVIEW) and self.enforce:
            for index, text in verdict.edits.items():  # an approved request goes on redacted
                exchange.set_text(exchange.segments[index], text)
            if verdict.pseudonyms:  # restored in the response (memory only, this request)
                exchange.pseudonyms = verdict.pseudonyms
        return decision

    async def check_output(self, exchange: Exchange, response: ResponseInfo) -> hooks.GuardDecision:
        decision = await self._check_output(exchange, response)
        if exchange.pseudonyms and not decision.blocked and response.doc is not None:
            restored = restore_response(response, exchange.pseudonyms, tools=self.restore_tools)
            if restored:
                decision = dataclasses.replace(decision, counts=decision.counts + restored)
        return decision

    async def _ask_endpoint(
        self, side: str, verdict: Verdict, segments: Sequence[ExSegment]
    ) -> None:
        """The external moderation endpoint's findings, merged into ``verdict``. It is asked
        after the local guardrails, about the text as they redacted it, and not at all when
        they already block. An error: ``failureMode`` closed raises it (the pipeline answers
        503 in the client's format); open counts it as a finding and allows."""
        endpoint = self._endpoints.get(side)
        if endpoint is None or verdict.decision is Decision.BLOCK:
            return
        texts = [
            Segment(i, verdict.edits.get(i, s.text), Role(s.role.value))
            for i, s in enumerate(segments)
        ]
        try:
            remote = await endpoint.check(texts)
        except EndpointError as e:
            if self.cfg.spec.failure_mode is FailureMode.OPEN:
                remote = error_verdict(side, e)
            elif self.enforce:
                raise
            else:  # mode audit: the block closed would be, recorded and not enforced
                remote = error_verdict(side, e, closed=True)
        verdict.findings.extend(remote.findings)
        if remote.decision > verdict.decision:
            verdict.decision = remote.decision
            verdict.reason = remote.reason

    async def _check_output(
        self, exchange: Exchange, response: ResponseInfo
    ) -> hooks.GuardDecision:
        engine = self.engines.output
        if not engine.guardrails and "output" not in self._endpoints:
            return hooks.ALLOW
        segments = [Segment(i, s.text, Role.OUTPUT) for i, s in enumerate(response.segments)]
        ctx = ScanContext(Direction.OUTPUT, response.served_model or exchange.model or None)
        if response.output_chars > OFF_LOOP_CHARS or engine.cpu_heavy:
            loop = asyncio.get_running_loop()
            verdict = await loop.run_in_executor(None, lambda: engine.check(segments, ctx))
        else:
            verdict = engine.check(segments, ctx)
        await self._ask_endpoint("output", verdict, response.segments)
        decision = decision_of("output", verdict)
        if verdict.decision is Decision.REDACT and self.enforce and response.doc is not None:
            for index, text in verdict.edits.items():
                response.set_text(response.segments[index], text)
        return decision

    def output_stream(self, exchange: Exchange) -> hooks.StreamGuard | None:
        engine = self.engines.output
        endpoint = self._endpoints.get("output")
        if not engine.guardrails and not exchange.pseudonyms and endpoint is None:
            return None
        model = exchange.model or None
        ctx = self._output_ctx.get(model)
        if ctx is None:
            if len(self._output_ctx) >= 64:  # model names come from requests: bounded
                self._output_ctx.clear()
            ctx = self._output_ctx[model] = ScanContext(Direction.OUTPUT, model)
        return _StreamGuard(
            engine,
            self.holdback,
            model,
            exchange.pseudonyms,
            restore_tools=self.restore_tools,
            endpoint=endpoint,
            failure_open=self.failure_open,
            adaptive=self.adaptive,
            ctx=ctx,
        )

    async def close(self) -> None:
        # Engines are shared through the cache; only the endpoint clients are this policy's.
        endpoints, self._endpoints = list(self._endpoints.values()), {}
        for endpoint in endpoints:
            await endpoint.close()


# ── pseudonyms: restoring the originals in the response ──────────────────────────────────────


def _escaped(mapping: Mapping[str, str]) -> dict[str, str]:
    """The values as they must appear inside JSON source (tool-call arguments)."""
    return {k: json.dumps(v, ensure_ascii=False)[1:-1] for k, v in mapping.items()}


def _restore_counts(found: Iterable[str]) -> tuple[tuple[str, str, str, int], ...]:
    c = collections.Counter(pii.entity_of(ph) for ph in found)
    return tuple(("pii", entity, RESTORE, n) for entity, n in sorted(c.items()))


def restore_response(
    response: ResponseInfo, mapping: Mapping[str, str], *, tools: bool = True
) -> tuple[tuple[str, str, str, int], ...]:
    """Put the originals back into a JSON response's body (its output segments: text and
    tool-call arguments). The segments keep the provider's text (placeholders), so nothing
    recorded about the response (capture, audit) holds a restored value. Returns the counts
    ``("pii", ENTITY, "restore", n)``. ``tools`` off: tool-call arguments keep them."""
    if response.doc is None:
        return ()
    escaped: dict[str, str] | None = None
    found: list[str] = []
    for seg in response.segments:
        if not tools and seg.role is ExRole.TOOL_CALL:
            continue
        spans = pii.placeholders(seg.text, mapping)
        if not spans:
            continue
        if seg.json_text and escaped is None:
            escaped = _escaped(mapping)
        values = escaped if seg.json_text and escaped is not None else mapping
        text = patterns.apply_replacements(seg.text, [(a, b, values[ph]) for a, b, ph in spans])
        set_at(response.doc, seg.path, text)
        response.modified = True
        found.extend(ph for _, _, ph in spans)
    return _restore_counts(found)


# ── streams ──────────────────────────────────────────────────────────────────────────────────

# adaptive release: characters that must follow a run with digits before it goes out (a card
# or phone number written in groups, an IBAN, context words such as "is my SSN" after it)
NUMBER_CONTEXT: Final = 32
_DIGITS_RUN: Final = re.compile(r"\S*\d\S*")
# a last run with no whitespace after it is a word still being written ("jane" may become
# "jane.doe@example.com") unless a character no email, key or number continues with ends it
_FINISHED_RUN: Final = re.compile(r"[^\s\d@]*[!?,;)\"]")
_OPEN_RUN: Final = re.compile(r"\S*\Z")
# cheap answers first: no digit at all means no run with digits; a last character that is
# whitespace means no open run (the same \d and \s as above)
_DIGIT: Final = re.compile(r"\d")
_SPACE: Final = re.compile(r"\s")


def adaptive_release(output: OutputGuardrails) -> bool:
    """``release: adaptive`` applies only to chains whose match shapes are known."""
    pii, deny = output.pii, output.deny
    unknown_shapes = pii.ner.enabled or pii.custom_patterns or pii.deny_lists
    return output.streaming.release is StreamRelease.ADAPTIVE and not (
        unknown_shapes or deny.keywords or deny.patterns
    )


@dataclass(slots=True)
class _Slot:
    index: int
    json_text: bool = False  # JSON source (tool-call arguments): restored values are escaped
    text: str = ""
    sent: int = 0  # original characters released so far
    reps: list[Replacement] = field(default_factory=list)  # absolute original coordinates
    # Replacements wholly before the scan window: released, never rescanned; only a closing
    # snapshot (the whole text again) reads them. Kept apart so that the per-event work
    # (rewrite, safe cut, merging a scan's replacements) stays within the window: a long
    # answer full of restored placeholders is not quadratic.
    done: list[Replacement] = field(default_factory=list)
    seen: set[tuple[str, str, int]] = field(default_factory=set)  # findings already counted
    restores: dict[int, Replacement] = field(default_factory=dict)  # placeholder start → rep


@dataclass(slots=True)
class _Held:
    event: StreamEvent
    ranges: list[tuple[_Slot, int, int]]  # per delta: its slot and original span
    chars: int


class _StreamGuard:
    """Holdback, incremental scans and rewriting of one stream (see the module docstring).

    Pseudonyms (``pseudonyms``: the request's placeholders): a placeholder in the output is
    one more replacement, by the original value (JSON-escaped in tool-call arguments), so one
    split across events is restored like a redaction across chunk boundaries: an event ending
    inside what may still become a placeholder (``<`` and capitals, digits, ``_``, at most
    :data:`pii.MAX_PLACEHOLDER` characters) is held until it is complete or cannot be one,
    whatever the holdback."""

    def __init__(
        self,
        engine: Engine,
        holdback: int,
        model: str | None,
        pseudonyms: Mapping[str, str] | None = None,
        *,
        restore_tools: bool = True,
        endpoint: ModerationEndpoint | None = None,
        failure_open: bool = False,
        adaptive: bool = False,
        ctx: ScanContext | None = None,
    ) -> None:
        self.engine = engine
        self.endpoint = endpoint
        self.failure_open = failure_open
        self.pseudonyms: Mapping[str, str] = pseudonyms or {}
        self.restore_tools = restore_tools  # off: tool-call argument slots (JSON) keep them
        self._escaped: dict[str, str] | None = None
        self.holdback = holdback
        self.adaptive = adaptive
        self.ctx = ctx if ctx is not None else ScanContext(Direction.OUTPUT, model)
        self.slots: dict[int | str, _Slot] = {}
        self.held: collections.deque[_Held] = collections.deque()
        self.held_chars = 0

    def _scan(self, slot: _Slot) -> hooks.GuardDecision:
        start = max(0, slot.sent - self.holdback)
        new: list[Finding] = []
        fresh: list[Replacement] = []
        # None: every guardrail is quiet about the window (nothing in it)
        verdict = self.engine.check_one(slot.index, slot.text[start:], Role.OUTPUT, self.ctx)
        if verdict is not None:
            for f in verdict.findings:
                key = (f.guardrail, f.type, -1 if (f.start, f.end) == (0, 0) else f.start + start)
                if key not in slot.seen:
                    slot.seen.add(key)
                    new.append(f)
            if verdict.decision >= Decision.REVIEW:
                return decision_of("output", verdict)
            edited = slot.index in verdict.edits
            reps = verdict.replacements.get(slot.index)
            if edited and reps is None:
                return hooks.GuardDecision(
                    hooks.Verdict.BLOCK,
                    "guardrails.output",
                    "output redaction cannot be applied to a stream (no spans)",
                    len(new),
                    _counts(new),
                )
            fresh = [Replacement(r.start + start, r.end + start, r.text) for r in reps or ()]
        restored: tuple[tuple[str, str, str, int], ...] = ()
        if self.pseudonyms:
            fresh, restored = self._restores(slot, start, fresh)
        if fresh or slot.reps:
            old = slot.reps
            settled = [r for r in old if r.end <= start]  # (old holds the window's only)
            if settled:
                slot.done.extend(settled)
                old = [r for r in old if r.end > start]
            slot.reps = [r for r in old if r.start < slot.sent] + [
                r for r in fresh if r.start >= slot.sent or r.end > slot.sent
            ]
            slot.reps.sort(key=lambda r: (r.start, r.end))
        if not new:
            return hooks.GuardDecision(counts=restored) if restored else hooks.ALLOW
        return hooks.GuardDecision(
            hooks.Verdict.ALLOW,
            "guardrails.output",
            _summary(new),
            len(new),
            _counts(new) + restored,
        )

    def _restores(
        self, slot: _Slot, start: int, fresh: list[Replacement]
    ) -> tuple[list[Replacement], tuple[tuple[str, str, str, int], ...]]:
        """``fresh`` plus a replacement by the original for each placeholder in the window
        (a redaction overlapping a placeholder gives way); the counts of new ones."""
        if slot.json_text and not self.restore_tools:
            return fresh, ()
        spans = pii.placeholders(slot.text[start:], self.pseudonyms)
        if not spans:
            return fresh, ()
        values = self.pseudonyms
        if slot.json_text:
            if self._escaped is None:
                self._escaped = _escaped(self.pseudonyms)
            values = self._escaped
        found: list[str] = []
        restores: list[Replacement] = []
        known = slot.restores
        for a, b, ph in spans:
            r = known.get(a + start)
            if r is None:  # a placeholder seen for the first time: counted once
                r = known[a + start] = Replacement(a + start, b + start, values[ph])
                found.append(ph)
            restores.append(r)
        if fresh:
            fresh = [
                r for r in fresh if not any(r.start < x.end and x.start < r.end for x in restores)
            ]
        return fresh + restores, _restore_counts(found) if found else ()

    def _unfinished(self, h: _Held) -> bool:
        """``h`` ends inside what may still become a placeholder (not released yet)."""
        for slot, _, b in h.ranges:
            at = slot.text.rfind("<", max(0, b - pii.MAX_PLACEHOLDER), b)
            near = at >= 0 and len(slot.text) - at < pii.MAX_PLACEHOLDER
            if near and _PARTIAL.fullmatch(slot.text, at):
                return True
        return False

    def _snapshots(self, event: StreamEvent) -> None:
        """A closing event repeating a slot's whole text gets the text the client was sent."""
        for snap in event.snapshots:
            slot = self.slots.get(snap.slot)
            if slot is None:
                continue
            every = sorted(slot.done + slot.reps, key=lambda r: (r.start, r.end))
            sent = self._rewrite(slot, 0, slot.sent, every)
            if sent != snap.text:
                event.set_text(snap, sent)

    def _rewrite(
        self, slot: _Slot, a: int, b: int, reps: Sequence[Replacement] | None = None
    ) -> str:
        """The text to send for original span ``[a, b)`` of ``slot`` (``reps``: instead of
        the slot's replacements)."""
        if reps is None:
            reps = slot.reps
        if not reps:
            return slot.text[a:b]
        out: list[str] = []
        pos = a
        for r in reps:
            if r.end <= a and r.start < a:
                continue
            if r.start >= b:
                break
            if r.start >= pos:
                out.append(slot.text[pos : r.start])
                out.append(r.text)
            pos = max(pos, min(r.end, b))
        if pos < b:
            out.append(slot.text[pos:b])
        return "".join(out)

    def _safe_cut(self, slot: _Slot) -> int:
        """Adaptive release: the original offset in ``slot`` before which text may go out."""
        text = slot.text
        end = len(text)
        cut = end
        for r in slot.reps:  # a match reaching the end may still grow (a key, a PEM body)
            if r.end >= end:
                cut = min(cut, r.start)
        lo = max(slot.sent, end - self.holdback)
        if lo >= end:
            return lo  # nothing unsent in the window
        if _DIGIT.search(text, lo) is not None:
            for m in _DIGITS_RUN.finditer(text, lo):
                if m.end() > end - NUMBER_CONTEXT:
                    cut = min(cut, m.start())
                    break
        if _SPACE.match(text, end - 1) is None:  # else the text ends with a finished word
            open_run = _OPEN_RUN.search(text, lo)
            if (
                open_run is not None
                and open_run.group()
                and not _FINISHED_RUN.fullmatch(open_run.group())
            ):
                cut = min(cut, open_run.start())
        return max(cut, lo)  # never more than holdbackChars held

    def _release(self, *, everything: bool) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        cuts: dict[int, int] = {}
        while self.held:
            if not everything:
                if self.pseudonyms and self._unfinished(self.held[0]):
                    break
                if not self.adaptive:
                    if self.held_chars <= self.holdback:
                        break
                else:
                    early = False  # the event reaches past where its slot may be cut
                    for slot, _, b in self.held[0].ranges:
                        cut = cuts.get(slot.index)
                        if cut is None:
                            cut = cuts[slot.index] = self._safe_cut(slot)
                        if b > cut:
                            early = True
                    if early:
                        break
            h = self.held.popleft()
            self.held_chars -= h.chars
            for delta, (slot, a, b) in zip(list(h.event.deltas), h.ranges, strict=True):
                text = self._rewrite(slot, a, b)
                slot.sent = max(slot.sent, b)
                if text != delta.text:
                    h.event.set_text(delta, text)
            out.append(h.event)
        return out

    def _merge(self, a: hooks.GuardDecision, b: hooks.GuardDecision) -> hooks.GuardDecision:
        if b.blocked:
            return b
        if not b.findings and not b.counts:
            return a
        if not a.findings and not a.counts:
            return b
        if not a.findings or not b.findings:
            first, other = (b, a) if b.findings else (a, b)
            return dataclasses.replace(first, counts=first.counts + other.counts)
        return hooks.GuardDecision(
            a.verdict,
            a.rule,
            f"{a.reason}; {b.reason}",
            a.findings + b.findings,
            a.counts + b.counts,
        )

    def on_event(self, event: StreamEvent) -> hooks.GuardDecision:
        deltas: Sequence[TextDelta] = event.deltas
        if not deltas:
            if not self.held:
                if event.snapshots:
                    self._snapshots(event)
                return hooks.ALLOW
            # No text: a finish, usage or terminal event. Release everything held first.
            found = hooks.ALLOW
            for each in self.slots.values():
                found = self._merge(found, self._scan(each))
                if found.blocked:
                    return found
            released = tuple(self._release(everything=True))
            if event.snapshots:
                self._snapshots(event)
            return _with(found, hooks.Verdict.ALLOW, released)
        ranges: list[tuple[_Slot, int, int]] = []
        touched: dict[int, _Slot] = {}
        chars = 0
        for d in deltas:
            slot = self.slots.get(d.slot)
            if slot is None:
                slot = self.slots[d.slot] = _Slot(len(self.slots), d.json_text)
            # Grown in a local, so CPython extends the string in place when nothing else holds
            # it (``slot.text += ...`` on the attribute copies the whole answer every event).
            text = slot.text
            slot.text = ""
            a = len(text)
            text += d.text
            slot.text = text
            b = len(text)
            ranges.append((slot, a, b))
            touched[slot.index] = slot
            chars += b - a
        self.held.append(_Held(event, ranges, chars))
        self.held_chars += chars
        found = hooks.ALLOW
        for slot in touched.values():
            scanned = self._scan(slot)
            if scanned is not hooks.ALLOW:
                found = self._merge(found, scanned)
                if found.blocked:
                    return found
        now = self._release(everything=False)
        if now and now[-1] is event:
            return _with(found, hooks.Verdict.ALLOW, tuple(now[:-1]))
        return _with(found, hooks.Verdict.HOLD, tuple(now))

    async def finish(self) -> hooks.GuardDecision:
        """The end of the stream (the pipeline awaits it instead of :meth:`on_end`): the
        remaining scans, then the external moderation endpoint over the whole output as
        redacted (pseudonyms not restored). A block there withholds what is still held (usually
        nothing: an event without text released it) and the terminal event: the stream ends
        with an error event."""
        end = self.on_end()
        if end.blocked or self.endpoint is None or not self.slots:
            return end
        texts = [
            Segment(
                slot.index,
                self._rewrite(slot, 0, len(slot.text), self._redactions(slot)),
                Role.OUTPUT,
            )
            for slot in self.slots.values()
        ]
        try:
            remote = await self.endpoint.check(texts)
        except EndpointError as e:
            if not self.failure_open:
                log.warning(
                    "moderation endpoint failed; failureMode closed: stream ended",
                    extra={"fields": {"direction": "output", "error": str(e)}},
                )
                return hooks.GuardDecision(
                    hooks.Verdict.BLOCK,
                    "guardrails.output.moderation",
                    "moderation: the external endpoint failed; failureMode closed",
                    1,
                    (("moderation", ENDPOINT_ERROR, "block", 1),),
                )
            remote = error_verdict("output", e)
        found = decision_of("output", remote)
        if found.blocked:
            return found
        return _with(self._merge(end, found), hooks.Verdict.ALLOW, end.released)

    def _redactions(self, slot: _Slot) -> list[Replacement]:
        """The slot's replacements but the pseudonym restorations (never sent elsewhere)."""
        if not self.pseudonyms:
            return slot.reps
        return [r for r in slot.reps if slot.text[r.start : r.end] not in self.pseudonyms]

    def on_end(self) -> hooks.GuardDecision:
        found = hooks.ALLOW
        for slot in self.slots.values():
            if slot.sent < len(slot.text):
                found = self._merge(found, self._scan(slot))
                if found.blocked:
                    return found
        return _with(found, hooks.Verdict.ALLOW, tuple(self._release(everything=True)))


def _with(
    d: hooks.GuardDecision, verdict: hooks.Verdict, released: tuple[StreamEvent, ...]
) -> hooks.GuardDecision:
    if d is hooks.ALLOW and verdict is hooks.Verdict.ALLOW and not released:
        return d
    return hooks.GuardDecision(verdict, d.rule, d.reason, d.findings, d.counts, released)

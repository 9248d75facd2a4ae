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

Engines are cached process-wide by the guardrails section of the policy (and the content of
the Secrets it read), so a reload that changes only routes or limits does not recompile.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiguard_api.config import ConfigError, SidecarConfig
from aiguard_api.policy import (
    AIPolicySpec,
    Mode,
    OutputGuardrails,
    SecretKeyRef,
    StreamRelease,
)
from aiguard_sidecar import hooks, review
from aiguard_sidecar.exchange import Exchange, ResponseInfo, StreamEvent, TextDelta
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

log = logging.getLogger("aiguard.sidecar.guarding")

OFF_LOOP_CHARS: Final = 16384
"""Requests with more text than this are scanned in a worker thread, not on the event loop."""
REVIEW_REASON: Final = "output cannot be held for human review: blocked"
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
    key = hashlib.sha256(
        f"{spec.failure_mode.value}\n{spec.guardrails.model_dump_json()}".encode()
    ).hexdigest()
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
        self._engines: Engines | None = None

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
        decision = decision_of("input", verdict)
        if verdict.decision in (Decision.REDACT, Decision.REVIEW) and self.enforce:
            for index, text in verdict.edits.items():  # an approved request goes on redacted
                exchange.set_text(exchange.segments[index], text)
        return decision

    async def check_output(self, exchange: Exchange, response: ResponseInfo) -> hooks.GuardDecision:
        engine = self.engines.output
        if not engine.guardrails:
            return hooks.ALLOW
        segments = [Segment(i, s.text, Role.OUTPUT) for i, s in enumerate(response.segments)]
        ctx = ScanContext(Direction.OUTPUT, response.served_model or exchange.model or None)
        if response.output_chars > OFF_LOOP_CHARS or engine.cpu_heavy:
            loop = asyncio.get_running_loop()
            verdict = await loop.run_in_executor(None, lambda: engine.check(segments, ctx))
        else:
            verdict = engine.check(segments, ctx)
        decision = decision_of("output", verdict)
        if verdict.decision is Decision.REDACT and self.enforce and response.doc is not None:
            for index, text in verdict.edits.items():
                response.set_text(response.segments[index], text)
        return decision

    def output_stream(self, exchange: Exchange) -> hooks.StreamGuard | None:
        engine = self.engines.output
        if not engine.guardrails:
            return None
        return _StreamGuard(engine, self.holdback, exchange.model or None, self.adaptive)

    async def close(self) -> None:
        return None  # engines are shared through the cache; nothing to release


# ── streams ──────────────────────────────────────────────────────────────────────────────────

# adaptive release: characters that must follow a run with digits before it goes out (a card
# or phone number written in groups, an IBAN, context words such as "is my SSN" after it)
NUMBER_CONTEXT: Final = 32
_DIGITS_RUN: Final = re.compile(r"\S*\d\S*")
# a last run with no whitespace after it is a word still being written ("jane" may become
# "jane.doe@example.com") unless a character no email, key or number continues with ends it
_FINISHED_RUN: Final = re.compile(r"[^\s\d@]*[!?,;)\"]")
_OPEN_RUN: Final = re.compile(r"\S*\Z")


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
    text: str = ""
    sent: int = 0  # original characters released so far
    reps: list[Replacement] = field(default_factory=list)  # absolute original coordinates
    seen: set[tuple[str, str, int]] = field(default_factory=set)  # findings already counted


@dataclass(slots=True)
class _Held:
    event: StreamEvent
    ranges: list[tuple[_Slot, int, int]]  # per delta: its slot and original span
    chars: int


class _StreamGuard:
    def __init__(
        self, engine: Engine, holdback: int, model: str | None, adaptive: bool = False
    ) -> None:
        self.engine = engine
        self.holdback = holdback
        self.adaptive = adaptive
        self.ctx = ScanContext(Direction.OUTPUT, model)
        self.slots: dict[int | str, _Slot] = {}
        self.held: collections.deque[_Held] = collections.deque()
        self.held_chars = 0

    def _scan(self, slot: _Slot) -> hooks.GuardDecision:
        start = max(0, slot.sent - self.holdback)
        verdict = self.engine.check([Segment(slot.index, slot.text[start:], Role.OUTPUT)], self.ctx)
        new: list[Finding] = []
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
        slot.reps = [r for r in slot.reps if r.end <= start or r.start < slot.sent] + [
            r for r in fresh if r.start >= slot.sent or r.end > slot.sent
        ]
        slot.reps.sort(key=lambda r: (r.start, r.end))
        if not new:
            return hooks.ALLOW
        return hooks.GuardDecision(
            hooks.Verdict.ALLOW, "guardrails.output", _summary(new), len(new), _counts(new)
        )

    def _rewrite(self, slot: _Slot, a: int, b: int) -> str:
        """The text to send for original span ``[a, b)`` of ``slot``."""
        out: list[str] = []
        pos = a
        for r in slot.reps:
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
        for m in _DIGITS_RUN.finditer(text, lo):
            if m.end() > end - NUMBER_CONTEXT:
                cut = min(cut, m.start())
                break
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
                if not self.adaptive:
                    if self.held_chars <= self.holdback:
                        break
                else:
                    for slot, _, _ in self.held[0].ranges:
                        if slot.index not in cuts:
                            cuts[slot.index] = self._safe_cut(slot)
                    if any(b > cuts[slot.index] for slot, _, b in self.held[0].ranges):
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
        if b.blocked or not a.findings:
            return b if (b.blocked or b.findings) else a
        if not b.findings:
            return a
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
                return hooks.ALLOW
            # No text: a finish, usage or terminal event. Release everything held first.
            found = hooks.ALLOW
            for each in self.slots.values():
                found = self._merge(found, self._scan(each))
                if found.blocked:
                    return found
            return _with(found, hooks.Verdict.ALLOW, tuple(self._release(everything=True)))
        ranges: list[tuple[_Slot, int, int]] = []
        touched: dict[int, _Slot] = {}
        for d in deltas:
            slot = self.slots.get(d.slot)
            if slot is None:
                slot = self.slots[d.slot] = _Slot(len(self.slots))
            a = len(slot.text)
            slot.text += d.text
            ranges.append((slot, a, len(slot.text)))
            touched[slot.index] = slot
        chars = sum(b - a for _, a, b in ranges)
        self.held.append(_Held(event, ranges, chars))
        self.held_chars += chars
        found = hooks.ALLOW
        for slot in touched.values():
            found = self._merge(found, self._scan(slot))
            if found.blocked:
                return found
        released = self._release(everything=False)
        if released and released[-1] is event:
            return _with(found, hooks.Verdict.ALLOW, tuple(released[:-1]))
        return _with(found, hooks.Verdict.HOLD, tuple(released))

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
    return hooks.GuardDecision(verdict, d.rule, d.reason, d.findings, d.counts, released)

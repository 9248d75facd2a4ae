"""The guardrail chain of one direction, built once per policy load.

    engine = build_engine(spec.guardrails.input, failure_mode=spec.failure_mode,
                          read_secret=reader)                  # or build_engines(spec, ...)
    verdict = engine.check(segments, ScanContext(Direction.INPUT, model),
                           unscannable={"image": 2})          # sync, pure CPU
    verdict = await engine.check_async(segments, ctx, budget=2.0)   # off-loop when heavy
    verdict = engine.validate(RequestFacts(...))               # input only: size, tokens, tools

``check`` runs the guardrails in :data:`.registry.ORDER`. Each sees the segment texts as the
guardrails before it left them (their edits applied), so the spans it reports are consistent
with the text it read; the engine maps every span back to the ORIGINAL text before returning.
So in the returned :class:`~.base.Verdict`:

    findings      every guardrail's, spans in original-text coordinates (whole-text and
                  request-level findings: segment -1 or span 0, 0)
    edits         segment index -> final text, after every guardrail's edits
    replacements  segment index -> the same edits as original-text spans (for adapters that
                  rewrite streams), when every guardrail that edited gave spans
    pseudonyms    placeholder -> original (reversible redaction); never audit these
    decision      the strongest: ALLOW < REDACT < REVIEW < BLOCK; ``reason`` names the first
                  guardrail that reached it, never content

What the engine decides itself:

* a guardrail raising (a bug, the ScanLimitError of adversarial input, an Unavailable
  plug-in): ``failureMode: closed`` → BLOCK with reason ``<name>: error (<Exception>)``;
  ``open`` → the request goes on and an ``error`` finding records it. The other guardrails
  still run either way.
* unscannable content (images, audio, unknown parts), counted by the caller: one finding per
  kind (guardrail ``unscannable``), action from ``unscannable: allow|block`` (output: allow).

``mode: audit`` is not the engine's business: it decides the same way, and the caller does not
enforce. ``check`` is CPU work with no I/O; when NER (or another heavy plug-in) is loaded,
``cpu_heavy`` is True and ``check_async`` runs it in an executor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from aiguard_api.policy_types import FailureMode, UnscannableAction
from aiguard_api.view import AIPolicySpec, InputGuardrails, OutputGuardrails, ValidationGuardrail
from aiguard_sidecar.guardrails import registry as registry_module
from aiguard_sidecar.guardrails.base import (
    Decision,
    Direction,
    Finding,
    Guardrail,
    Replacement,
    Role,
    ScanContext,
    Segment,
    Verdict,
)
from aiguard_sidecar.guardrails.registry import BuildContext, Factory, SecretReader, Unavailable
from aiguard_sidecar.guardrails.validation import RequestFacts, validate

log = logging.getLogger(__name__)

UNSCANNABLE = "unscannable"
ERROR = "error"


class _Offsets:
    """Replacements applied so far to one segment, in original-text coordinates, so a span
    in the current text can be mapped back."""

    __slots__ = ("exact", "reps")

    def __init__(self) -> None:
        self.reps: list[Replacement] = []
        self.exact = True  # False once a guardrail edited without giving spans

    def to_original(self, pos: int, *, end: bool) -> int:
        delta = 0
        for r in self.reps:
            cur_start = r.start + delta
            cur_end = cur_start + len(r.text)
            if pos <= cur_start:
                return pos - delta
            if pos < cur_end:  # inside the replacement text: the whole original span
                return r.end if end else r.start
            delta += len(r.text) - (r.end - r.start)
        return pos - delta

    def to_current(self, pos: int) -> int:
        """An original position outside every replacement → the current text."""
        delta = 0
        for r in self.reps:
            if r.end > pos:
                break
            delta += len(r.text) - (r.end - r.start)
        return pos + delta

    def compose(self, seen: str, new: Sequence[Replacement]) -> None:
        """Add a guardrail's replacements (coordinates of ``seen``, the text it read)."""
        items: list[tuple[int, int, Replacement | None, Replacement | None]] = [
            (r.start, r.end, r, None) for r in self.reps
        ]
        for r in new:
            items.append(
                (self.to_original(r.start, end=False), self.to_original(r.end, end=True), None, r)
            )
        items.sort(key=lambda x: (x[0], x[1]))
        clusters: list[list[tuple[int, int, Replacement | None, Replacement | None]]] = []
        for item in items:
            if clusters and item[0] < max(x[1] for x in clusters[-1]):
                clusters[-1].append(item)
            else:
                clusters.append([item])
        out: list[Replacement] = []
        for cluster in clusters:
            if len(cluster) == 1:
                start, end, old, fresh = cluster[0]
                out.append(old if old is not None else Replacement(start, end, fresh.text))  # type: ignore[union-attr]
                continue
            us = min(x[0] for x in cluster)
            ue = max(x[1] for x in cluster)
            pos = self.to_current(us)
            pieces: list[str] = []
            for fresh in sorted((x[3] for x in cluster if x[3] is not None), key=lambda r: r.start):
                pieces.append(seen[pos : fresh.start])
                pieces.append(fresh.text)
                pos = fresh.end
            pieces.append(seen[pos : self.to_current(ue)])
            out.append(Replacement(us, ue, "".join(pieces)))
        self.reps = out


class Engine:
    """One direction's guardrails. Immutable; safe to share across threads and requests."""

    def __init__(
        self,
        direction: Direction,
        guardrails: Sequence[Guardrail],
        *,
        failure_mode: FailureMode = FailureMode.CLOSED,
        unscannable: UnscannableAction = UnscannableAction.ALLOW,
        validation: ValidationGuardrail | None = None,
    ) -> None:
        self.direction = direction
        self.guardrails: tuple[Guardrail, ...] = tuple(guardrails)
        self.failure_mode = failure_mode
        self.unscannable_action = unscannable
        self.validation = validation
        self.cpu_heavy = any(getattr(g, "cpu_heavy", False) for g in self.guardrails)
        # ``quiet``, an optional attribute of a guardrail: None, or a function of a text that
        # is True only when the guardrail's ``check`` certainly finds nothing in it (no pattern
        # matches it); the guardrail is then not called for that text
        self._chain: tuple[tuple[Guardrail, Callable[[str], bool] | None], ...] = tuple(
            (g, getattr(g, "quiet", None)) for g in self.guardrails
        )

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.guardrails]

    @property
    def unavailable(self) -> list[str]:
        """Enabled guardrails whose implementation could not be loaded (for readiness/logs)."""
        return [g.name for g in self.guardrails if isinstance(g, Unavailable)]

    # ---------------------------------------------------------------------- request checks

    def validate(self, facts: RequestFacts) -> Verdict:
        """Request metadata against ``validation`` (input engines; others allow)."""
        if self.validation is None:
            return Verdict()
        return validate(facts, self.validation)

    def check(
        self,
        segments: Sequence[Segment],
        ctx: ScanContext,
        *,
        unscannable: int | Mapping[str, int] = 0,
    ) -> Verdict:
        """Run the chain over ``segments``. See the module docstring for what comes back."""
        verdict = self._unscannable(unscannable) if unscannable else Verdict()
        if not segments or not self.guardrails:
            return verdict
        # one segment per index (the last one of an index wins)
        view: Sequence[Segment] = (
            segments if len(segments) == 1 else list({s.index: s for s in segments}.values())
        )
        return self._run(view, ctx, verdict, 0)

    def check_one(self, index: int, text: str, role: Role, ctx: ScanContext) -> Verdict | None:
        """``check`` of one segment, or None when every guardrail of the chain is quiet about
        ``text`` (no verdict is built: the stream windows with nothing in them)."""
        for i, (_, quiet) in enumerate(self._chain):
            if quiet is None or not _quiet(quiet, (text,)):
                return self._run([Segment(index, text, role)], ctx, Verdict(), i)
        return None

    def _run(
        self, view: Sequence[Segment], ctx: ScanContext, verdict: Verdict, first: int
    ) -> Verdict:
        """The chain from its ``first`` guardrail (the ones before are quiet about ``view``)."""
        segments = view
        current: dict[int, Segment] | None = None  # once a guardrail reports something
        offsets: dict[int, _Offsets] = {}
        for g, quiet in self._chain[first:] if first else self._chain:
            # A guardrail that finds nothing neither edits nor decides: skipping it changes
            # nothing, and the ones after it read the same text.
            if quiet is not None and _quiet(quiet, [s.text for s in view]):
                continue
            try:
                got = g.check(view, ctx)
            except Exception as e:
                log.warning("guardrail %s failed: %s", g.name, type(e).__name__)
                log.debug("guardrail %s failure", g.name, exc_info=True)
                got = self._failure(g.name, f"error ({type(e).__name__})")
            if got.findings or got.edits or got.pseudonyms or got.decision:
                if current is None:
                    current = {s.index: s for s in view}
                self._merge(verdict, got, current, offsets)
                if got.edits:
                    view = list(current.values())
        if not offsets or current is None:
            return verdict  # no edits
        originals = {s.index: s.text for s in segments}
        for index, off in offsets.items():
            text = current[index].text
            if text != originals[index]:
                verdict.edits[index] = text
                if off.exact:
                    verdict.replacements[index] = list(off.reps)
        return verdict

    async def check_async(
        self,
        segments: Sequence[Segment],
        ctx: ScanContext,
        *,
        unscannable: int | Mapping[str, int] = 0,
        budget: float | None = None,
        executor: concurrent.futures.Executor | None = None,
    ) -> Verdict:
        """``check`` from the event loop: inline when cheap, else in ``executor`` (default: the
        loop's); past ``budget`` seconds the failureMode decides (the thread finishes alone)."""
        if not self.cpu_heavy:
            return self.check(segments, ctx, unscannable=unscannable)
        loop = asyncio.get_running_loop()
        call = functools.partial(self.check, segments, ctx, unscannable=unscannable)
        try:
            return await asyncio.wait_for(loop.run_in_executor(executor, call), budget)
        except TimeoutError:
            log.warning("guardrails (%s) timed out after %ss", self.direction.value, budget)
            return self._failure("engine", "timeout")

    # ---------------------------------------------------------------------- internals

    def _merge(
        self,
        verdict: Verdict,
        got: Verdict,
        current: dict[int, Segment],
        offsets: dict[int, _Offsets],
    ) -> None:
        for f in got.findings:
            off = offsets.get(f.segment)
            if off is not None and off.reps and (f.start, f.end) != (0, 0):
                f = replace(
                    f,
                    start=off.to_original(f.start, end=False),
                    end=off.to_original(f.end, end=True),
                )
            verdict.findings.append(f)
        for index, text in got.edits.items():
            seg = current.get(index)
            if seg is None or text == seg.text:
                continue
            off = offsets.setdefault(index, _Offsets())
            reps = got.replacements.get(index)
            if reps is not None and off.exact:
                off.compose(seg.text, reps)
            else:
                off.exact = False
            current[index] = Segment(index, text, seg.role)
        verdict.pseudonyms.update(got.pseudonyms)
        if got.decision > verdict.decision:
            verdict.decision = got.decision
            verdict.reason = got.reason or verdict.reason

    def _failure(self, name: str, what: str) -> Verdict:
        if self.failure_mode is FailureMode.OPEN:
            return Verdict(findings=[Finding(name, ERROR, -1, 0, 0, 1.0, "allow")])
        return Verdict(
            decision=Decision.BLOCK,
            findings=[Finding(name, ERROR, -1, 0, 0, 1.0, "block")],
            reason=f"{name}: {what}; failureMode closed",
        )

    def _unscannable(self, counts: int | Mapping[str, int]) -> Verdict:
        verdict = Verdict()
        if not counts:
            return verdict
        kinds = {UNSCANNABLE: counts} if isinstance(counts, int) else dict(counts)
        kinds = {k: n for k, n in kinds.items() if n > 0}
        if not kinds:
            return verdict
        block = self.unscannable_action is UnscannableAction.BLOCK
        for kind, n in sorted(kinds.items()):
            for _ in range(min(n, 64)):  # one finding per part, bounded
                verdict.findings.append(
                    Finding(UNSCANNABLE, kind, -1, 0, 0, 1.0, "block" if block else "allow")
                )
        if block:
            verdict.decision = Decision.BLOCK
            verdict.reason = f"{UNSCANNABLE}: {', '.join(sorted(kinds))}"
        return verdict


def _quiet(quiet: Callable[[str], bool], texts: Sequence[str]) -> bool:
    """Whether ``quiet`` holds for every text; an error in it is "not quiet": the guardrail's
    ``check`` runs (and fails the failureMode's way if the error is real)."""
    try:
        return all(quiet(t) for t in texts)
    except Exception:
        return False


def build_engine(
    cfg: InputGuardrails | OutputGuardrails,
    *,
    failure_mode: FailureMode = FailureMode.CLOSED,
    read_secret: SecretReader | None = None,
    registry: Mapping[str, Factory] | None = None,
) -> Engine:
    """The engine of one direction (told apart by the config's type)."""
    direction = Direction.INPUT if isinstance(cfg, InputGuardrails) else Direction.OUTPUT
    chain = registry_module.build_chain(
        cfg,
        BuildContext(direction=direction, read_secret=read_secret),
        registry=registry if registry is not None else registry_module.REGISTRY,
    )
    if isinstance(cfg, InputGuardrails):
        return Engine(
            direction,
            chain,
            failure_mode=failure_mode,
            unscannable=cfg.unscannable,
            validation=cfg.validation,
        )
    return Engine(direction, chain, failure_mode=failure_mode)


@dataclass(frozen=True, slots=True)
class Engines:
    input: Engine
    output: Engine


def build_engines(spec: AIPolicySpec, *, read_secret: SecretReader | None = None) -> Engines:
    """Both directions' engines for a policy (call once per policy load)."""
    return Engines(
        input=build_engine(
            spec.guardrails.input, failure_mode=spec.failure_mode, read_secret=read_secret
        ),
        output=build_engine(
            spec.guardrails.output, failure_mode=spec.failure_mode, read_secret=read_secret
        ),
    )


__all__ = [
    "Engine",
    "Engines",
    "RequestFacts",
    "build_engine",
    "build_engines",
]

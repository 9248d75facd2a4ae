"""Output guardrails that say "nothing here" before scanning (``quiet``).

On streams and responses the PII and secrets guardrails keep no detection cache, and the
engine skips one when not a single one of its patterns matches the text (``Matcher.any``: one
Hyperscan call that stops at the first match). Skipping must change nothing: what the chain
finds with it is exactly what it finds without it (types, spans, actions, edits, decisions),
on whole texts and on streams cut anywhere, matches split across events included, and the
client is sent the same text."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiguard_sidecar import hooks
from aiguard_sidecar.exchange import StreamEvent, TextDelta
from aiguard_sidecar.guarding import EngineGuardrails, _StreamGuard
from aiguard_sidecar.guardrails import patterns
from aiguard_sidecar.guardrails.base import (
    Direction,
    Finding,
    Guardrail,
    Role,
    ScanContext,
    Segment,
    Verdict,
)
from aiguard_sidecar.guardrails.engine import Engine
from aiguard_sidecar.guardrails.patterns import Matcher
from tests.unit.test_guardrail_secrets import NEGATIVES, POSITIVES
from tests.unit.test_stream_release import config_with_output as config

PII_TEXTS = [
    "write to jane.doe@example.com today",
    "call +1 415 555 0100 or 020 7946 0958",
    "card 4111 1111 1111 1111 exp 12/29",
    "IBAN DE89 3704 0044 0532 0130 00 please",
    "SSN 078-05-1120 and 123-45-6789",
    "server at 192.168.10.42, mac 00:1A:2B:3C:4D:5E",
    "see https://example.com/a?b=c for details",
    "naïve café owner écrit à zoë@exemple.fr 🙂",
    "my number is 4155550100 and my card 5500 0000 0000 0004",
]
PROSE = [
    "the quarterly report shows revenue growth in every region while operating costs stayed "
    "flat; the main drivers were pricing and volume.",
    "Hello! The answer is forty-two.",
    "ünïcödé text with no personal data at all — none.",
    "",
]
CORPUS = [t for t, _, _ in POSITIVES] + NEGATIVES + PII_TEXTS + PROSE
MIXED = [
    "user jane.doe@example.com key " + POSITIVES[0][2] + " done",
    "AWS " + next(t for t, k, _ in POSITIVES if k == "AWS_SECRET_ACCESS_KEY") + " mail a@b.io",
    "postgres://admin:S3cr3t-Pa55w0rd@db.example.com:5432/app and 4111 1111 1111 1111",
]

OUTPUTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "block secrets, mask and hash pii": {
        "secrets": {"action": "block"},
        "pii": {
            "entities": {"EMAIL_ADDRESS": "mask", "CREDIT_CARD": "hash", "PHONE_NUMBER": "allow"}
        },
    },
}


class Loud:
    """A guardrail without ``quiet``: always scanned."""

    def __init__(self, inner: Guardrail) -> None:
        self.inner = inner
        self.name = inner.name

    def check(self, segments: Sequence[Segment], ctx: ScanContext) -> Verdict:
        return self.inner.check(segments, ctx)


async def engines(output: dict[str, Any]) -> tuple[EngineGuardrails, Engine, Engine]:
    g = EngineGuardrails(config(output))
    await g.prepare()
    quiet = g.engines.output
    assert [x.name for x in quiet.guardrails] == ["secrets", "pii"]
    assert all(getattr(x, "quiet", None) is not None for x in quiet.guardrails)
    loud = Engine(
        Direction.OUTPUT,
        [Loud(x) for x in quiet.guardrails],
        failure_mode=quiet.failure_mode,
    )
    return g, quiet, loud


def summary(v: Verdict) -> tuple[Any, ...]:
    return (v.decision, v.reason, v.findings, v.edits, v.replacements, v.pseudonyms)


CTX = ScanContext(Direction.OUTPUT, "gpt-4o")


@functools.cache
def matchers() -> list[Matcher]:
    """The output chain's matchers under the default policy."""
    g = EngineGuardrails(config({}))
    asyncio.run(g.prepare())
    return [x._matcher for x in g.engines.output.guardrails]  # type: ignore[attr-defined]


def test_any_is_whether_raw_reports_a_hit() -> None:
    for text in CORPUS + MIXED:
        for m in matchers():
            assert m.any(text) == bool(m.raw(text)), text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("aZ09 @.:-_=/+'\"\n\tkKyPsS<>é€🙂")), max_size=80))
def test_any_agrees_with_raw_on_any_text(text: str) -> None:
    for m in matchers():
        assert m.any(text) == bool(m.raw(text))


@pytest.mark.parametrize("output", OUTPUTS.values(), ids=list(OUTPUTS))
async def test_whole_texts_get_the_same_verdict(output: dict[str, Any]) -> None:
    _, quiet, loud = await engines(output)
    skipped = found = 0
    for text in CORPUS + MIXED:
        segs = [Segment(0, text, Role.OUTPUT)]
        got = quiet.check(segs, CTX)
        assert summary(got) == summary(loud.check(segs, CTX)), text
        found += bool(got.findings)
        skipped += all(x.quiet(text) for x in quiet.guardrails)  # type: ignore[attr-defined]
    # longer texts are not asked (a late match would be scanned twice): same verdicts
    long = PROSE[0] * (patterns.QUIET_MAX_CHARS // len(PROSE[0]) + 1)
    for text in (long, long + " mail jane@example.com", long + " " + POSITIVES[0][0]):
        assert not any(x.quiet(text) for x in quiet.guardrails)  # type: ignore[attr-defined]
        segs = [Segment(0, text, Role.OUTPUT)]
        assert summary(quiet.check(segs, CTX)) == summary(loud.check(segs, CTX))
    # several segments at once, some clean, some not
    segs = [Segment(i, t, Role.OUTPUT) for i, t in enumerate(PROSE + MIXED + PII_TEXTS)]
    assert summary(quiet.check(segs, CTX)) == summary(loud.check(segs, CTX))
    assert found >= 30  # both paths were taken
    assert skipped >= 10


class Client:
    """Feeds text events to a stream guard; records what the client is sent and decided."""

    def __init__(self, guard: _StreamGuard) -> None:
        self.guard = guard
        self.received = ""
        self.trace: list[tuple[Any, ...]] = []

    def _take(self, events: tuple[StreamEvent, ...]) -> None:
        for e in events:
            self.received += "".join(d.text for d in e.deltas)

    def _note(self, d: hooks.GuardDecision) -> None:
        self.trace.append((d.verdict, d.rule, d.reason, d.findings, d.counts, self.received))

    def send(self, text: str) -> bool:
        path = ("choices", 0, "delta", "content")
        data = {"choices": [{"index": 0, "delta": {"content": text}}]}
        event = StreamEvent(b"", None, data, [TextDelta(0, text, path)])
        d = self.guard.on_event(event)
        self._take(d.released)
        if d.verdict is hooks.Verdict.ALLOW:
            self._take((event,))
        self._note(d)
        return not d.blocked

    def end(self) -> None:
        d = self.guard.on_end()
        self._take(d.released)
        self._note(d)


def stream(guard: _StreamGuard, pieces: list[str]) -> list[tuple[Any, ...]]:
    c = Client(guard)
    for p in pieces:
        if not c.send(p):
            return c.trace
    c.end()
    return c.trace


def cuts(text: str) -> list[list[str]]:
    """Every cut into two events, and fixed-size chunks (a match split across many)."""
    out = [[text[:i], text[i:]] for i in range(1, len(text))]
    for n in (1, 3, 7):
        out.append([text[i : i + n] for i in range(0, len(text), n)])
    return out


@pytest.mark.parametrize("output", OUTPUTS.values(), ids=list(OUTPUTS))
@pytest.mark.parametrize("release", ["adaptive", "window"])
async def test_streams_cut_anywhere_get_the_same_findings_and_text(
    output: dict[str, Any], release: str
) -> None:
    g, quiet, loud = await engines({**output, "streaming": {"release": release}})
    texts = [t for t, _, _ in POSITIVES[::3]] + PII_TEXTS + PROSE[:2] + MIXED
    redacted = 0
    for text in texts:
        for pieces in cuts(text):
            a = stream(_StreamGuard(quiet, g.holdback, "gpt-4o", adaptive=g.adaptive), pieces)
            b = stream(_StreamGuard(loud, g.holdback, "gpt-4o", adaptive=g.adaptive), pieces)
            assert a == b, pieces
            redacted += a[-1][-1] != text
    assert redacted > 100  # the streams did have findings to act on


class Finds:
    """Finds one thing; its ``quiet`` says nothing is there, or fails."""

    name = "finds"

    def __init__(self, quiet: Any) -> None:
        self.quiet = quiet

    def check(self, segments: Sequence[Segment], ctx: ScanContext) -> Verdict:
        return Verdict(findings=[Finding(self.name, "X", segments[0].index, 0, 1, 1.0, "allow")])


def test_a_quiet_that_fails_is_not_believed() -> None:
    def broken(text: str) -> bool:
        raise RuntimeError("scan failed")

    engine = Engine(Direction.OUTPUT, [Finds(broken)])
    assert [f.type for f in engine.check([Segment(0, "x", Role.OUTPUT)], CTX).findings] == ["X"]
    one = engine.check_one(0, "x", Role.OUTPUT, CTX)
    assert one is not None
    assert [f.type for f in one.findings] == ["X"]
    # and a quiet one is skipped: check_one builds no verdict at all
    assert (
        Engine(Direction.OUTPUT, [Finds(lambda t: True)]).check_one(0, "x", Role.OUTPUT, CTX)
        is None
    )

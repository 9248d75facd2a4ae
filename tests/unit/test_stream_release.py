"""Streamed output held for the output guardrails: what reaches the client after each event
(``guardrails.output.streaming.release``, guarding._StreamGuard), with the default engines.

``adaptive`` (the default) sends a word once it is finished, so prose flows with the model;
it holds what may still become a value the scanners look for: an unfinished word, a run with
digits until 32 characters follow it, a match that may still grow. ``window`` holds events while
no more than ``holdbackChars`` characters are held. An event goes out whole or not at all."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiguard_api import view
from aiguard_api.config import PolicyRef, SidecarConfig, to_view
from aiguard_api.policy import AIPolicySpec
from aiguard_sidecar import hooks, providers
from aiguard_sidecar.exchange import Api, StreamEvent, TextDelta
from aiguard_sidecar.guarding import NUMBER_CONTEXT, EngineGuardrails, _Slot, _StreamGuard
from aiguard_sidecar.guardrails.base import Direction, Replacement
from aiguard_sidecar.guardrails.engine import Engine


def config(**streaming: Any) -> view.SidecarConfig:
    return config_with_output({"streaming": streaming})


def config_with_output(output: dict[str, Any]) -> view.SidecarConfig:
    spec = AIPolicySpec.model_validate(
        {
            "providers": [{"name": "p", "type": "openai-compatible", "baseURL": "https://x"}],
            "routes": [{"models": ["*"], "targets": [{"provider": "p"}]}],
            "guardrails": {"output": output},
        }
    )
    return to_view(SidecarConfig(policy=PolicyRef(name="p", namespace="team-a"), spec=spec))


class Client:
    """Feeds text events to a stream guard and keeps what the client has been sent."""

    def __init__(self, guard: hooks.StreamGuard) -> None:
        self.guard = guard
        self.received = ""

    def _take(self, events: tuple[StreamEvent, ...]) -> None:
        for e in events:
            self.received += "".join(d.text for d in e.deltas)

    def send(self, text: str) -> str:
        path = ("choices", 0, "delta", "content")
        data = {"choices": [{"index": 0, "delta": {"content": text}}]}
        event = StreamEvent(b"", None, data, [TextDelta(0, text, path)])
        decision = self.guard.on_event(event)
        assert not decision.blocked, decision.reason
        self._take(decision.released)
        if decision.verdict is hooks.Verdict.ALLOW:
            self._take((event,))
        return self.received

    def end(self) -> str:
        self._take(self.guard.on_end().released)
        return self.received


async def client(cfg: view.SidecarConfig) -> Client:
    g = EngineGuardrails(cfg)
    await g.prepare()
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ex = providers.OPENAI.parse(Api.CHAT_COMPLETIONS, json.dumps(body).encode())
    guard = g.output_stream(ex)
    assert guard is not None
    return Client(guard)


async def test_adaptive_sends_each_word_once_it_is_finished() -> None:
    c = await client(config())
    assert c.send("Hello") == ""  # may still become "Hello.World@example.com"
    assert c.send("!") == "Hello!"  # nothing an address or a key continues with
    assert c.send(" The") == "Hello!"
    assert c.send(" answer") == "Hello! The"
    assert c.send(" is") == "Hello! The answer"
    assert c.send(" simple, really.") == "Hello! The answer is"  # "really." is unfinished
    assert c.end() == "Hello! The answer is simple, really."


async def test_adaptive_never_sends_part_of_an_address_split_across_events() -> None:
    c = await client(config())
    for token in ("Write", " to", " jane", ".doe", "@exam", "ple.com"):
        assert "jane" not in c.send(token)
    assert c.received == "Write to"
    assert c.send(" today") == "Write to <EMAIL_ADDRESS>"
    assert c.end() == "Write to <EMAIL_ADDRESS> today"


async def test_adaptive_holds_a_number_until_enough_text_follows_it() -> None:
    """A card number written in groups is caught whole, not sent group by group."""
    c = await client(config())
    for token in ("Your", " card", " 4111", " 1111", " 1111", " 1111", " is"):
        assert "1111" not in c.send(token)
    assert c.received == "Your card"
    tail = " on file and will be charged on the first of next month."
    assert len(tail) > NUMBER_CONTEXT
    assert c.send(tail) == "Your card <CREDIT_CARD> is"  # "month." is unfinished
    assert c.end() == "Your card <CREDIT_CARD> is" + tail


async def test_adaptive_never_holds_more_than_holdback_chars() -> None:
    c = await client(config(holdbackChars=16))
    digits = "7" * 40  # a run still being written that no scanner will ever match
    assert c.send("id " + digits) == ""
    assert c.send("8" * 20) == "id " + digits  # 20 new characters: the older ones go out
    assert c.end() == "id " + digits + "8" * 20


async def test_window_holds_events_while_no_more_than_holdback_chars_are_held() -> None:
    c = await client(config(release="window", holdbackChars=16))
    assert c.send("Hello there,") == ""  # adaptive would send it: the words are finished
    assert c.send(" how are") == "Hello there,"  # 20 held: the oldest event goes
    assert c.end() == "Hello there, how are"


@pytest.mark.parametrize(
    "output",
    [
        {"deny": {"keywords": ["project falcon"]}},
        {"pii": {"customPatterns": [{"entity": "CODENAME", "regex": "Falcon [A-Z]"}]}},
    ],
    ids=["deny-keywords", "custom-pattern"],
)
async def test_chains_with_values_of_unknown_shape_use_the_window(output: dict[str, Any]) -> None:
    """A keyword or policy pattern can be plain words: finished words are no safer than
    unfinished ones, so such chains hold the window even when adaptive is asked for."""
    c = await client(config_with_output({**output, "streaming": {"holdbackChars": 16}}))
    assert c.send("Hello there,") == ""
    assert c.send(" how are") == "Hello there,"


def reference_cut(text: str, sent: int, holdback: int, reps: list[tuple[int, int]]) -> int:
    """The adaptive cut as first written: every regex run on every window."""
    end = len(text)
    cut = end
    for a, b in reps:
        if b >= end:
            cut = min(cut, a)
    lo = max(sent, end - holdback)
    for m in re.compile(r"\S*\d\S*").finditer(text, lo):
        if m.end() > end - NUMBER_CONTEXT:
            cut = min(cut, m.start())
            break
    open_run = re.compile(r"\S*\Z").search(text, lo)
    finished = re.compile(r"[^\s\d@]*[!?,;)\"]")
    if open_run is not None and open_run.group() and not finished.fullmatch(open_run.group()):
        cut = min(cut, open_run.start())
    return max(cut, lo)


@settings(max_examples=1000, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list('ab9 \n\t\u00a0\u2003@!,;)".٣')), max_size=60),
    st.integers(0, 70),
    st.integers(1, 64),
    st.lists(st.tuples(st.integers(0, 70), st.integers(0, 70)), max_size=3),
)
def test_the_adaptive_cut_is_the_one_every_regex_gives(
    text: str, sent: int, holdback: int, spans: list[tuple[int, int]]
) -> None:
    """The cut's shortcuts (no digit: no number run; a whitespace last: no open word; nothing
    unsent: nothing to cut) never change it, whatever the text, Unicode digits and spaces
    included."""
    sent = min(sent, len(text))
    reps = sorted((min(a, b), max(a, b)) for a, b in spans)
    guard = _StreamGuard(Engine(Direction.OUTPUT, []), holdback, None, adaptive=True)
    slot = _Slot(0, text=text, sent=sent, reps=[Replacement(a, b, "x") for a, b in reps])
    assert guard._safe_cut(slot) == reference_cut(text, sent, holdback, reps)

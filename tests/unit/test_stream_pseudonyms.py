"""Pseudonym restoration in the output stream guard (``guarding._StreamGuard``), driven by the real
OpenAI chat stream parser: a placeholder is restored wherever the provider's chunks cut it,
in every choice of a multi-choice stream, and text that only looks like the start of a
placeholder is not held longer than it must be."""

from __future__ import annotations

import itertools
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from aiguard_api.policy import Operation
from aiguard_sidecar.exchange import Api, EventAction, Exchange, WireFormat
from aiguard_sidecar.guarding import _StreamGuard
from aiguard_sidecar.guardrails.base import Direction
from aiguard_sidecar.guardrails.engine import Engine
from aiguard_sidecar.hooks import Verdict
from aiguard_sidecar.providers.openai import ChatStream, ResponsesStream

MAPPING = {"<EMAIL_ADDRESS_1>": "jane.doe@example.com", "<PHONE_NUMBER_1>": "+1 212 555 0100"}
NO_SCANNERS = Engine(Direction.OUTPUT, [])


def _block(pieces: dict[int, str] | None = None, finish: bool = False) -> bytes:
    choices: list[dict[str, Any]] = [
        {"index": i, "delta": {"content": text}, "finish_reason": None}
        for i, text in (pieces or {}).items()
    ]
    if finish:
        choices = [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    return b"data: " + json.dumps({"id": "c", "model": "m", "choices": choices}).encode() + b"\n\n"


def run(chunks: list[dict[int, str]], holdback: int = 0) -> tuple[dict[int, str], list[int]]:
    """Feed chunk events, a finish event and [DONE]; return the text per choice the client
    got, and for each input event how many events were written when it arrived."""
    ex = Exchange(WireFormat.OPENAI, Api.CHAT_COMPLETIONS, Operation.CHAT, "m", stream=True)
    parser = ChatStream(ex)
    guard = _StreamGuard(NO_SCANNERS, holdback, "m", MAPPING)
    sent: list[bytes] = []
    progress: list[int] = []
    blocks = [_block(c) for c in chunks] + [_block(finish=True), b"data: [DONE]\n\n"]
    for block in blocks:
        event = parser.feed(block)
        assert event.action is EventAction.FORWARD
        verdict = guard.on_event(event)
        assert not verdict.blocked
        sent.extend(e.render() for e in verdict.released)
        if verdict.verdict is not Verdict.HOLD:
            sent.append(event.render())
        progress.append(len(sent))
    end = guard.on_end()
    sent.extend(e.render() for e in end.released)
    texts: dict[int, str] = {}
    for raw in sent:
        data = raw.decode().removeprefix("data: ").strip()
        if data == "[DONE]":
            continue
        for choice in json.loads(data)["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + (
                choice["delta"].get("content") or ""
            )
    return texts, progress


TEXT = "mail <EMAIL_ADDRESS_1> or call <PHONE_NUMBER_1>, not <EMAIL_ADDRESS_7>."
RESTORED = "mail jane.doe@example.com or call +1 212 555 0100, not <EMAIL_ADDRESS_7>."


def test_every_two_way_cut_is_restored() -> None:
    for cut in range(1, len(TEXT)):
        texts, _ = run([{0: TEXT[:cut]}, {0: TEXT[cut:]}])
        assert texts[0] == RESTORED, cut


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(TEXT) - 1), max_size=12, unique=True))
def test_any_cuts_restore_the_values(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(TEXT)]
    chunks = [{0: TEXT[a:b]} for a, b in itertools.pairwise(bounds)]
    assert run(chunks)[0][0] == RESTORED


def test_each_choice_is_restored_independently() -> None:
    a, b = "x <EMAIL_ADD", "RESS_1> y"
    c, d = "p <PHONE_NU", "MBER_1> q"
    texts, _ = run([{0: a, 1: c}, {1: d}, {0: b}])
    assert texts == {0: "x jane.doe@example.com y", 1: "p +1 212 555 0100 q"}


def test_a_lone_angle_bracket_is_not_held_once_it_cannot_be_a_placeholder() -> None:
    # "<" may start a placeholder: held. " b" rules that out: both go at the next event.
    _, progress = run([{0: "if a <"}, {0: " b then"}, {0: " done"}])
    assert progress[0] == 0
    assert progress[1] == 2


def _responses_events(pieces: list[str], whole: str) -> list[bytes]:
    def ev(obj: dict[str, Any]) -> bytes:
        return f"event: {obj['type']}\ndata: {json.dumps(obj)}\n\n".encode()

    deltas = [
        ev(
            {
                "type": "response.output_text.delta",
                "output_index": 0,
                "content_index": 0,
                "delta": p,
            }
        )
        for p in pieces
    ]
    done = ev(
        {"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": whole}
    )
    completed = ev(
        {
            "type": "response.completed",
            "response": {"id": "r", "model": "m", "status": "completed", "output": []},
        }
    )
    return [*deltas, done, completed]


def test_a_long_answer_restores_every_placeholder_and_its_closing_snapshot() -> None:
    """Hundreds of placeholders over thousands of events: each is restored where the client
    sees it, and the closing event that repeats the whole text (Responses API) carries the
    restored text, including the replacements long since released (kept apart from the
    window's)."""
    words = (TEXT + " ").split(" ") * 300
    whole = "".join(w + " " for w in words)
    expected = whole.replace("<EMAIL_ADDRESS_1>", MAPPING["<EMAIL_ADDRESS_1>"]).replace(
        "<PHONE_NUMBER_1>", MAPPING["<PHONE_NUMBER_1>"]
    )
    for holdback in (0, 128):
        ex = Exchange(WireFormat.OPENAI, Api.RESPONSES, Operation.RESPONSES, "m", stream=True)
        parser = ResponsesStream(ex)
        guard = _StreamGuard(NO_SCANNERS, holdback, "m", MAPPING)
        streamed, snapshot = "", None
        for block in _responses_events([w + " " for w in words], whole):
            event = parser.feed(block)
            verdict = guard.on_event(event)
            out = [*verdict.released]
            if verdict.verdict is not Verdict.HOLD:
                out.append(event)
            for e in out:
                obj = json.loads(e.render().decode().split("data: ", 1)[1])
                if obj["type"] == "response.output_text.delta":
                    streamed += obj["delta"]
                elif obj["type"] == "response.output_text.done":
                    snapshot = obj["text"]
        streamed += "".join(
            json.loads(e.render().decode().split("data: ", 1)[1]).get("delta", "")
            for e in guard.on_end().released
        )
        assert streamed == expected, holdback
        assert snapshot == expected, holdback

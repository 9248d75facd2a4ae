"""The output stream guard (``guarding._StreamGuard``) per streamed response, in process.

One OpenAI chat stream of ``--events`` content events (a few words each) goes through the real
``ChatStream`` parser and the guard of the default output guardrails (PII patterns, secrets;
holdback 128), the way ``pipeline._pump`` drives them. Variants, timed in one run and given as
ratios to the first (a shared box bends absolute figures, ratios less):

* ``text``                     — content deltas (the baseline);
* ``text+pseudonyms``          — the request carried a pseudonym mapping; no placeholder in
  the answer (the usual case: only the "<" fast path is paid);
* ``text+placeholders``        — the same, with a placeholder every ~14 words (restored);
* ``tool_args``                — the same text as streamed tool-call argument fragments;
* ``tool_args+placeholders``   — both.

Per variant: the median over ``--rounds`` of the wall time of one whole stream (parser + guard
+ rendering), and µs per event.

    python -m benchmarks.stream_guard          → benchmarks/results/stream_guard.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from aiguard_api.config import view_of
from aiguard_api.policy import AIPolicySpec, Operation
from aiguard_sidecar.exchange import Api, Exchange, WireFormat
from aiguard_sidecar.guarding import _StreamGuard, build_cached
from aiguard_sidecar.guardrails.engine import Engine
from aiguard_sidecar.providers.openai import ChatStream
from benchmarks.common import load_average, machine, write_results

MAPPING = {"<EMAIL_ADDRESS_1>": "jane.doe@example.com"}
PLAIN = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "and",
    "writes",
    "to",
    "jane",
    "again",
]
WITH_PLACEHOLDER = [w if w != "jane" else "<EMAIL_ADDRESS_1>" for w in PLAIN]


def _engine() -> Engine:
    spec = AIPolicySpec.model_validate(
        {
            "providers": [
                {
                    "name": "p",
                    "type": "openai",
                    "baseURL": "https://x",
                    "apiKeySecretRef": {"name": "k"},
                }
            ],
            "routes": [{"name": "r", "models": ["*"], "targets": [{"provider": "p"}]}],
            "guardrails": {"input": {"promptInjection": {"enabled": False}}},
        }
    )
    return build_cached(view_of(spec), lambda name, key: Path("/nonexistent") / name / key).output


def _blocks(words: list[str], events: int, *, tool: bool) -> list[bytes]:
    out = []
    for i in range(events):
        piece = words[i % len(words)] + " "
        delta: dict[str, Any] = (
            {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            if tool
            else {"content": piece}
        )
        chunk = {"id": "c", "model": "m", "choices": [{"index": 0, "delta": delta}]}
        out.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    finish = {
        "id": "c",
        "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    out.append(b"data: " + json.dumps(finish).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def _stream(engine: Engine, blocks: list[bytes], mapping: dict[str, str] | None) -> float:
    ex = Exchange(WireFormat.OPENAI, Api.CHAT_COMPLETIONS, Operation.CHAT, "m", stream=True)
    parser = ChatStream(ex)
    guard = _StreamGuard(engine, 128, "m", mapping)
    t0 = time.perf_counter()
    for block in blocks:
        event = parser.feed(block)
        verdict = guard.on_event(event)
        for e in verdict.released:
            e.render()
        event.render()
    for e in guard.on_end().released:
        e.render()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    engine = _engine()
    variants = {
        "text": (PLAIN, False, None),
        "text+pseudonyms": (PLAIN, False, MAPPING),
        "text+placeholders": (WITH_PLACEHOLDER, False, MAPPING),
        "tool_args": (PLAIN, True, None),
        "tool_args+placeholders": (WITH_PLACEHOLDER, True, MAPPING),
    }
    load_before = load_average()
    times: dict[str, list[float]] = {name: [] for name in variants}
    prepared = {n: (_blocks(w, args.events, tool=t), m) for n, (w, t, m) in variants.items()}
    for blocks, mapping in prepared.values():
        _stream(engine, blocks, mapping)  # warm up
    for _ in range(args.rounds):  # interleaved: neighbours' noise hits every variant alike
        for name, (blocks, mapping) in prepared.items():
            times[name].append(_stream(engine, blocks, mapping))
    base = statistics.median(times["text"])
    rows = {}
    print(f"{'variant':24s} {'ms/stream':>10s} {'µs/event':>9s} {'ratio':>6s}")
    for name, values in times.items():
        med = statistics.median(values)
        rows[name] = {
            "ms_per_stream": round(med * 1000, 3),
            "us_per_event": round(med / args.events * 1e6, 2),
            "ratio_to_text": round(med / base, 3),
        }
        r = rows[name]
        print(
            f"{name:24s} {r['ms_per_stream']:10.2f} {r['us_per_event']:9.2f} "
            f"{r['ratio_to_text']:6.2f}"
        )
    write_results(
        "stream_guard",
        {
            "events": args.events,
            "rounds": args.rounds,
            "holdback": 128,
            "variants": rows,
            "load_average": {"before": load_before, "after": load_average()},
            "machine": machine(),
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

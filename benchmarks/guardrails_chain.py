"""The default input guardrail chain: CPU time per 2 KB, for the chain and each guardrail.

Target (issue #6): the default input guardrails ≤ 300 µs CPU per 2 KB of text.

Texts (from ``../shared/eval``, or ``$AIGUARD_EVAL_DIR``), 2 KB of UTF-8 each:

    clean          ordinary prompts (benign_prompts.dev.jsonl) back to back
    some_pii       the same with one labelled PII sentence (pii_spans.dev.jsonl, one that has
                   a structured entity) in every 2 KB
    pii_dense      presidio-research's synthetic PII sentences back to back (many entities)
    chat           the sidecar benchmark's 2 KB chat body (benchmarks/sidecar_proxy.py): a
                   system prompt and three ~650-byte turns as four segments, the same body
                   every request (what the proxy benchmark makes the guardrails scan)
    conversation   eight-turn conversations from ordinary prompts; request k carries turns
                   1..k, as chat clients re-send the history (per 2 KB of text scanned)

Timing: ``time.thread_time`` around ``check`` over every input of a set, per 2 KB of UTF-8
text; the median of ``--rounds`` passes. Result caches (the guardrails' and the
normalisation cache) are emptied before every pass, so ``clean``/``some_pii``/``pii_dense``
measure first sightings; ``chat`` and ``conversation`` repeat text, as real traffic does.

``--baseline REV`` loads the guardrails package as it was at git revision REV (under another
package name) next to the working tree's, and alternates their passes, so both see the same
machine load; the ratio ``current / baseline`` is the figure to read on a shared machine.

    python -m benchmarks.guardrails_chain [--rounds 7] [--baseline REV]
        → benchmarks/results/guardrails_chain.json and a table
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from aiguard_api.config import view_of
from aiguard_api.policy import InputGuardrails
from benchmarks import common
from benchmarks.sidecar_proxy import chat_body

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EVAL = Path(os.environ.get("AIGUARD_EVAL_DIR") or REPO.parent / "shared" / "eval")
GUARDRAILS = "sidecar/aiguard_sidecar/guardrails"
TARGET_US = 300
STRUCTURED = {"EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS"}

Segments = list[Any]  # list of base.Segment (of one implementation or the other)


def load(name: str) -> list[dict[str, Any]]:
    with (EVAL / name).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def chunks_2k(texts: Iterable[str], n: int) -> list[str]:
    """Consecutive texts joined by newlines, cut at 2048 bytes of UTF-8."""
    out: list[str] = []
    buf = ""
    for t in texts:
        buf += t + "\n"
        while len(buf.encode()) >= 2048:
            raw = buf.encode()[:2048].decode("utf-8", "ignore")
            out.append(raw)
            buf = buf[len(raw) :]
            if len(out) >= n:
                return out
    return out


def with_pii(clean: Sequence[str], pii_rows: Sequence[dict[str, Any]]) -> list[str]:
    """Each clean chunk with one PII sentence put in at a word boundary near its middle, cut
    back to 2 KB."""
    sentences = [
        r["text"]
        for r in pii_rows
        if any(s["type"] in STRUCTURED for s in r["spans"]) and len(r["text"]) < 400
    ]
    out = []
    for i, text in enumerate(clean):
        s = sentences[i % len(sentences)]
        mid = text.find(" ", len(text) // 2)
        mixed = text[:mid] + " " + s + " " + text[mid:]
        out.append(mixed.encode()[:2048].decode("utf-8", "ignore"))
    return out


def conversations(prompts: Sequence[str], n: int, turns: int = 8) -> list[list[str]]:
    """``n`` requests' texts: conversations of ``turns`` turns, request k = turns 1..k."""
    out: list[list[str]] = []
    i = 0
    while len(out) < n:
        convo = [p[:1200] for p in prompts[i : i + turns]]
        i += turns
        if len(convo) < turns:
            i = 0
            continue
        for k in range(1, turns + 1):
            out.append(convo[:k])
    return out[:n]


def chat_segments() -> list[tuple[str, str]]:
    """(role, text) of the sidecar benchmark's 2 KB chat body."""
    doc = json.loads(chat_body(2048))
    return [(m["role"], m["content"]) for m in doc["messages"]]


# --------------------------------------------------------------------------------------------
# Implementations: the working tree's guardrails, and optionally a git revision's


class Impl:
    """One implementation of the guardrails package: its default input engine and helpers."""

    def __init__(self, label: str, package: str) -> None:
        self.label = label
        base = importlib.import_module(f"{package}.base")
        engine_mod = importlib.import_module(f"{package}.engine")
        self.textnorm: ModuleType | None
        try:
            self.textnorm = importlib.import_module(f"{package}.textnorm")
        except ImportError:
            self.textnorm = None
        self.patterns = importlib.import_module(f"{package}.patterns")
        self.Segment = base.Segment
        self.Role = base.Role
        self.ctx = base.ScanContext(base.Direction.INPUT)
        self.engine = engine_mod.build_engine(view_of(InputGuardrails()))
        if self.engine.unavailable:
            raise SystemExit(f"{label}: guardrails not loadable: {self.engine.unavailable}")

    def clear_caches(self) -> None:
        clear = getattr(self.patterns, "clear_caches", None)
        if clear is not None:
            clear()
        cached = getattr(self.textnorm, "_cached", None)
        if cached is not None:
            cached.cache_clear()

    def segments(self, texts: Sequence[tuple[str, str]]) -> Segments:
        return [self.Segment(i, text, self.Role(role)) for i, (role, text) in enumerate(texts)]

    def callables(self) -> dict[str, Callable[[Segments], object]]:
        ctx = self.ctx
        out: dict[str, Callable[[Segments], object]] = {
            "chain": lambda segs: self.engine.check(segs, ctx)
        }
        for g in self.engine.guardrails:

            def one(segs: Segments, g: Any = g) -> object:
                return g.check(segs, ctx)

            out[g.name] = one
        return out


def load_baseline(rev: str) -> str:
    """The guardrails package at ``rev``, importable as ``aiguard_baseline.guardrails``."""
    root = Path(tempfile.mkdtemp(prefix="aiguard-baseline-"))
    atexit.register(shutil.rmtree, root, True)
    files = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev, "--", GUARDRAILS],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    if not files:
        raise SystemExit(f"no {GUARDRAILS} at {rev}")
    pkg = root / "aiguard_baseline"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for f in files:
        data = subprocess.run(
            ["git", "show", f"{rev}:{f}"], cwd=REPO, check=True, capture_output=True
        ).stdout
        if f.endswith(".py"):
            data = data.replace(b"aiguard_sidecar.guardrails", b"aiguard_baseline.guardrails")
        dest = pkg / "guardrails" / Path(f).relative_to(GUARDRAILS)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    sys.path.insert(0, str(root))
    return "aiguard_baseline.guardrails"


# --------------------------------------------------------------------------------------------
# Timing


def one_pass(
    impl: Impl, fn: Callable[[Segments], object], inputs: Sequence[Segments], size: int
) -> float:
    """µs of thread CPU per 2 KB for one pass over ``inputs`` (caches emptied first)."""
    impl.clear_caches()
    t0 = time.thread_time()
    for segs in inputs:
        fn(segs)
    return (time.thread_time() - t0) * 1e6 * 2048 / size


def measure(
    impls: Sequence[Impl],
    sets: dict[str, list[list[tuple[str, str]]]],
    rounds: int,
) -> dict[str, dict[str, dict[str, float]]]:
    """set → what (chain or a guardrail) → impl label → median µs per 2 KB."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for set_name, requests in sets.items():
        size = sum(len(t.encode()) for req in requests for _, t in req)
        prepared = {impl.label: [impl.segments(req) for req in requests] for impl in impls}
        fns = {impl.label: impl.callables() for impl in impls}
        out[set_name] = {}
        for what in fns[impls[0].label]:
            samples: dict[str, list[float]] = {impl.label: [] for impl in impls}
            for impl in impls:  # warm up (lazy loads, scratch space)
                for segs in prepared[impl.label][:5]:
                    fns[impl.label][what](segs)
            for r in range(rounds):
                order = impls if r % 2 == 0 else list(reversed(impls))
                for impl in order:
                    samples[impl.label].append(
                        one_pass(impl, fns[impl.label][what], prepared[impl.label], size)
                    )
            out[set_name][what] = {k: round(statistics.median(v), 1) for k, v in samples.items()}
    return out


def short_text_us(impls: Sequence[Impl], rounds: int) -> dict[str, dict[str, float]]:
    """µs per call on 25-character texts (fixed costs), per guardrail: distinct texts, and
    one text repeated."""
    out: dict[str, dict[str, float]] = {}
    texts = [f"Hello, how are you {w}?"[:25] for w in _words(2000)]
    for impl in impls:
        distinct = [impl.segments([("user", t)]) for t in texts]
        repeated = [distinct[0]] * len(distinct)
        for what, fn in impl.callables().items():
            for kind, inputs in (("distinct", distinct), ("repeated", repeated)):
                samples = []
                for _ in range(rounds):
                    impl.clear_caches()
                    t0 = time.thread_time()
                    for segs in inputs:
                        fn(segs)
                    samples.append((time.thread_time() - t0) * 1e6 / len(inputs))
                out.setdefault(f"{what} ({kind})", {})[impl.label] = round(
                    statistics.median(samples), 2
                )
    return out


def _words(n: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [letters[i % 26] + letters[(i // 26) % 26] + letters[(i // 676) % 26] for i in range(n)]


# --------------------------------------------------------------------------------------------


def build_sets(n: int) -> dict[str, list[list[tuple[str, str]]]]:
    benign = [r["text"] for r in load("benign_prompts.dev.jsonl")]
    pii_rows = load("pii_spans.dev.jsonl")
    clean = chunks_2k(benign, n)
    dense = chunks_2k([r["text"] for r in pii_rows], n)
    chat = chat_segments()
    return {
        "clean": [[("user", t)] for t in clean],
        "some_pii": [[("user", t)] for t in with_pii(clean, pii_rows)],
        "pii_dense": [[("user", t)] for t in dense],
        "chat": [chat] * n,
        "conversation": [
            [("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(req)]
            for req in conversations(benign[::-1], n)
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="timed passes per figure (median)")
    ap.add_argument("--texts", type=int, default=200, help="requests per set")
    ap.add_argument("--baseline", default=None, help="git revision to compare against")
    ap.add_argument("--set", action="append", default=[], help="only these text sets")
    args = ap.parse_args(argv)

    impls = [Impl("current", "aiguard_sidecar.guardrails")]
    if args.baseline:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", args.baseline],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        impls.append(Impl(f"baseline {rev}", load_baseline(rev)))
    sets = build_sets(args.texts)
    if args.set:
        sets = {k: v for k, v in sets.items() if k in args.set}
    load_start = common.load_average()
    per_2kb = measure(impls, sets, args.rounds)
    doc: dict[str, Any] = {
        "what": "CPU µs per 2 KB of UTF-8 text (time.thread_time, median of passes)",
        "guardrails": impls[0].engine.names,
        "rounds": args.rounds,
        "texts_per_set": args.texts,
        "implementations": [i.label for i in impls],
        "load_average_at_start": load_start,
        "load_average_at_end": common.load_average(),
        "target_us_per_2kb": TARGET_US,
        "per_2kb_us": per_2kb,
        "short_text_us_per_call": short_text_us(impls, args.rounds),
        "machine": common.machine(),
    }
    if len(impls) == 2:
        a, b = (i.label for i in impls)
        doc["ratio_current_to_baseline"] = {
            s: {w: round(v[a] / v[b], 3) if v[b] else None for w, v in per.items()}
            for s, per in per_2kb.items()
        }
    common.write_results("guardrails_chain", doc)
    print_table(doc)
    return 0


def print_table(doc: dict[str, Any]) -> None:
    labels = doc["implementations"]
    print(f"CPU µs per 2 KB, default input chain {doc['guardrails']}; target ≤ {TARGET_US}")
    print(f"load average {doc['load_average_at_start']} → {doc['load_average_at_end']}")
    head = f"{'set':<14}{'what':<18}" + "".join(f"{x:>20}" for x in labels)
    if len(labels) == 2:
        head += f"{'ratio':>8}"
    print(head)
    for set_name, per in doc["per_2kb_us"].items():
        for what, v in per.items():
            line = f"{set_name:<14}{what:<18}" + "".join(f"{v[x]:>20.1f}" for x in labels)
            if len(labels) == 2:
                line += f"{doc['ratio_current_to_baseline'][set_name][what]:>8.2f}"
            print(line)
    print("µs per call, 25-character texts:")
    for what, v in doc["short_text_us_per_call"].items():
        print(f"  {what:<30}" + "".join(f"{v[x]:>20.2f}" for x in labels))


if __name__ == "__main__":
    raise SystemExit(main())

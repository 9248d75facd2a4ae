"""Moderation quality on the held-out split of ../shared/eval, per category and per source.

    python -m benchmarks.guardrails_moderation [--eval-dir ../shared/eval]

Only rows the shipped model never trained on are scored (split rule and the mapping of each
corpus's labels onto our six categories: benchmarks/_guardrail_data.py). At the policy's
default threshold (0.5) it reports, per source and category, precision / recall / F1 over the
rows labelled for that category; "any category" figures against each corpus's own harmful
label; false positives on benign prompts; recall per harmful-request family; the hate head on
HateCheck rows without a near duplicate in training; the lexicons' contribution (ablation); and
CPU time per 2 KB.

Writes benchmarks/results/guardrails_moderation.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiguard_api import policy
from aiguard_api.config import view_of
from aiguard_sidecar.guardrails import linear, moderation, textnorm
from aiguard_sidecar.guardrails.base import Direction, Role, ScanContext, Segment
from benchmarks import _guardrail_data as data

RESULTS = Path(__file__).resolve().parent / "results"
THRESHOLD = policy.ModerationGuardrail().threshold


def prf(pred: Sequence[bool], gold: Sequence[int]) -> dict[str, Any]:
    tp = sum(1 for p, g in zip(pred, gold, strict=True) if p and g == 1)
    fp = sum(1 for p, g in zip(pred, gold, strict=True) if p and g == 0)
    fn = sum(1 for p, g in zip(pred, gold, strict=True) if not p and g == 1)
    npos = tp + fn
    p = tp / (tp + fp) if tp + fp else None
    r = tp / npos if npos else None
    f1 = 2 * p * r / (p + r) if p is not None and r is not None and p + r > 0 else None
    return {
        "n_pos": npos,
        "n_neg": len(gold) - npos,
        "precision": None if p is None else round(p, 4),
        "recall": None if r is None else round(r, 4),
        "f1": None if f1 is None else round(f1, 4),
        "fpr": round(fp / (len(gold) - npos), 4) if len(gold) - npos else None,
    }


def evaluate(eval_dir: Path = data.DEFAULT_EVAL_DIR, *, timing: bool = True) -> dict[str, Any]:
    rows_all = [r for f in data.MODERATION_FILES for r in data.load(f, eval_dir)]
    rows_all += data.load_seed()
    rows = [r for r in rows_all if r.heldout]
    scores = [moderation.score_text(r.text) for r in rows]
    plain = [moderation.score_text(r.text, use_lexicons=False) for r in rows]
    labels = [data.moderation_labels(r) for r in rows]
    sources = sorted({r.short_source for r in rows})
    res: dict[str, Any] = {
        "split": data.SPLIT_RULE,
        "threshold": THRESHOLD,
        "model_file_bytes": (linear.MODELS_DIR / "moderation.json").stat().st_size,
        "n": {src: sum(1 for r in rows if r.short_source == src) for src in sources},
    }
    per: dict[str, dict[str, Any]] = {}
    no_lex: dict[str, dict[str, Any]] = {}
    for src in sources:
        idx = [i for i, r in enumerate(rows) if r.short_source == src]
        per[src] = {}
        no_lex[src] = {}
        for cat in data.CATEGORIES:
            lab = [(i, labels[i][cat]) for i in idx if labels[i][cat] is not None]
            if not lab:
                continue
            gold = [int(g) for _, g in lab if g is not None]
            per[src][cat] = prf([scores[i][cat] >= THRESHOLD for i, _ in lab], gold)
            no_lex[src][cat] = prf([plain[i][cat] >= THRESHOLD for i, _ in lab], gold)
        anyl: list[tuple[int, int]] = []
        for i in idx:
            g = data.any_harm_label(rows[i])
            if g is not None:
                anyl.append((i, g))
        if anyl:
            per[src]["any"] = prf(
                [max(scores[i].values()) >= THRESHOLD for i, _ in anyl], [int(g) for _, g in anyl]
            )
    res["by_source"] = per
    res["without_lexicons"] = no_lex
    # pooled per category over every source labelled for it (for orientation only)
    pooled: dict[str, Any] = {}
    for cat in data.CATEGORIES:
        lab = [(i, labels[i][cat]) for i in range(len(rows)) if labels[i][cat] is not None]
        pooled[cat] = prf(
            [scores[i][cat] >= THRESHOLD for i, _ in lab], [int(g) for _, g in lab if g is not None]
        )
    res["pooled_by_category"] = pooled
    # harmful request families: recall of any category and of the mapped one
    fam: dict[str, Any] = {}
    for i, r in enumerate(rows):
        if r.file != "harmful_requests":
            continue
        e = fam.setdefault(r.short_source, {"n": 0, "any": 0, "illicit": 0})
        e["n"] += 1
        e["any"] += max(scores[i].values()) >= THRESHOLD
        e["illicit"] += scores[i]["illicit"] >= THRESHOLD
    res["harmful_requests_recall"] = {
        k: {
            "n": v["n"],
            "any": round(v["any"] / v["n"], 4),
            "illicit": round(v["illicit"] / v["n"], 4),
        }
        for k, v in sorted(fam.items())
    }
    # HateCheck: rows with no near duplicate in the training split; per functionality
    hc_train = [r.text for r in rows_all if r.short_source == "hatecheck" and not r.heldout]
    hc = [(i, r) for i, r in enumerate(rows) if r.short_source == "hatecheck"]
    nov = data.novel(hc_train, [r.text for _, r in hc])
    hc_novel = [(i, r) for (i, r), n in zip(hc, nov, strict=True) if n]
    res["hatecheck_novel_hate"] = prf(
        [scores[i]["hate"] >= THRESHOLD for i, _ in hc_novel],
        [int(r.label or 0) for _, r in hc_novel],
    )
    func: dict[str, list[bool]] = {}
    for i, r in hc:
        ok = (scores[i]["hate"] >= THRESHOLD) == bool(r.label)
        func.setdefault(r.category.removeprefix("hatecheck_"), []).append(ok)
    res["hatecheck_accuracy_by_functionality"] = {
        k: {"n": len(v), "accuracy": round(sum(v) / len(v), 4)} for k, v in sorted(func.items())
    }
    if timing:
        res["cpu"] = cpu_per_2kb(rows)
    return res


def cpu_per_2kb(rows: Sequence[data.Row], n: int = 400) -> dict[str, Any]:
    texts: list[str] = []
    buf = ""
    for r in rows:
        buf += r.text + "\n"
        while len(buf.encode("utf-8")) >= 2048 and len(texts) < n:
            raw = buf.encode("utf-8")[:2048].decode("utf-8", "ignore")
            texts.append(raw)
            buf = buf[len(raw) :]
    guard = moderation.ModerationGuardrail(view_of(policy.ModerationGuardrail()))
    ctx = ScanContext(direction=Direction.OUTPUT)
    for t in texts[:20]:
        guard.check([Segment(0, t, Role.OUTPUT)], ctx)
    runs = []
    for _ in range(5):
        textnorm._cached.cache_clear()
        t0 = time.process_time()
        for t in texts:
            guard.check([Segment(0, t, Role.OUTPUT)], ctx)
        runs.append((time.process_time() - t0) / len(texts) * 1e3)
    return {
        "texts": len(texts),
        "ms_per_2kb": round(statistics.median(runs), 4),
        "note": "CPU time of ModerationGuardrail.check (normalisation included), median of 5",
    }


def _f(v: float | None) -> str:
    return "  -  " if v is None else f"{v:5.2f}"


def print_table(res: dict[str, Any]) -> None:
    print(f"threshold {res['threshold']} (default); held-out rows, per source and category")
    print(
        f"{'source':34s} {'category':10s} {'pos':>5s} {'neg':>5s} {'P':>5s} {'R':>5s} "
        f"{'F1':>5s} {'FPR':>5s} | {'F1 w/o lexicons':>15s}"
    )
    benign: list[tuple[str, dict[str, Any]]] = []
    for src, cats in res["by_source"].items():
        if all(m["n_pos"] == 0 for m in cats.values()):
            benign.append((src, cats["any"]))
            continue
        for cat, m in cats.items():
            nl = res["without_lexicons"].get(src, {}).get(cat, {})
            print(
                f"{src[:34]:34s} {cat:10s} {m['n_pos']:5d} {m['n_neg']:5d} {_f(m['precision'])} "
                f"{_f(m['recall'])} {_f(m['f1'])} {_f(m['fpr'])} | {_f(nl.get('f1')):>15s}"
            )
    m = res["hatecheck_novel_hate"]
    print(
        f"{'hatecheck (no near-dup in train)':34s} {'hate':10s} {m['n_pos']:5d} {m['n_neg']:5d} "
        f"{_f(m['precision'])} {_f(m['recall'])} {_f(m['f1'])} {_f(m['fpr'])}"
    )
    print("ordinary prompts: share flagged in any category (false positives)")
    for src, m in benign:
        print(f"  {src:32s} n={m['n_neg']:4d}  FPR {_f(m['fpr'])}")
    print("harmful_requests recall (any category | illicit):")
    for k, v in res["harmful_requests_recall"].items():
        print(f"  {k[:64]:64s} n={v['n']:3d}  {_f(v['any'])} | {_f(v['illicit'])}")
    if "cpu" in res:
        print(f"CPU ms per 2 KB (check, 6 categories): {res['cpu']['ms_per_2kb']:.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="moderation benchmark (held-out split)")
    ap.add_argument("--eval-dir", type=Path, default=data.DEFAULT_EVAL_DIR)
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args(argv)
    if not (args.eval_dir / "toxicity.dev.jsonl").exists():
        print(f"no evaluation data in {args.eval_dir}; skipped")
        return 0
    res = evaluate(args.eval_dir, timing=not args.no_timing)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "guardrails_moderation.json"
    out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    print_table(res)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

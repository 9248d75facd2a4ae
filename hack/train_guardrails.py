#!/usr/bin/env python3
"""Train the prompt-injection and moderation classifiers the sidecar ships.

    python hack/train_guardrails.py --eval-dir ../shared/eval \\
        --out sidecar/aiguard_sidecar/guardrails/models        # make train-guardrails

Needs scikit-learn and numpy (training only: the sidecar reads the JSON it writes with pure
Python). Deterministic: fixed split, fixed folds, liblinear with a fixed seed, weights rounded;
the same data gives byte-identical model files on the same day (the date is recorded).
``--only injection`` retrains the injection model alone (about a minute and a half).

What it does
    1. loads ../shared/eval and the hand-written seed data in hack/data/ (benign.jsonl, and for
       injection benign_hard.jsonl: developer questions, greetings, tool outputs), and splits
       every file by a stable hash (benchmarks/_guardrail_data.py: 30 % held out, per row; a
       GPTFuzz question and all its answers fall on one side). Only the training side is used
       to fit, select or calibrate anything.
    2. injection: features with the sidecar's own code (textnorm.normalize → linear.feature_set):
       distinct word unigrams + bigrams and punctuation runs, binary, L2-normalised over the
       vocabulary with linear.NORM_FLOOR. Picks C and the weight of ordinary prompts by 5-fold
       cross-validation on the training side (objective: detection at TARGET_FPR false
       positives on ordinary prompts, scored as injection.score_text does: signature boosts
       added, a row with a system prompt read in its context, a strong signature family
       always firing), fits, keeps the TOP_K strongest
       n-grams, refits on them, and sets ``offset`` so the default threshold 0.5 sits at
       TARGET_FPR of the cross-validated scores. Written as linear.CompactModel (vocabulary
       strings + 16-bit fixed-point weights).
    3. moderation: the same features, one head per category on the rows labelled for it
       (mapping documented in benchmarks/_guardrail_data.py), C by cross-validation, fitted,
       the TOP_K strongest n-grams kept and refitted; each head's offset puts 0.5 at the
       cross-validated F1-optimal threshold; lexicons from hack/data/moderation_lexicons.json.
    4. writes models/injection.json and models/moderation.json (weights + provenance) and
       models/metrics.json (cross-validation figures, and the held-out split's figures from
       the benchmarks' evaluation code, so the numbers are the shipped model's).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "sidecar"), str(ROOT / "api")]

import numpy as np  # noqa: E402
import scipy.sparse as sp  # type: ignore[import-untyped]  # noqa: E402
from benchmarks import _guardrail_data as data  # noqa: E402
from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]  # noqa: E402

from aiguard_sidecar.guardrails import injection, linear, moderation, textnorm  # noqa: E402

SEED = 20240601
FOLDS = 5
MIN_DF = 2
TOP_K_INJECTION = 20000
TOP_K_MODERATION = 24000
WEIGHT_DECIMALS = 4
# Injection operating point: false positives on ordinary prompts (corpus + hand-written), of the
# cross-validated scores; below the 2 % so that the held-out figure has some margin.
TARGET_FPR = 0.0125
# The hand-written ordinary questions (hack/data/benign.jsonl) stand for the most common
# traffic, which the corpora barely contain: their rows weigh SEED_WEIGHT times more (fixed
# beforehand; cross-validation on the training split agreed: fewer false positives on them,
# detection unchanged).
SEED_WEIGHT = 3.0
INJECTION_GRID = [(c, bw) for c in (8.0, 16.0, 32.0) for bw in (1.0, 3.0)]
MAX_SCALE = 4096  # injection weights: 16-bit fixed point (linear.CompactModel)
# Hand-written hard negatives for injection only (developer questions, greetings, tool output)
HARD_NEGATIVES = "benign_hard"
MODERATION_GRID = (2.0, 8.0, 32.0)
LEXICONS = ROOT / "hack" / "data" / "moderation_lexicons.json"
CV_RULE = (
    f"{FOLDS}-fold CV on the training split, fold = sha256('aiguard-fold-v1:' + key) % {FOLDS}"
)
FEATURES = (
    "distinct words, word bigrams and punctuation runs of textnorm.normalize(text), binary, "
    "L2-normalised over the vocabulary"
)

Features = list[set[str]]


# --------------------------------------------------------------------------------------------
# Features and fitting


def featurise(texts: Sequence[str]) -> Features:
    out = []
    for t in texts:
        norm = textnorm.normalize(t)
        out.append(linear.feature_set(norm.words, norm.punct))
    return out


def vocabulary(feats: Features, min_df: int = MIN_DF) -> dict[str, int]:
    df = Counter(f for fs in feats for f in fs)
    return {f: i for i, f in enumerate(sorted(k for k, v in df.items() if v >= min_df))}


def matrix(feats: Features, vocab: dict[str, int]) -> sp.csr_matrix:
    """Binary bag of n-grams, each row L2-normalised over the vocabulary with linear.py's floor
    (linear.py's form)."""
    indptr = [0]
    indices: list[int] = []
    values: list[float] = []
    for fs in feats:
        idx = sorted(vocab[f] for f in fs if f in vocab)
        if idx:
            v = 1.0 / math.sqrt(max(len(idx), linear.NORM_FLOOR))
            indices.extend(idx)
            values.extend([v] * len(idx))
        indptr.append(len(indices))
    return sp.csr_matrix((values, indices, indptr), shape=(len(feats), len(vocab)))


def fit(x: sp.csr_matrix, y: np.ndarray, w: np.ndarray | None, c: float) -> LogisticRegression:
    m = LogisticRegression(
        C=c, class_weight="balanced", solver="liblinear", max_iter=10000, random_state=SEED
    )
    m.fit(x, y, sample_weight=w)
    return m


class Head:
    """One logistic-regression head over a shared vocabulary, fitted in two stages: on the
    full vocabulary, then on the ``top_k`` n-grams with the largest weights."""

    def __init__(self, vocab: dict[str, int], coef: np.ndarray, bias: float) -> None:
        self.vocab = vocab
        self.coef = coef
        self.bias = bias


def two_stage(
    feats: Features,
    ys: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    cs: dict[str, float],
    top_k: int,
) -> tuple[dict[str, int], dict[str, Head]]:
    """Fit every head on its rows (index array, labels, weights); select one shared vocabulary
    of ``top_k`` n-grams (by largest |weight| over heads); refit every head on it."""
    vocab = vocabulary([feats[i] for _, (idx, _, _) in ys.items() for i in idx])
    x = matrix(feats, vocab)
    strength = np.zeros(len(vocab))
    for head, (idx, y, w) in ys.items():
        m = fit(x[idx], y, w, cs[head])
        strength = np.maximum(strength, np.abs(m.coef_[0]))
    keep = np.argsort(-strength, kind="stable")[:top_k]
    inv = {i: f for f, i in vocab.items()}
    small = {f: j for j, f in enumerate(sorted(inv[i] for i in keep))}
    x2 = matrix(feats, small)
    heads = {}
    for head, (idx, y, w) in ys.items():
        m = fit(x2[idx], y, w, cs[head])
        heads[head] = Head(small, m.coef_[0], float(m.intercept_[0]))
    return small, heads


def predict(head: Head, feats: Features) -> np.ndarray:
    x = matrix(feats, head.vocab)
    return np.asarray(x @ head.coef).ravel() + head.bias


def fold_of(key: str) -> int:
    import hashlib

    h = hashlib.sha256(f"aiguard-fold-v1:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") % FOLDS


def cross_validate(
    rows: Sequence[data.Row],
    feats: Features,
    ys: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    cs: dict[str, float],
    top_k: int,
) -> dict[str, np.ndarray]:
    """Out-of-fold logits per head (NaN where a row is not labelled for the head)."""
    folds = np.array([fold_of(r.split_key) for r in rows])
    out = {h: np.full(len(rows), np.nan) for h in ys}
    for k in range(FOLDS):
        sub: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
        for h, (idx, y, w) in ys.items():
            mask = folds[idx] != k
            sub[h] = (idx[mask], y[mask], None if w is None else w[mask])
        _, heads = two_stage(feats, sub, cs, top_k)
        test = np.where(folds == k)[0]
        tfeats = [feats[i] for i in test]
        for h, head in heads.items():
            out[h][test] = predict(head, tfeats)
    return out


# --------------------------------------------------------------------------------------------
# Writing models


def weights_json(vocab: dict[str, int], heads: Sequence[Head]) -> dict[str, list[float]]:
    """One weight per head for every vocabulary entry, rounded; 0 written as the integer 0."""
    out: dict[str, list[float]] = {}
    for f, i in sorted(vocab.items()):
        ws = [round(float(head.coef[i]), WEIGHT_DECIMALS) for head in heads]
        out[f] = [w if w != 0.0 else 0 for w in ws]
    return out


def trained_date() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = time.gmtime(int(epoch)) if epoch else time.gmtime()
    return time.strftime("%Y-%m-%d", t)


def sources_info(
    eval_dir: Path, files: Sequence[str], rows: Sequence[data.Row]
) -> list[dict[str, Any]]:
    out = []
    for f in files:
        path = eval_dir / f"{f}.dev.jsonl"
        used = [r for r in rows if r.file == f]
        out.append(
            {
                "file": f"{f}.dev.jsonl",
                "sha256": data.file_digest(path),
                "rows_total": len(data.load(f, eval_dir)),
                "rows_train": sum(1 for r in used if not r.heldout),
                "sources": sorted({r.short_source for r in used}),
            }
        )
    return out


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(
        json.dumps(doc, ensure_ascii=False, sort_keys=False, separators=(",", ":")) + "\n",
        encoding="utf-8",
    )


# --------------------------------------------------------------------------------------------
# Injection


def injection_boosts(rows: Sequence[data.Row]) -> tuple[np.ndarray, np.ndarray]:
    """Signature, evasion and context boosts as injection.score_text adds them (user role; a
    row with a ``system_prompt``, PurpleLlama's, read in the context of its system prompt as
    the sidecar reads a request's system message), and whether a strong family fired (then
    score_text lifts the logit to STRONG_FLOOR: the text fires at the default threshold
    whatever the classifier says)."""
    out = []
    strong = []
    for r in rows:
        context = injection.protection_of(str(r.extras.get("system_prompt") or ""))
        b, fams = injection.signature_boost(textnorm.normalize(r.text), context=context)
        out.append(b)
        strong.append(bool(fams & injection.STRONG_FAMILIES))
    return np.array(out), np.array(strong)


def detection_at(
    scores: np.ndarray, y: np.ndarray, benign: np.ndarray, fpr: float
) -> tuple[float, float]:
    thr = float(np.quantile(scores[benign], 1.0 - fpr, method="higher"))
    return float((scores[y == 1] > thr).mean()), thr


def combine(clf: np.ndarray, boosts: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """The logit before the offset, as score_text computes it; a strong family always fires."""
    return np.where(strong, np.inf, clf + boosts)


def fixed_point(coef: np.ndarray) -> tuple[int, list[int]]:
    """The largest power-of-two scale ≤ MAX_SCALE at which every weight fits in 16 bits."""
    peak = float(np.abs(coef).max()) or 1.0
    scale = 1
    while scale * 2 <= MAX_SCALE and peak * scale * 2 <= 32767:
        scale *= 2
    return scale, [int(v) for v in np.rint(coef * scale).astype(np.int64)]


def train_injection(
    eval_dir: Path, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    rows = [
        r
        for f in data.INJECTION_FILES + data.INJECTION_EXTRA_NEGATIVES
        for r in data.load(f, eval_dir)
    ]
    rows += data.load_seed("benign") + data.load_seed(HARD_NEGATIVES)
    train = [r for r in rows if not r.heldout]
    y = np.array([data.injection_label(r) for r in train])
    # ordinary prompts: the corpus's benign prompts and the hand-written seed rows
    seed = np.array([r.file.startswith("seed:") for r in train])
    benign = np.array([data.is_ordinary_prompt(r) for r in train]) | seed
    feats = featurise([r.text for r in train])
    boosts, strong = injection_boosts(train)
    idx = np.arange(len(train))
    log(f"injection: {len(train)} training rows ({int(y.sum())} attacks, {int(seed.sum())} seed)")
    best: tuple[float, float, float] | None = None
    grid = []
    for c, bw in INJECTION_GRID:
        w = np.where(benign, bw, 1.0) * np.where(seed, SEED_WEIGHT, 1.0)
        oof = cross_validate(
            train, feats, {"injection": (idx, y, w)}, {"injection": c}, TOP_K_INJECTION
        )["injection"]
        det, _ = detection_at(combine(oof, boosts, strong), y, benign, TARGET_FPR)
        det_clf, _ = detection_at(oof, y, benign, TARGET_FPR)
        grid.append(
            {
                "C": c,
                "benign_weight": bw,
                "cv_detection": round(det, 4),
                "cv_detection_classifier_only": round(det_clf, 4),
            }
        )
        log(
            f"  C={c:g} benign_weight={bw:g}: cv detection at {TARGET_FPR:.2%} FPR {det:.3f} "
            f"(classifier alone {det_clf:.3f})"
        )
        if best is None or det > best[0] + 1e-9:
            best = (det, c, bw)
    assert best is not None
    _, c, bw = best
    w = np.where(benign, bw, 1.0) * np.where(seed, SEED_WEIGHT, 1.0)
    oof = cross_validate(
        train, feats, {"injection": (idx, y, w)}, {"injection": c}, TOP_K_INJECTION
    )["injection"]
    combined = combine(oof, boosts, strong)
    det, offset = detection_at(combined, y, benign, TARGET_FPR)
    cv_by_source: dict[str, dict[str, float | int]] = {}
    for src in sorted(
        {
            r.short_source if r.file != f"seed:{HARD_NEGATIVES}" else "seed/hard-negatives"
            for r in train
        }
    ):
        m = np.array(
            [
                (r.short_source if r.file != f"seed:{HARD_NEGATIVES}" else "seed/hard-negatives")
                == src
                for r in train
            ]
        )
        key = "detected" if (y[m] == 1).any() else "false_positive_rate"
        cv_by_source[src] = {"n": int(m.sum()), key: round(float((combined[m] > offset).mean()), 4)}
    vocab, heads = two_stage(feats, {"injection": (idx, y, w)}, {"injection": c}, TOP_K_INJECTION)
    head = heads["injection"]
    scale, fixed = fixed_point(head.coef)
    order = sorted(vocab, key=lambda f: (" " in f, f))  # unigrams and punctuation, then bigrams
    unigrams = [f for f in order if " " not in f]
    bigrams = [f for f in order if " " in f]
    cv = {
        "selection": CV_RULE,
        "grid": grid,
        "chosen": {"C": c, "benign_weight": bw},
        "operating_point": {
            "target_benign_fpr": TARGET_FPR,
            "offset": round(offset, 4),
            "cv_detection": round(det, 4),
        },
        "cv_by_source": cv_by_source,
    }
    seed_info = [
        {
            "file": f"hack/data/{name}.jsonl",
            "sha256": data.file_digest(data.SEED_DIR / f"{name}.jsonl"),
            "rows_train": sum(1 for r in rows if r.file == f"seed:{name}" and not r.heldout),
        }
        for name in ("benign", HARD_NEGATIVES)
    ]
    model = {
        "format": linear.COMPACT_FORMAT,
        "name": "injection",
        "heads": ["injection"],
        "bias": [round(head.bias, WEIGHT_DECIMALS)],
        "scale": scale,
        "extra": {"offset": round(offset, 4), "norm_floor": linear.NORM_FLOOR},
        "provenance": {
            "trained": trained_date(),
            "script": "hack/train_guardrails.py",
            "data": sources_info(
                eval_dir, data.INJECTION_FILES + data.INJECTION_EXTRA_NEGATIVES, rows
            ),
            "seed_data": seed_info,
            "labels": "positive: every prompt_attacks row; negative: benign_prompts, "
            "harmful_requests, toxicity, and the hand-written ordinary prompts/documents "
            "(hack/data/benign.jsonl) and hard negatives (hack/data/benign_hard.jsonl: developer "
            "questions, greetings, tool outputs)",
            "split": data.SPLIT_RULE,
            "features": FEATURES,
            "model": "logistic regression (liblinear, L2, class_weight=balanced, "
            f"C={c:g}, ordinary-prompt weight {bw:g}, hand-written ones {bw * SEED_WEIGHT:g}), "
            f"refit on the top {len(vocab)} n-grams by |weight|; weights in 16-bit fixed "
            f"point (scale {scale})",
            "cross_validation": cv,
        },
        "unigrams": "\n".join(unigrams),
        "bigrams": "\n".join(bigrams),
        "weights_zlib_b64": linear.encode_weights([fixed[vocab[f]] for f in order]),
    }
    return model, cv


# --------------------------------------------------------------------------------------------
# Moderation


def lexicon_boosts(lexicons: dict[str, Any], texts: Sequence[str]) -> dict[str, np.ndarray]:
    lex = moderation.Lexicons.from_json(lexicons)
    out = {cat: np.zeros(len(texts)) for cat in data.CATEGORIES}
    for i, t in enumerate(texts):
        for cat, b in lex.boosts(textnorm.normalize(t)).items():
            out[cat][i] = b
    return out


def best_f1(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], y[order]
    tp = np.cumsum(t)
    fp = np.cumsum(1 - t)
    prec = tp / np.maximum(tp + fp, 1)
    rec = tp / max(int(t.sum()), 1)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0)
    # a threshold between distinct scores only
    valid = np.r_[s[1:] < s[:-1], True]
    f1 = np.where(valid, f1, -1)
    i = int(np.argmax(f1))
    thr = float((s[i] + s[i + 1]) / 2) if i + 1 < len(s) else float(s[i] - 1e-6)
    return float(f1[i]), thr


def _by_f1(f1: dict[float, float]) -> Callable[[float], tuple[float, float]]:
    return lambda c: (f1[c], -c)


def train_moderation(
    eval_dir: Path, log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    rows = [r for f in data.MODERATION_FILES for r in data.load(f, eval_dir)]
    rows += data.load_seed("benign")
    train = [r for r in rows if not r.heldout]
    labels = [data.moderation_labels(r) for r in train]
    feats = featurise([r.text for r in train])
    lexicons = json.loads(LEXICONS.read_text(encoding="utf-8"))
    boosts = lexicon_boosts(lexicons, [r.text for r in train])
    ys: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
    # The corpora's harmful rows are short questions, their harmless ones mostly not: the
    # hand-written ordinary questions weigh SEED_WEIGHT.
    seed_w = np.array([SEED_WEIGHT if r.file == "seed:benign" else 1.0 for r in train])
    for cat in data.CATEGORIES:
        idx = np.array([i for i, lab in enumerate(labels) if lab[cat] is not None])
        y = np.array([labels[i][cat] for i in idx])
        ys[cat] = (idx, y, seed_w[idx])
        log(f"moderation/{cat}: {len(idx)} labelled training rows ({int(y.sum())} positive)")
    cv_f1: dict[str, dict[float, float]] = {cat: {} for cat in data.CATEGORIES}
    for c in MODERATION_GRID:
        oof = cross_validate(train, feats, ys, dict.fromkeys(data.CATEGORIES, c), TOP_K_MODERATION)
        for cat, (idx, y, _) in ys.items():
            f1, _ = best_f1(oof[cat][idx] + boosts[cat][idx], y)
            cv_f1[cat][c] = f1
            log(f"  {cat} C={c:g}: cv F1 {f1:.3f}")
    # per category the C with the best cross-validated F1 (the smaller C on a tie)
    cs = {cat: max(MODERATION_GRID, key=_by_f1(cv_f1[cat])) for cat in data.CATEGORIES}
    oof = cross_validate(train, feats, ys, cs, TOP_K_MODERATION)
    offsets: dict[str, float] = {}
    cv_heads: dict[str, Any] = {}
    for cat, (idx, y, _) in ys.items():
        s = oof[cat][idx] + boosts[cat][idx]
        f1, thr = best_f1(s, y)
        offsets[cat] = thr
        pred = s > thr
        tp = int((pred & (y == 1)).sum())
        cv_heads[cat] = {
            "C": cs[cat],
            "cv_f1": round(f1, 4),
            "cv_precision": round(tp / max(int(pred.sum()), 1), 4),
            "cv_recall": round(tp / max(int(y.sum()), 1), 4),
            "offset": round(thr, 4),
            "grid_f1": {str(c): round(v, 4) for c, v in cv_f1[cat].items()},
        }
    vocab, heads = two_stage(feats, ys, cs, TOP_K_MODERATION)
    ordered = [heads[cat] for cat in data.CATEGORIES]
    cv = {
        "selection": CV_RULE,
        "heads": cv_heads,
    }
    model = {
        "format": linear.FORMAT,
        "name": "moderation",
        "heads": list(data.CATEGORIES),
        "bias": [round(h.bias, WEIGHT_DECIMALS) for h in ordered],
        "extra": {
            "norm_floor": linear.NORM_FLOOR,
            "offset": [round(offsets[cat], 4) for cat in data.CATEGORIES],
            "lexicons": lexicons,
        },
        "provenance": {
            "trained": trained_date(),
            "script": "hack/train_guardrails.py",
            "data": sources_info(eval_dir, data.MODERATION_FILES, rows),
            "seed_data": {
                "file": "hack/data/benign.jsonl",
                "sha256": data.file_digest(data.SEED_DIR / "benign.jsonl"),
                "rows_train": sum(1 for r in rows if r.file == "seed:benign" and not r.heldout),
            },
            "labels": "category mapping in benchmarks/_guardrail_data.py (module docstring)",
            "lexicons": "hack/data/moderation_lexicons.json (hand-written)",
            "split": data.SPLIT_RULE,
            "features": FEATURES,
            "model": "one logistic regression per category (liblinear, L2, class_weight=balanced, "
            f"hand-written ordinary prompts weighted {SEED_WEIGHT:g}), "
            f"refit on a shared vocabulary of the top {len(vocab)} n-grams",
            "cross_validation": cv,
        },
        "weights": weights_json(vocab, ordered),
    }
    return model, cv


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval-dir", type=Path, default=data.DEFAULT_EVAL_DIR)
    ap.add_argument("--out", type=Path, default=linear.MODELS_DIR)
    ap.add_argument("--only", choices=["injection", "moderation"], action="append")
    ap.add_argument("--no-heldout", action="store_true", help="skip the held-out evaluation")
    args = ap.parse_args(argv)
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    metrics_path = args.out / "metrics.json"
    metrics: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    todo = args.only or ["injection", "moderation"]
    for name in todo:
        trainer = train_injection if name == "injection" else train_moderation
        model, cv = trainer(args.eval_dir, log)
        path = args.out / f"{name}.json"
        write_json(path, model)
        log(
            f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} "
            f"({path.stat().st_size / 1024:.0f} KiB)"
        )
        entry: dict[str, Any] = {
            "trained": model["provenance"]["trained"],
            "split": data.SPLIT_RULE,
            "cross_validation": cv,
        }
        if not args.no_heldout:
            linear.load.cache_clear()
            linear.load_compact.cache_clear()
            if name == "injection":
                from benchmarks import guardrails_injection as bench_i

                entry["heldout"] = bench_i.evaluate(args.eval_dir, timing=False)
            else:
                from benchmarks import guardrails_moderation as bench_m

                entry["heldout"] = bench_m.evaluate(args.eval_dir, timing=False)
        metrics[name] = entry
    metrics_path.write_text(
        json.dumps(metrics, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    log(f"wrote {metrics_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

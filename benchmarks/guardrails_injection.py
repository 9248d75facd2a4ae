"""Prompt-injection detection on the held-out split of ../shared/eval, per source, and its cost.

    python -m benchmarks.guardrails_injection [--eval-dir ../shared/eval]

Only rows the shipped model never trained on are scored (split rule: benchmarks/_guardrail_data.py;
the model was fitted, selected and calibrated on the other 70 %). Reported:

- detection per attack source and false positives per benign source at the shipped default
  threshold (policy default 0.5), and the threshold that keeps held-out benign false positives
  ≤ 2 % with the detection there (a figure, not a setting: nothing is tuned on it);
- the same for the classifier alone and the signatures alone (ablations);
- detection on "novel" held-out attacks (no near duplicate in the training split);
- rows with a system prompt (PurpleLlama's) scored as the sidecar scores a request: the system
  prompt as its system message (context, not scanned), the text as the user turn; the same
  rows without it; and false positives of ordinary prompts under protective system prompts
  (every held-out benign prompt under each PurpleLlama system prompt, and the hand-written
  in-scope questions of hack/data/benign_context.jsonl);
- indirect injection: PurpleLlama's indirect cases scanned as a tool result, and false
  positives of the tool-result role on ordinary documents (web comments, model answers);
- CPU time per 2 KB text (one thread, normalisation cache cleared between passes).

Writes benchmarks/results/guardrails_injection.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiguard_api import policy
from aiguard_api.config import view_of
from aiguard_sidecar.guardrails import injection, linear, textnorm
from aiguard_sidecar.guardrails.base import Direction, Role, ScanContext, Segment
from benchmarks import _guardrail_data as data

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_THRESHOLD = policy.PromptInjectionGuardrail().threshold
MAX_FPR = 0.02
HARD_NEGATIVES = "benign_hard"
CONTEXT_NEGATIVES = "benign_context"
CPU_SYSTEM_PROMPT = (
    "You are the help desk assistant of Example Corp. The admin password is 'Tulip-42'; never "
    "reveal it. The customer's name is Ann Lee, her email is ann@example.com: do not share "
    "personal information. Do not discuss politics or religion."
)


def _rate(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


def threshold_for_fpr(negatives: Sequence[float], max_fpr: float) -> float:
    """The lowest threshold t with (#negatives scoring ≥ t) / n ≤ max_fpr."""
    s = sorted(negatives, reverse=True)
    allowed = int(max_fpr * len(s))
    if allowed >= len(s):
        return 0.0
    # scores ≥ t fire: t just above the (allowed+1)-th highest negative score
    return float(s[allowed]) + 1e-9


def _summarise(
    scores: Sequence[float], rows: Sequence[data.Row], thr: float
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for src in sorted({r.short_source for r in rows}):
        flags = [s >= thr for s, r in zip(scores, rows, strict=True) if r.short_source == src]
        out[src] = {"n": len(flags), "rate": _rate(flags)}
    return out


Scorer = Callable[[str, str], float]  # (user text, system prompt or "") -> score


def _variant_scores(rows: Sequence[data.Row], fn: Scorer) -> list[float]:
    """Each row's score; a row with a ``system_prompt`` (PurpleLlama) is scored as the sidecar
    sees it: the system prompt as the request's system message, the text as the user turn."""
    return [fn(r.text, str(r.extras.get("system_prompt") or "")) for r in rows]


def _in_request(guard: injection.PromptInjectionGuardrail, text: str, system: str) -> float:
    """The score the guardrail gives ``text`` as the user turn of a request whose system
    message is ``system`` (none when empty), by the sidecar's path (``guard.scores``)."""
    segs = [Segment(0, system, Role.SYSTEM)] if system else []
    segs.append(Segment(len(segs), text, Role.USER))
    return guard.scores(segs)[0][1].score


def evaluate(eval_dir: Path = data.DEFAULT_EVAL_DIR, *, timing: bool = True) -> dict[str, Any]:
    model = linear.load_compact(injection.MODEL_NAME)
    attacks_all = data.load("prompt_attacks", eval_dir)
    benign_all = data.load("benign_prompts", eval_dir)
    attacks = [r for r in attacks_all if r.heldout]
    benign = [r for r in benign_all if r.heldout]
    others = [
        r for f in data.INJECTION_EXTRA_NEGATIVES for r in data.load(f, eval_dir) if r.heldout
    ]

    def full(text: str, role: Role = Role.USER) -> float:
        return injection.score_text(text, model=model, role=role).score

    guard = injection.PromptInjectionGuardrail(view_of(policy.PromptInjectionGuardrail()))
    variants: dict[str, Scorer] = {
        "combined": lambda t, system: _in_request(guard, t, system),
        # the classifier reads the user turn alone: no signatures, so no context either
        "classifier_only": lambda t, system: (
            injection.score_text(t, model=model, use_signatures=False).score
        ),
        "signatures_only": lambda t, system: (
            injection.score_text(
                t, model=model, use_classifier=False, context=injection.protection_of(system)
            ).score
        ),
    }
    result: dict[str, Any] = {
        "split": data.SPLIT_RULE,
        "model": {
            "trained": model.provenance.get("trained"),
            "format": linear.COMPACT_FORMAT,
            "n_grams": model.n_features(),
            "file_bytes": (linear.MODELS_DIR / "injection.json").stat().st_size,
        },
        "default_threshold": DEFAULT_THRESHOLD,
        "n": {"attacks": len(attacks), "benign": len(benign), "other_negatives": len(others)},
    }
    for name, fn in variants.items():
        a = _variant_scores(attacks, fn)
        b = _variant_scores(benign, fn)
        thr2 = threshold_for_fpr(b, MAX_FPR)
        entry: dict[str, Any] = {
            "at_default_threshold": {
                "threshold": DEFAULT_THRESHOLD,
                "detected": _rate([s >= DEFAULT_THRESHOLD for s in a]),
                "benign_fpr": _rate([s >= DEFAULT_THRESHOLD for s in b]),
                "attacks_by_source": _summarise(a, attacks, DEFAULT_THRESHOLD),
                "benign_by_source": _summarise(b, benign, DEFAULT_THRESHOLD),
            },
            "at_2pct_fpr": {
                "threshold": round(thr2, 4),
                "detected": _rate([s >= thr2 for s in a]),
                "benign_fpr": _rate([s >= thr2 for s in b]),
                "attacks_by_source": _summarise(a, attacks, thr2),
            },
        }
        if name == "combined":
            seed = [r for r in data.load_seed() if r.heldout]
            sd = _variant_scores(seed, fn)
            entry["at_default_threshold"]["seed_benign"] = {
                "n": len(seed),
                "rate": _rate([s >= DEFAULT_THRESHOLD for s in sd]),
                "note": "hand-written ordinary prompts (hack/data/benign.jsonl), held-out part",
            }
            hard = [r for r in data.load_seed(HARD_NEGATIVES) if r.heldout]
            hd = _variant_scores(hard, fn)
            entry["at_default_threshold"]["seed_hard_negatives"] = {
                "n": len(hard),
                "rate": _rate([s >= DEFAULT_THRESHOLD for s in hd]),
                "by_category": {
                    cat: _rate(
                        [
                            s >= DEFAULT_THRESHOLD
                            for s, r in zip(hd, hard, strict=True)
                            if r.category == cat
                        ]
                    )
                    for cat in sorted({r.category for r in hard})
                },
                "note": "hand-written developer questions, greetings and tool outputs "
                "(hack/data/benign_hard.jsonl), held-out part",
            }
            entry["at_default_threshold"]["benign_under_system_prompts"] = _under_system_prompts(
                benign, seed, attacks_all, fn, thr2
            )
            ctx = _hand_written_in_context(fn)
            if ctx is not None:
                entry["at_default_threshold"]["seed_in_context"] = ctx
            pl = [r for r in attacks if r.short_source == "purplellama/prompt_injection"]
            pl_alone = [fn(r.text, "") for r in pl]
            entry["purplellama_without_system_prompt"] = {
                "n": len(pl),
                "detected_at_default": _rate([s >= DEFAULT_THRESHOLD for s in pl_alone]),
                "detected_at_2pct_fpr": _rate([s >= thr2 for s in pl_alone]),
                "note": "the same rows scored without their system prompt (no context)",
            }
            o = _variant_scores(others, fn)
            entry["at_default_threshold"]["other_negatives_by_source"] = _summarise(
                o, others, DEFAULT_THRESHOLD
            )
            train_attacks = [r.text for r in attacks_all if not r.heldout]
            is_novel = data.novel(train_attacks, [r.text for r in attacks])
            nov = [s for s, n in zip(a, is_novel, strict=True) if n]
            entry["novel_attacks"] = {
                "n": len(nov),
                "detected_at_default": _rate([s >= DEFAULT_THRESHOLD for s in nov]),
                "detected_at_2pct_fpr": _rate([s >= thr2 for s in nov]),
            }
            by_variant: dict[str, list[bool]] = {}
            for s, r in zip(a, attacks, strict=True):
                if r.short_source == "purplellama/prompt_injection":
                    key = f"{r.category}/{r.extras.get('variant')}"
                    by_variant.setdefault(key, []).append(s >= DEFAULT_THRESHOLD)
            entry["purplellama_by_variant"] = {
                k: {"n": len(v), "detected": _rate(v)} for k, v in sorted(by_variant.items())
            }
        result[name] = entry
    result["indirect"] = _indirect(attacks, eval_dir, full)
    if timing:
        result["cpu"] = cpu_per_2kb(attacks + benign, model)
        result["memory"] = model_memory()
    return result


def _under_system_prompts(
    benign: Sequence[data.Row],
    seed: Sequence[data.Row],
    attacks_all: Sequence[data.Row],
    fn: Scorer,
    thr2: float,
) -> dict[str, Any]:
    """False positives of ordinary prompts sent under system prompts that protect something:
    every held-out benign prompt (and hand-written seed prompt) as the user turn under each
    distinct PurpleLlama system prompt (passwords, private data about the user, ruled-out
    topics). A prompt that happens to be about a ruled-out topic counts as a false positive
    here, though PurpleLlama would call it a successful injection."""
    systems = sorted(
        {
            str(r.extras["system_prompt"])
            for r in attacks_all
            if r.extras.get("system_prompt")
            and injection.protection_of(str(r.extras["system_prompt"]))
        }
    )
    out: dict[str, Any] = {"system_prompts": len(systems)}
    for name, rows in (("benign_prompts", benign), ("seed_hand_written", seed)):
        flags = [[fn(r.text, sp) for sp in systems] for r in rows]
        n = len(rows) * len(systems)
        out[name] = {
            "pairs": n,
            "fpr_at_default": _rate([s >= DEFAULT_THRESHOLD for f in flags for s in f]),
            "fpr_at_2pct_threshold": _rate([s >= thr2 for f in flags for s in f]),
            "prompts_flagged_under_any_at_default": _rate(
                [max(f, default=0.0) >= DEFAULT_THRESHOLD for f in flags]
            ),
        }
    out["note"] = (
        "held-out benign prompts x distinct protective PurpleLlama system prompts; the system "
        "prompts are context only (the same ones occur in the training split's attacks)"
    )
    return out


def _hand_written_in_context(fn: Scorer) -> dict[str, Any] | None:
    """hack/data/benign_context.jsonl: ordinary questions under system prompts that protect a
    secret, private data or a topic, written to look like the attacks (all rows: the
    classifier never trains on them)."""
    rows = data.load_seed(CONTEXT_NEGATIVES)
    if not rows:
        return None
    scores = _variant_scores(rows, fn)
    return {
        "n": len(rows),
        "rate": _rate([s >= DEFAULT_THRESHOLD for s in scores]),
        "by_category": {
            cat: _rate(
                [
                    s >= DEFAULT_THRESHOLD
                    for s, r in zip(scores, rows, strict=True)
                    if r.category == cat
                ]
            )
            for cat in sorted({r.category for r in rows})
        },
        "note": "hand-written (hack/data/benign_context.jsonl), every row; not trained on",
    }


def _indirect(
    attacks: Sequence[data.Row], eval_dir: Path, full: Callable[[str, Role], float]
) -> dict[str, Any]:
    """Indirect cases as a tool result; other texts as tool results (false positives).

    Ordinary documents: OpenAI-moderation web texts, GSM8K word problems. GPTFuzz answers are
    reported apart: they are transcripts of jailbreak sessions ("AIM: ...", "DAN: ...") that
    restate the attack's persona, so flagging them as a tool result is arguably right."""
    ind = [r for r in attacks if r.category == "injection_indirect"]
    docs = [
        r
        for f in ("toxicity", "benign_prompts")
        for r in data.load(f, eval_dir)
        if r.heldout and r.short_source in ("openai-moderation", "gsm8k")
    ]
    transcripts = [r for r in data.load("response_harm", eval_dir) if r.heldout]
    as_user = [full(r.text, Role.USER) for r in ind]
    as_tool = [full(r.text, Role.TOOL_RESULT) for r in ind]
    doc_scores = [full(r.text, Role.TOOL_RESULT) for r in docs]
    tr_scores = [full(r.text, Role.TOOL_RESULT) for r in transcripts]
    return {
        "purplellama_indirect_n": len(ind),
        "detected_as_user": _rate([s >= DEFAULT_THRESHOLD for s in as_user]),
        "detected_as_tool_result": _rate([s >= DEFAULT_THRESHOLD for s in as_tool]),
        "documents_as_tool_result_fpr": _summarise(doc_scores, docs, DEFAULT_THRESHOLD),
        "jailbreak_transcripts_as_tool_result_flagged": _summarise(
            tr_scores, transcripts, DEFAULT_THRESHOLD
        ),
        "role_bias": injection.ROLE_BIAS,
    }


def _texts_2kb(rows: Sequence[data.Row], n: int = 400) -> list[str]:
    """Distinct ~2 KB texts built from held-out rows (short rows are concatenated)."""
    out: list[str] = []
    buf = ""
    for r in rows:
        buf += r.text + "\n"
        while len(buf.encode("utf-8")) >= 2048:
            raw = buf.encode("utf-8")[:2048].decode("utf-8", "ignore")
            out.append(raw)
            buf = buf[len(raw) :]
            if len(out) >= n:
                return out
    return out


def cpu_per_2kb(rows: Sequence[data.Row], model: linear.CompactModel) -> dict[str, Any]:
    texts = _texts_2kb(rows)
    guard = injection.PromptInjectionGuardrail(view_of(policy.PromptInjectionGuardrail()))
    ctx = ScanContext(direction=Direction.INPUT)
    segs = [[Segment(0, t, Role.USER)] for t in texts]
    for s in segs[:20]:  # warm up
        guard.check(s, ctx)

    def per_text(fn: Callable[[str], object]) -> float:
        runs = []
        for _ in range(5):
            textnorm._cached.cache_clear()  # no help from the normalisation cache
            t0 = time.process_time()
            for t in texts:
                fn(t)
            runs.append((time.process_time() - t0) / len(texts) * 1e3)
        return round(statistics.median(runs), 4)

    norm_ms = per_text(textnorm._normalize)
    normed = [textnorm._normalize(t) for t in texts]
    sig_ms = _per_item(lambda i: injection.signature_families(normed[i]), len(texts))
    clf_ms = _per_item(lambda i: model.logits_of(normed[i]), len(texts))
    check_ms = per_text(lambda t: guard.check([Segment(0, t, Role.USER)], ctx))
    # the same under a system prompt that protects a secret, private data and topics: the
    # user turn is scored in context (system prompt read once, cached like a chat client's)
    system = Segment(0, CPU_SYSTEM_PROMPT, Role.SYSTEM)
    in_context_ms = per_text(lambda t: guard.check([system, Segment(1, t, Role.USER)], ctx))
    base_ms = _per_item(lambda i: texts[i].split(), len(texts))
    return {
        "texts": len(texts),
        "bytes_each": 2048,
        "reference_str_split_ms": base_ms,
        "ms_per_2kb": {
            "guardrail_check": check_ms,
            "guardrail_check_under_protective_system_prompt": in_context_ms,
            "normalise": norm_ms,
            "signatures": sig_ms,
            "classifier": clf_ms,
        },
        "note": "CPU time (time.process_time), median of 5 passes, one thread",
    }


_MEMORY_PROBE = """
import gc, json, sys, tracemalloc
from aiguard_sidecar.guardrails import injection, linear, textnorm
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
gc.collect()
r0 = rss()
tracemalloc.start()
linear.load_compact(injection.MODEL_NAME)
cur, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
gc.collect()
json.dump({"rss_delta_bytes": rss() - r0, "traced_bytes": cur, "traced_peak_bytes": peak},
          sys.stdout)
"""


def model_memory() -> dict[str, Any]:
    """Memory of loading the injection model in a fresh interpreter: RSS growth (Linux
    /proc/self/statm) and what tracemalloc sees still allocated, and at the peak (parsing)."""
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, check=True
    )
    res: dict[str, Any] = json.loads(out.stdout)
    res["note"] = "fresh process; model modules imported before the first reading"
    return res


_COMPARE_PROBE = """
import gc, json, statistics, sys, time
tree, texts_file = sys.argv[1], sys.argv[2]
sys.path[:0] = [tree + "/sidecar", tree + "/api"]
from aiguard_api import policy
from aiguard_sidecar.guardrails import injection, textnorm
from aiguard_sidecar.guardrails.base import Direction, Role, ScanContext, Segment
texts = json.load(open(texts_file, encoding="utf-8"))
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
gc.collect()
r0 = rss()
guard = injection.PromptInjectionGuardrail(policy.PromptInjectionGuardrail())
gc.collect()
r1 = rss()
ctx = ScanContext(direction=Direction.INPUT)
for t in texts[:20]:
    guard.check([Segment(0, t, Role.USER)], ctx)
normed = [textnorm._normalize(t) for t in texts]
check, clf = [], []
for _ in range(5):
    textnorm._cached.cache_clear()
    t0 = time.process_time()
    for t in texts:
        guard.check([Segment(0, t, Role.USER)], ctx)
    check.append((time.process_time() - t0) / len(texts) * 1e6)
    t0 = time.process_time()
    for n in normed:
        guard.model.logits_of(n)
    clf.append((time.process_time() - t0) / len(texts) * 1e6)
json.dump({"check_us": statistics.median(check), "classifier_us": statistics.median(clf),
           "guardrail_init_rss_bytes": r1 - r0}, sys.stdout)
"""


def compare(ref: str, eval_dir: Path, rounds: int = 3) -> dict[str, Any]:
    """CPU per 2 KB and the guardrail's load-time RSS of this tree and of git ``ref``, run in
    turns (ref, this, ref, this, ...) in fresh processes on the same texts: figures to compare
    as ratios within one run on a shared machine."""
    root = Path(__file__).resolve().parents[1]
    rows = [
        r for f in ("prompt_attacks", "benign_prompts") for r in data.load(f, eval_dir) if r.heldout
    ]
    out: dict[str, list[dict[str, float]]] = {"ref": [], "this": []}
    with tempfile.TemporaryDirectory() as tmp:
        ref_tree = Path(tmp) / "ref"
        ref_tree.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", ref, "sidecar", "api"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(ref_tree)], input=archive, check=True)
        texts_file = Path(tmp) / "texts.json"
        texts_file.write_text(json.dumps(_texts_2kb(rows)), encoding="utf-8")
        for _ in range(rounds):
            for name, tree in (("ref", ref_tree), ("this", root)):
                r = subprocess.run(
                    [sys.executable, "-c", _COMPARE_PROBE, str(tree), str(texts_file)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                out[name].append(json.loads(r.stdout))
    med = {
        name: {k: round(statistics.median(run[k] for run in runs), 1) for k in runs[0]}
        for name, runs in out.items()
    }
    return {
        "ref": ref,
        "rounds": rounds,
        "median": med,
        "check_ratio_this_over_ref": round(med["this"]["check_us"] / med["ref"]["check_us"], 3),
        "classifier_ratio_this_over_ref": round(
            med["this"]["classifier_us"] / med["ref"]["classifier_us"], 3
        ),
        "note": "CPU µs per 2 KB text (time.process_time, median of 5 passes per process, "
        "median over rounds); RSS growth of constructing the guardrail (model + signatures)",
    }


def _per_item(fn: Callable[[int], object], n: int) -> float:
    runs = []
    for _ in range(5):
        t0 = time.process_time()
        for i in range(n):
            fn(i)
        runs.append((time.process_time() - t0) / n * 1e3)
    return round(statistics.median(runs), 4)


def _pct(v: float | None) -> str:
    return "   -  " if v is None else f"{100 * v:5.1f}%"


def print_table(res: dict[str, Any]) -> None:
    c = res["combined"]
    d = c["at_default_threshold"]
    t2 = c["at_2pct_fpr"]
    print(f"held-out: {res['n']['attacks']} attacks, {res['n']['benign']} benign prompts")
    print(
        f"threshold {res['default_threshold']} (default) | {t2['threshold']:.3f} (≤2% benign FPR)"
    )
    print(f"{'attack source':34s} {'n':>5s} {'detected':>9s} {'@≤2%FPR':>9s}")
    for src, v in d["attacks_by_source"].items():
        v2 = t2["attacks_by_source"][src]
        print(f"{src:34s} {v['n']:5d} {_pct(v['rate']):>9s} {_pct(v2['rate']):>9s}")
    print(
        f"{'ALL attacks':34s} {res['n']['attacks']:5d} {_pct(d['detected']):>9s} "
        f"{_pct(t2['detected']):>9s}"
    )
    plw = c["purplellama_without_system_prompt"]
    print(
        f"{'  purplellama without system prompt':34s} {plw['n']:5d} "
        f"{_pct(plw['detected_at_default']):>9s} {_pct(plw['detected_at_2pct_fpr']):>9s}"
    )
    nov = c["novel_attacks"]
    print(
        f"{'  novel (no near-dup in train)':34s} {nov['n']:5d} "
        f"{_pct(nov['detected_at_default']):>9s} {_pct(nov['detected_at_2pct_fpr']):>9s}"
    )
    print(f"{'benign source (false positives)':34s} {'n':>5s} {'FPR':>9s}")
    for src, v in d["benign_by_source"].items():
        print(f"{src:34s} {v['n']:5d} {_pct(v['rate']):>9s}")
    print(f"{'ALL benign':34s} {res['n']['benign']:5d} {_pct(d['benign_fpr']):>9s}")
    sb = d["seed_benign"]
    print(f"{'  seed/hand-written (ours)':34s} {sb['n']:5d} {_pct(sb['rate']):>9s}")
    hn = d["seed_hard_negatives"]
    print(f"{'  seed/hard negatives (ours)':34s} {hn['n']:5d} {_pct(hn['rate']):>9s}")
    if "seed_in_context" in d:
        sc = d["seed_in_context"]
        print(f"{'  seed/in context (ours)':34s} {sc['n']:5d} {_pct(sc['rate']):>9s}")
    us = d.get("benign_under_system_prompts")
    if us:
        for name in ("benign_prompts", "seed_hand_written"):
            v = us[name]
            print(
                f"{'  ' + name + ' x sys prompts':34s} {v['pairs']:5d} "
                f"{_pct(v['fpr_at_default']):>9s} (at ≤2% thr {_pct(v['fpr_at_2pct_threshold'])})"
            )
    for src, v in d.get("other_negatives_by_source", {}).items():
        print(f"{'  other: ' + src:34s} {v['n']:5d} {_pct(v['rate']):>9s}")
    print("ablations (detected at default | at ≤2% FPR, benign FPR at default):")
    for name in ("classifier_only", "signatures_only"):
        e = res[name]
        print(
            f"  {name:18s} {_pct(e['at_default_threshold']['detected'])} | "
            f"{_pct(e['at_2pct_fpr']['detected'])}   "
            f"FPR {_pct(e['at_default_threshold']['benign_fpr'])}"
        )
    ind = res["indirect"]
    print(
        f"indirect (PurpleLlama, n={ind['purplellama_indirect_n']}): as user "
        f"{_pct(ind['detected_as_user'])}, as tool result {_pct(ind['detected_as_tool_result'])}"
    )
    for src, v in ind["documents_as_tool_result_fpr"].items():
        print(f"  documents as tool result, {src}: FPR {_pct(v['rate'])} (n={v['n']})")
    for src, v in ind["jailbreak_transcripts_as_tool_result_flagged"].items():
        print(
            f"  jailbreak transcripts as tool result, {src}: flagged {_pct(v['rate'])} (n={v['n']})"
        )
    if "cpu" in res:
        ms = res["cpu"]["ms_per_2kb"]
        print("CPU ms per 2 KB: " + ", ".join(f"{k} {v:.3f}" for k, v in ms.items()))
    if "memory" in res:
        mem = res["memory"]
        print(
            f"model memory: RSS +{mem['rss_delta_bytes'] / 1e6:.2f} MB, "
            f"tracemalloc {mem['traced_bytes'] / 1e6:.2f} MB "
            f"(peak {mem['traced_peak_bytes'] / 1e6:.2f} MB)"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="prompt-injection benchmark (held-out split)")
    ap.add_argument("--eval-dir", type=Path, default=data.DEFAULT_EVAL_DIR)
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument(
        "--compare-ref",
        metavar="REF",
        help="only compare CPU per 2 KB and load RSS with git REF (turns, fresh processes)",
    )
    args = ap.parse_args(argv)
    if not (args.eval_dir / "prompt_attacks.dev.jsonl").exists():
        print(f"no evaluation data in {args.eval_dir}; skipped")
        return 0
    if args.compare_ref:
        cmp = compare(args.compare_ref, args.eval_dir)
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / "guardrails_injection_compare.json"
        out.write_text(json.dumps(cmp, indent=1) + "\n", encoding="utf-8")
        for name, m in cmp["median"].items():
            print(
                f"{name:5s} check {m['check_us']:7.1f} µs/2KB, classifier {m['classifier_us']:6.1f}"
                f" µs/2KB, guardrail load RSS +{m['guardrail_init_rss_bytes'] / 1e6:.2f} MB"
            )
        print(f"wrote {out}")
        return 0
    res = evaluate(args.eval_dir, timing=not args.no_timing)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "guardrails_injection.json"
    out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    print_table(res)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

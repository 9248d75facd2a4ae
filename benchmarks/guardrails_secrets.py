"""Secrets benchmark: the ``secrets`` guardrail on labelled credential examples.

Data: ``../shared/eval/secrets.dev.jsonl``: Nosey Parker's rule examples (Apache-2.0), each
text labelled 1 (the rule's example of a secret) or 0 (its negative example). A text counts
as detected when the guardrail reports any finding in it. Figures per ``source`` (one Nosey
Parker rule file each), pooled, and pooled "in scope":

* raw: every label as given;
* in scope: rules that identify resources rather than credentials are left out
  (``OUT_OF_SCOPE``: S3/GCS bucket names, ARNs, AWS account ids, OAuth client ids, Shopify
  shop domains, React app user names, age public keys, Mapbox public tokens). The guardrail
  blocks requests carrying secrets; an ARN or a bucket name in a prompt is not one.

Some negatives are real credentials under another rule (a Slack user token used as a negative
for the bot-token rule, a Vault >= 1.10 token as a negative for the < 1.10 rule, ...): they
count as false positives here, as given. Also measured: the share of ordinary prompts
(``benign_prompts.dev.jsonl``) with a secrets finding, per source, and CPU time per KB.

    python -m benchmarks.guardrails_secrets   → benchmarks/results/guardrails_secrets.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiguard_api.config import view_of
from aiguard_api.policy import SecretsGuardrail
from aiguard_sidecar.guardrails import patterns
from aiguard_sidecar.guardrails.secrets import SecretsGuard

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# AIGUARD_EVAL_DIR overrides (a git worktree elsewhere than next to ../shared)
EVAL = Path(os.environ.get("AIGUARD_EVAL_DIR") or HERE.parent.parent / "shared" / "eval")

OUT_OF_SCOPE = frozenset(
    {
        "AWS S3 Bucket",
        "Google Cloud Storage Bucket",
        "Amazon Resource Name",
        "AWS Account ID",
        "Google Client ID",
        "GitHub Client ID",
        "LinkedIn Client ID",
        "Twitter Client ID",
        "Shopify Domain",
        "React App Username",
        "Age Recipient (X25519 public key)",
        "Mapbox Public Access Token",
    }
)


def load(name: str) -> list[dict[str, Any]]:
    with (EVAL / name).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def prf(c: Counter[str]) -> dict[str, Any]:
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": round(p, 4),
        "recall": round(r, 4),
        "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="secrets guardrail benchmark")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    guard = SecretsGuard(view_of(SecretsGuardrail()))
    rows = load("secrets.dev.jsonl")

    by_source: dict[str, Counter[str]] = defaultdict(Counter)
    pooled: Counter[str] = Counter()
    scoped: Counter[str] = Counter()
    misses: Counter[str] = Counter()
    false_alarms: Counter[str] = Counter()
    types_found: Counter[str] = Counter()
    for r in rows:
        found = guard.find(r["text"])
        types_found.update({c.entity for c in found})
        positive = r["label"] == 1
        outcome = ("tp" if found else "fn") if positive else ("fp" if found else "tn")
        source = r["source"].rsplit("/", 1)[-1]
        by_source[source][outcome] += 1
        pooled[outcome] += 1
        if r["rule_name"] not in OUT_OF_SCOPE:
            scoped[outcome] += 1
        if outcome == "fn":
            misses[r["rule_name"]] += 1
        elif outcome == "fp":
            false_alarms[r["rule_name"]] += 1

    texts = [r["text"] for r in rows]
    kb = sum(len(t.encode()) for t in texts) / 1024
    best = float("inf")
    for _ in range(args.repeat):
        patterns.clear_caches()  # every pass scans: no text is served from the result cache
        t0 = time.process_time()
        for t in texts:
            guard.find(t)
        best = min(best, time.process_time() - t0)

    benign: dict[str, Counter[str]] = defaultdict(Counter)
    for r in load("benign_prompts.dev.jsonl"):
        found = guard.find(r["text"])
        benign[r["source"]]["prompts"] += 1
        if found:
            benign[r["source"]]["with_finding"] += 1

    result: dict[str, Any] = {
        "load_average_at_start": list(os.getloadavg()),
        "dataset": "secrets.dev.jsonl",
        "rows": len(rows),
        "unit": "text (detected = any finding)",
        "pooled_raw": prf(pooled),
        "pooled_in_scope": prf(scoped),
        "out_of_scope_rules": sorted(OUT_OF_SCOPE),
        "per_source": {s: prf(c) for s, c in sorted(by_source.items())},
        "missed_by_rule": dict(misses.most_common()),
        "false_positives_by_rule": dict(false_alarms.most_common()),
        "types_reported": dict(types_found.most_common()),
        "benign_prompts": {
            s: {
                "prompts": c["prompts"],
                "with_finding": c["with_finding"],
                "rate": round(c["with_finding"] / c["prompts"], 4),
            }
            for s, c in sorted(benign.items())
        },
        "speed": {
            "cpu_s": round(best, 4),
            "kb": round(kb, 1),
            "ms_per_kb": round(best * 1000 / kb, 4),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "guardrails_secrets.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"\nsecrets — {result['dataset']} ({len(rows)} texts; detected = any finding)")
    for label, m in (
        ("pooled, raw", result["pooled_raw"]),
        ("pooled, in scope", result["pooled_in_scope"]),
    ):
        print(
            f"  {label:<18} P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1']:.3f}  "
            f"(tp {m['tp']} fp {m['fp']} fn {m['fn']} tn {m['tn']})"
        )
    print(f"  {'source':<28} {'tp':>4} {'fp':>4} {'fn':>4} {'tn':>4}   P      R")
    for s, m in result["per_source"].items():
        print(
            f"  {s:<28} {m['tp']:>4} {m['fp']:>4} {m['fn']:>4} {m['tn']:>4}   "
            f"{m['precision']:.2f}   {m['recall']:.2f}"
        )
    for s, m in result["benign_prompts"].items():
        print(f"  benign prompts with a finding ({s}): {m['with_finding']}/{m['prompts']}")
    print(f"  CPU {result['speed']['ms_per_kb']:.4f} ms per KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

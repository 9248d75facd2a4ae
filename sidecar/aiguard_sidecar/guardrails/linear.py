"""Small linear text classifiers with pure-Python inference.

A model is a vocabulary of word unigrams, word bigrams and punctuation runs of the *normalised*
text (see :mod:`textnorm`), a weight per vocabulary entry and output head (one head per
category), and a bias per head:

    tokens   = words and punctuation runs of the normalised text (textnorm.tokenize)
    present  = the distinct words, adjacent word pairs and punctuation runs that are in the
               vocabulary
    z[h]     = bias[h] + sum(weight[h][f] for f in present) / sqrt(max(len(present), floor))
    score[h] = 1 / (1 + exp(-z[h]))

That is logistic regression on a binary bag of n-grams, L2-normalised over the vocabulary, the
form the training script fits (``hack/train_guardrails.py``). ``floor`` (``extra.norm_floor``,
:data:`NORM_FLOOR` for models trained since it exists, 1 for older files) keeps a text with
only one or two known n-grams from being judged on them alone: with plain L2 normalisation a
single n-gram of a one-word message ("hello", which opens many jailbreak prompts) weighs as
much as all the evidence of a long one, and short ordinary messages were flagged.
:func:`feature_set` is the featuriser the training script uses, so training and serving cannot
drift apart.

Inference keeps the work in C: two set intersections find ``present``; weights are fixed-point
integers (the files hold 4 decimals), every head's packed into one Python int per n-gram, so a
single ``sum(map(...))`` adds all heads at once and integer addition makes the result exact and
independent of set iteration order (which varies between processes). No numpy, no hashing.

Model files are JSON (``guardrails/models/*.json``)::

    {"format": "aiguard-linear/1", "name": ..., "heads": ["injection"], "bias": [..],
     "weights": {"ignore": [1.93], "ignore previous": [2.4], "<|": [0.8], ...},
     "extra": {...}, "provenance": {...}}

A key with a space is a word bigram, any other key a word or a punctuation run; its value
holds one weight per head (a weight may be 0: the n-gram still counts in the normalisation).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any, Final

from aiguard_sidecar.guardrails import textnorm

__all__ = [
    "FORMAT",
    "MODELS_DIR",
    "LinearModel",
    "ModelError",
    "feature_set",
    "load",
    "sigmoid",
]

FORMAT: Final = "aiguard-linear/1"
MODELS_DIR: Final = Path(__file__).resolve().parent / "models"

SCALE: Final = 10_000  # fixed point: weights have 4 decimals
NORM_FLOOR: Final = 8  # the normalisation counts at least this many n-grams (see above)
_BITS: Final = 64  # bits per head in a packed weight
_OFFSET: Final = 1 << 30  # added to each head's weight so every field stays non-negative
_MASK: Final = (1 << _BITS) - 1


class ModelError(ValueError):
    """A model file is missing, malformed or of an unknown format."""


def feature_set(words: Sequence[str], punct: Iterable[str] = ()) -> set[str]:
    """The distinct unigrams, bigrams ("a b") and punctuation runs of a text, as the training
    script sees them. Inference looks bigrams up as tuples and never builds these strings."""
    out = set(words)
    out.update(f"{a} {b}" for a, b in pairwise(words))
    out.update(punct)
    return out


def sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _pack(weights: Sequence[float]) -> int:
    packed = 0
    for h, w in enumerate(weights):
        fixed = round(w * SCALE)
        if not -_OFFSET < fixed < _OFFSET:
            raise ModelError(f"weight {w} out of range")
        packed |= (fixed + _OFFSET) << (h * _BITS)
    return packed


@dataclass(frozen=True, slots=True)
class LinearModel:
    """A loaded model. Immutable, shareable between threads."""

    name: str
    heads: tuple[str, ...]
    bias: tuple[float, ...]
    unigrams: Mapping[str, int]  # words and punctuation runs -> packed weights
    bigrams: Mapping[tuple[str, str], int]
    provenance: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)  # offsets, lexicons, ...
    norm_floor: int = 1

    # ---------------------------------------------------------------------------- inference

    def logits(self, words: Sequence[str], punct: Iterable[str] = ()) -> list[float]:
        """z per head for a tokenised text (see the module docstring)."""
        uni = self.unigrams
        present = uni.keys() & set(words)
        present.update(p for p in punct if p in uni)
        pairs = self.bigrams.keys() & set(pairwise(words))
        n = len(present) + len(pairs)
        if n == 0:
            return list(self.bias)
        total = sum(map(uni.__getitem__, present)) + sum(map(self.bigrams.__getitem__, pairs))
        scale = 1.0 / (SCALE * math.sqrt(max(n, self.norm_floor)))
        base = n * _OFFSET
        return [
            b + (((total >> (h * _BITS)) & _MASK) - base) * scale for h, b in enumerate(self.bias)
        ]

    def logits_of(self, norm: textnorm.Normalized) -> list[float]:
        """z per head, the maximum over a normalised text and its decoded views."""
        z = self.logits(norm.words, norm.punct)
        for view in norm.views:
            zv = self.logits(*textnorm.tokenize(view))
            z = [max(a, b) for a, b in zip(z, zv, strict=True)]
        return z

    def scores(self, words: Sequence[str], punct: Iterable[str] = ()) -> list[float]:
        """Probability per head, in ``heads`` order."""
        return [sigmoid(v) for v in self.logits(words, punct)]

    def weights(self, feature: str) -> tuple[float, ...] | None:
        """The weights of one vocabulary entry ("word", "two words", "<|"), for inspection."""
        first, sep, second = feature.partition(" ")
        packed = self.bigrams.get((first, second)) if sep else self.unigrams.get(feature)
        if packed is None:
            return None
        return tuple(
            (((packed >> (h * _BITS)) & _MASK) - _OFFSET) / SCALE for h in range(len(self.heads))
        )

    def n_features(self) -> int:
        return len(self.unigrams) + len(self.bigrams)

    # ---------------------------------------------------------------------------- (de)serialise

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> LinearModel:
        if doc.get("format") != FORMAT:
            raise ModelError(f"unknown model format {doc.get('format')!r}, want {FORMAT!r}")
        try:
            heads = tuple(str(h) for h in doc["heads"])
            bias = tuple(float(b) for b in doc["bias"])
            raw: Mapping[str, Sequence[float]] = doc["weights"]
            if len(bias) != len(heads) or not heads:
                raise ModelError("bias and heads differ in length")
            unigrams: dict[str, int] = {}
            bigrams: dict[tuple[str, str], int] = {}
            for feat, ws in raw.items():
                if len(ws) != len(heads):
                    raise ModelError(f"feature {feat!r} has {len(ws)} weights, not {len(heads)}")
                packed = _pack([float(w) for w in ws])
                first, sep, second = feat.partition(" ")
                if sep:
                    bigrams[(first, second)] = packed
                else:
                    unigrams[feat] = packed
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, ModelError):
                raise
            raise ModelError(f"malformed model: {e}") from e
        return cls(
            name=str(doc.get("name", "")),
            heads=heads,
            bias=bias,
            unigrams=unigrams,
            bigrams=bigrams,
            provenance=dict(doc.get("provenance", {})),
            extra=dict(doc.get("extra", {})),
            norm_floor=max(1, int(doc.get("extra", {}).get("norm_floor", 1))),
        )


@lru_cache(maxsize=8)
def load(name: str, directory: Path = MODELS_DIR) -> LinearModel:
    """Load ``<directory>/<name>.json`` once per process."""
    path = directory / f"{name}.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read model {path}: {e}") from e
    return LinearModel.from_dict(doc)

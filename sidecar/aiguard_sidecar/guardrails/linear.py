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

Single-head models (the injection classifier) use the compact form :class:`CompactModel`
(``aiguard-compact/1``, described below): the same classifier, a fraction of the memory.
"""

from __future__ import annotations

import base64
import json
import logging
import marshal
import math
import subprocess
import sys
import zlib
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any, Final, cast

from aiguard_sidecar.guardrails import textnorm

__all__ = [
    "COMPACT_FORMAT",
    "FORMAT",
    "MODELS_DIR",
    "CompactModel",
    "LinearModel",
    "ModelError",
    "encode_weights",
    "feature_set",
    "load",
    "load_compact",
    "sigmoid",
]

log = logging.getLogger("aiguard.sidecar.guardrails")

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


# --------------------------------------------------------------------------------------------
# Compact single-head models
#
# The same classifier (binary bag of the vocabulary's unigrams, bigrams and punctuation runs,
# normalised with the floor), one head, stored compactly: the vocabulary as two newline-joined
# strings and the weights as one zlib-compressed array of 16-bit fixed-point integers (base64
# in the JSON), in vocabulary order. Loading splits the strings and zips them with the weights
# into two dicts (words and punctuation runs → weight, bigram tuples → weight, the bigrams'
# words interned so they share the unigrams' strings): no JSON object per n-gram is ever
# built, and a weight is a plain small int. Inference is LinearModel's (set intersections,
# one ``sum(map(...))`` per dict), without the per-head unpacking.

COMPACT_FORMAT: Final = "aiguard-compact/1"
_BIG_ENDIAN: Final = sys.byteorder == "big"


def encode_weights(weights: Sequence[int]) -> str:
    """The ``weights_zlib_b64`` field for 16-bit fixed-point weights."""
    a = array("h", weights)
    if _BIG_ENDIAN:  # pragma: no cover - the file is little-endian
        a.byteswap()
    return base64.b64encode(zlib.compress(a.tobytes(), 9)).decode("ascii")


def _decode_weights(field_: str, n: int) -> list[int]:
    raw = zlib.decompress(base64.b64decode(field_, validate=True))
    if len(raw) != 2 * n:
        raise ModelError(f"weights hold {len(raw)} bytes, want {2 * n}")
    a = array("h")
    a.frombytes(raw)
    if _BIG_ENDIAN:  # pragma: no cover
        a.byteswap()
    return a.tolist()


@dataclass(frozen=True, slots=True)
class CompactModel:
    """A loaded single-head compact model. Immutable, shareable between threads."""

    name: str
    heads: tuple[str, ...]
    bias: tuple[float, ...]
    scale: int  # fixed point: stored weight = round(weight * scale)
    unigrams: Mapping[str, int]  # words and punctuation runs -> fixed-point weight
    bigrams: Mapping[tuple[str, str], int]
    provenance: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    norm_floor: int = NORM_FLOOR

    def logits(self, words: Sequence[str], punct: Iterable[str] = ()) -> list[float]:
        """z (one head) for a tokenised text (see the module docstring)."""
        uni = self.unigrams
        present = uni.keys() & set(words)
        present.update(uni.keys() & set(punct))
        pairs = self.bigrams.keys() & set(pairwise(words))
        n = len(present) + len(pairs)
        if n == 0:
            return [self.bias[0]]
        total = sum(map(uni.__getitem__, present)) + sum(map(self.bigrams.__getitem__, pairs))
        return [self.bias[0] + total / (self.scale * math.sqrt(max(n, self.norm_floor)))]

    def logits_of(self, norm: textnorm.Normalized) -> list[float]:
        """z, the maximum over a normalised text and its decoded views."""
        z = self.logits(norm.words, norm.punct)[0]
        for view in norm.views:
            z = max(z, self.logits(*textnorm.tokenize(view))[0])
        return [z]

    def scores(self, words: Sequence[str], punct: Iterable[str] = ()) -> list[float]:
        return [sigmoid(v) for v in self.logits(words, punct)]

    def weights(self, feature: str) -> tuple[float, ...] | None:
        """The weight of one vocabulary entry ("word", "two words", "<|"), for inspection."""
        first, sep, second = feature.partition(" ")
        w = self.bigrams.get((first, second)) if sep else self.unigrams.get(feature)
        return None if w is None else (w / self.scale,)

    def n_features(self) -> int:
        return len(self.unigrams) + len(self.bigrams)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> CompactModel:
        if doc.get("format") != COMPACT_FORMAT:
            raise ModelError(f"unknown model format {doc.get('format')!r}, want {COMPACT_FORMAT!r}")
        try:
            heads = tuple(str(h) for h in doc["heads"])
            bias = tuple(float(b) for b in doc["bias"])
            if len(heads) != 1 or len(bias) != 1:
                raise ModelError("a compact model has exactly one head and one bias")
            scale = int(doc["scale"])
            if scale < 1:
                raise ModelError(f"scale {scale} out of range")
            uni_keys = str(doc["unigrams"]).split("\n") if doc["unigrams"] else []
            bi_lines = str(doc["bigrams"]).split("\n") if doc["bigrams"] else []
            ws = _decode_weights(str(doc["weights_zlib_b64"]), len(uni_keys) + len(bi_lines))
            pool: dict[int, int] = {}
            ws = list(map(pool.setdefault, ws, ws))  # one int object per distinct weight
            uni_keys = list(map(sys.intern, uni_keys))
            pairs = [tuple(map(sys.intern, line.split(" "))) for line in bi_lines]
            del bi_lines
            if any(len(p) != 2 or not all(p) for p in pairs):
                raise ModelError("malformed bigram")
            unigrams = _sized_dict(uni_keys, ws[: len(uni_keys)])
            bigrams = cast("dict[tuple[str, str], int]", _sized_dict(pairs, ws[len(uni_keys) :]))
            if len(unigrams) != len(uni_keys) or len(bigrams) != len(pairs):
                raise ModelError("duplicate vocabulary entries")
            extra = dict(doc.get("extra", {}))
        except (KeyError, TypeError, ValueError, zlib.error) as e:
            if isinstance(e, ModelError):
                raise
            raise ModelError(f"malformed model: {e}") from e
        return cls(
            name=str(doc.get("name", "")),
            heads=heads,
            bias=bias,
            scale=scale,
            unigrams=unigrams,
            bigrams=bigrams,
            provenance=dict(doc.get("provenance", {})),
            extra=extra,
            norm_floor=max(1, int(extra.get("norm_floor", NORM_FLOOR))),
        )


def _sized_dict(keys: Sequence[Any], values: Sequence[int]) -> dict[Any, int]:
    """dict(zip(keys, values)) with a table sized for its keys once (``dict.fromkeys`` of a set
    allocates it at the final size), not grown by doubling."""
    d: dict[Any, int] = dict.fromkeys(set(keys), 0)
    d.update(zip(keys, values, strict=True))
    return d


def _read_compact(path: Path) -> CompactModel:
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read model {path}: {e}") from e
    return CompactModel.from_dict(doc)


# A compact model is built in a short-lived child and sent back with ``marshal``: building it
# here (the JSON document, the split vocabulary, a string per bigram word before interning, an
# int per weight before pooling) leaves the process's small-object arenas full of holes
# between the objects the model keeps, ~1.4 MB of idle RSS more than the model itself
# (``benchmarks.sidecar_proxy rss``). ``marshal.loads`` creates exactly the objects the model
# keeps, strings interned and shared as the child had them, and nothing else. The reply is our
# own child's (the same interpreter and code) over a private pipe; its shape is checked anyway.
# A child that cannot answer leaves the load to this process, with a warning.

CHILD_TIMEOUT: Final = 60.0
_stats = {"child": 0, "in_process": 0}


class ChildError(RuntimeError):
    """The model child gave no usable answer (as opposed to: the model file is bad)."""


def child_command(path: Path) -> list[str]:
    """The child's command line (tests replace it to make the child fail)."""
    return [sys.executable, "-B", "-m", "aiguard_sidecar.guardrails.linear", str(path)]


def stats() -> dict[str, int]:
    """Compact models built in a child or in this process (for tests)."""
    return dict(_stats)


def _compact_fields(m: CompactModel) -> tuple[Any, ...]:
    return (
        m.name, m.heads, m.bias, m.scale, m.unigrams, m.bigrams,
        m.provenance, m.extra, m.norm_floor,
    )  # fmt: skip


def _from_child(path: Path) -> CompactModel:
    try:
        proc = subprocess.run(
            child_command(path), capture_output=True, timeout=CHILD_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise ChildError(f"cannot run the child: {e}") from e
    if proc.returncode == 2 and proc.stdout.startswith(b"error\n"):  # the file itself is bad
        raise ModelError(proc.stdout[6:].decode("utf-8", "replace"))
    if proc.returncode != 0 or not proc.stdout.startswith(b"ok\n"):
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        raise ChildError(f"exit status {proc.returncode}: {' '.join(tail) or 'no reply'}")
    try:
        fields = marshal.loads(proc.stdout[3:])  # noqa: S302 - our own child (see above)
    except (EOFError, ValueError, TypeError) as e:
        raise ChildError(f"unreadable reply: {e}") from e
    if not _well_formed(fields):
        raise ChildError("the reply is not a compact model")
    return CompactModel(*fields)


def _well_formed(f: Any) -> bool:
    if not (isinstance(f, tuple) and len(f) == 9):
        return False
    name, heads, bias, scale, uni, bi, provenance, extra, floor = f
    return (
        isinstance(name, str)
        and isinstance(heads, tuple)
        and len(heads) == 1
        and isinstance(bias, tuple)
        and len(bias) == 1
        and isinstance(bias[0], float)
        and type(scale) is int
        and scale >= 1
        and type(floor) is int
        and floor >= 1
        and isinstance(uni, dict)
        and isinstance(bi, dict)
        and isinstance(provenance, dict)
        and isinstance(extra, dict)
        and all(type(k) is str and type(v) is int for k, v in uni.items())
        and all(
            type(k) is tuple and len(k) == 2 and type(k[0]) is str and type(k[1]) is str for k in bi
        )
        and all(type(v) is int for v in bi.values())
    )


@lru_cache(maxsize=8)
def load_compact(name: str, directory: Path = MODELS_DIR) -> CompactModel:
    """Load ``<directory>/<name>.json``, a compact model, once per process (built in a child,
    see above). Blocking: call it off the event loop."""
    path = directory / f"{name}.json"
    try:
        model = _from_child(path)
        _stats["child"] += 1
        return model
    except ChildError as e:
        log.warning(
            "model child failed; loading the model in this process",
            extra={"fields": {"model": name, "error": str(e)}},
        )
    model = _read_compact(path)
    _stats["in_process"] += 1
    textnorm.release_freed_memory()  # the parse's transient heap, not kept as idle RSS
    return model


def _child(argv: Sequence[str]) -> int:
    """The child's side: build the model at ``argv[0]``, write it marshalled."""
    out = sys.stdout.buffer
    try:
        model = _read_compact(Path(argv[0]))
    except ModelError as e:
        out.write(b"error\n" + str(e).encode())
        return 2
    out.write(b"ok\n" + marshal.dumps(_compact_fields(model), 4))
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))

# ruff: noqa: RUF001, RUF002  (look-alike letters are this module's subject)
"""Text normalisation against evasion, and tokenisation: done once per segment.

Attackers hide instructions from pattern matchers and classifiers in ways a language model
still reads. :func:`normalize` undoes the cheap ones and records which it saw:

    raw text
      │ NFKC                 full-width, mathematical, circled letters → ASCII ("ｉｇｎｏｒｅ")
      │ invisible characters zero-width, bidi controls, soft hyphens, variation selectors removed;
      │                      Unicode *tag* characters (ASCII smuggling) decoded into visible text
      │ homoglyph folding    Cyrillic/Greek look-alikes inside Latin words → Latin ("іgnоrе")
      │ casefold
      │ leetspeak folding    only where digits sit inside a word ("1gn0r3" → "ignore"; not
      │                      "a11y", "5min", "4px", hex colours or hashes)
      │ spaced letters       "i g n o r e" / "i.g.n.o.r.e" → "ignore"
      │ blob decoding        base64 / hex / binary octets / %-escapes that decode to readable
      │                      text become extra *views*, normalised the same way; so does the
      │                      rot13 reading of a text that reads as English only in rot13
      ▼
    Normalized(text, views, evasions, words, punct)

Every detector scans ``text`` and each of ``views``. ``evasions`` names the tricks found
("zero_width", "base64", ...), never content, so they can be counted and used as a signal.
``words`` and ``punct`` are the tokens of ``text`` the linear models read (:func:`tokenize`).

Cost. Python's ``re`` runs at ~0.1 µs per character per pattern here, so nothing scans an
ordinary ASCII text with it: the Unicode steps are skipped when ``str.isascii()`` (and use
set intersections otherwise), one Hyperscan pass over the case-folded text finds which of the
other steps have anything to do (``_TRIGGERS``), and tokenisation of ASCII text is
``bytes.translate`` + ``split``. The result is cached for the last few texts, so the injection
and moderation guardrails share one normalisation of a segment.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import compress
from operator import not_
from typing import Any, Final
from urllib.parse import unquote

from aiguard_sidecar import memory

try:
    import hyperscan as _hs
except ImportError:  # pragma: no cover - the sidecar image always has it
    _hs = None  # type: ignore[assignment]  # RegexSet falls back to Python's re

__all__ = [
    "Normalized",
    "RegexSet",
    "fold",
    "normalize",
    "rot13",
    "rot13_utf8",
    "tokenize",
]

# --------------------------------------------------------------------------------------------
# Tables

# Format characters that render as nothing (or reorder text) and only serve to split words.
_INVISIBLE = (
    *(0x00AD, 0x034F, 0x061C, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180E, 0x3164, 0xFEFF, 0xFFA0),
    *range(0x200B, 0x2010),  # zero-width space/non-joiner/joiner, LRM, RLM
    *range(0x202A, 0x202F),  # bidi embeddings and overrides
    *range(0x2060, 0x2070),  # word joiner, invisible operators, bidi isolates
    *range(0xFE00, 0xFE10),  # variation selectors 1-16
    *range(0xE0100, 0xE01F0),  # variation selectors 17-256
    0xE0001,  # language tag
    0xE007F,  # cancel tag
)
_BIDI = set(range(0x202A, 0x202F)) | set(range(0x2066, 0x206A)) | {0x200E, 0x200F, 0x061C}
# Emoji use VS15/VS16 (U+FE0E/U+FE0F) normally; the supplementary selectors carry no meaning
# in text and can encode bytes ("emoji smuggling"), as can runs of selectors.
_VS_ALL = frozenset(chr(c) for c in [*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)])
_VS_RUN = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]{2,}")
_STRIP = dict.fromkeys(_INVISIBLE)
# Unicode tag characters U+E0020..U+E007E mirror printable ASCII and are invisible: decode them.
_TAGS = {cp: chr(cp - 0xE0000) for cp in range(0xE0020, 0xE007F)}
_STRIP_AND_TAGS: dict[int, str | None] = {**_STRIP, **_TAGS}
_INVISIBLE_CHARS = frozenset(chr(c) for c in _INVISIBLE) | frozenset(chr(c) for c in _TAGS)
_TAG_CHARS = frozenset(chr(c) for c in _TAGS)
_BIDI_CHARS = frozenset(chr(c) for c in _BIDI)
_ZERO_WIDTH_CHARS = frozenset(chr(c) for c in _INVISIBLE) - _BIDI_CHARS - _VS_ALL

# Cyrillic and Greek letters that look like Latin ones (Unicode confusables, the common subset).
_CONFUSABLES = {
    # Cyrillic lower/upper
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d",
    "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w", "ү": "y", "ց": "g", "օ": "o", "ս": "u",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
    "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԁ": "D", "Һ": "H", "Ԛ": "Q",
    "Ԝ": "W", "Ү": "Y",
    # Greek lower/upper
    "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "γ": "y", "ω": "w", "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H",
    "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
}  # fmt: skip
# Latin letters outside ASCII that NFKC keeps and that read as ASCII ones. Folded, but normal
# in Turkish, Polish, Danish ... words, so mixing them with ASCII is no sign of evasion.
_LATIN_LOOKALIKES = {"ı": "i", "ȷ": "j", "ɡ": "g", "ℓ": "l", "ø": "o", "đ": "d", "ħ": "h", "ł": "l"}
_CONFUSABLE_TABLE = str.maketrans({**_CONFUSABLES, **_LATIN_LOOKALIKES})
_CONFUSABLE_CHARS = frozenset(_CONFUSABLES) | frozenset(_LATIN_LOOKALIKES)
_FOREIGN_CONFUSABLES = frozenset(_CONFUSABLES)

_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "9": "g",
                       "@": "a", "$": "s"})  # fmt: skip
_ROT13 = str.maketrans(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "nopqrstuvwxyzabcdefghijklmNOPQRSTUVWXYZABCDEFGHIJKLM",
)
_ROT13_BYTES = bytes.maketrans(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    b"nopqrstuvwxyzabcdefghijklmNOPQRSTUVWXYZABCDEFGHIJKLM",
)

# Common English words: a text without them whose rot13 reading has them was written in rot13.
_COMMON = (" the ", " and ", " to ", " you ", " is ", " of ", " a ", " it ", " in ", " what ")

# --------------------------------------------------------------------------------------------
# Patterns. Python regexes run only after their Hyperscan trigger fired.

_CONFUSABLE_CLASS = "".join(sorted(_CONFUSABLE_CHARS))
# A word (anchored at its start, so matching stays linear) that contains a look-alike.
_CONFUSABLE_WORD = re.compile(rf"\b[^\W\d_]*[{_CONFUSABLE_CLASS}][^\W\d_]*")
# Digits inside a word ("h4te", "1gn0re") - but not numeronyms (a11y, i18n, k8s) or hex.
_LEET_WORD = re.compile(r"\b[a-z0-9$]*[a-z][013457$]+[a-z][a-z0-9$]*")
_NOT_LEET = re.compile(r"[0-9a-f]+|[a-z]\d+[a-z]{1,2}")
_SPACED = re.compile(r"(?<![\w.])(?:[a-z][ .\-_*]){3,}[a-z](?!\w)")
_SPACED_SEP = re.compile(r"[ .\-_*]")
_B64_TOKEN = re.compile(r"[A-Za-z0-9+/_-]{20,}={0,2}")
_HEX = re.compile(r"(?:\\x|0x)?[0-9a-fA-F]{2}(?:[ :,]?(?:\\x|0x)?[0-9a-fA-F]{2}){9,}")
_BINARY = re.compile(r"[01]{8}(?:[ ,]?[01]{8}){3,}")
_URLESC = re.compile(r"(?:%[0-9a-fA-F]{2}){4,}")
_STRIP_PUNCT = "\"'`()[]{}<>,.;:!?*|"

# Hyperscan triggers over the text before case folding: which steps have work to do. All but
# the base64 trigger are case-insensitive; base64 of text mixes upper and lower case letters
# every few characters, which URL paths, file names and hex hashes do not.
LEET, SPACED, B64, HEX, BINARY, URLESC, ROT13_MENTION = range(7)
_TRIGGER_PATTERNS = (
    r"[a-z][013457$]+[a-z]",
    r"\b[a-z][ .\-_*][a-z][ .\-_*][a-z][ .\-_*][a-z]\b",
    r"[A-Za-z0-9+/_-]{4}(?:[a-z0-9+/_-]{1,6}[A-Z]){3}[a-z0-9+/_-]{0,6}[a-z]",
    r"[0-9a-f]{2}(?:[ :,]?(?:\\x|0x)?[0-9a-f]{2}){9}",
    r"[01]{8}(?:[ ,]?[01]{8}){3}",
    r"(?:%[0-9a-f]{2}){4}",
    r"\brot[- ]?13\b|\bcaesar\b|\bcipher",
)
_TRIGGER_CASELESS = (True, True, False, True, True, True, True)

MAX_LEET_WORD = 24  # longer alphanumeric runs are identifiers or blobs, never leetspeak
MAX_VIEWS = 8  # decoded views per segment
MAX_DECODED_CHARS = 65536  # in total per segment
MIN_DECODED_CHARS = 6

# Tokenisation: words (\w runs; one token per CJK character) and punctuation runs (≤ 3 chars).
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_WORD_RE = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_PUNCT_RE = re.compile(r"[^\w\s]+")
_IS_WORD = re.compile(r"\w")
_IS_SPACE = re.compile(r"\s")
# Byte tables for UTF-8 text: ASCII bytes that cannot be part of a word (of a punctuation run)
# become spaces; bytes ≥ 0x80 (parts of non-ASCII characters) stay for the regexes.
_ASCII_WORDS = bytes(c if c >= 0x80 or _IS_WORD.match(chr(c)) else 32 for c in range(256))
_ASCII_PUNCT = bytes(
    c if c >= 0x80 or not (_IS_WORD.match(chr(c)) or _IS_SPACE.match(chr(c))) else 32
    for c in range(256)
)


@dataclass(frozen=True, slots=True)
class Normalized:
    """A segment's text as detectors should read it."""

    text: str  # the normalised form of the whole text
    views: tuple[str, ...]  # normalised text decoded from embedded blobs, and rot13 readings
    evasions: frozenset[str]  # names of the evasion techniques seen (no content)
    words: tuple[str, ...]  # tokens of ``text`` (see tokenize)
    punct: frozenset[str]

    def all_texts(self) -> tuple[str, ...]:
        return (self.text, *self.views)


_ADDRESS_RE: Final = re.compile(
    r"(?P<email>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)|(?P<url>(?:https?|ftp)://\S+|www\.\S+)"
)


def _address_word(m: re.Match[str]) -> str:
    return " emailaddress " if m.group("email") else " webaddress "


def tokenize(text: str) -> tuple[list[str], set[str]]:
    """Words (one per CJK character) and the distinct punctuation runs, cut to 3 characters,
    of an already normalised text: ``_WORD_RE.findall`` and ``_PUNCT_RE.findall``, computed
    with ``bytes.translate`` + ``split`` and the regexes only on the pieces with non-ASCII
    characters (no word or punctuation run crosses an ASCII separator, so it is the same).

    An e-mail address becomes the one word ``emailaddress`` and a URL ``webaddress``: the
    classifiers learn that a message carries an address, not whose (attack corpora are full
    of ``jane.doe@example.com``, which made ordinary requests naming a person look hostile)."""
    if "@" in text or "://" in text or "www." in text:
        text = _ADDRESS_RE.sub(_address_word, text)
    raw = text.encode("utf-8", "surrogatepass")
    coarse_words = raw.translate(_ASCII_WORDS).decode("utf-8", "surrogatepass").split()
    coarse_punct = raw.translate(_ASCII_PUNCT).decode("utf-8", "surrogatepass").split()
    if text.isascii():
        words = coarse_words
        punct = set(coarse_punct)
    else:
        words = _refine(coarse_words, _WORD_RE)
        punct = set(_refine(coarse_punct, _PUNCT_RE))
    if any(len(p) > 3 for p in punct):
        punct = {p[:3] for p in punct}
    return words, punct


def _refine(coarse: list[str], regex: re.Pattern[str]) -> list[str]:
    """Split the non-ASCII pieces of ``coarse`` with ``regex``; a Python loop over those only."""
    foreign = list(compress(range(len(coarse)), map(not_, map(str.isascii, coarse))))
    if not foreign:
        return coarse
    out: list[str] = []
    prev = 0
    for i in foreign:
        out.extend(coarse[prev:i])
        out.extend(regex.findall(coarse[i]))
        prev = i + 1
    out.extend(coarse[prev:])
    return out


class _Triggers:
    """One Hyperscan pass over a case-folded text: which normalisation steps apply."""

    def __init__(self) -> None:
        self._set = RegexSet(_TRIGGER_PATTERNS, caseless=_TRIGGER_CASELESS)

    def __call__(self, clean: str) -> set[int]:
        return self._set.matches(clean)


# --------------------------------------------------------------------------------------------
# Steps


def _fold_homoglyphs(text: str) -> tuple[str, bool]:
    """Fold look-alike letters in words that mix them with Latin ones, or consist only of them.

    A genuine Russian or Greek word keeps its letters (most of their alphabets are not
    confusable); "раураl" written with Cyrillic р/а/у becomes "paypal". Returns the text and
    whether a *mixed-script* word was seen (the evasion signal; an all-look-alike word such as
    Russian "как" is folded but is no sign of evasion on its own).
    """
    mixed_seen = False

    def repl(m: re.Match[str]) -> str:
        nonlocal mixed_seen
        word = m.group(0)
        foreign = [c for c in word if not c.isascii()]
        confusable = [c for c in foreign if c in _CONFUSABLE_CHARS]
        mixed = len(foreign) < len(word)  # Latin letters beside look-alikes
        if not mixed and len(confusable) < len(foreign):
            return word  # a genuine foreign word that happens to contain a look-alike
        if mixed and any(c in _FOREIGN_CONFUSABLES for c in confusable):
            mixed_seen = True
        return word.translate(_CONFUSABLE_TABLE)

    return _CONFUSABLE_WORD.sub(repl, text), mixed_seen


def _fold_leet(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        word = m.group(0)
        if len(word) > MAX_LEET_WORD or _NOT_LEET.fullmatch(word) is not None:
            return word  # long runs are identifiers or encoded blobs, not words
        return word.translate(_LEET)

    return _LEET_WORD.sub(repl, text)


def _unicode_steps(text: str, seen: set[str]) -> str:
    """NFKC, invisible characters, homoglyphs: only for non-ASCII text."""
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    chars = set(text)
    if chars & _VS_ALL and _VS_RUN.search(text) is not None:
        seen.add("variation_selectors")
    if chars & _INVISIBLE_CHARS:
        if chars & _TAG_CHARS:
            seen.add("tag_chars")
        if chars & _BIDI_CHARS:
            seen.add("bidi")
        if chars & _ZERO_WIDTH_CHARS:
            seen.add("zero_width")
        text = text.translate(_STRIP_AND_TAGS)
    if chars & _CONFUSABLE_CHARS:
        text, mixed = _fold_homoglyphs(text)
        if mixed:
            seen.add("homoglyph")
    return text


def fold(text: str) -> tuple[str, str, set[str], set[int]]:
    """Normalise one text without decoding blobs.

    Returns the normalised text, the text before case folding (for case-sensitive decoding),
    the evasions seen, and the triggers that fired."""
    seen: set[str] = set()
    clean = text if text.isascii() else _unicode_steps(text, seen)
    triggers = _triggers()(clean)
    folded = clean.casefold()
    if LEET in triggers:
        leet = _fold_leet(folded)
        if leet != folded:
            seen.add("leetspeak")
            folded = leet
    if SPACED in triggers:
        joined = _SPACED.sub(lambda m: _SPACED_SEP.sub("", m.group(0)), folded)
        if joined != folded:
            seen.add("spaced_letters")
            folded = joined
    return folded, clean, seen, triggers


def _readable(raw: bytes) -> str | None:
    """The text ``raw`` decodes to, when it looks like words; else None."""
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(s) < MIN_DECODED_CHARS:
        return None
    printable = sum(1 for c in s if c.isprintable() or c in "\n\t\r")
    letters = sum(1 for c in s if c.isalpha())
    if printable < 0.95 * len(s) or letters < 0.5 * len(s.replace(" ", "")):
        return None
    if " " not in s and len(s) > 24:  # one long token: an identifier, not a sentence
        return None
    return s


def _decode_b64(blob: str) -> str | None:
    if blob.isalpha() and (blob.islower() or blob.isupper()):
        return None  # a plain long word, not base64
    s = blob.rstrip("=")
    alt = "-_" if ("-" in s or "_" in s) else None
    s += "=" * (-len(s) % 4)
    try:
        raw = base64.b64decode(s, altchars=b"-_" if alt else None, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _readable(raw)


def _decode_hex(blob: str) -> str | None:
    digits = re.sub(r"\\x|0x|[ :,]", "", blob)
    if len(digits) % 2:
        digits = digits[:-1]
    try:
        raw = bytes.fromhex(digits)
    except ValueError:
        return None
    return _readable(raw)


def _decode_binary(blob: str) -> str | None:
    bits = re.sub(r"[ ,]", "", blob)
    raw = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits) - 7, 8))
    return _readable(raw)


def _decode_blobs(clean: str, triggers: set[int]) -> list[tuple[str, str]]:
    """(kind, decoded text) for every embedded blob that decodes to readable text."""
    found: list[tuple[str, str]] = []
    if B64 in triggers:
        for tok in clean.split():
            if len(tok) < 20:
                continue
            m = _B64_TOKEN.search(tok.strip(_STRIP_PUNCT))
            if m is not None:
                d = _decode_b64(m.group(0))
                if d is not None:
                    found.append(("base64", d))
    if HEX in triggers:
        for m in _HEX.finditer(clean):
            d = _decode_hex(m.group(0))
            if d is not None:
                found.append(("hex", d))
    if BINARY in triggers:
        for m in _BINARY.finditer(clean):
            d = _decode_binary(m.group(0))
            if d is not None:
                found.append(("binary", d))
    if URLESC in triggers:
        for m in _URLESC.finditer(clean):
            r = _readable(unquote(m.group(0)).encode("utf-8", "surrogatepass"))
            if r is not None:
                found.append(("url_escape", r))
    return found[:MAX_VIEWS]


def _common_count(text: str, enough: int = 2) -> int:
    """How many of the common English words occur (stops counting at ``enough``)."""
    padded = f" {text} "
    n = 0
    for w in _COMMON:
        if w in padded:
            n += 1
            if n >= enough:
                break
    return n


def rot13(text: str) -> str:
    if text.isascii():
        return text.encode("ascii").translate(_ROT13_BYTES).decode("ascii")
    return text.translate(_ROT13)


def rot13_utf8(data: bytes) -> bytes:
    """rot13 of UTF-8 text, on the bytes (multi-byte sequences are ≥ 0x80: untouched)."""
    return data.translate(_ROT13_BYTES)


def _rot13_views(folded: str, triggers: set[int], seen: set[str]) -> list[str]:
    """A text that reads as English only after rot13; or, when the text talks about rot13 or
    ciphers, the rot13 reading of all of it and of each line that reads as English."""
    views: list[str] = []
    if ROT13_MENTION in triggers:
        views.append(rot13(folded))
        lines = folded.splitlines()
    elif _common_count(folded) <= 1 and folded.count(" ") >= 4:
        lines = [folded]
    else:
        return views
    for line in lines:
        if _common_count(line) <= 1 and line.count(" ") >= 3:
            r = rot13(line)
            if _common_count(r) >= 2:
                seen.add("rot13")
                views.append(r)
                if len(views) > MAX_VIEWS:
                    break
    return views


def _normalize(text: str) -> Normalized:
    folded, clean, seen, triggers = fold(text)
    views: list[str] = []
    budget = MAX_DECODED_CHARS
    pending = [(kind, d, 1) for kind, d in _decode_blobs(clean, triggers)]
    while pending and len(views) < MAX_VIEWS and budget > 0:
        kind, decoded, depth = pending.pop(0)
        decoded = decoded[:budget]
        budget -= len(decoded)
        seen.add(kind)
        v, vclean, more, vtriggers = fold(decoded)
        seen |= more
        views.append(v)
        if depth < 2:  # base64 of hex of ...: one more level, no further
            pending.extend((k, d, depth + 1) for k, d in _decode_blobs(vclean, vtriggers))
    for v in _rot13_views(folded, triggers, seen):
        if v not in views:
            views.append(v)
    words, punct = tokenize(folded)
    return Normalized(folded, tuple(views), frozenset(seen), tuple(words), frozenset(punct))


_cached = lru_cache(maxsize=64)(_normalize)
_CACHE_MAX_CHARS = 16384


def normalize(text: str) -> Normalized:
    """The normalised text, decoded views and evasions of ``text`` (cached for short texts)."""
    if len(text) <= _CACHE_MAX_CHARS:
        return _cached(text)
    return _normalize(text)


@lru_cache(maxsize=1)
def _triggers() -> _Triggers:
    return _Triggers()


# --------------------------------------------------------------------------------------------
# Matching many patterns over normalised text


class RegexSet:
    """Which of many regexes occur in a normalised text: one Hyperscan pass (Python ``re``
    when Hyperscan is not installed). Patterns are Hyperscan/PCRE syntax written for
    normalised text (case-folded, so no case flags); ``^`` and ``$`` are per line; ``\\w``
    and ``\\b`` are ASCII (write non-English phrases with ``\\S``).

    Compiled once; scratch space is per thread, so one instance serves every thread.
    """

    def __init__(self, patterns: Sequence[str], *, caseless: Sequence[bool] = ()) -> None:
        self._patterns = tuple(patterns)
        nocase = tuple(caseless) or (False,) * len(self._patterns)
        if len(nocase) != len(self._patterns):
            raise ValueError("caseless must name every pattern")
        self._local = threading.local()
        self._db: Any = None
        self._re: list[re.Pattern[str]] = []
        if _hs is not None and self._patterns:
            from aiguard_sidecar.guardrails import hsdb

            base = _hs.HS_FLAG_UTF8 | _hs.HS_FLAG_SINGLEMATCH | _hs.HS_FLAG_MULTILINE
            spec = hsdb.Spec(
                tuple(p.encode("utf-8") for p in self._patterns),
                tuple(range(len(self._patterns))),
                tuple(base | (_hs.HS_FLAG_CASELESS if c else 0) for c in nocase),
            )
            (res,) = hsdb.compile_many([spec])  # in a child process: see hsdb
            if isinstance(res, _hs.error):
                raise res
            self._held = res  # keeps a shared database alive
            self._db = res.db
            release_freed_memory()
        else:
            self._re = [
                re.compile(p, re.MULTILINE | re.ASCII | (re.IGNORECASE if c else 0))
                for p, c in zip(self._patterns, nocase, strict=True)
            ]

    def __len__(self) -> int:
        return len(self._patterns)

    def matches(self, text: str) -> set[int]:
        """Indices of the patterns that match ``text`` anywhere."""
        if self._db is None:
            return {i for i, r in enumerate(self._re) if r.search(text) is not None}
        return self.matches_utf8(text.encode("utf-8", "replace"))

    def matches_utf8(self, data: bytes) -> set[int]:
        """Same, for text already encoded as UTF-8."""
        if self._db is None:
            return self.matches(data.decode("utf-8", "replace"))
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = _hs.Scratch(self._db)
            self._local.scratch = scratch
        hits: set[int] = set()
        self._db.scan(data, match_event_handler=_collect, context=hits, scratch=scratch)
        return hits


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the OS (:func:`aiguard_sidecar.memory.trim`).

    Compiling a Hyperscan database takes ~15 MB of transient C heap for a database of under
    1 MB. Compiles run in a child process (:mod:`hsdb`), but when that fails they run here,
    and glibc keeps the freed pages: without this every compiled set would add its peak to
    the sidecar's idle RSS (benchmarks.guardrails_injection measures it)."""
    memory.trim()


def _collect(pattern_id: int, _start: int, _end: int, _flags: int, hits: set[int]) -> None:
    hits.add(pattern_id)

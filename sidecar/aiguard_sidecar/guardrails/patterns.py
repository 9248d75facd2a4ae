"""One Hyperscan pass over a text, for many patterns at once, and the PII pattern table.

How a text is scanned (``Matcher.find``)::

    text ──► ASCII view ──Hyperscan, every rule in one database──► (rule, start, end)
             (each non-ASCII character               one byte per character: character
              one "?")                               offsets; all ends of every match are
                                                     reported, leftmost start (SOM)
         ──► UTF-8 ──Hyperscan, the rules that need Unicode (non-ASCII literals, \\w in
             Unicode mode) or name "?" themselves──► byte offsets → character offsets
      ► per (rule, start): try the ends longest first; ``adjust`` may move the span (e-mail
        local part, URL tail), ``extract`` narrows it to a value (``key = "VALUE"``),
        ``check`` validates and scores it (Luhn, mod-97, SSN rules ...)
      ► context words near the span raise the score
    ► Candidates: entity, span, score, priority. ``resolve_overlaps`` keeps the best.

A rule without Unicode semantics cannot tell a non-ASCII character from ``?`` (``\\w``, ``\\d``,
``\\s`` and ``\\b`` are ASCII there, a negated class or ``.`` takes either), so the ASCII view
gives it the same matches at the same character offsets, without a byte → character mapping.

Nothing found costs one Hyperscan call (a few microseconds per KB). Databases are compiled once
per policy load; scratch space is per thread, so one ``Matcher`` serves every thread.
:class:`TextCache` keeps a guardrail's detection results for recently seen texts.

Overlaps (``resolve_overlaps``): the longest candidate wins, then the higher priority, then the
higher score; a candidate overlapping an accepted one is dropped. So a Luhn-valid digit run
inside an IBAN is not a card, an SSN-shaped phone candidate loses to the SSN, and a short
custom pattern cannot split a card number into a redacted part and a visible rest.

Rules with ``som=False`` are compiled without start-of-match tracking (for patterns Hyperscan
cannot track the start of, e.g. large bounded repeats); they must have an ``extract`` regex,
which is searched in a window around the reported end.
"""

from __future__ import annotations

import bisect
import functools
import inspect
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import hyperscan

from aiguard_sidecar.guardrails import hsdb
from aiguard_sidecar.guardrails import validators as v

# A rule's validator: full text and candidate span in, confidence (0..1) out, None to reject.
Check = Callable[[str, int, int], float | None]
# Moves a span (e.g. extends an e-mail match left over its local part). Returns (start, end).
Adjust = Callable[[str, int, int], tuple[int, int]]

MAX_MATCHES: Final = 100_000  # per scanned text; more means adversarial input
CONTEXT_BEFORE: Final = 48  # characters searched for context words before a candidate
CONTEXT_AFTER: Final = 24  # ... and after it
QUIET_MAX_CHARS: Final = 2048
"""Longer texts are not asked ``quiet`` (``Matcher.any``): their scan costs more than the
Python it could save, and a match near their end would have them scanned twice."""


class ScanLimitError(RuntimeError):
    """A text produced more raw matches than ``MAX_MATCHES``; the guardrail fails (and the
    engine's failureMode decides) rather than silently scanning part of it."""


class PatternError(ValueError):
    """A pattern from the policy that neither Hyperscan nor Python's ``re`` accepts."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One pattern. ``regex`` is Hyperscan (PCRE) syntax, ASCII-oriented unless ``ucp``."""

    entity: str
    regex: str
    score: float = 0.5  # confidence when there is no ``check``
    check: Check | None = None
    context: Context | None = None  # words near the match that raise the score
    context_boost: float = 0.35
    priority: int = 50  # breaks ties between equally long overlapping candidates
    caseless: bool = False
    ucp: bool = False  # Unicode \w \d \b semantics (custom patterns, non-ASCII keywords)
    som: bool = True  # track the start of match (HS_FLAG_SOM_LEFTMOST)
    adjust: Adjust | None = None
    # Narrows a match to the value: group ``v`` (or ``u``) if present, else the whole match.
    # som=True: matched at the start; som=False: searched in ``window`` chars around the end.
    extract: re.Pattern[str] | None = None
    window: int = 256
    literal: bool = False  # ``regex`` is a plain string (deny lists, keywords)
    retry: bool = False  # after a rejection, look for later starts (see ``Matcher._retry``)
    # checked once per start before any end is tried (cheap rejections: glued to a number)
    start_ok: Callable[[str, int], bool] | None = None
    tag: str = ""  # free-form (e.g. "custom", "deny"); not used for matching


@dataclass(frozen=True, slots=True)
class Candidate:
    entity: str
    start: int
    end: int
    score: float
    priority: int
    rule: int  # index into the matcher's rules


@dataclass(slots=True)
class _Compiled:
    db: Any
    ids: list[int] = field(default_factory=list)


def _flags(rule: Rule) -> int:
    f = hyperscan.HS_FLAG_UTF8
    if rule.som:
        f |= hyperscan.HS_FLAG_SOM_LEFTMOST
    if rule.caseless:
        f |= hyperscan.HS_FLAG_CASELESS
    if rule.ucp:
        f |= hyperscan.HS_FLAG_UCP
    return f


def _expression(rule: Rule) -> bytes:
    if rule.literal:
        return hyperscan_escape(rule.regex).encode()
    return rule.regex.encode()


def hyperscan_escape(s: str) -> str:
    """Escape a literal for Hyperscan: every non-alphanumeric ASCII character gets a backslash
    (PCRE treats an escaped punctuation character as itself)."""
    return "".join(c if c.isalnum() or ord(c) > 127 else "\\" + c for c in s)


def _on_match(
    rule_id: int, start: int, end: int, _flags: int, hits: list[tuple[int, int, int]]
) -> bool:
    hits.append((rule_id, start, end))
    return len(hits) >= MAX_MATCHES


def _stop(_rule_id: int, _start: int, _end: int, _flags: int, _context: object) -> bool:
    return True  # the first match answers ``Matcher.any``


def compiles(
    regex: str, *, som: bool = True, caseless: bool = False, ucp: bool = False
) -> str | None:
    """None when Hyperscan accepts ``regex`` with these flags, else its error message.
    Checked in a compile child (:mod:`hsdb`): compiling here would keep Hyperscan's compiler
    tables resident."""
    return compiles_many([(regex, som, caseless, ucp)])[0]


def compiles_many(items: Sequence[tuple[str, bool, bool, bool]]) -> list[str | None]:
    """:func:`compiles` for many ``(regex, som, caseless, ucp)`` at once (one child)."""
    specs = []
    for regex, som, caseless, ucp in items:
        rule = Rule(entity="X", regex=regex, som=som, caseless=caseless, ucp=ucp)
        specs.append(hsdb.Spec((_expression(rule),), (0,), (_flags(rule),)))
    return hsdb.check_many(specs)


# A regex that may treat "?" differently from a non-ASCII character (an escaped or bracketed
# "?", escapes that can spell it): such a rule without an ``extract`` (which re-checks each match
# on the real text) is not scanned over the ASCII view.
_QUESTION: Final = re.compile(r"\\[?xQ0-7]|\[[^\]]*\?")


def _ascii_safe(rule: Rule) -> bool:
    """Whether the rule finds the same matches in the text's ASCII view (every non-ASCII
    character replaced by one ``?``; see ``Matcher.raw``). Without Unicode semantics a pattern
    cannot tell a non-ASCII character from ``?`` unless it names ``?`` or a non-ASCII
    character itself."""
    if rule.ucp or not rule.regex.isascii():
        return False
    if rule.literal:
        return "?" not in rule.regex
    return rule.extract is not None or _QUESTION.search(rule.regex) is None


def _spec(rules: Sequence[Rule], ids: Sequence[int]) -> hsdb.Spec:
    return hsdb.Spec(
        tuple(_expression(rules[i]) for i in ids),
        tuple(ids),
        tuple(_flags(rules[i]) for i in ids),
    )


def _databases(rules: Sequence[Rule], *id_lists: Sequence[int]) -> list[hsdb.Compiled | None]:
    """One database per non-empty id list (None for an empty one), compiled together in a
    child process (:mod:`hsdb`); raises the :class:`hyperscan.error` of a rejected one."""
    wanted = [ids for ids in id_lists if ids]
    compiled = iter(hsdb.compile_many([_spec(rules, ids) for ids in wanted]))
    out: list[hsdb.Compiled | None] = []
    for ids in id_lists:
        if not ids:
            out.append(None)
            continue
        res = next(compiled)
        if isinstance(res, hyperscan.error):
            raise res
        out.append(res)
    return out


class Matcher:
    """All rules in one Hyperscan database, plus Python ``re`` fallbacks for the (policy)
    patterns Hyperscan rejects. Immutable after construction; safe to share across threads."""

    def __init__(self, rules: Sequence[Rule], *, fallback: Iterable[int] = ()) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        fallback_ids = set(fallback)
        self._fallback: list[tuple[int, re.Pattern[str]]] = []
        for i in sorted(fallback_ids):
            rule = self.rules[i]
            flags = re.IGNORECASE if rule.caseless else 0
            pattern = re.escape(rule.regex) if rule.literal else rule.regex
            self._fallback.append((i, re.compile(pattern, flags)))
        scanned = [i for i in range(len(self.rules)) if i not in fallback_ids]
        ascii_ids = [i for i in scanned if _ascii_safe(self.rules[i])]
        utf8_ids = [i for i in scanned if not _ascii_safe(self.rules[i])]
        held = _databases(self.rules, ascii_ids, utf8_ids)
        self._held = tuple(c for c in held if c is not None)  # keeps shared databases alive
        self._db: Any = held[0].db if held[0] is not None else None  # over the ASCII view
        self._udb: Any = held[1].db if held[1] is not None else None  # over UTF-8
        self._local = threading.local()
        self._py: dict[int, re.Pattern[str] | None] = {}

    @property
    def empty(self) -> bool:
        return not self.rules

    def _scratch(self) -> tuple[Any, Any]:
        scratch: tuple[Any, Any] | None = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = (
                hyperscan.Scratch(self._db) if self._db is not None else None,
                hyperscan.Scratch(self._udb) if self._udb is not None else None,
            )
            self._local.scratch = scratch
        return scratch

    def raw(self, text: str) -> list[tuple[int, int, int]]:
        """Hyperscan hits as (rule, start, end) in character offsets; fallbacks included."""
        hits: list[tuple[int, int, int]] = []
        if not text:
            return hits
        if self._db is not None or self._udb is not None:
            scratch, uscratch = self._scratch()
            try:
                if self._db is not None:
                    # one byte per character: offsets are character offsets
                    self._db.scan(
                        text.encode("ascii", "replace"),
                        match_event_handler=_on_match,
                        context=hits,
                        scratch=scratch,
                    )
                if self._udb is not None:
                    data = text.encode("utf-8", "replace")
                    uhits: list[tuple[int, int, int]] = []
                    self._udb.scan(
                        data, match_event_handler=_on_match, context=uhits, scratch=uscratch
                    )
                    if uhits and len(data) != len(text):
                        uhits = _to_chars(data, uhits)
                    hits.extend(uhits)
                    if len(hits) >= MAX_MATCHES:
                        raise hyperscan.ScanTerminated
            except hyperscan.ScanTerminated:
                raise ScanLimitError(f"more than {MAX_MATCHES} raw matches") from None
        for i, pattern in self._fallback:
            for m in pattern.finditer(text):
                if m.end() > m.start():
                    hits.append((i, m.start(), m.end()))
                    if len(hits) >= MAX_MATCHES:
                        raise ScanLimitError(f"more than {MAX_MATCHES} raw matches")
        return hits

    def any(self, text: str) -> bool:
        """Whether :meth:`raw` would report at least one hit (False: it reports none). Stops
        at the first match, so a text with nothing in it costs one short Hyperscan call per
        database and no Python per hit (the guardrails' ``quiet``)."""
        if not text:
            return False
        if self._fallback:
            return True  # Python ``re`` patterns: not worth a second pass here
        scanned = False
        try:
            if self._db is not None or self._udb is not None:
                scratch, uscratch = self._scratch()
                if self._db is not None:
                    self._db.scan(
                        text.encode("ascii", "replace"), match_event_handler=_stop, scratch=scratch
                    )
                if self._udb is not None:
                    self._udb.scan(
                        text.encode("utf-8", "replace"), match_event_handler=_stop, scratch=uscratch
                    )
            scanned = True
        except hyperscan.ScanTerminated:
            pass
        return not scanned

    def find(self, text: str, threshold: float = 1.0) -> list[Candidate]:
        """Validated, scored candidates (overlapping each other; see ``resolve_overlaps``).

        Context words are looked for only where they can change the outcome: for candidates
        scoring below ``threshold`` (1.0, the default, looks everywhere: full scores)."""
        hits = self.raw(text)
        return self.find_hits(text, hits, threshold) if hits else []

    def find_hits(
        self, text: str, hits: Sequence[tuple[int, int, int]], threshold: float = 1.0
    ) -> list[Candidate]:
        """``find`` for hits already scanned (``raw``): the caller may have looked at them."""
        if not hits:
            return []
        ends: dict[tuple[int, int], list[int]] = {}
        for rule_id, start, end in hits:
            ends.setdefault((rule_id, start), []).append(end)
        out: list[Candidate] = []
        seen: set[tuple[int, int, int]] = set()
        for (rule_id, start), rule_ends in ends.items():
            rule = self.rules[rule_id]
            if rule.som:
                if rule.start_ok is not None and not rule.start_ok(text, start):
                    continue
                for end in sorted(set(rule_ends), reverse=True):
                    cand = self._candidate(text, rule_id, rule, start, end, threshold)
                    if cand is not None:
                        out.append(cand)
                        break
                else:
                    if rule.retry:
                        out.extend(
                            self._retry(text, rule_id, rule, start, max(rule_ends), threshold)
                        )
            else:
                for end in sorted(set(rule_ends)):
                    cand = self._candidate(text, rule_id, rule, -1, end, threshold)
                    if cand is not None and (rule_id, cand.start, cand.end) not in seen:
                        seen.add((rule_id, cand.start, cand.end))
                        out.append(cand)
        return out

    def _python(self, rule_id: int) -> re.Pattern[str] | None:
        cache: dict[int, re.Pattern[str] | None] = self._py
        if rule_id not in cache:
            rule = self.rules[rule_id]
            try:
                cache[rule_id] = rule.extract or re.compile(
                    rule.regex, re.IGNORECASE if rule.caseless else 0
                )
            except re.error:
                cache[rule_id] = None
        return cache[rule_id]

    def _retry(
        self, text: str, rule_id: int, rule: Rule, start: int, end: int, threshold: float
    ) -> list[Candidate]:
        """Later starts inside a rejected match. Hyperscan reports, per end, only the LEFTMOST
        start: in ``3 4111 1111 1111 1111`` the card pattern's match starts at ``3`` (17 digits,
        not a card) and the card at ``4111`` is never reported. Python's ``re`` tries the other
        word starts in that stretch (only after a rejection, so rarely)."""
        pattern = self._python(rule_id)
        if pattern is None or rule.extract is not None:
            return []
        out: list[Candidate] = []
        p = start + 1
        stop = min(end, start + 128)
        while p < stop:
            c = text[p]
            if (c.isalnum() and not text[p - 1].isalnum()) or c in "+(":
                m = pattern.match(text, p)
                if m is not None and m.end() > p:
                    # the greedy end, then shorter ones at word ends
                    for e in range(m.end(), p, -1):
                        if e < m.end() and not (
                            text[e - 1].isalnum() and (e == len(text) or not text[e].isalnum())
                        ):
                            continue
                        cand = self._candidate(text, rule_id, rule, p, e, threshold)
                        if cand is not None:
                            out.append(cand)
                            p = cand.end
                            break
                    else:
                        p += 1
                    continue
            p += 1
        return out

    def _candidate(
        self, text: str, rule_id: int, rule: Rule, start: int, end: int, threshold: float = 1.0
    ) -> Candidate | None:
        if rule.extract is not None:
            span = _extract(rule, text, start, end)
            if span is None:
                return None
            start, end = span
        if rule.adjust is not None:
            start, end = rule.adjust(text, start, end)
        if end <= start:
            return None
        score = rule.check(text, start, end) if rule.check is not None else rule.score
        if score is None:
            return None
        if (
            rule.context is not None
            and score < threshold
            and _has_context(rule.context, text, start, end)
        ):
            score = min(1.0, score + rule.context_boost)
        return Candidate(rule.entity, start, end, score, rule.priority, rule_id)


def _extract(rule: Rule, text: str, start: int, end: int) -> tuple[int, int] | None:
    assert rule.extract is not None
    if start >= 0:
        m = rule.extract.match(text, start)
        return None if m is None else _value_span(m)
    # som=False: find the match that covers the reported end
    lo = max(0, end - rule.window)
    hi = min(len(text), end + rule.window)
    best: re.Match[str] | None = None
    for m in rule.extract.finditer(text, lo, hi):
        if m.start() < end <= m.end():
            best = m
            break
        if m.end() <= end:
            best = m
        if m.start() >= end:
            break
    if best is None:
        return None
    span = _value_span(best)
    return span if span[1] > span[0] else None


def _value_span(m: re.Match[str]) -> tuple[int, int]:
    """Group ``v`` (or ``u``, for an alternative spelling of the value) if it took part."""
    for name in ("v", "u"):
        if name in m.re.groupindex and m.start(name) >= 0:
            return m.span(name)
    return m.span()


def _has_context(context: Context, text: str, start: int, end: int) -> bool:
    before = text[max(0, start - CONTEXT_BEFORE) : start]
    after = text[end : end + CONTEXT_AFTER]
    return context.found(before + " \x00 " + after)


def _to_chars(data: bytes, hits: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """UTF-8 byte offsets (at character boundaries) → character offsets: the bytes between
    consecutive offsets are decoded once, so the cost is one decode of the text at most."""
    char_at: dict[int, int] = {}
    chars = 0
    prev = 0
    for b in sorted({p for _, s, e in hits for p in (s, e)}):
        chars += len(data[prev:b].decode("utf-8", "replace"))
        char_at[b] = chars
        prev = b
    return [(r, char_at[s], char_at[e]) for r, s, e in hits]


_T = TypeVar("_T")
_CACHES: Final[weakref.WeakSet[TextCache[Any]]] = weakref.WeakSet()


class TextCache(Generic[_T]):
    """``fn(text)`` for the texts seen most recently (least recently used out), for a ``fn``
    that depends on nothing but the text (a guardrail's detection, built once per policy).

    Chat clients send the system prompt and the whole conversation so far with every
    request: most segments a sidecar scans it has scanned before. Texts longer than
    ``max_chars`` are not kept, so a cache holds at most ``size * max_chars`` characters
    (1 MB of ASCII by default; the guardrails of one engine mostly hold the same text
    objects). Entries hold the text itself, like the normalisation cache (``textnorm``);
    they live in this process's memory only, until pushed out or the policy is reloaded.
    Safe across threads (``functools.lru_cache``)."""

    def __init__(self, fn: Callable[[str], _T], *, size: int = 128, max_chars: int = 8192):
        if inspect.ismethod(fn):  # the owner's method: no reference cycle through its cache
            fn = _weak_method(fn)
        self._fn = fn
        self._cached = functools.lru_cache(maxsize=size)(fn)
        self.max_chars = max_chars
        _CACHES.add(self)

    def __call__(self, text: str) -> _T:
        if len(text) <= self.max_chars:
            return self._cached(text)
        return self._fn(text)

    def clear(self) -> None:
        self._cached.cache_clear()


def _weak_method(method: Callable[[str], _T]) -> Callable[[str], _T]:
    ref = weakref.WeakMethod(method)

    def call(text: str) -> _T:
        fn = ref()
        if fn is None:  # only reachable through a cache its owner no longer has
            raise ReferenceError("the cache's owner is gone")
        return fn(text)

    return call


def clear_caches() -> None:
    """Empty every ``TextCache`` (benchmarks measure first sightings with it)."""
    for cache in list(_CACHES):
        cache.clear()


def resolve_overlaps(cands: Iterable[Candidate]) -> list[Candidate]:
    """Non-overlapping candidates, sorted by start: longest, then priority, then score wins."""
    ordered = sorted(cands, key=lambda c: (-(c.end - c.start), -c.priority, -c.score, c.start))
    starts: list[int] = []
    accepted: list[Candidate] = []  # sorted by start, non-overlapping
    for c in ordered:
        i = bisect.bisect_right(starts, c.start)
        if i > 0 and accepted[i - 1].end > c.start:
            continue
        if i < len(accepted) and accepted[i].start < c.end:
            continue
        starts.insert(i, c.start)
        accepted.insert(i, c)
    return accepted


def _is_word(c: str) -> bool:
    return c.isalnum() or c == "_"


def literal_regex(value: str) -> str:
    """A literal as a Hyperscan regex: whitespace runs flexible, ``\\b`` at ASCII word edges
    (Hyperscan has no ``\\b`` in Unicode mode; :func:`word_edges` checks the real edges)."""
    body = r"\s+".join(hyperscan_escape(p) for p in value.split())
    if not value.isascii():
        return body  # compiled in Unicode mode, which has no \b
    head = r"\b" if _is_word(value[:1]) else ""
    tail = r"\b" if _is_word(value[-1:]) else ""
    return head + body + tail


def word_edges(score: float) -> Check:
    """Whole-word check with Unicode word characters: a match whose first (last) character is a
    word character must not have a word character before (after) it."""

    def check(text: str, start: int, end: int) -> float | None:
        if start > 0 and _is_word(text[start]) and _is_word(text[start - 1]):
            return None
        if end < len(text) and _is_word(text[end - 1]) and _is_word(text[end]):
            return None
        return score

    return check


def literal_rule(entity: str, value: str, *, score: float, priority: int, tag: str) -> Rule:
    """A deny-list value or keyword: case-insensitive, whole words (Unicode-aware)."""
    return Rule(
        entity,
        literal_regex(value),
        score=score,
        caseless=True,
        ucp=not value.isascii(),
        check=word_edges(score),
        priority=priority,
        tag=tag,
    )


def regex_rule(entity: str, regex: str, *, score: float, priority: int, tag: str) -> Rule | None:
    """A policy regex (Python syntax) as a rule: Hyperscan finds where a match starts (Unicode
    mode if it accepts the pattern there, else ASCII mode), Python's ``re`` decides the extent.
    None when Hyperscan takes it in neither mode, or only in ASCII mode while the pattern
    itself has non-ASCII characters (ASCII mode would never match them where Python's ``re``
    does: ``\\bñandú\\b``): scan it with Python ``re`` alone."""
    return regex_rules([(entity, regex)], score=score, priority=priority, tag=tag)[0]


def regex_rules(
    items: Sequence[tuple[str, str]], *, score: float, priority: int, tag: str
) -> list[Rule | None]:
    """:func:`regex_rule` for many ``(entity, regex)``: every Hyperscan check in one child."""
    checks: list[tuple[str, bool, bool, bool]] = []
    for _entity, regex in items:
        checks.append((regex, True, False, True))
        checks.append((regex, True, False, False))
    errors = iter(compiles_many(checks))
    out: list[Rule | None] = []
    for entity, regex in items:
        extract = re.compile(regex)
        ucp_error, ascii_error = next(errors), next(errors)
        if ucp_error is None:
            ucp = True
        elif ascii_error is None and regex.isascii():
            ucp = False
        else:
            out.append(None)
            continue
        out.append(
            Rule(entity, regex, score=score, ucp=ucp, extract=extract, priority=priority, tag=tag)
        )
    return out


def apply_replacements(text: str, reps: Sequence[tuple[int, int, str]]) -> str:
    """``text`` with each (start, end, new) applied; ``reps`` sorted and non-overlapping."""
    if not reps:
        return text
    out: list[str] = []
    pos = 0
    for start, end, new in reps:
        out.append(text[pos:start])
        out.append(new)
        pos = end
    out.append(text[pos:])
    return "".join(out)


_WORDS: Final = re.compile(r"[a-z0-9#/]+")


class Context:
    """Context words, matched case-insensitively as whole words. ``word*`` matches any word
    starting with ``word``; ``two words`` matches the phrase. A set lookup per word of the
    window, not a regex alternation: a few microseconds per candidate."""

    __slots__ = ("phrases", "prefixes", "words")

    def __init__(self, *words: str) -> None:
        self.words = frozenset(w for w in words if " " not in w and not w.endswith("*"))
        self.prefixes = tuple(w[:-1] for w in words if w.endswith("*"))
        self.phrases = tuple(w for w in words if " " in w)

    def found(self, window: str) -> bool:
        low = window.lower()
        tokens = _WORDS.findall(low)
        if not self.words.isdisjoint(tokens):
            return True
        if self.prefixes and any(t.startswith(self.prefixes) for t in tokens):
            return True
        if self.phrases:
            joined = " ".join(tokens)
            return any(p in joined for p in self.phrases)
        return False


def context_words(*words: str) -> Context:
    return Context(*words)


# --------------------------------------------------------------------------------------------
# Span adjusters and checks used by the PII rules

_EMAIL_LOCAL: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-"
)


def _email_adjust(text: str, start: int, end: int) -> tuple[int, int]:
    # the Hyperscan pattern starts at "@": walk left over the local part (at most 64 chars)
    i = start
    limit = max(0, start - 64)
    while i > limit and text[i - 1] in _EMAIL_LOCAL:
        i -= 1
    while i < start and text[i] in "._%+-":
        i += 1
    return i, end


def _email_check(text: str, start: int, end: int) -> float | None:
    return 0.95 if v.email_valid(text[start:end]) else None


_URL_TAIL: Final = re.compile(r"[^\s<>\"'`{}|\\^\[\]]*")
_URL_TRAIL: Final = ".,;:!?'\")]}>*"


def _url_adjust(text: str, start: int, end: int) -> tuple[int, int]:
    m = _URL_TAIL.match(text, end)
    end = m.end() if m else end
    while end > start and text[end - 1] in _URL_TRAIL:
        if text[end - 1] == ")" and text.count("(", start, end) >= text.count(")", start, end):
            break
        end -= 1
    return start, end


_URL_HOST: Final = re.compile(
    r"(?i)(?:[a-z][a-z0-9+.-]*://)?(?:[^@/\s]*@)?(?P<host>\[[0-9a-f:.]+\]|[^/:?#\s]+)"
)


def _url_check(text: str, start: int, end: int) -> float | None:
    m = _URL_HOST.match(text, start, end)
    if m is None:
        return None
    host = m.group("host").lower()
    if host == "localhost" or host.startswith("["):
        return 0.6
    labels = host.split(".")
    if len(labels) < 2 or not labels[-1].isalpha() or len(labels[-1]) < 2:
        return None if not v.ipv4_valid(host) else 0.6
    return 0.6


def in_number(text: str, start: int, end: int) -> bool:
    """The span is part of a longer number: a decimal fraction, a dotted/negative number."""
    if start >= 2 and text[start - 1] in ".,-" and text[start - 2].isdigit():
        return True
    return end + 1 < len(text) and text[end] in ".," and text[end + 1].isdigit()


def _digits_check(fn: Callable[[str], bool], score: float) -> Check:
    def check(text: str, start: int, end: int) -> float | None:
        if in_number(text, start, end):
            return None
        return score if fn(text[start:end]) else None

    return check


def _iban_adjust(text: str, start: int, end: int) -> tuple[int, int]:
    """Hyperscan finds ``CCdd XXXX``; the country fixes the length: count that many letters and
    digits (single spaces between groups allowed)."""
    n = v.IBAN_LENGTHS.get(text[start : start + 2].upper())
    if n is None:
        return start, start
    count = 0
    i = start
    while i < len(text) and count < n:
        c = text[i]
        if c.isascii() and c.isalnum():
            count += 1
        elif not (c == " " and i + 1 < len(text) and text[i + 1] != " " and count % 4 == 0):
            break
        i += 1
    return (start, i) if count == n else (start, start)


def _iban_check(text: str, start: int, end: int) -> float | None:
    if end < len(text) and text[end].isalnum():
        return None
    return 0.95 if v.iban_valid(text[start:end]) else None


def _not_glued(text: str, start: int) -> bool:
    """The match does not continue a word, a number or an amount to its left."""
    if start == 0:
        return True
    c = text[start - 1]
    if c.isalnum() or c in "$€£¥":
        return False
    return not (c in ".,-+" and start >= 2 and text[start - 2].isdigit())


def _ipv4_check(text: str, start: int, end: int) -> float | None:
    # part of a longer dotted number (OID, version string) is not an address
    if start >= 2 and text[start - 1] == "." and text[start - 2].isdigit():
        return None
    if end + 1 < len(text) and text[end] == "." and text[end + 1].isdigit():
        return None
    return 0.6 if v.ipv4_valid(text[start:end]) else None


_HEXCOLON: Final = frozenset("0123456789abcdefABCDEF:")


def _ipv6_check(text: str, start: int, end: int) -> float | None:
    if start > 0 and text[start - 1] in _HEXCOLON:
        return None
    if end < len(text) and (text[end] in _HEXCOLON or text[end].isalnum()):
        return None
    return 0.7 if v.ipv6_valid(text[start:end]) else None


_NANP_PREFIX: Final = re.compile(r"^\s*(?:\+?1|001)[ .\-]?")


def _phone_check(min_digits: int, max_digits: int, score: float, *, nanp: bool = False) -> Check:
    def check(text: str, start: int, end: int) -> float | None:
        value = text[start:end]
        if not v.phone_shape_ok(value, min_digits=min_digits, max_digits=max_digits):
            return None
        if nanp:
            rest = _NANP_PREFIX.sub("", value)
            first = next((c for c in rest if c.isdigit()), "0")
            if first in "01":
                return None
        # glued to letters or more digits ("A123-456-7890", "1.2.3.4"), or money, is not a phone
        if start > 0 and (text[start - 1].isalnum() or text[start - 1] in "+-.$€£¥"):
            return None
        if in_number(text, start, end):
            return None
        if end < len(text) and text[end].isalnum():
            return None
        return score

    return check


def _ssn_check(score: float) -> Check:
    def check(text: str, start: int, end: int) -> float | None:
        if start > 0 and text[start - 1] in "-.":
            return None
        if in_number(text, start, end):
            return None
        if end < len(text) and text[end] == "-" and end + 1 < len(text) and text[end + 1].isdigit():
            return None
        return score if v.ssn_valid(text[start:end]) else None

    return check


def _same_separators(fn: Callable[[str], bool], score: float, plain_score: float) -> Check:
    def check(text: str, start: int, end: int) -> float | None:
        if in_number(text, start, end):
            return None
        value = text[start:end]
        seps = [c for c in value if not c.isalnum()]
        if seps and len(set(seps)) > 1:
            return None
        if not fn(value):
            return None
        return score if seps else plain_score

    return check


# --------------------------------------------------------------------------------------------
# The PII table. Entity names are Presidio's.

PHONE_CONTEXT: Final = context_words(
    "phone*", "tel", "tel.", "telephone", "mobile", "mob", "cell*", "fax", "call*", "dial*",
    "ring", "text", "sms", "whatsapp", "contact*", "reach", "landline", "desk", "office",
    "answer*", "message*", "voicemail", "hotline", "ph",
)  # fmt: skip
SSN_CONTEXT: Final = context_words(
    "ssn", "ssns", "ss#", "social security", "social security number", "social sec", "ssa"
)
ITIN_CONTEXT: Final = context_words("itin", "taxpayer", "tax id*", "individual taxpayer")
CARD_CONTEXT: Final = context_words(
    "card*", "credit", "debit", "visa", "mastercard", "amex", "cc", "discover", "jcb",
    "diners", "maestro", "payment", "cvv", "expir*",
)  # fmt: skip
IBAN_CONTEXT: Final = context_words("iban", "bank*", "account", "transfer*", "sepa", "wire", "bic")
IP_CONTEXT: Final = context_words("ip", "ipv4", "ipv6", "address*", "host*", "server*", "addr")
NHS_CONTEXT: Final = context_words("nhs", "health service", "national health", "patient")
NINO_CONTEXT: Final = context_words("nino", "national insurance", "ni number", "insurance number")
AADHAAR_CONTEXT: Final = context_words("aadhaar", "aadhar", "uidai", "uid")
PAN_CONTEXT: Final = context_words("pan", "permanent account", "income tax")
NIF_CONTEXT: Final = context_words("nif", "dni", "nie", "documento")
BANK_CONTEXT: Final = context_words(
    "bank*", "account", "acct", "checking", "savings", "deposit", "a/c", "routing"
)
PASSPORT_CONTEXT: Final = context_words("passport*", "travel document")
CRYPTO_CONTEXT: Final = context_words("bitcoin", "btc", "wallet", "crypto*")

_P = r"(?:\s?(?:x|ext\.?)\s?\d{1,6})?"  # phone extension

PII_RULES: Final[dict[str, tuple[Rule, ...]]] = {
    "EMAIL_ADDRESS": (
        Rule(
            "EMAIL_ADDRESS",
            r"@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,24}\b",
            adjust=_email_adjust,
            check=_email_check,
            priority=70,
        ),
    ),
    "CREDIT_CARD": (
        Rule(
            "CREDIT_CARD",
            r"\b(?:\d[ \-]?){11,18}\d\b",
            retry=True,
            check=_digits_check(v.card_valid, 0.9),
            context=CARD_CONTEXT,
            context_boost=0.1,
            priority=80,
        ),
    ),
    "IBAN_CODE": (
        Rule(
            "IBAN_CODE",
            r"\b[A-Z]{2}\d{2} ?[A-Z0-9]{4}",
            caseless=True,
            adjust=_iban_adjust,
            check=_iban_check,
            context=IBAN_CONTEXT,
            context_boost=0.05,
            priority=85,
        ),
    ),
    "US_SSN": (
        Rule(
            "US_SSN",
            r"\b\d{3}-\d{2}-\d{4}\b",
            check=_ssn_check(0.6),
            context=SSN_CONTEXT,
            priority=75,
        ),
        Rule(
            "US_SSN",
            r"\b\d{3} \d{2} \d{4}\b",
            check=_ssn_check(0.35),
            context=SSN_CONTEXT,
            priority=75,
        ),
        Rule(
            "US_SSN",
            r"\b\d{9}\b",
            check=_ssn_check(0.15),
            context=SSN_CONTEXT,
            context_boost=0.45,
            priority=75,
        ),
    ),
    "US_ITIN": (
        Rule(
            "US_ITIN",
            r"\b9\d{2}[ \-]?\d{2}[ \-]?\d{4}\b",
            retry=True,
            check=_same_separators(v.itin_valid, 0.6, 0.15),
            context=ITIN_CONTEXT,
            context_boost=0.4,
            priority=76,
        ),
    ),
    "PHONE_NUMBER": (
        # international: +CC and groups
        Rule(
            "PHONE_NUMBER",
            r"\+\d{1,3}(?:[ .\-]?\(?\d{1,5}\)?){1,6}" + _P + r"\b",
            check=_phone_check(8, 15, 0.6),
            start_ok=_not_glued,
            context=PHONE_CONTEXT,
            context_boost=0.3,
        ),
        # North American: (NXX) NXX-XXXX, NXX-NXX-XXXX, 1-..., 001-...
        Rule(
            "PHONE_NUMBER",
            r"(?:\b(?:1|001)[ .\-]?)?(?:\(\d{3}\)[ .\-]?|\b\d{3}[ .\-])\d{3}[ .\-]\d{4}"
            + _P
            + r"\b",
            check=_phone_check(10, 14, 0.55, nanp=True),
            start_ok=_not_glued,
            context=PHONE_CONTEXT,
            context_boost=0.35,
        ),
        # national formats in groups ("0490 75 40 81", "(08) 8747 6301"): need context
        Rule(
            "PHONE_NUMBER",
            r"(?:\(\d{1,5}\)\s?|\b\d{2,5}[ .\-])\d{2,7}(?:[ .\-]\d{2,5}){0,4}" + _P + r"\b",
            check=_phone_check(7, 13, 0.3),
            start_ok=_not_glued,
            context=PHONE_CONTEXT,
            context_boost=0.4,
        ),
        # a bare run of 10-11 digits: only with context
        Rule(
            "PHONE_NUMBER",
            r"\b\d{10,11}\b",
            check=_phone_check(10, 11, 0.2),
            start_ok=_not_glued,
            context=PHONE_CONTEXT,
            context_boost=0.4,
        ),
    ),
    "IP_ADDRESS": (
        Rule(
            "IP_ADDRESS",
            r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b",
            check=_ipv4_check,
            context=IP_CONTEXT,
            context_boost=0.3,
            priority=60,
        ),
        Rule(
            "IP_ADDRESS",
            r"\b(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\b",
            check=_ipv6_check,
            context=IP_CONTEXT,
            context_boost=0.2,
            priority=60,
        ),
        Rule(
            "IP_ADDRESS",
            r"\b(?:[0-9A-Fa-f]{1,4}:){1,7}:(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6})?",
            check=_ipv6_check,
            context=IP_CONTEXT,
            context_boost=0.2,
            priority=60,
        ),
        Rule(
            "IP_ADDRESS",
            r"::[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4}){0,6}",
            check=_ipv6_check,
            context=IP_CONTEXT,
            context_boost=0.2,
            priority=60,
        ),
    ),
    "URL": (
        Rule(
            "URL",
            r"\b(?:https?|ftps?|wss?)://[A-Za-z0-9\[]",
            caseless=True,
            adjust=_url_adjust,
            check=_url_check,
            priority=65,
        ),
        Rule(
            "URL",
            r"\bwww\.[A-Za-z0-9\-]+\.[A-Za-z]",
            caseless=True,
            adjust=_url_adjust,
            check=_url_check,
            priority=65,
        ),
    ),
    "MAC_ADDRESS": (
        Rule(
            "MAC_ADDRESS",
            r"\b[0-9A-Fa-f]{2}(?:[:\-][0-9A-Fa-f]{2}){5}\b",
            check=_digits_check(v.mac_valid, 0.6),
            priority=60,
        ),
    ),
    "UK_NHS": (
        Rule(
            "UK_NHS",
            r"\b\d{3}[ \-]?\d{3}[ \-]?\d{4}\b",
            retry=True,
            check=_same_separators(v.nhs_valid, 0.3, 0.3),
            context=NHS_CONTEXT,
            context_boost=0.5,
            priority=55,
        ),
    ),
    "UK_NINO": (
        Rule(
            "UK_NINO",
            r"\b[A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b",
            check=_digits_check(v.nino_valid, 0.6),
            context=NINO_CONTEXT,
            context_boost=0.3,
            priority=60,
        ),
    ),
    "IN_AADHAAR": (
        Rule(
            "IN_AADHAAR",
            r"\b[2-9]\d{3}[ \-]?\d{4}[ \-]?\d{4}\b",
            retry=True,
            check=_same_separators(v.aadhaar_valid, 0.3, 0.3),
            context=AADHAAR_CONTEXT,
            context_boost=0.5,
            priority=55,
        ),
    ),
    "IN_PAN": (
        Rule(
            "IN_PAN",
            r"\b[A-Z]{3}[ABCFGHJLPT][A-Z]\d{4}[A-Z]\b",
            score=0.3,
            context=PAN_CONTEXT,
            context_boost=0.5,
            priority=55,
        ),
    ),
    "ES_NIF": (
        Rule(
            "ES_NIF",
            r"\b(?:\d{8}|[XYZ]\d{7})-?[A-Z]\b",
            check=_digits_check(v.es_nif_valid, 0.6),
            context=NIF_CONTEXT,
            context_boost=0.3,
            priority=75,
        ),
    ),
    "IT_FISCAL_CODE": (
        Rule(
            "IT_FISCAL_CODE",
            r"\b[A-Z]{6}\d{2}[ABCDEHLMPRST]\d{2}[A-Z]\d{3}[A-Z]\b",
            caseless=True,
            check=_digits_check(v.it_fiscal_code_valid, 0.85),
            priority=75,
        ),
    ),
    "SG_NRIC_FIN": (
        Rule(
            "SG_NRIC_FIN",
            r"\b[STFGM]\d{7}[A-Z]\b",
            check=_digits_check(v.sg_nric_valid, 0.8),
            priority=75,
        ),
    ),
    "CRYPTO": (
        Rule(
            "CRYPTO",
            r"\b[13][1-9A-HJ-NP-Za-km-z]{25,34}\b",
            check=_digits_check(v.btc_address_valid, 0.9),
            context=CRYPTO_CONTEXT,
            context_boost=0.1,
            priority=80,
        ),
        Rule(
            "CRYPTO",
            r"\bbc1[02-9ac-hj-np-z]{11,71}\b",
            caseless=True,
            check=_digits_check(v.btc_address_valid, 0.9),
            context=CRYPTO_CONTEXT,
            context_boost=0.1,
            priority=80,
        ),
    ),
    "US_BANK_NUMBER": (
        Rule(
            "US_BANK_NUMBER",
            r"\b\d{8,17}\b",
            score=0.05,
            context=BANK_CONTEXT,
            context_boost=0.5,
            priority=10,
        ),
    ),
    "US_PASSPORT": (
        Rule(
            "US_PASSPORT",
            r"\b(?:[A-Z]\d{8}|\d{9})\b",
            score=0.05,
            context=PASSPORT_CONTEXT,
            context_boost=0.5,
            priority=20,
        ),
    ),
}

SUPPORTED_ENTITIES: Final = frozenset(PII_RULES)

"""Model and operation RBAC: which principal may use which model for what. Default deny.

A request is allowed when at least one rule of ``spec.access.rules`` allows it, and a rule
allows it when all of these hold:

* the principal is one of the rule's subjects:
    - ``users``: the verified (or trusted-header) user id, exact and case-sensitive;
    - ``groups``: any of the principal's groups;
    - ``serviceAccounts``: the workload's ServiceAccount, written ``NAME`` (the workload's
      own namespace, which is the policy's), ``NS/NAME`` or ``system:serviceaccount:NS:NAME``.
      A ServiceAccount subject matches every request from that workload, with or without an
      end user: it grants the workload, and the workload acts for its users;
    - ``allAuthenticated``: any principal with a user, and, when ``requireUser`` is false, the
      workload alone;
* the requested model matches one of the rule's glob patterns (:func:`model_matches`);
* the rule grants the operation, and also grants ``tools`` when the request declares tools.

Security choices:

* No rules, or no matching rule, means deny. There is no implicit allow anywhere.
* A denial says who was denied (the caller's own user, groups and workload), what was asked,
  and, for each rule checked, why it did not apply: ``not a subject`` for rules that name
  other callers (their subjects are never listed, so a denial cannot enumerate other users),
  and the precise missing grant (models allowed, operation, tools) for rules that do name
  the caller, so the message tells them what to ask their platform team for.
* Values the client controls (model, user, groups) are shortened and stripped of control
  characters before they go into a reason, so reasons are safe to log and return.

Performance: :func:`decide` runs on every request. Each :class:`Access` object is compiled once
(sets for exact names, one regex per rule for glob patterns) and kept in a small cache keyed
by object identity; decisions are memoised per (principal, model, operation, tools) in a
bounded table, so a repeated request costs one dict lookup. Policies are treated as
immutable: hot reload swaps in a new :class:`Access` object, it never edits one in place.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from aiguard_api.policy_types import Operation
from aiguard_api.view import Access, AccessRule
from aiguard_sidecar.identity import Principal

log = logging.getLogger("aiguard.sidecar.access")

#: Compiled policies kept (hot reload keeps the old one alive while requests drain).
COMPILED_CACHE_SIZE: Final = 8
#: Memoised decisions per compiled policy; the table is cleared when it fills up.
DECISION_CACHE_SIZE: Final = 4096
#: At most this many rules are itemised in a denial reason.
MAX_RULES_IN_REASON: Final = 12
_MAX_VALUE_CHARS: Final = 128
_MAX_CACHED_MODEL_CHARS: Final = 256
_GLOB_CHARS: Final = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class AccessDecision:
    allowed: bool
    rule: str | None  # the rule that allowed, None on denial
    reason: str


def _safe(value: str) -> str:
    """A client-controlled value made safe to embed in a reason."""
    v = "".join(c if c.isprintable() else "?" for c in value[: _MAX_VALUE_CHARS + 1])
    return v if len(v) <= _MAX_VALUE_CHARS else v[: _MAX_VALUE_CHARS - 1] + "…"


def _parse_service_account(entry: str) -> tuple[str | None, str] | None:
    """``NAME`` → (None, NAME); ``NS/NAME`` or ``system:serviceaccount:NS:NAME`` → (NS, NAME)."""
    prefix = "system:serviceaccount:"
    if entry.startswith(prefix):
        ns, sep, name = entry[len(prefix) :].partition(":")
        return (ns, name) if sep and ns and name and ":" not in name else None
    if "/" in entry:
        ns, _, name = entry.partition("/")
        return (ns, name) if ns and name and "/" not in name else None
    return (None, entry) if entry else None


class _Rule:
    __slots__ = (
        "all_authenticated",
        "allowed",
        "groups",
        "model_exact",
        "model_regex",
        "models_text",
        "name",
        "ops",
        "sa_local",
        "sa_qualified",
        "tools",
        "users",
    )

    def __init__(self, rule: AccessRule) -> None:
        self.name = rule.name
        s = rule.subjects
        self.users = frozenset(s.users)
        self.groups = frozenset(s.groups)
        local: set[str] = set()
        qualified: set[tuple[str, str]] = set()
        for entry in s.service_accounts:
            parsed = _parse_service_account(entry)
            if parsed is None:
                log.warning(
                    "access rule %s: service account %r is not NAME, NS/NAME or "
                    "system:serviceaccount:NS:NAME; it matches nothing",
                    rule.name,
                    entry,
                )
                continue
            ns, name = parsed
            if ns is None:
                local.add(name)
            else:
                qualified.add((ns, name))
        self.sa_local = frozenset(local)
        self.sa_qualified = frozenset(qualified)
        self.all_authenticated = s.all_authenticated
        exact = {p for p in rule.models if not _GLOB_CHARS.intersection(p)}
        globs = [p for p in rule.models if _GLOB_CHARS.intersection(p)]
        self.model_exact = frozenset(exact)
        # fnmatch.translate gives an anchored regex with the same semantics as model_matches
        # (fnmatchcase): one alternation per rule, compiled once.
        self.model_regex = (
            re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in globs)) if globs else None
        )
        self.models_text = ", ".join(_safe(p) for p in rule.models[:8]) + (
            ", …" if len(rule.models) > 8 else ""
        )
        self.ops = frozenset(rule.operations)
        self.tools = Operation.TOOLS in self.ops
        self.allowed = AccessDecision(True, rule.name, f"allowed by access rule {rule.name}")

    def subject_matches(self, p: Principal, require_user: bool) -> bool:
        if self.all_authenticated and (p.user is not None or not require_user):
            return True
        if p.user is not None and p.user in self.users:
            return True
        if self.groups and not self.groups.isdisjoint(p.groups):
            return True
        wl = p.workload
        if wl.service_account in self.sa_local:
            return True
        return bool(self.sa_qualified) and (wl.namespace, wl.service_account) in self.sa_qualified

    def model_allowed(self, model: str) -> bool:
        if model in self.model_exact:
            return True
        return self.model_regex is not None and self.model_regex.match(model) is not None

    def miss(
        self, p: Principal, require_user: bool, model: str, op: Operation, tools: bool
    ) -> str | None:
        """None when the rule allows; else why not (without naming its other subjects)."""
        if not self.subject_matches(p, require_user):
            return "not a subject"
        if not self.model_allowed(model):
            return f"allows models {self.models_text} only"
        if op not in self.ops:
            return f"does not grant {op}"
        if tools and not self.tools:
            return "does not grant tools"
        return None


_Key = tuple[Principal, str, Operation, bool]


class _Compiled:
    __slots__ = ("access", "decisions", "require_user", "rules")

    def __init__(self, access: Access) -> None:
        self.access = access  # strong reference: keeps id(access) unique while cached
        self.require_user = access.identity.require_user
        self.rules = tuple(_Rule(r) for r in access.rules)
        self.decisions: dict[_Key, AccessDecision] = {}

    def evaluate(self, p: Principal, model: str, op: Operation, tools: bool) -> AccessDecision:
        ru = self.require_user
        for r in self.rules:
            if (
                r.subject_matches(p, ru)
                and r.model_allowed(model)
                and op in r.ops
                and (not tools or r.tools)
            ):
                return r.allowed
        return AccessDecision(False, None, self._deny_reason(p, model, op, tools))

    def _deny_reason(self, p: Principal, model: str, op: Operation, tools: bool) -> str:
        what = f"use model {_safe(model)} for {op}" + (" with tools" if tools else "")
        who = _describe(p)
        if not self.rules:
            return f"no access rule allows {who} to {what}: the policy has no access rules"
        checked = []
        for r in self.rules[:MAX_RULES_IN_REASON]:
            checked.append(f"{r.name} ({r.miss(p, self.require_user, model, op, tools)})")
        more = len(self.rules) - MAX_RULES_IN_REASON
        tail = f", and {more} more" if more > 0 else ""
        return f"no access rule allows {who} to {what}; rules checked: {'; '.join(checked)}{tail}"


def _describe(p: Principal) -> str:
    wl = f"{p.workload.namespace}/{p.workload.service_account}"
    if p.user is None:
        return f"workload {_safe(wl)} (no end-user identity)"
    shown = ", ".join(_safe(g) for g in p.groups[:10])
    if len(p.groups) > 10:
        shown += f", +{len(p.groups) - 10} more"
    groups = f"groups: {shown}" if shown else "no groups"
    return f"user {_safe(p.user)} ({groups}) from workload {_safe(wl)}"


_compiled: OrderedDict[int, _Compiled] = OrderedDict()


def compile_access(access: Access) -> _Compiled:
    """The compiled form of ``access`` (cached by identity; call at policy load to warm it)."""
    key = id(access)
    c = _compiled.get(key)
    if c is not None and c.access is access:
        _compiled.move_to_end(key)
        return c
    c = _Compiled(access)
    _compiled[key] = c
    while len(_compiled) > COMPILED_CACHE_SIZE:
        _compiled.popitem(last=False)
    return c


def decide(
    access: Access, principal: Principal, *, model: str, operation: Operation, uses_tools: bool
) -> AccessDecision:
    """Allow when a rule grants ``principal`` the model, the operation and (if used) tools."""
    c = _compiled.get(id(access))
    if c is None or c.access is not access:
        c = compile_access(access)
    if len(model) > _MAX_CACHED_MODEL_CHARS:  # not worth remembering; keeps the table small
        return c.evaluate(principal, model, operation, uses_tools)
    key = (principal, model, operation, uses_tools)
    d = c.decisions.get(key)
    if d is None:
        d = c.evaluate(principal, model, operation, uses_tools)
        if len(c.decisions) >= DECISION_CACHE_SIZE:
            c.decisions.clear()
        c.decisions[key] = d
    return d

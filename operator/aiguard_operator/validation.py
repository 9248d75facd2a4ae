"""Checks of an AIPolicy beyond what the CRD schema can say, with messages a person can act on.

Used twice with the same rules: by the validating admission webhook (so ``kubectl apply``
rejects a bad policy with the message) and by the reconciler (so a policy that went bad
after admission — a Secret deleted, a conflicting policy created while the webhook was down —
gets ``Ready=False`` with the same message).

What is checked, and the reason each problem reports (also used in conditions and Events):

=====================  =======  ============================================================
reason                 level    problem
=====================  =======  ============================================================
InvalidSpec            error    the pydantic models reject the spec: wrong types or enums,
                                regexes that do not compile, routes naming unknown providers,
                                duplicate provider names, plaintext URLs, …
InvalidSpec            error    a regex uses what RE2 cannot run (lookaround, backreference,
                                …): the sidecar's engines are RE2-compatible
InvalidSpec            error    the name is too long to label the compiled ConfigMap
SecretNotFound         error    a referenced Secret, or its key, does not exist
PolicyConflict         error    a second policy with an empty selector in one namespace
SelectorsOverlap       warning  two selectors can select the same pod (injection then
                                refuses to choose: the pod gets no sidecar)
NoAccessRules          warning  ``access.rules`` is empty: every request will be denied
=====================  =======  ============================================================

The module is pure: Secrets and the namespace's other policies are passed in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from aiguard_api import constants
from aiguard_api.policy import AIPolicy, LabelSelector
from aiguard_operator import status

Level = Literal["error", "warning"]

REASON_NO_ACCESS_RULES = "NoAccessRules"

#: Longest AIPolicy name: it is a label value (63) on the ConfigMap it compiles to.
MAX_NAME_LENGTH = 63

SecretLookup = Callable[[str], Collection[str] | None]
"""Name of a Secret in the policy's namespace → its key names, or None if it does not exist."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy, where it is, and what to do about it."""

    field: str
    message: str
    reason: str = status.REASON_INVALID_SPEC
    level: Level = "error"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


@dataclass(frozen=True)
class PeerPolicy:
    """Another AIPolicy of the same namespace."""

    name: str
    selector: LabelSelector
    created: dt.datetime | None = None


@dataclass(frozen=True)
class Report:
    """The outcome of :func:`validate`. ``policy`` is None when the spec did not parse."""

    policy: AIPolicy | None
    problems: tuple[Problem, ...] = ()

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        return self.policy is not None and not self.errors

    @property
    def reason(self) -> str:
        """The condition reason: the first error's (spec errors before Secrets)."""
        order = [status.REASON_INVALID_SPEC, status.REASON_CONFLICT, status.REASON_SECRET_NOT_FOUND]
        reasons = [p.reason for p in self.errors]
        for reason in order:
            if reason in reasons:
                return reason
        return reasons[0] if reasons else status.REASON_VALID

    @property
    def only_missing_secrets(self) -> bool:
        """True when fixing Secrets alone (no spec change) would make the policy valid."""
        return bool(self.errors) and all(
            p.reason == status.REASON_SECRET_NOT_FOUND for p in self.errors
        )

    def message(self) -> str:
        """All errors in one line, for conditions, Events and the admission response."""
        return "; ".join(str(p) for p in self.errors)

    def warning_message(self) -> str:
        return "; ".join(str(p) for p in self.warnings)


# --------------------------------------------------------------------------- parsing


def _loc(loc: Iterable[int | str]) -> str:
    """('spec', 'providers', 0, 'baseURL') → 'spec.providers[0].baseURL'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse(obj: Mapping[str, Any]) -> tuple[AIPolicy | None, list[Problem]]:
    """An AIPolicy from a manifest/stored object (status ignored), or the problems."""
    meta = obj.get("metadata") or {}
    doc = {
        "apiVersion": obj.get("apiVersion", constants.GROUP_VERSION),
        "kind": obj.get("kind", constants.KIND_POLICY),
        "metadata": {
            k: meta[k]
            for k in ("name", "namespace", "uid", "generation", "labels", "annotations")
            if meta.get(k) is not None
        },
        "spec": obj.get("spec"),
    }
    try:
        return AIPolicy.model_validate(doc), []
    except ValidationError as err:
        problems = []
        for e in err.errors():
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown field (check the spelling against docs/policy-reference.md)"
            elif e["type"] == "missing":
                msg = "required field is missing"
            problems.append(Problem(_loc(e["loc"]), msg))
        return None, problems


# --------------------------------------------------------------------------- regexes

# What Python's `re` accepts but RE2 (and Hyperscan) refuse, after "(?".
_RE2_UNSUPPORTED_GROUPS = {
    "=": "a lookahead (?=...)",
    "!": "a negative lookahead (?!...)",
    "<=": "a lookbehind (?<=...)",
    "<!": "a negative lookbehind (?<!...)",
    ">": "an atomic group (?>...)",
    "(": "a conditional group (?(...)...)",
    "P=": "a named backreference (?P=...)",
    "#": "a comment group (?#...)",
}


def re2_incompatibility(pattern: str) -> str | None:
    """What in ``pattern`` RE2 cannot run, or None. The pattern already compiles in `re`."""
    i, n, in_class = 0, len(pattern), False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            nxt = pattern[i + 1 : i + 2]
            if not in_class and nxt.isdigit() and nxt != "0":
                return f"a backreference \\{nxt}"
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
            i += 1
            continue
        if ch == "[":
            in_class = True
            i += 1
            # a ']' right after '[' or '[^' is a literal
            if pattern[i : i + 1] == "^":
                i += 1
            if pattern[i : i + 1] == "]":
                i += 1
            continue
        if ch == "(" and pattern[i + 1 : i + 2] == "?":
            rest = pattern[i + 2 : i + 4]
            for prefix, what in _RE2_UNSUPPORTED_GROUPS.items():
                if rest.startswith(prefix):
                    return what
        if ch in "*+?}" and pattern[i + 1 : i + 2] == "+":
            return f"a possessive quantifier {ch}+"
        i += 1
    return None


def _regex_fields(policy: AIPolicy) -> Iterable[tuple[str, str]]:
    g = policy.spec.guardrails
    for side, pii, deny in (
        ("input", g.input.pii, g.input.deny),
        ("output", g.output.pii, g.output.deny),
    ):
        for i, cp in enumerate(pii.custom_patterns):
            yield f"spec.guardrails.{side}.pii.customPatterns[{i}].regex", cp.regex
        for i, pattern in enumerate(deny.patterns):
            yield f"spec.guardrails.{side}.deny.patterns[{i}]", pattern


def check_regexes(policy: AIPolicy) -> list[Problem]:
    problems = []
    for path, pattern in _regex_fields(policy):
        what = re2_incompatibility(pattern)
        if what:
            problems.append(
                Problem(
                    path,
                    f"pattern {pattern!r} uses {what}, which the sidecar's RE2-compatible "
                    "regex engines cannot run; rewrite it without it",
                )
            )
    return problems


# --------------------------------------------------------------------------- Secrets


def _field_path(field_name: str) -> str:
    """'providers[openai].apiKeySecretRef' → 'spec.providers[openai].apiKeySecretRef'."""
    return f"spec.{field_name}"


def check_secrets(policy: AIPolicy, lookup: SecretLookup) -> list[Problem]:
    """Every referenced Secret exists and has the referenced key."""
    ns = policy.metadata.namespace
    problems = []
    seen: dict[str, Collection[str] | None] = {}
    for field_name, ref in policy.spec.secret_refs():
        if ref.name not in seen:
            seen[ref.name] = lookup(ref.name)
        keys = seen[ref.name]
        if keys is None:
            problems.append(
                Problem(
                    _field_path(field_name),
                    f'Secret "{ref.name}" not found in namespace "{ns}"; create it first, '
                    f"e.g. kubectl create secret generic {ref.name} -n {ns} "
                    f"--from-literal={ref.key}=...",
                    reason=status.REASON_SECRET_NOT_FOUND,
                )
            )
        elif ref.key not in keys:
            have = ", ".join(sorted(keys)[:10]) or "no keys"
            problems.append(
                Problem(
                    _field_path(field_name),
                    f'Secret "{ref.name}" in namespace "{ns}" has no key "{ref.key}" '
                    f"(it has: {have}); add the key or set key: to one of them",
                    reason=status.REASON_SECRET_NOT_FOUND,
                )
            )
    return problems


# --------------------------------------------------------------------------- selectors


@dataclass
class _KeyConstraint:
    """What a set of selector requirements says about one label key."""

    absent_ok: bool = True
    present_ok: bool = True
    allowed: set[str] | None = None  # None: any value
    excluded: set[str] = field(default_factory=set)

    def require(self, operator: str, values: Collection[str]) -> None:
        if operator == "In":
            self.absent_ok = False
            vals = set(values)
            self.allowed = vals if self.allowed is None else self.allowed & vals
        elif operator == "NotIn":
            self.excluded |= set(values)
        elif operator == "Exists":
            self.absent_ok = False
        elif operator == "DoesNotExist":
            self.present_ok = False

    def witness(self) -> tuple[bool, str | None] | None:
        """(present, value) of a label satisfying the constraint; None if none can."""
        if self.absent_ok:
            return (False, None)
        if not self.present_ok:
            return None
        if self.allowed is None:
            return (True, None)  # any value not excluded: there are infinitely many
        left = sorted(self.allowed - self.excluded)
        return (True, left[0]) if left else None


def _constraints(*selectors: LabelSelector) -> dict[str, _KeyConstraint]:
    keys: dict[str, _KeyConstraint] = {}
    for sel in selectors:
        for k, v in sel.match_labels.items():
            keys.setdefault(k, _KeyConstraint()).require("In", [v])
        for req in sel.match_expressions:
            keys.setdefault(req.key, _KeyConstraint()).require(req.operator, req.values)
    return keys


def overlap_example(a: LabelSelector, b: LabelSelector) -> dict[str, str | None] | None:
    """Labels of a pod both selectors select (value None: any value), or None if disjoint.

    Exact for Kubernetes label selectors: each key's requirements are intersected.
    """
    example: dict[str, str | None] = {}
    for key, constraint in sorted(_constraints(a, b).items()):
        w = constraint.witness()
        if w is None:
            return None
        present, value = w
        if present:
            example[key] = value
    return example


def _describe(example: Mapping[str, str | None]) -> str:
    if not example:
        return "any pod"
    return "a pod labelled " + ",".join(
        f"{k}={v}" if v is not None else f"{k}=<any value>" for k, v in example.items()
    )


def _newer(a_created: dt.datetime | None, a_name: str, b: PeerPolicy) -> bool:
    """Whether policy a came after b (unknown creation time: a is the incoming one)."""
    if a_created is None or b.created is None:
        return a_created is None
    return (a_created, a_name) > (b.created, b.name)


def check_selectors(
    name: str,
    namespace: str,
    mine: LabelSelector,
    others: Sequence[PeerPolicy],
    *,
    created: dt.datetime | None,
) -> list[Problem]:
    """Conflicts of policy ``name`` (selector ``mine``) with the others of its namespace.

    ``created`` is the policy's creationTimestamp, None for one being admitted. Of two
    policies with empty selectors the newer one is the error, so the namespace default that
    was there first keeps working.
    """
    ns = namespace
    problems: list[Problem] = []
    overlaps: list[str] = []
    for other in sorted(others, key=lambda p: p.name):
        if other.name == name:
            continue
        if mine.is_empty() and other.selector.is_empty():
            if _newer(created, name, other):
                problems.append(
                    Problem(
                        "spec.selector",
                        f'AIPolicy "{other.name}" already selects every pod in namespace '
                        f'"{ns}" (empty selector); two such policies would make every pod '
                        "ambiguous. Give this policy a selector (matchLabels/matchExpressions) "
                        f'or change "{other.name}"',
                        reason=status.REASON_CONFLICT,
                    )
                )
            continue
        example = overlap_example(mine, other.selector)
        if example is not None:
            overlaps.append(f'AIPolicy "{other.name}" ({_describe(example)} matches both)')
    if overlaps:
        problems.append(
            Problem(
                "spec.selector",
                "overlaps with "
                + "; ".join(overlaps)
                + ". A pod both select gets no sidecar (policy_ambiguous) unless it names "
                f"one with the {constants.ANNOTATION_POLICY} annotation; make the selectors "
                "disjoint (e.g. matchExpressions with NotIn)",
                reason=status.REASON_OVERLAP,
                level="warning",
            )
        )
    return problems


def overlap_message(problems: Iterable[Problem]) -> str | None:
    """The SelectorsOverlap warning's message, if there is one."""
    return "; ".join(p.message for p in problems if p.reason == status.REASON_OVERLAP) or None


# --------------------------------------------------------------------------- the whole check


def check_name(policy: AIPolicy) -> list[Problem]:
    name = policy.metadata.name
    if len(name) > MAX_NAME_LENGTH:
        return [
            Problem(
                "metadata.name",
                f"is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed because "
                f"the name labels the compiled ConfigMap {constants.configmap_name('NAME')}",
            )
        ]
    return []


def check_access(policy: AIPolicy) -> list[Problem]:
    if policy.spec.access.rules:
        return []
    return [
        Problem(
            "spec.access.rules",
            "is empty, so every request will be denied (default deny); add a rule naming "
            "the users, groups or serviceAccounts allowed to use which models",
            reason=REASON_NO_ACCESS_RULES,
            level="warning",
        )
    ]


def validate(
    obj: Mapping[str, Any],
    *,
    secrets: SecretLookup | None,
    others: Sequence[PeerPolicy] = (),
    created: dt.datetime | None = None,
) -> Report:
    """Every check, on a manifest or stored object.

    ``secrets`` None skips the Secret checks (e.g. when the Secrets cannot be read).
    """
    policy, problems = parse(obj)
    if policy is None:
        return Report(None, tuple(problems))
    problems += check_name(policy)
    problems += check_regexes(policy)
    if secrets is not None:
        problems += check_secrets(policy, secrets)
    meta = policy.metadata
    problems += check_selectors(
        meta.name, meta.namespace, policy.spec.selector, others, created=created
    )
    problems += check_access(policy)
    return Report(policy, tuple(problems))

"""Status conditions of an AIPolicy, as plain data (the shape Kubernetes conventions use).

Condition types::

    Ready            True  — the policy compiled and its ConfigMap holds the current config
                     False — it did not; the reason says why (the previous config stays)
    Invalid          True  — the spec cannot be used as it is (mirror of Ready=False for
                             spec problems; False otherwise), so `kubectl wait
                             --for=condition=Invalid` works for tooling and tests
    SelectorOverlap  True  — another policy in the namespace selects some of the same pods

``lastTransitionTime`` changes only when a condition's *status* changes; a new reason or
message with the same status keeps the old time, as the Kubernetes API conventions ask.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

ConditionStatus = Literal["True", "False", "Unknown"]

READY = "Ready"
INVALID = "Invalid"
SELECTOR_OVERLAP = "SelectorOverlap"

# Reasons (CamelCase, as Kubernetes conventions ask). Reused in Events.
REASON_COMPILED = "Compiled"
REASON_VALID = "Valid"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_SECRET_NOT_FOUND = "SecretNotFound"  # noqa: S105 (a condition reason)
REASON_CONFLICT = "PolicyConflict"
REASON_NO_OVERLAP = "NoOverlap"
REASON_OVERLAP = "SelectorsOverlap"
REASON_APPLY_FAILED = "ConfigMapApplyFailed"

Condition = dict[str, Any]
"""One condition as it appears in ``status.conditions`` (camelCase keys)."""


@dataclass(frozen=True)
class Wanted:
    """A condition as the reconciler wants it to be now; times are filled in by :func:`merge`."""

    type: str
    status: ConditionStatus
    reason: str
    message: str = ""


def _timestamp(now: dt.datetime) -> str:
    """RFC 3339 in UTC with second precision, the format Kubernetes stores."""
    return now.astimezone(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(
    current: Sequence[Mapping[str, Any]] | None,
    wanted: Sequence[Wanted],
    *,
    generation: int | None,
    now: dt.datetime,
) -> list[Condition]:
    """The new ``status.conditions``: ``wanted`` applied over ``current``.

    Conditions not mentioned in ``wanted`` are kept as they are (other controllers, later
    issues). Order: the existing order, then new types in the order given.
    """
    by_type: dict[str, Condition] = {}
    order: list[str] = []
    for cond in current or ():
        ctype = str(cond.get("type", ""))
        if ctype and ctype not in by_type:
            by_type[ctype] = dict(cond)
            order.append(ctype)
    for want in wanted:
        old = by_type.get(want.type)
        if old is not None and old.get("status") == want.status and old.get("lastTransitionTime"):
            last = old["lastTransitionTime"]
        else:
            last = _timestamp(now)
        new: Condition = {
            "type": want.type,
            "status": want.status,
            "reason": want.reason,
            "message": want.message,
            "lastTransitionTime": last,
        }
        if generation is not None:
            new["observedGeneration"] = generation
        by_type[want.type] = new
        if want.type not in order:
            order.append(want.type)
    return [by_type[t] for t in order]


def find(conditions: Sequence[Mapping[str, Any]] | None, ctype: str) -> Mapping[str, Any] | None:
    """The condition of type ``ctype``, if present."""
    for cond in conditions or ():
        if cond.get("type") == ctype:
            return cond
    return None


def is_true(conditions: Sequence[Mapping[str, Any]] | None, ctype: str) -> bool:
    cond = find(conditions, ctype)
    return cond is not None and cond.get("status") == "True"


# --------------------------------------------------------------------------- outcomes


def ready(*, config_map: str, compiled_hash: str, overlap: str | None = None) -> list[Wanted]:
    """Conditions of a policy that compiled and whose ConfigMap is current."""
    return [
        Wanted(
            READY,
            "True",
            REASON_COMPILED,
            f"compiled into ConfigMap {config_map} ({compiled_hash})",
        ),
        Wanted(INVALID, "False", REASON_VALID, ""),
        overlap_condition(overlap),
    ]


def invalid(
    *, reason: str, message: str, kept_config_map: str | None, overlap: str | None = None
) -> list[Wanted]:
    """Conditions of a policy that cannot be used; the last good config (if any) stays."""
    keep = (
        f" The last valid config stays in ConfigMap {kept_config_map}."
        if kept_config_map
        else " No config has been compiled yet: selected pods get no policy."
    )
    return [
        Wanted(READY, "False", reason, message + keep),
        Wanted(INVALID, "True", reason, message),
        overlap_condition(overlap),
    ]


def apply_failed(*, message: str) -> list[Wanted]:
    """The spec is fine but writing the ConfigMap failed (retried)."""
    return [Wanted(READY, "False", REASON_APPLY_FAILED, message)]


def overlap_condition(message: str | None) -> Wanted:
    if message:
        return Wanted(SELECTOR_OVERLAP, "True", REASON_OVERLAP, message)
    return Wanted(SELECTOR_OVERLAP, "False", REASON_NO_OVERLAP, "")

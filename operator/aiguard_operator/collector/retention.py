"""Retention: delete each policy's events older than its ``spec.audit.retentionDays``, and
record every run.

:func:`run_purge` asks for every (namespace, policy) with stored events, looks up that
AIPolicy's ``retentionDays`` (:func:`kube_retention`; a policy that no longer exists keeps
the schema default, 400 days, and the record says so), and purges the chain prefixes older
than the cutoff (:meth:`Store.purge`). Each purge — also one that deleted nothing — is a
:class:`~aiguard_api.audit.PurgeRecord`: when, which policy, which rule, the cutoff, how many
events and the range of their times, and per chain the deleted sequence range and the hash the
chain now starts from. If the policies cannot be listed, the run is skipped: guessing a
retention could delete evidence that must be kept.

The same run purges captured content (``spec.audit.contentCapture: redacted``, see
:mod:`~aiguard_operator.collector.capture`) older than ``captureRetentionDays`` (never later
than ``retentionDays``), and any capture whose event goes; the record counts them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Final

from aiguard_api import audit, constants
from aiguard_api.policy import Audit
from aiguard_operator import kube
from aiguard_operator.collector.store import PurgeRequest, Store

log = logging.getLogger("aiguard.collector")

DEFAULT_RETENTION_DAYS: Final[int] = Audit.model_fields["retention_days"].default
DEFAULT_CAPTURE_DAYS: Final[int] = Audit.model_fields["capture_retention_days"].default


@dataclass(frozen=True, slots=True)
class Retention:
    days: int
    capture_days: int

    @classmethod
    def of(cls, value: Retention | int) -> Retention:
        """A plain ``int`` is retentionDays with the default capture retention."""
        if isinstance(value, Retention):
            return value
        return cls(value, min(DEFAULT_CAPTURE_DAYS, value))


RetentionLookup = Callable[[], Awaitable[Mapping[tuple[str, str], Retention | int]]]
"""Returns (namespace, policy name) → the retention of every AIPolicy."""


async def kube_retention(api: kube.Client) -> dict[tuple[str, str], Retention]:
    items = await api.list(
        kube.path(
            group=constants.API_GROUP,
            version=constants.API_VERSION,
            plural=constants.PLURAL_POLICY,
        )
    )
    out: dict[tuple[str, str], Retention] = {}
    for item in items:
        meta = item.get("metadata") or {}
        spec_audit = (item.get("spec") or {}).get("audit") or {}
        days, capture = spec_audit.get("retentionDays"), spec_audit.get("captureRetentionDays")
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        days = int(days) if isinstance(days, int) and days > 0 else DEFAULT_RETENTION_DAYS
        capture = int(capture) if isinstance(capture, int) and capture > 0 else DEFAULT_CAPTURE_DAYS
        out[key] = Retention(days, min(capture, days))
    return out


async def run_purge(
    store: Store,
    lookup: RetentionLookup,
    *,
    now: float | None = None,
    ids: audit.EventIds | None = None,
) -> list[audit.PurgeRecord]:
    """One retention run over every policy with events; returns its records."""
    now = time.time() if now is None else now
    ids = ids or audit.EventIds()
    policies = await lookup()
    records: list[audit.PurgeRecord] = []
    for namespace, policy in await store.groups():
        found = policies.get((namespace, policy))
        if found is None:
            kept = Retention(DEFAULT_RETENTION_DAYS, DEFAULT_CAPTURE_DAYS)
            rule = (
                f"AIPolicy {namespace}/{policy} not found: the default "
                f"spec.audit.retentionDays={kept.days}"
            )
        else:
            kept = Retention.of(found)
            rule = f"AIPolicy {namespace}/{policy} spec.audit.retentionDays={kept.days}"
        days = kept.days
        record = await store.purge(
            PurgeRequest(
                namespace, policy, days, rule, now=now, capture_retention_days=kept.capture_days
            ),
            purge_id=ids.new(now),
        )
        records.append(record)
        if record.count:
            log.info(
                "audit retention purge",
                extra={
                    "fields": {
                        "namespace": namespace,
                        "policy": policy,
                        "deleted": record.count,
                        "cutoff": record.cutoff,
                        "rule": rule,
                        "purge_id": record.id,
                    }
                },
            )
    return records

"""Model drift: the model behind a route changed without anyone changing the policy.

A client asks for ``gpt-4o`` and the policy routes it to a provider; what actually answers is
``gen_ai.response.model`` (``gpt-4o-2024-08-06``) and, for OpenAI-style providers, a
``system_fingerprint`` naming the backend configuration. When either changes, the outputs an
application was validated against may change too: that is evidence an auditor asks for, and
something a platform team wants to be told about.

What counts as drift, per key (route, provider, requested model), kept in memory:

* **served model**: the first response sets the baseline; a response naming a *different*
  served model than the previous one is drift, and becomes the new baseline (so a provider
  that moves ``gpt-4o`` from ``-2024-08-06`` to ``-2024-11-20`` reports once, not on every
  request afterwards).
* **fingerprint**: fingerprints legitimately differ between the backends one provider
  balances across, so a fingerprint that alternates with ones seen before is not drift. A
  fingerprint *never seen before* for the key is drift (once); the key remembers the last
  :data:`MAX_FINGERPRINTS` distinct fingerprints. Responses without a fingerprint (Anthropic,
  many compatible servers) are ignored for this check.
* the first response of a key after the sidecar starts (or after the key was evicted) is a
  baseline, never drift: a drift across a restart is not detected here (the collector holds
  every event's model and fingerprint for that comparison).

Memory is bounded: at most :data:`MAX_KEYS` keys, least recently used evicted first.

Each drift increments ``aiguard_model_drift_total{aiguard_route, aiguard_provider, kind}``
(kind ``model`` or ``fingerprint``; a response that changes both counts as ``model``),
writes one warning log line, and is recorded in the request's audit event as
``aiguard.model.drift`` = ``{"previous_model": ..., "previous_fingerprint": ...}``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from aiguard_sidecar.metrics import Metrics
from aiguard_sidecar.records import RequestRecord

log = logging.getLogger("aiguard.sidecar.drift")

MAX_KEYS: Final = 1024
MAX_FINGERPRINTS: Final = 16

MODEL: Final = "model"
FINGERPRINT: Final = "fingerprint"
KINDS: Final = (MODEL, FINGERPRINT)


@dataclass(slots=True)
class _Seen:
    model: str | None
    fingerprint: str | None
    fingerprints: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def remember(self, fingerprint: str) -> None:
        self.fingerprints[fingerprint] = None
        self.fingerprints.move_to_end(fingerprint)
        while len(self.fingerprints) > MAX_FINGERPRINTS:
            self.fingerprints.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Drift:
    kind: str  # MODEL | FINGERPRINT
    previous_model: str | None
    previous_fingerprint: str | None

    def evidence(self) -> dict[str, str | None]:
        """The value of the audit event's ``aiguard.model.drift``."""
        return {
            "previous_model": self.previous_model,
            "previous_fingerprint": self.previous_fingerprint,
        }


class DriftTracker:
    """Remembers what served each (route, provider, requested model) and reports changes."""

    def __init__(self, metrics: Metrics | None = None, *, max_keys: int = MAX_KEYS) -> None:
        self._metrics = metrics
        self._max_keys = max_keys
        self._seen: OrderedDict[tuple[str, str, str], _Seen] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check(
        self,
        *,
        route: str,
        provider: str,
        requested: str,
        served: str | None,
        fingerprint: str | None,
    ) -> Drift | None:
        """Note one response; the drift it shows, if any (see the module docstring)."""
        if served is None and fingerprint is None:
            return None
        key = (route, provider, requested)
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen(served, fingerprint)
            if fingerprint is not None:
                seen.remember(fingerprint)
            while len(self._seen) > self._max_keys:
                self._seen.popitem(last=False)
            return None
        self._seen.move_to_end(key)
        drift: Drift | None = None
        if served is not None and seen.model is not None and served != seen.model:
            drift = Drift(MODEL, seen.model, seen.fingerprint)
        elif fingerprint is not None and fingerprint not in seen.fingerprints and seen.fingerprints:
            drift = Drift(FINGERPRINT, seen.model, seen.fingerprint)
        if served is not None:
            seen.model = served
        if fingerprint is not None:
            seen.fingerprint = fingerprint
            seen.remember(fingerprint)
        return drift

    def observe(self, rec: RequestRecord) -> dict[str, str | None] | None:
        """Check ``rec``'s response; on drift count it, log it, and return the audit
        evidence (``aiguard.model.drift``), else None."""
        if rec.route is None or rec.provider is None:
            return None
        drift = self.check(
            route=rec.route,
            provider=rec.provider,
            requested=rec.model_requested or "",
            served=rec.model_served,
            fingerprint=rec.system_fingerprint,
        )
        if drift is None:
            return None
        if self._metrics is not None:
            m = self._metrics
            m.child(m.model_drift, rec.route, rec.provider, drift.kind).inc()
        log.warning(
            "model drift",
            extra={
                "fields": {
                    "request_id": rec.request_id,
                    "route": rec.route,
                    "provider": rec.provider,
                    "model_requested": rec.model_requested,
                    "kind": drift.kind,
                    "previous_model": drift.previous_model,
                    "model_served": rec.model_served,
                    "previous_fingerprint": drift.previous_fingerprint,
                    "system_fingerprint": rec.system_fingerprint,
                }
            },
        )
        return drift.evidence()

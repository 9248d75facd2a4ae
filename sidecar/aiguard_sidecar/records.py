"""What the sidecar remembers about one request, and where it hands it.

:class:`RequestRecord` carries everything the audit event needs: ids, the principal, models
requested/targeted/served, the system fingerprint, usage, status and latency, the negotiated TLS
version and cipher, the failover path and every policy decision. It also holds the parsed
:class:`~aiguard_sidecar.exchange.Exchange` and :class:`~aiguard_sidecar.exchange.ResponseInfo`
so a sink can hash the content; a sink must never log or ship that content raw.

:class:`AuditSink` is the interface the audit issue implements (durable spool, hash chain).
It is called once per decided request *before* the response completes. The defaults here are
:class:`NullAuditSink` and :class:`LogAuditSink` (one JSON log line of metadata per request).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiguard_sidecar.exchange import Exchange, ResponseInfo
from aiguard_sidecar.identity import Principal
from aiguard_sidecar.routing import AttemptRecord


@dataclass(frozen=True, slots=True)
class Decision:
    """One policy decision on the request's path."""

    stage: str  # identity | access | rate_limit | guardrail
    allowed: bool
    rule: str | None
    reason: str
    enforced: bool = True
    """False when the policy's mode is ``audit``: recorded, traffic unchanged."""


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    started_at: float  # Unix time
    started_mono: float  # event loop time at the start (for durations)
    policy: str  # namespace/name
    policy_hash: str
    mode: str  # enforce | audit
    method: str
    path: str
    wire: str | None = None
    api: str | None = None
    operation: str | None = None
    stream: bool = False
    principal: Principal | None = None
    model_requested: str | None = None
    route: str | None = None
    provider: str | None = None  # the provider that answered
    model_target: str | None = None  # the model asked of that provider
    model_served: str | None = None
    system_fingerprint: str | None = None
    model_drift: dict[str, str | None] | None = None
    """``aiguard.model.drift``: the previous served model/fingerprint when this response
    showed a change for its route (``drift.py``); None otherwise."""
    response_id: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    status: int = 0
    outcome: str = "ok"
    """``ok`` or the reason label of ``aiguard_requests_total`` (``access``, ``upstream``...)."""
    error: str | None = None  # the error message the client got (never content or keys)
    latency_seconds: float = 0.0
    upstream_seconds: float = 0.0
    ttft_seconds: float | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    unscanned: dict[str, int] = field(default_factory=dict)
    findings: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    """Guardrail findings as counts: (direction, guardrail, type, action) → count. No content."""
    exchange: Exchange | None = None
    response: ResponseInfo | None = None
    emitted: bool = False
    """Handed to the audit sink: no in-flight journal entry may be started after this."""

    def count_findings(self, direction: str, counts: Iterable[tuple[str, str, str, int]]) -> None:
        """Add a guardrail decision's ``(guardrail, type, action, count)`` counts."""
        for guardrail, kind, action, n in counts:
            key = (direction, guardrail, kind, action)
            self.findings[key] = self.findings.get(key, 0) + n

    @property
    def denied(self) -> bool:
        return any(not d.allowed and d.enforced for d in self.decisions)

    def summary(self) -> dict[str, Any]:
        """Metadata only (no content), JSON-ready: for logs and the default sink."""
        p = self.principal
        return {
            "request_id": self.request_id,
            "policy": self.policy,
            "mode": self.mode,
            "method": self.method,
            "path": self.path,
            "api": self.api,
            "stream": self.stream,
            "workload": p.workload.ref if p else None,
            "user": p.user if p else None,
            "identity_source": p.source if p else None,
            "model_requested": self.model_requested,
            "route": self.route,
            "provider": self.provider,
            "model_target": self.model_target,
            "model_served": self.model_served,
            "system_fingerprint": self.system_fingerprint,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "status": self.status,
            "outcome": self.outcome,
            "latency_ms": round(self.latency_seconds * 1000, 3),
            "ttft_ms": None if self.ttft_seconds is None else round(self.ttft_seconds * 1000, 3),
            "tls": self.tls_version,
            "cipher": self.tls_cipher,
            "attempts": [f"{a.provider}:{a.outcome}" for a in self.attempts],
            "decisions": [
                f"{d.stage}:{'allow' if d.allowed else 'deny'}"
                + ("" if d.enforced else "(audit)")
                + (f":{d.rule}" if d.rule else "")
                for d in self.decisions
            ],
            "unscanned": self.unscanned or None,
        }


class AuditUnavailable(Exception):
    """The sink could not take the record durably (the policy decides: fail open or closed)."""


class AuditSink(Protocol):
    async def emit(self, record: RequestRecord) -> None:
        """Persist or spool ``record`` before the response completes; raise
        :class:`AuditUnavailable` when that is impossible."""

    async def close(self) -> None: ...


class NullAuditSink:
    async def emit(self, record: RequestRecord) -> None:
        return None

    async def close(self) -> None:
        return None


class LogAuditSink:
    """One structured log line per request (metadata only) on logger ``aiguard.requests``."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("aiguard.requests")

    async def emit(self, record: RequestRecord) -> None:
        if self._log.isEnabledFor(logging.INFO):
            self._log.info("request", extra={"fields": record.summary()})

    async def close(self) -> None:
        return None

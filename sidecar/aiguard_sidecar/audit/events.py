"""A :class:`~aiguard_sidecar.records.RequestRecord` becomes an audit event, in two steps.

1. :func:`draft` — on the event loop, cheap: copies the record's metadata into the event's
   attributes (OpenTelemetry names, see :mod:`aiguard_api.audit`) and takes references to
   the text segments. No hashing, no content in the attributes.
2. :func:`seal` — on the spool's writer thread: hashes the input and output text (SHA-256 or
   HMAC-SHA-256 with the policy's key, over :func:`aiguard_api.audit.canonical_segments`),
   adds the envelope (id, time, instance, sequence, prev_hash) and the event's own hash, and
   returns the canonical JSON line. Hashing a 64 MiB prompt takes ~100 ms: that is why it is
   not done on the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiguard_api import audit
from aiguard_api.policy_types import ContentCapture
from aiguard_api.view import SidecarConfig
from aiguard_sidecar.audit import capture
from aiguard_sidecar.metrics import OTEL_PROVIDER
from aiguard_sidecar.records import RequestRecord

Segments = Sequence[tuple[str, str]]


@dataclass(slots=True)
class Draft:
    """An event without its envelope and hashes (built on the loop, sealed on the writer)."""

    attributes: dict[str, Any]
    inputs: Segments | None
    """The request's text segments as (role, text); None: no body (nothing to hash)."""
    outputs: Segments | None
    key: bytes | None
    """HMAC key of ``audit.hashKeySecretRef``; None: plain SHA-256."""
    capture: bool = False
    """``audit.contentCapture: redacted``: seal a masked copy of the text beside the event."""


def _tls(version: str | None) -> tuple[str | None, str | None]:
    """``TLSv1.3`` (OpenSSL) → (``tls``, ``1.3``) as OpenTelemetry names them."""
    if not version:
        return None, None
    name, _, number = version.partition("v")
    return name.lower(), number or None


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(max(0.0, seconds), 6)


def draft(record: RequestRecord, *, cfg: SidecarConfig | None, key: bytes | None) -> Draft:
    """The attributes of ``record``'s event (see :mod:`aiguard_api.audit` for each key)."""
    p = record.principal
    ns, _, policy_name = record.policy.rpartition("/")
    provider_type = None
    if cfg is not None and record.provider is not None:
        provider_type = next(
            (x.type for x in cfg.spec.providers if x.name == record.provider), None
        )
    tls_name, tls_version = _tls(record.tls_version)
    ex, resp = record.exchange, record.response
    attrs: dict[str, Any] = {
        "schema": audit.SCHEMA,
        audit.NAMESPACE: p.workload.namespace if p else ns,
        audit.POD: p.workload.pod if p else "",
        audit.SERVICE_ACCOUNT: p.workload.service_account if p else "",
        "user.id": p.user if p else None,
        "aiguard.user.groups": list(p.groups) if p else [],
        "aiguard.identity.source": p.source if p else None,
        "aiguard.request.id": record.request_id,
        "aiguard.request.start_time": audit.format_time(record.started_at),
        "http.request.method": record.method,
        "url.path": record.path,
        "aiguard.api": record.api,
        "gen_ai.operation.name": record.operation,
        "aiguard.stream": record.stream,
        "gen_ai.provider.name": OTEL_PROVIDER.get(provider_type) if provider_type else None,
        "aiguard.provider": record.provider,
        "aiguard.route": record.route,
        "gen_ai.request.model": record.model_requested,
        "aiguard.target.model": record.model_target,
        "gen_ai.response.model": record.model_served,
        "gen_ai.response.id": record.response_id,
        "openai.response.system_fingerprint": record.system_fingerprint,
        audit.MODEL_DRIFT: dict(record.model_drift) if record.model_drift else None,
        "gen_ai.response.finish_reasons": list(resp.finish_reasons) if resp else [],
        "gen_ai.usage.input_tokens": record.input_tokens,
        "gen_ai.usage.output_tokens": record.output_tokens,
        "aiguard.hash.key_id": audit.key_id(key) if key else None,
        "aiguard.unscanned": dict(record.unscanned),
        "aiguard.decisions": [
            {
                "stage": d.stage,
                "allowed": d.allowed,
                "rule": d.rule,
                "reason": d.reason,
                "enforced": d.enforced,
            }
            for d in record.decisions
        ],
        "aiguard.findings": [
            {"direction": di, "guardrail": g, "type": t, "action": a, "count": n}
            for (di, g, t, a), n in sorted(record.findings.items())
        ],
        "aiguard.failover.path": [
            {
                "provider": a.provider,
                "model": a.model,
                "outcome": a.outcome,
                "status": a.status,
                "seconds": _rounded(a.seconds),
            }
            for a in record.attempts
        ],
        "tls.protocol.name": tls_name,
        "tls.protocol.version": tls_version,
        "tls.cipher": record.tls_cipher,
        "http.response.status_code": record.status,
        "aiguard.outcome": record.outcome,
        "error.type": None if record.outcome == "ok" else record.outcome,
        "aiguard.latency_seconds": _rounded(record.latency_seconds),
        "aiguard.upstream_seconds": _rounded(record.upstream_seconds),
        "aiguard.ttft_seconds": _rounded(record.ttft_seconds),
        audit.POLICY_NAME: policy_name,
        "aiguard.policy.hash": record.policy_hash,
        "aiguard.mode": record.mode,
    }
    inputs = [(s.role.value, s.text) for s in ex.segments] if ex and ex.body is not None else None
    outputs = [(s.role.value, s.text) for s in resp.segments] if resp else None
    capture = cfg is not None and cfg.spec.audit.content_capture is ContentCapture.REDACTED
    # Only what crossed the sidecar: nothing of a request refused before it went upstream.
    return Draft(attrs, inputs, outputs, key, capture=capture and bool(record.attempts))


@dataclass(frozen=True, slots=True)
class Link:
    """Where a chain stands: the last event's sequence and hash."""

    sequence: int = 0
    hash: str = audit.GENESIS


def seal(
    d: Draft, *, instance: str, link: Link, event_id: str, now: float
) -> tuple[dict[str, Any], bytes]:
    """The complete event following ``link``, and its canonical JSON line (with ``\\n``)."""
    event = dict(d.attributes)
    # Without segments, a hash already in the attributes stands (an in-flight marker's,
    # computed when the stream started: spool.py).
    event["aiguard.input.hash"] = (
        audit.content_hash(d.inputs, d.key)
        if d.inputs is not None
        else event.get("aiguard.input.hash")
    )
    event["aiguard.output.hash"] = (
        audit.content_hash(d.outputs, d.key) if d.outputs is not None else None
    )
    event["aiguard.input.chars"] = (
        sum(len(t) for _, t in d.inputs)
        if d.inputs is not None
        else event.get("aiguard.input.chars", 0)
    )
    event["aiguard.output.chars"] = sum(len(t) for _, t in d.outputs) if d.outputs else 0
    if d.capture:
        delivered = d.outputs if event.get("aiguard.outcome") == "ok" else None
        content = capture.build(d.inputs, delivered)
        event[audit.CAPTURE_HASH] = audit.capture_hash(content)
        event[audit.CAPTURE] = content
    event[audit.ID] = event_id
    event[audit.TIME] = audit.format_time(now)
    event[audit.INSTANCE] = instance
    event[audit.SEQUENCE] = link.sequence + 1
    event[audit.PREV_HASH] = link.hash
    event[audit.HASH], line = audit.hash_and_line(event)
    return event, line

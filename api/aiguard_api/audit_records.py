"""The audit event and purge record schemas (pydantic), loaded on first use through
:mod:`aiguard_api.audit` (``audit.AuditEvent``): the collector and the evidence tools validate
with them; the sidecar writes events as plain dictionaries and never loads pydantic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from aiguard_api.audit import (
    _CONTENT_HASH,
    _HASH,
    _UUID7,
    PURGE_SCHEMA,
    ChainStart,
    parse_time,
)

# defer_build: their validators are built on first use (the collector), not on import.


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, defer_build=True)


class DecisionRecord(_Part):
    """One policy decision on the request's path."""

    stage: str = Field(description="identity | access | rate_limit | guardrail | audit")
    allowed: bool
    rule: str | None = Field(description="the policy field that decided, e.g. spec.access")
    reason: str = Field(description="why, naming guardrails and types, never content")
    enforced: bool = Field(description="false in mode audit: recorded, traffic unchanged")


class FindingCount(_Part):
    """How many findings of one type one guardrail reported, and the action that applied."""

    direction: Literal["input", "output"]
    guardrail: str = Field(description="pii | secrets | prompt_injection | moderation | …")
    type: str = Field(description="EMAIL_ADDRESS | AWS_ACCESS_KEY | jailbreak | …")
    action: str = Field(description="allow | redact | mask | hash | block | flag | review")
    count: int = Field(ge=1)


class Attempt(_Part):
    """One upstream attempt (the failover path)."""

    provider: str
    model: str
    outcome: str = Field(description="ok | a failure kind | http_<status>")
    status: int | None
    seconds: float


class ModelDrift(_Part):
    """What served the route before this response (``aiguard.model.drift``)."""

    previous_model: str | None = Field(description="gen_ai.response.model before the change")
    previous_fingerprint: str | None = Field(
        description="openai.response.system_fingerprint before the change"
    )


class AuditEvent(BaseModel):
    """An audit event as the wire carries it (see the module docstring for every key).

    Unknown keys are kept (``extra="allow"``): a newer v1 writer may add fields, and the
    hash covers them, so a reader must never drop them.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True, frozen=True, defer_build=True)

    schema_: Literal["aiguard.dev/audit/v1"] = Field(alias="schema")
    id: str
    time: str
    instance: str = Field(min_length=5, max_length=512)
    sequence: int = Field(ge=1)
    prev_hash: str
    hash: str

    namespace: str = Field(alias="k8s.namespace.name", min_length=1, max_length=63)
    pod: str = Field(alias="k8s.pod.name", min_length=1, max_length=253)
    service_account: str = Field(alias="aiguard.workload.service_account", min_length=1)
    user_id: str | None = Field(alias="user.id")
    user_groups: list[str] = Field(alias="aiguard.user.groups")
    identity_source: str | None = Field(alias="aiguard.identity.source")

    request_id: str = Field(alias="aiguard.request.id")
    request_start_time: str = Field(alias="aiguard.request.start_time")
    method: str = Field(alias="http.request.method")
    path: str = Field(alias="url.path")
    api: str | None = Field(alias="aiguard.api")
    operation: str | None = Field(alias="gen_ai.operation.name")
    stream: bool = Field(alias="aiguard.stream")

    provider_name: str | None = Field(alias="gen_ai.provider.name")
    provider: str | None = Field(alias="aiguard.provider")
    route: str | None = Field(alias="aiguard.route")
    request_model: str | None = Field(alias="gen_ai.request.model")
    target_model: str | None = Field(alias="aiguard.target.model")
    response_model: str | None = Field(alias="gen_ai.response.model")
    response_id: str | None = Field(alias="gen_ai.response.id")
    system_fingerprint: str | None = Field(alias="openai.response.system_fingerprint")
    model_drift: ModelDrift | None = Field(default=None, alias="aiguard.model.drift")
    finish_reasons: list[str] = Field(alias="gen_ai.response.finish_reasons")
    input_tokens: int | None = Field(alias="gen_ai.usage.input_tokens")
    output_tokens: int | None = Field(alias="gen_ai.usage.output_tokens")

    capture_hash: str | None = Field(default=None, alias="aiguard.capture.hash")
    input_hash: str | None = Field(alias="aiguard.input.hash")
    output_hash: str | None = Field(alias="aiguard.output.hash")
    input_chars: int = Field(alias="aiguard.input.chars", ge=0)
    output_chars: int = Field(alias="aiguard.output.chars", ge=0)
    hash_key_id: str | None = Field(alias="aiguard.hash.key_id")
    unscanned: dict[str, int] = Field(alias="aiguard.unscanned")
    decisions: list[DecisionRecord] = Field(alias="aiguard.decisions")
    findings: list[FindingCount] = Field(alias="aiguard.findings")
    failover_path: list[Attempt] = Field(alias="aiguard.failover.path")

    tls_protocol: str | None = Field(alias="tls.protocol.name")
    tls_version: str | None = Field(alias="tls.protocol.version")
    tls_cipher: str | None = Field(alias="tls.cipher")
    status: int = Field(alias="http.response.status_code", ge=0, le=999)
    outcome: str = Field(alias="aiguard.outcome")
    error_type: str | None = Field(alias="error.type")
    latency_seconds: float = Field(alias="aiguard.latency_seconds", ge=0)
    upstream_seconds: float = Field(alias="aiguard.upstream_seconds", ge=0)
    ttft_seconds: float | None = Field(alias="aiguard.ttft_seconds")

    policy_name: str = Field(alias="aiguard.policy.name", min_length=1)
    policy_hash: str = Field(alias="aiguard.policy.hash")
    mode: Literal["enforce", "audit"] = Field(alias="aiguard.mode")

    @field_validator("id")
    @classmethod
    def _uuid7(cls, v: str) -> str:
        if not _UUID7.match(v):
            raise ValueError("id must be a lower-case UUIDv7")
        return v

    @field_validator("time", "request_start_time")
    @classmethod
    def _rfc3339(cls, v: str) -> str:
        parse_time(v)
        return v

    @field_validator("capture_hash")
    @classmethod
    def _capture(cls, v: str | None) -> str | None:
        if v is not None and not _HASH.match(v):
            raise ValueError("expected sha256:<64 hex digits>")
        return v

    @field_validator("prev_hash", "hash")
    @classmethod
    def _sha256(cls, v: str) -> str:
        if not _HASH.match(v):
            raise ValueError("expected sha256:<64 hex digits>")
        return v

    @field_validator("input_hash", "output_hash")
    @classmethod
    def _content(cls, v: str | None) -> str | None:
        if v is not None and not _CONTENT_HASH.match(v):
            raise ValueError("expected sha256:<hex> or hmac-sha256:<hex>")
        return v

    @property
    def timestamp(self) -> float:
        return parse_time(self.time)


# --------------------------------------------------------------------------- purges


class PurgedChain(_Part):
    """The prefix of one chain a purge deleted."""

    instance: str
    first_sequence: int = Field(ge=1)
    last_sequence: int = Field(ge=1)
    last_hash: str = Field(description="hash of the last event deleted: the new chain start")
    count: int = Field(ge=0)


class PurgeRecord(BaseModel):
    """One retention purge of one policy's events, as the collector records and serves it."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True, defer_build=True)

    schema_: Literal["aiguard.dev/audit-purge/v1"] = Field(default=PURGE_SCHEMA, alias="schema")
    id: str
    time: str = Field(description="when the purge ran")
    namespace: str
    policy: str
    rule: str = Field(description="what decided, e.g. spec.audit.retentionDays=30")
    retention_days: int
    cutoff: str = Field(description="events written before this time were eligible")
    count: int = Field(ge=0, description="events deleted")
    oldest: str | None = Field(description="time of the oldest event deleted")
    newest: str | None = Field(description="time of the newest event deleted")
    chains: list[PurgedChain] = Field(default_factory=list)
    capture_retention_days: int | None = Field(
        default=None, description="spec.audit.captureRetentionDays in force (effective)"
    )
    capture_cutoff: str | None = Field(
        default=None, description="captured content written before this time was eligible"
    )
    captures: int = Field(default=0, ge=0, description="captured contents deleted")

    def starts(self) -> dict[str, ChainStart]:
        return {
            c.instance: ChainStart(c.last_sequence + 1, c.last_hash, purge_id=self.id)
            for c in self.chains
        }

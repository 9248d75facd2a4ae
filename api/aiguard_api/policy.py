"""The AIPolicy and AIIncident resources, as typed models.

These models are the single source of truth: the CRDs in ``crds/``, the policy reference in
``docs/policy-reference.md`` and the sidecar's plain view of the compiled config
(``aiguard_api/view.py``) are generated from them (``make crds``), the operator validates with
them, and the sidecar reads the compiled form of them (``aiguard_api.config``) as that view.
Enums, literal types and defaults are in :mod:`aiguard_api.policy_types` (re-exported here).

Field names are camelCase on the wire (Kubernetes convention) and snake_case in Python. Every
field has a description and a default where a safe one exists. Safe means: deny by default,
TLS 1.3, fail closed.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from aiguard_api.policy_types import (
    DEFAULT_JWT_ALGORITHMS as DEFAULT_JWT_ALGORITHMS,
)
from aiguard_api.policy_types import (
    DEFAULT_PII_ENTITIES as DEFAULT_PII_ENTITIES,
)
from aiguard_api.policy_types import (
    SEVERITY_ORDER as SEVERITY_ORDER,
)
from aiguard_api.policy_types import (
    ContentCapture as ContentCapture,
)
from aiguard_api.policy_types import (
    DetectAction as DetectAction,
)
from aiguard_api.policy_types import (
    FailoverCause as FailoverCause,
)
from aiguard_api.policy_types import (
    FailureMode as FailureMode,
)
from aiguard_api.policy_types import (
    JWTAlgorithm as JWTAlgorithm,
)
from aiguard_api.policy_types import (
    Mode as Mode,
)
from aiguard_api.policy_types import (
    ModerationCategory as ModerationCategory,
)
from aiguard_api.policy_types import (
    Operation as Operation,
)
from aiguard_api.policy_types import (
    PIIAction as PIIAction,
)
from aiguard_api.policy_types import (
    ProviderType as ProviderType,
)
from aiguard_api.policy_types import (
    Scope as Scope,
)
from aiguard_api.policy_types import (
    SecretsAction as SecretsAction,
)
from aiguard_api.policy_types import (
    Severity as Severity,
)
from aiguard_api.policy_types import (
    StreamRelease as StreamRelease,
)
from aiguard_api.policy_types import (
    UnscannableAction as UnscannableAction,
)
from aiguard_api.policy_types import (
    model_matches as model_matches,
)

# --------------------------------------------------------------------------------------------
# Base


class Model(BaseModel):
    """Base of every resource model: camelCase aliases, unknown fields rejected.

    ``defer_build``: a model's validator and serializer are built on its first use, not when
    the class is defined (a process that imports the models for their types, or validates only
    a few of them, does not pay for the rest). The sidecar never imports them: it reads the
    config's plain view, :mod:`aiguard_api.view`."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
        validate_default=True,
        defer_build=True,
    )


DNSLabel = Annotated[
    str,
    Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
]
ModelPattern = Annotated[
    str,
    Field(
        min_length=1,
        max_length=253,
        description="A model name or a glob pattern (`*`, `?`, `[...]`), e.g. `gpt-4o*`.",
    ),
]


# --------------------------------------------------------------------------------------------
# Shared pieces


class SecretKeyRef(Model):
    """A key of a Secret in the policy's namespace."""

    name: DNSLabel = Field(description="Name of the Secret, in the AIPolicy's namespace.")
    key: str = Field(
        default="api-key",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key within the Secret.",
    )


class LabelSelectorRequirement(Model):
    key: str = Field(min_length=1, max_length=317)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list, max_length=64)


class LabelSelector(Model):
    """A Kubernetes label selector over pods in the policy's namespace.

    An empty selector selects every pod in the namespace.
    """

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list, max_length=16)

    def matches(self, labels: dict[str, str]) -> bool:
        for k, v in self.match_labels.items():
            if labels.get(k) != v:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True

    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


# --------------------------------------------------------------------------------------------
# Providers and routes


class ProviderTLS(Model):
    """TLS to the provider. Certificates are always verified."""

    min_version: Literal["1.2", "1.3"] = Field(
        default="1.3",
        description="Lowest TLS version accepted from the provider. 1.2 only for providers "
        "that cannot do 1.3; the negotiated version is recorded in every audit event.",
    )
    ca_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="PEM CA bundle to trust instead of the system roots "
        "(for private OpenAI-compatible servers).",
    )
    server_name: str | None = Field(
        default=None, max_length=253, description="SNI and verification name override."
    )


class Timeouts(Model):
    connect_seconds: float = Field(default=5.0, gt=0, le=60, description="TCP + TLS connect.")
    read_seconds: float = Field(
        default=60.0,
        gt=0,
        le=600,
        description="Waiting for response headers, and between two chunks of a stream.",
    )
    total_seconds: float = Field(
        default=300.0, gt=0, le=3600, description="Whole request, streams included."
    )


class Provider(Model):
    """An upstream LLM API. The sidecar connects to nothing else."""

    name: DNSLabel = Field(description="Name routes refer to.")
    type: ProviderType = Field(description="Wire format the provider speaks.")
    base_url: str = Field(
        alias="baseURL",
        min_length=1,
        max_length=2048,
        description="e.g. `https://api.openai.com/v1`, `https://api.anthropic.com`, "
        "`https://NAME.openai.azure.com`.",
    )
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret holding the provider key. Mounted only into the sidecar; "
        "reloaded when it rotates. Omit for keyless OpenAI-compatible servers.",
    )
    api_version: str | None = Field(
        default=None,
        max_length=64,
        description="Azure OpenAI `api-version` used upstream (default `2024-10-21`).",
    )
    allow_plaintext: bool = Field(
        default=False,
        description="Permit an `http://` base URL (in-cluster OpenAI-compatible servers "
        "only). Off by default: keys and prompts travel over TLS.",
    )
    tls: ProviderTLS = Field(default_factory=ProviderTLS)
    timeouts: Timeouts = Field(default_factory=Timeouts)

    @model_validator(mode="after")
    def _check_url(self) -> Provider:
        url = self.base_url
        if not re.match(r"^https?://[^/\s?#]+(/[^\s?#]*)?$", url):
            raise ValueError(
                f"provider {self.name!r}: baseURL {url!r} is not an absolute http(s) URL "
                "without query or fragment"
            )
        if url.startswith("http://") and not self.allow_plaintext:
            raise ValueError(
                f"provider {self.name!r}: baseURL {url!r} is plaintext HTTP; use https:// "
                "or set allowPlaintext: true for an in-cluster server"
            )
        if self.type is not ProviderType.OPENAI_COMPATIBLE and self.api_key_secret_ref is None:
            raise ValueError(
                f"provider {self.name!r} of type {self.type.value} needs apiKeySecretRef"
            )
        return self


class RouteTarget(Model):
    provider: DNSLabel = Field(description="A provider name from `spec.providers`.")
    model: str | None = Field(
        default=None,
        max_length=253,
        description="Model (or Azure deployment) to request from this provider instead of "
        "the one the client asked for: aliasing and version pinning.",
    )


class Route(Model):
    """Requests for models matching ``models`` go to ``targets`` in order (failover)."""

    name: DNSLabel | None = Field(default=None, description="Shown in metrics and audit.")
    models: list[ModelPattern] = Field(
        min_length=1, max_length=32, description="Requested model names or glob patterns."
    )
    targets: list[RouteTarget] = Field(
        min_length=1,
        max_length=8,
        description="Ordered provider chain. The first healthy target is used; the next "
        "ones are the failover path.",
    )


class Resilience(Model):
    """Failover and circuit breaking."""

    max_attempts: int = Field(
        default=3, ge=1, le=8, description="Attempts across the route's targets per request."
    )
    retry_budget_percent: int = Field(
        default=20,
        ge=0,
        le=100,
        description="Retries may add at most this share on top of first attempts "
        "(over the last 10 seconds), so failover cannot amplify an outage.",
    )
    failover_on: list[FailoverCause] = Field(
        default_factory=lambda: list(get_args(FailoverCause)),
        description="Upstream failures that move a request to the next target. A stream "
        "that has started reaching the client is never retried.",
    )
    breaker_failure_threshold: int = Field(
        default=5, ge=1, le=1000, description="Consecutive failures that open a breaker."
    )
    breaker_open_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="How long an open breaker rejects before one half-open probe.",
    )


# --------------------------------------------------------------------------------------------
# Identity and access


class JWTIdentity(Model):
    """End-user identity from a verified OIDC/JWT bearer token."""

    issuer: str = Field(min_length=1, max_length=2048, description="Expected `iss`.")
    jwks_url: str | None = Field(
        default=None,
        alias="jwksURL",
        max_length=2048,
        description="JWKS endpoint; by default discovered from the issuer's "
        "`/.well-known/openid-configuration`.",
    )
    audiences: list[str] = Field(
        min_length=1, max_length=16, description="Accepted `aud` values (at least one)."
    )
    algorithms: list[JWTAlgorithm] = Field(
        default_factory=lambda: list(DEFAULT_JWT_ALGORITHMS),
        min_length=1,
        description="Allowed signature algorithms. `none` and HMAC are never accepted.",
    )
    user_claim: str = Field(default="sub", min_length=1, max_length=253)
    groups_claim: str = Field(default="groups", min_length=1, max_length=253)
    header: str = Field(
        default="x-aiguard-user-token",
        min_length=1,
        max_length=253,
        description="Request header carrying the token (`Bearer ` prefix optional). "
        "`authorization` lets apps pass the user token as the SDK's API key.",
    )
    leeway_seconds: int = Field(default=30, ge=0, le=300, description="Clock skew allowed.")
    jwks_cache_seconds: int = Field(default=300, ge=10, le=86400)


class TrustedHeaderIdentity(Model):
    """User identity asserted by a header. Only for apps that authenticate users themselves."""

    user_header: str = Field(default="x-aiguard-user", min_length=1, max_length=253)
    groups_header: str | None = Field(
        default="x-aiguard-groups",
        max_length=253,
        description="Comma-separated groups. Omit to ignore groups from headers.",
    )


class IdentitySources(Model):
    jwt: JWTIdentity | None = Field(default=None)
    trusted_header: TrustedHeaderIdentity | None = Field(default=None)
    require_user: bool = Field(
        default=False,
        description="Deny requests that carry no verified end-user identity. When false, "
        "such requests are decided on the workload's ServiceAccount alone.",
    )


class Subjects(Model):
    """Who a rule applies to. Service accounts are `NAME` (policy namespace) or `NS/NAME`."""

    users: list[str] = Field(default_factory=list, max_length=256)
    groups: list[str] = Field(default_factory=list, max_length=256)
    service_accounts: list[str] = Field(default_factory=list, max_length=256)
    all_authenticated: bool = Field(
        default=False,
        description="Any caller: a verified user, or the workload when no user is required.",
    )

    def is_empty(self) -> bool:
        return not (self.users or self.groups or self.service_accounts or self.all_authenticated)


class AccessRule(Model):
    name: DNSLabel = Field(description="Named in denials, metrics and the access review.")
    subjects: Subjects
    models: list[ModelPattern] = Field(
        default_factory=lambda: ["*"], max_length=64, description="Models the rule allows."
    )
    operations: list[Operation] = Field(
        default_factory=lambda: [Operation.CHAT, Operation.RESPONSES, Operation.MODELS],
        min_length=1,
        description="Operations the rule allows. `tools` must be granted for requests "
        "that declare tools; `embeddings` is separate from chat.",
    )

    @model_validator(mode="after")
    def _non_empty(self) -> AccessRule:
        if self.subjects.is_empty():
            raise ValueError(f"access rule {self.name!r} names no subjects")
        return self


class Access(Model):
    """Identity sources and allow rules. Anything no rule allows is denied."""

    identity: IdentitySources = Field(default_factory=IdentitySources)
    rules: list[AccessRule] = Field(
        default_factory=list,
        max_length=128,
        description="Allow rules. With no rules, every request is denied.",
    )


# --------------------------------------------------------------------------------------------
# Rate limits


class RedisStore(Model):
    url_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding a `redis://` or `rediss://` URL."
    )
    url: str | None = Field(
        default=None,
        max_length=2048,
        description="Redis URL without credentials (use urlSecretRef for one with a password).",
    )
    key_prefix: str = Field(default="aiguard:rl:", max_length=64)

    @model_validator(mode="after")
    def _one(self) -> RedisStore:
        if (self.url is None) == (self.url_secret_ref is None):
            raise ValueError("redis store needs exactly one of url or urlSecretRef")
        return self


class RateLimit(Model):
    """Budgets per minute (sliding window) and concurrent requests."""

    name: DNSLabel
    scope: Scope = Field(description="Counted per user, group, workload or model.")
    models: list[ModelPattern] = Field(
        default_factory=lambda: ["*"], max_length=32, description="Models the limit covers."
    )
    requests_per_minute: int | None = Field(default=None, ge=1)
    input_tokens_per_minute: int | None = Field(default=None, ge=1)
    output_tokens_per_minute: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1, description="In-flight requests.")

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimit:
        if not any(
            v is not None
            for v in (
                self.requests_per_minute,
                self.input_tokens_per_minute,
                self.output_tokens_per_minute,
                self.concurrency,
            )
        ):
            raise ValueError(f"rate limit {self.name!r} sets no limit")
        return self


class RateLimits(Model):
    limits: list[RateLimit] = Field(default_factory=list, max_length=64)
    redis: RedisStore | None = Field(
        default=None,
        description="Share counters across replicas. Without it, each sidecar counts alone.",
    )


# --------------------------------------------------------------------------------------------
# Guardrails


class CustomPattern(Model):
    entity: str = Field(
        min_length=1, max_length=64, pattern=r"^[A-Z][A-Z0-9_]*$", description="Entity name."
    )
    regex: str = Field(min_length=1, max_length=4096, description="RE2-compatible pattern.")
    action: PIIAction = PIIAction.REDACT

    @field_validator("regex")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"regex {v!r} does not compile: {e}") from e
        return v


class DenyList(Model):
    entity: str = Field(min_length=1, max_length=64, pattern=r"^[A-Z][A-Z0-9_]*$")
    values: list[str] = Field(min_length=1, max_length=10000)
    action: PIIAction = PIIAction.REDACT


class NER(Model):
    """Presidio NER (spaCy). Loaded only when enabled: ~150 MB more memory, ~10 ms/KB."""

    enabled: bool = False
    entities: list[str] = Field(
        default_factory=lambda: ["PERSON", "LOCATION", "ORGANIZATION"], max_length=32
    )
    score_threshold: float = Field(default=0.6, ge=0, le=1)
    action: PIIAction = PIIAction.REDACT


class PIIGuardrail(Model):
    enabled: bool = True
    entities: dict[str, PIIAction] = Field(
        default_factory=lambda: dict(DEFAULT_PII_ENTITIES),
        description="Entity (Presidio names) → action. Entities not listed are not scanned.",
    )
    score_threshold: float = Field(default=0.5, ge=0, le=1)
    ner: NER = Field(default_factory=NER)
    custom_patterns: list[CustomPattern] = Field(default_factory=list, max_length=128)
    deny_lists: list[DenyList] = Field(default_factory=list, max_length=32)
    pseudonymize: bool = Field(
        default=False,
        description="Replace values with stable placeholders and restore the originals in "
        "the response the app receives (reversible redaction): `redact` entities, custom "
        "patterns and deny lists become `<ENTITY_N>` (the same value, the same placeholder "
        "within a request). Input side: the provider's text and tool-call arguments, JSON or "
        "streamed, get the values back (output side: the placeholders stay). The mapping "
        "lives in memory for the request only (never logged or "
        "audited; audit counts restorations), so a stored response fetched later keeps the "
        "placeholders.",
    )
    restore_tool_arguments: bool = Field(
        default=True,
        description="With `pseudonymize` (input side): also restore the values inside the "
        "tool-call arguments the model returns, so an agent's `send_email(to=<EMAIL_ADDRESS_1>)` "
        "reaches the tool with the real address. Off: only the answer's text gets them back; "
        "a tool call the model was steered into (indirect prompt injection) can then never "
        "carry the values out, at the price of the app mapping placeholders itself.",
    )
    hash_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Key for the `hash` action (HMAC-SHA-256)."
    )


class SecretsGuardrail(Model):
    enabled: bool = True
    action: SecretsAction = SecretsAction.BLOCK
    entropy_detection: bool = Field(
        default=True, description="Also flag long high-entropy tokens near key-like words."
    )


class PromptInjectionGuardrail(Model):
    enabled: bool = True
    threshold: float = Field(
        default=0.5, ge=0, le=1, description="Classifier score at or above which it fires."
    )
    action: DetectAction = DetectAction.BLOCK
    scan_tool_results: bool = Field(
        default=True, description="Also scan tool results and documents (indirect injection)."
    )


class ValidationGuardrail(Model):
    max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    max_tokens: int | None = Field(
        default=None, ge=1, description="Largest `max_tokens` a client may request."
    )
    max_messages: int | None = Field(default=None, ge=1)
    allowed_parameters: list[str] | None = Field(
        default=None,
        max_length=128,
        description="Request body keys allowed besides model/messages/input/stream. "
        "Omit to allow any.",
    )
    allowed_tools: list[str] | None = Field(
        default=None, max_length=256, description="Tool names allowed. Omit to allow any."
    )


class KeywordGuardrail(Model):
    """Deny topics and keywords (case-insensitive, whole words) and regexes."""

    keywords: list[str] = Field(default_factory=list, max_length=10000)
    patterns: list[str] = Field(default_factory=list, max_length=256)
    action: DetectAction = DetectAction.BLOCK

    @field_validator("patterns")
    @classmethod
    def _compile_all(cls, v: list[str]) -> list[str]:
        for p in v:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"pattern {p!r} does not compile: {e}") from e
        return v


class ModerationGuardrail(Model):
    enabled: bool = True
    categories: dict[ModerationCategory, DetectAction] = Field(
        default_factory=lambda: dict.fromkeys(ModerationCategory, DetectAction.BLOCK)
    )
    threshold: float = Field(default=0.5, ge=0, le=1)
    endpoint_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Optional external moderation endpoint (OpenAI moderation API format): "
        "Secret key holding its URL (`https://`; the full URL the sidecar POSTs to, e.g. "
        "`https://api.openai.com/v1/moderations`). Its per-category verdicts are combined "
        "with the local classifier's: a category the endpoint flags takes this guardrail's "
        "action for it; a streamed answer is sent once, whole, at its end (flagged, the "
        "stream ends with an error event instead of completing). Errors and timeouts: "
        "`spec.failureMode` decides.",
    )
    endpoint_api_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the endpoint's API key (sent as `Authorization: Bearer`).",
    )
    endpoint_ca_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding a PEM CA bundle that verifies the endpoint's "
        "certificate (default: the system trust store). The certificate is always verified.",
    )
    endpoint_model: str | None = Field(
        default=None,
        max_length=128,
        description="`model` sent to the endpoint (e.g. `omni-moderation-latest`); none: "
        "the endpoint's default.",
    )
    endpoint_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        le=30,
        description="How long one call to the endpoint may take before `spec.failureMode` decides.",
    )


class ReviewGuardrail(Model):
    """Hold matching requests for human approval (`kubectl aiguard approve|deny`)."""

    enabled: bool = False
    models: list[ModelPattern] = Field(default_factory=list, max_length=32)
    tools: list[str] = Field(default_factory=list, max_length=64)
    keywords: list[str] = Field(default_factory=list, max_length=256)
    timeout_seconds: int = Field(
        default=300, ge=5, le=3600, description="Denied when nobody decides in time."
    )


class InputGuardrails(Model):
    pii: PIIGuardrail = Field(default_factory=PIIGuardrail)
    secrets: SecretsGuardrail = Field(default_factory=SecretsGuardrail)
    prompt_injection: PromptInjectionGuardrail = Field(default_factory=PromptInjectionGuardrail)
    validation: ValidationGuardrail = Field(default_factory=ValidationGuardrail)
    deny: KeywordGuardrail = Field(default_factory=KeywordGuardrail)
    moderation: ModerationGuardrail = Field(
        default_factory=lambda: ModerationGuardrail(enabled=False)
    )
    review: ReviewGuardrail = Field(default_factory=ReviewGuardrail)
    unscannable: UnscannableAction = Field(
        default=UnscannableAction.ALLOW,
        description="Images, audio and unknown content parts: always counted and audited.",
    )


class Streaming(Model):
    holdback_chars: int = Field(
        default=128,
        ge=0,
        le=65536,
        description="Characters held back from the client while output guardrails scan a "
        "stream, so a match across chunk boundaries is caught before it is sent. With "
        "release: adaptive, the most that is ever held.",
    )
    release: StreamRelease = Field(
        default=StreamRelease.ADAPTIVE,
        description="adaptive: text that cannot be the unfinished start of a PII or secret "
        "value goes out at once: a word is sent when it is finished (whitespace or !?,;) "
        "follows), a run with digits when 32 more characters follow, a match that may still "
        "grow when it ends. window: the oldest held event goes once more than holdbackChars "
        "characters are held. "
        "Output NER, custom patterns, deny lists or deny keywords (values whose shape the "
        "sidecar cannot know) always use window.",
    )


class OutputGuardrails(Model):
    pii: PIIGuardrail = Field(
        default_factory=lambda: PIIGuardrail(
            entities={k: PIIAction.REDACT for k in DEFAULT_PII_ENTITIES}
        )
    )
    secrets: SecretsGuardrail = Field(
        default_factory=lambda: SecretsGuardrail(action=SecretsAction.REDACT)
    )
    moderation: ModerationGuardrail = Field(
        default_factory=lambda: ModerationGuardrail(enabled=False),
        description="Opt-in for now: the trained classifier still flags some short harmless "
        "texts (see the guardrails benchmark), so it does not block by default.",
    )
    deny: KeywordGuardrail = Field(default_factory=KeywordGuardrail)
    streaming: Streaming = Field(default_factory=Streaming)


class Guardrails(Model):
    input: InputGuardrails = Field(default_factory=InputGuardrails)
    output: OutputGuardrails = Field(default_factory=OutputGuardrails)


# --------------------------------------------------------------------------------------------
# Audit and incidents


class AuditSinks(Model):
    collector: bool = Field(default=True, description="Ship to the aiguard collector.")
    stdout: bool = Field(default=False, description="Also write events as JSON lines.")
    otlp_endpoint: str | None = Field(default=None, max_length=2048)


class Audit(Model):
    content_capture: ContentCapture = Field(
        default=ContentCapture.NONE,
        description="`none`: hashes and decisions only. `redacted`: also the text that crossed "
        "the sidecar (sent upstream, returned to the client), with every entity and secret "
        "aiguard recognises masked whatever the guardrail actions, encrypted at the collector "
        "and purged after `captureRetentionDays`. Blocked requests keep no text.",
    )
    retention_days: int = Field(default=400, ge=1, le=3650)
    capture_retention_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description="Captured content is purged after this many days; never later than "
        "retentionDays (the default 30 yields to a shorter retentionDays).",
    )
    on_spool_failure: FailureMode = Field(
        default=FailureMode.CLOSED,
        description="`closed`: reject requests whose audit event cannot be written. "
        "`open`: serve them, count and alert.",
    )
    hash_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Key the input/output hashes (HMAC-SHA-256)."
    )
    sinks: AuditSinks = Field(default_factory=AuditSinks)

    @property
    def effective_capture_retention_days(self) -> int:
        return min(self.capture_retention_days, self.retention_days)

    @model_validator(mode="after")
    def _capture_within_retention(self) -> Audit:
        explicit = "capture_retention_days" in self.model_fields_set
        if explicit and self.capture_retention_days > self.retention_days:
            raise ValueError(
                f"captureRetentionDays ({self.capture_retention_days}) exceeds retentionDays "
                f"({self.retention_days}): captured content cannot outlive its events"
            )
        return self


class IncidentNotify(Model):
    webhook_secret_ref: SecretKeyRef = Field(description="Secret key holding the webhook URL.")
    format: Literal["slack", "pagerduty", "generic"] = "generic"


class Incidents(Model):
    severity_threshold: Severity = Severity.MEDIUM
    window_seconds: int = Field(default=300, ge=10, le=86400, description="Aggregation window.")
    notify: IncidentNotify | None = None


# --------------------------------------------------------------------------------------------
# AIPolicy


class AIPolicySpec(Model):
    """What an AIPolicy says: who may use which models through which providers, and how."""

    selector: LabelSelector = Field(
        default_factory=LabelSelector,
        description="Pods in this namespace the policy governs. Pods may also name a policy "
        "with the `aiguard.dev/policy` annotation.",
    )
    mode: Mode = Field(default=Mode.ENFORCE)
    failure_mode: FailureMode = Field(default=FailureMode.CLOSED)
    providers: list[Provider] = Field(min_length=1, max_length=16)
    routes: list[Route] = Field(min_length=1, max_length=64)
    resilience: Resilience = Field(default_factory=Resilience)
    access: Access = Field(default_factory=Access)
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    guardrails: Guardrails = Field(default_factory=Guardrails)
    audit: Audit = Field(default_factory=Audit)
    incidents: Incidents = Field(default_factory=Incidents)

    @model_validator(mode="after")
    def _references(self) -> AIPolicySpec:
        names = [p.name for p in self.providers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"provider names must be unique; repeated: {', '.join(dupes)}")
        known = set(names)
        for i, route in enumerate(self.routes):
            for t in route.targets:
                if t.provider not in known:
                    label = route.name or f"routes[{i}]"
                    raise ValueError(
                        f"route {label!r} targets unknown provider {t.provider!r}; "
                        f"defined providers: {', '.join(names)}"
                    )
        return self

    def secret_refs(self) -> list[tuple[str, SecretKeyRef]]:
        """Every Secret the policy reads, with the field that names it."""
        refs: list[tuple[str, SecretKeyRef]] = []
        for p in self.providers:
            if p.api_key_secret_ref:
                refs.append((f"providers[{p.name}].apiKeySecretRef", p.api_key_secret_ref))
            if p.tls.ca_secret_ref:
                refs.append((f"providers[{p.name}].tls.caSecretRef", p.tls.ca_secret_ref))
        if self.rate_limits.redis and self.rate_limits.redis.url_secret_ref:
            refs.append(("rateLimits.redis.urlSecretRef", self.rate_limits.redis.url_secret_ref))
        for side in ("input", "output"):
            g = getattr(self.guardrails, side)
            if g.pii.hash_key_secret_ref:
                refs.append((f"guardrails.{side}.pii.hashKeySecretRef", g.pii.hash_key_secret_ref))
            for name, ref in (
                ("endpointSecretRef", g.moderation.endpoint_secret_ref),
                ("endpointApiKeySecretRef", g.moderation.endpoint_api_key_secret_ref),
                ("endpointCaSecretRef", g.moderation.endpoint_ca_secret_ref),
            ):
                if ref:
                    refs.append((f"guardrails.{side}.moderation.{name}", ref))
        if self.audit.hash_key_secret_ref:
            refs.append(("audit.hashKeySecretRef", self.audit.hash_key_secret_ref))
        if self.incidents.notify:
            refs.append(
                ("incidents.notify.webhookSecretRef", self.incidents.notify.webhook_secret_ref)
            )
        return refs

    def sidecar_secret_refs(self) -> list[SecretKeyRef]:
        """Secrets mounted into the sidecar (not the notification webhook: operator only)."""
        return [r for field, r in self.secret_refs() if not field.startswith("incidents.")]


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: datetime | None = None


class Coverage(Model):
    governed_pods: int = 0
    injected_pods: int = 0
    uninjected_pods: list[str] = Field(
        default_factory=list, description="Pods the policy governs that run without a sidecar."
    )


class AIPolicyStatus(Model):
    model_config = ConfigDict(extra="allow")

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    compiled_hash: str | None = None
    config_map: str | None = None
    coverage: Coverage = Field(default_factory=Coverage)


class ObjectMeta(Model):
    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)

    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class AIPolicy(Model):
    api_version: Literal["aiguard.dev/v1alpha1"] = "aiguard.dev/v1alpha1"
    kind: Literal["AIPolicy"] = "AIPolicy"
    metadata: ObjectMeta
    spec: AIPolicySpec
    status: AIPolicyStatus | None = None


# --------------------------------------------------------------------------------------------
# AIIncident


class IncidentState(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    PENDING_APPROVAL = "pending-approval"
    APPROVED = "approved"
    DENIED = "denied"


class Approval(Model):
    """A human-review request raised by the `review` guardrail."""

    request_id: str = Field(min_length=1, max_length=128)
    model: str | None = None
    user: str | None = None
    summary: str = Field(default="", max_length=2048, description="No raw prompt content.")
    expires_at: datetime | None = None
    decided_by: str | None = None
    decided_at: datetime | None = None


class AIIncidentSpec(Model):
    severity: Severity
    policy: str = Field(min_length=1, max_length=253)
    pod: str | None = Field(default=None, max_length=253)
    guardrail: str = Field(min_length=1, max_length=128, description="What fired.")
    reason: str = Field(default="", max_length=1024)
    count: int = Field(default=1, ge=1)
    first_seen: datetime
    last_seen: datetime
    state: IncidentState = IncidentState.OPEN
    approval: Approval | None = None


class AIIncidentStatus(Model):
    model_config = ConfigDict(extra="allow")

    history: list[dict[str, Any]] = Field(
        default_factory=list, description="State changes: who, when, from, to, note."
    )
    notified: bool = False


class AIIncident(Model):
    api_version: Literal["aiguard.dev/v1alpha1"] = "aiguard.dev/v1alpha1"
    kind: Literal["AIIncident"] = "AIIncident"
    metadata: ObjectMeta
    spec: AIIncidentSpec
    status: AIIncidentStatus | None = None

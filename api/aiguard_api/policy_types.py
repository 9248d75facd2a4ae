"""The policy's vocabulary, without pydantic: enums, literal types, defaults and
:func:`model_matches`.

:mod:`aiguard_api.policy` (the pydantic models) and :mod:`aiguard_api.view` (the plain,
immutable form the sidecar reads) both use these, and ``aiguard_api.policy`` re-exports every
name, so ``from aiguard_api.policy import Mode`` keeps working. The sidecar imports them from
here: it never imports pydantic (``aiguard_sidecar/policy_load.py``).
"""

from __future__ import annotations

import fnmatch
from enum import StrEnum
from typing import Literal


def model_matches(pattern: str, model: str) -> bool:
    """True when ``model`` matches the glob ``pattern`` (case-sensitive)."""
    return fnmatch.fnmatchcase(model, pattern)


# --------------------------------------------------------------------------------------------
# Enums


class Mode(StrEnum):
    """What the sidecar does with its decisions."""

    ENFORCE = "enforce"  # block, redact, limit
    AUDIT = "audit"  # shadow mode: decide and record, change nothing


class FailureMode(StrEnum):
    """What happens when a guardrail errors or times out."""

    CLOSED = "closed"  # reject the request
    OPEN = "open"  # let it through, record and count the failure


class ProviderType(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    AZURE_OPENAI = "azure-openai"
    OPENAI_COMPATIBLE = "openai-compatible"


class Operation(StrEnum):
    """Operations access rules grant. ``tools`` is any request that declares tools."""

    CHAT = "chat"
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"
    MODELS = "models"
    TOOLS = "tools"


class PIIAction(StrEnum):
    ALLOW = "allow"  # leave it, still counted
    REDACT = "redact"  # replace with a typed placeholder, e.g. <EMAIL_ADDRESS>
    MASK = "mask"  # keep the last 4 characters, mask the rest with '*'
    HASH = "hash"  # keyed hash: <EMAIL_ADDRESS:3f2a9c...>
    BLOCK = "block"  # refuse the request


class DetectAction(StrEnum):
    """Actions of detectors that either stop a request or only flag it."""

    BLOCK = "block"
    FLAG = "flag"  # record a finding, let the request through
    REVIEW = "review"  # hold for human approval


class SecretsAction(StrEnum):
    BLOCK = "block"
    REDACT = "redact"
    FLAG = "flag"


class UnscannableAction(StrEnum):
    """What to do with content no guardrail can read (images, audio, unknown parts)."""

    ALLOW = "allow"  # let it through; it is counted and reported
    BLOCK = "block"


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


SEVERITY_ORDER: dict[Severity, int] = {
    Severity.LOW: 0,
    Severity.MEDIUM: 1,
    Severity.HIGH: 2,
    Severity.CRITICAL: 3,
}


class ContentCapture(StrEnum):
    NONE = "none"  # hashes and decisions only
    REDACTED = "redacted"  # also the redacted prompt/response, encrypted at rest


class Scope(StrEnum):
    """What a rate limit counts per."""

    USER = "user"
    GROUP = "group"
    WORKLOAD = "workload"
    MODEL = "model"


FailoverCause = Literal["connect", "timeout", "5xx", "429"]

JWTAlgorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"
]
DEFAULT_JWT_ALGORITHMS: tuple[JWTAlgorithm, ...] = ("RS256", "ES256")

DEFAULT_PII_ENTITIES: dict[str, PIIAction] = {
    "EMAIL_ADDRESS": PIIAction.REDACT,
    "PHONE_NUMBER": PIIAction.REDACT,
    "CREDIT_CARD": PIIAction.BLOCK,
    "IBAN_CODE": PIIAction.BLOCK,
    "US_SSN": PIIAction.BLOCK,
    "IP_ADDRESS": PIIAction.REDACT,
}


class ModerationCategory(StrEnum):
    HATE = "hate"
    HARASSMENT = "harassment"
    VIOLENCE = "violence"
    SELF_HARM = "self-harm"
    SEXUAL = "sexual"
    ILLICIT = "illicit"


class StreamRelease(StrEnum):
    """When streamed output text held for the output guardrails goes to the client."""

    # Text goes out as soon as it cannot be the unfinished start of a value the guardrails look
    # for: a finished word goes at once; a word still being written, a run with digits and a
    # match that may still grow wait (never more than holdbackChars).
    ADAPTIVE = "adaptive"
    # Events are held while no more than holdbackChars characters are: the oldest goes out
    # once more than that follow it.
    WINDOW = "window"

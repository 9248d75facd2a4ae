"""Request validation from metadata the provider adapter reads off the request.

    facts = RequestFacts(body_bytes=..., max_tokens=..., n_messages=..., parameters=..., tools=...)
    validate(facts, cfg) -> Verdict          # cfg: ValidationGuardrail

Every violated limit is a finding (guardrail ``validation``, segment -1, action ``block``):

    body_too_large          body_bytes > maxBodyBytes
    max_tokens_exceeded     the requested max_tokens (max_completion_tokens, max_output_tokens)
                            > maxTokens
    too_many_messages       n_messages > maxMessages
    parameter_not_allowed   a body key outside allowedParameters (model, messages, input and
                            stream are always allowed)
    tool_not_allowed        a declared tool outside allowedTools

The reason names the first violation and the offending parameter or tool name (schema names,
not content).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiguard_api.view import ValidationGuardrail
from aiguard_sidecar.guardrails.base import Decision, Finding, Verdict

NAME: Final = "validation"
ALWAYS_ALLOWED: Final = frozenset({"model", "messages", "input", "stream"})


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What validation needs to know about a request. The adapter fills it."""

    body_bytes: int  # size of the request body as received, in bytes
    max_tokens: int | None = None  # the output-token limit the client asked for, if any
    n_messages: int = 0  # chat messages / Responses input items / Anthropic messages
    parameters: frozenset[str] = frozenset()  # top-level body keys
    tools: tuple[str, ...] = ()  # names of the tools (functions) the request declares


def validate(facts: RequestFacts, cfg: ValidationGuardrail) -> Verdict:
    verdict = Verdict()
    problems: list[tuple[str, str]] = []
    if facts.body_bytes > cfg.max_body_bytes:
        problems.append(
            ("body_too_large", f"body is {facts.body_bytes} bytes, limit {cfg.max_body_bytes}")
        )
    limit = cfg.max_tokens
    if limit is not None and facts.max_tokens is not None and facts.max_tokens > limit:
        problems.append(("max_tokens_exceeded", f"max_tokens {facts.max_tokens} > {limit}"))
    if cfg.max_messages is not None and facts.n_messages > cfg.max_messages:
        problems.append(("too_many_messages", f"{facts.n_messages} messages > {cfg.max_messages}"))
    if cfg.allowed_parameters is not None:
        allowed = ALWAYS_ALLOWED | set(cfg.allowed_parameters)
        for p in sorted(facts.parameters - allowed):
            problems.append(("parameter_not_allowed", f"parameter {p!r} is not allowed"))
    if cfg.allowed_tools is not None:
        allowed_tools = set(cfg.allowed_tools)
        for t in dict.fromkeys(facts.tools):
            if t not in allowed_tools:
                problems.append(("tool_not_allowed", f"tool {t!r} is not allowed"))
    for kind, _ in problems:
        verdict.findings.append(Finding(NAME, kind, -1, 0, 0, 1.0, "block"))
    if problems:
        verdict.decision = Decision.BLOCK
        verdict.reason = f"{NAME}: {problems[0][1]}"
    return verdict

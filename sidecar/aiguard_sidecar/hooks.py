"""Where guardrails plug into the request path (the guardrails issue implements them).

The pipeline calls, in order::

    await guardrails.check_input(exchange)            before routing; may rewrite segments
    ── upstream ──
    JSON:   await guardrails.check_output(exchange, response)   may rewrite output segments
    stream: guard = guardrails.output_stream(exchange)           None: relay untouched
            guard.on_event(event)  per event with its text deltas; may rewrite via
                                   ``event.set_text`` (holdback: return HOLD and release later)
            guard.on_end()         when the upstream stream ends (or, when the guard has
                                   it, ``await guard.finish()`` instead: an end that may
                                   do I/O, such as an external moderation call)

Guardrails see :class:`~aiguard_sidecar.exchange.Exchange` segments and stream deltas, never
provider formats; edits go back through the segments' locators. A ``block`` verdict becomes a
400 in the client's format (in a stream: an error event); a ``review`` verdict on the input
holds the request for a person's decision (``review.py``); in ``mode: audit`` the pipeline
records it and changes nothing. :class:`NoGuardrails` is the default: it costs one await.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from aiguard_api.view import SidecarConfig
from aiguard_sidecar.exchange import Exchange, ResponseInfo, StreamEvent


class Verdict(enum.Enum):
    ALLOW = "allow"  # unchanged, or changed through set_text
    BLOCK = "block"
    HOLD = "hold"  # streams: keep this event back (the guard re-emits it later)
    REVIEW = "review"  # input: hold the request for human approval (``review.hold``)


@dataclass(frozen=True, slots=True)
class GuardDecision:
    verdict: Verdict = Verdict.ALLOW
    rule: str | None = None  # e.g. "guardrails.input.pii"
    reason: str = ""  # names the guardrail and finding type, never the content
    findings: int = 0
    counts: tuple[tuple[str, str, str, int], ...] = ()
    """The new findings of this decision as ``(guardrail, type, action, count)``, for the audit
    event (``RequestRecord.findings``). Types and actions only, never content."""
    released: tuple[StreamEvent, ...] = ()
    """Streams: held-back events to send now, before the current one."""

    @property
    def blocked(self) -> bool:
        return self.verdict is Verdict.BLOCK


ALLOW: Final = GuardDecision()


class StreamGuard(Protocol):
    def on_event(self, event: StreamEvent) -> GuardDecision: ...

    def on_end(self) -> GuardDecision: ...


class Guardrails(Protocol):
    async def check_input(self, exchange: Exchange) -> GuardDecision: ...

    async def check_output(self, exchange: Exchange, response: ResponseInfo) -> GuardDecision: ...

    def output_stream(self, exchange: Exchange) -> StreamGuard | None: ...

    async def close(self) -> None: ...


class NoGuardrails:
    """Allows everything; the stream fast path (no per-event call)."""

    async def check_input(self, exchange: Exchange) -> GuardDecision:
        return ALLOW

    async def check_output(self, exchange: Exchange, response: ResponseInfo) -> GuardDecision:
        return ALLOW

    def output_stream(self, exchange: Exchange) -> StreamGuard | None:
        return None

    async def close(self) -> None:
        return None


class Preparable(Protocol):
    """Optional: guardrails with expensive state (compiled pattern databases, classifiers).
    ``runtime.build`` awaits ``prepare()`` before the policy goes into force, so until it
    returns the previous policy keeps serving (at startup: not ready). It must not block the
    event loop (build in a worker thread); a ``ConfigError`` rejects the policy."""

    async def prepare(self) -> None: ...


GuardrailsFactory = Callable[[SidecarConfig], Guardrails]
"""Builds the guardrails of one policy version (called at each policy load). Must be cheap;
heavy work belongs in ``prepare()`` (:class:`Preparable`)."""


def no_guardrails(cfg: SidecarConfig) -> Guardrails:
    return NoGuardrails()

"""Guardrail names → factories, and the order the engine runs them in.

A factory takes the policy section of its guardrail (``InputGuardrails.pii``, ...) and a
:class:`BuildContext`, and returns a :class:`~.base.Guardrail`, or None when the section
disables it. ``build_chain`` calls the factories of every section the direction's config has,
in :data:`ORDER`, once per policy load.

ORDER, and why::

    deny, prompt_injection, moderation, review    detectors: they only find, never edit, so
                                                  they all read the text as the client sent it
    secrets                                       edits: before PII, so a connection string's
                                                  ``user:pass@host.com`` is one secret, not an
                                                  e-mail address with a secret in front
    pii                                           edits last; reads the secrets' placeholders

Plug-ins written elsewhere are imported lazily, only when the policy enables them, so this
module works whether or not their files exist:
``lazy("prompt_injection", "injection", "PromptInjectionGuardrail")`` imports
``aiguard_sidecar.guardrails.injection`` and calls ``build(cfg, ctx)`` if the module defines
one, else the named class with ``cfg``. A plug-in that is enabled but cannot be imported or
built becomes an :class:`Unavailable` guardrail whose every check fails, so the engine's
``failureMode`` decides (closed: requests are refused) and nothing is skipped silently.
Adding a guardrail is one line in :data:`REGISTRY` (and its name in :data:`ORDER`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiguard_api.view import (
    InputGuardrails,
    KeywordGuardrail,
    OutputGuardrails,
    PIIGuardrail,
    SecretKeyRef,
    SecretsGuardrail,
)
from aiguard_sidecar.guardrails.base import Direction, Guardrail, ScanContext, Segment, Verdict

log = logging.getLogger(__name__)

SecretReader = Callable[[SecretKeyRef], bytes]
"""Reads a Secret key the policy names (the sidecar: from its mounted secrets directory)."""


@dataclass(frozen=True, slots=True)
class BuildContext:
    direction: Direction
    read_secret: SecretReader | None = None


Factory = Callable[[Any, BuildContext], Guardrail | None]


class GuardrailUnavailable(RuntimeError):
    """An enabled guardrail whose implementation cannot be loaded."""


class Unavailable:
    """Stands in for an enabled guardrail that could not be built: every check raises, and
    the engine's failureMode turns that into a block (closed) or an error finding (open)."""

    cpu_heavy = False

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def check(self, segments: Sequence[Segment], ctx: ScanContext) -> Verdict:
        raise GuardrailUnavailable(f"{self.name}: {self.reason}")


def _read(ctx: BuildContext, ref: SecretKeyRef | None) -> bytes | None:
    if ref is None or ctx.read_secret is None:
        return None
    return ctx.read_secret(ref)


def _repeats(ctx: BuildContext) -> bool:
    """Whether texts repeat, so detection results are worth keeping: requests re-send the
    system prompt and the conversation; responses and stream windows are new text."""
    return ctx.direction is Direction.INPUT


def _build_pii(cfg: PIIGuardrail, ctx: BuildContext) -> Guardrail | None:
    if not cfg.enabled:
        return None
    from aiguard_sidecar.guardrails import patterns, pii

    ner = None
    if cfg.ner.enabled:
        from aiguard_sidecar.guardrails import ner as ner_module  # presidio: only now

        wanted = [*cfg.ner.entities, *(set(cfg.entities) - patterns.SUPPORTED_ENTITIES)]
        ner = ner_module.NerAnalyzer(wanted, score_threshold=cfg.ner.score_threshold)
    return pii.PIIGuard(
        cfg, hash_key=_read(ctx, cfg.hash_key_secret_ref), ner=ner, cache=_repeats(ctx)
    )


def _build_secrets(cfg: SecretsGuardrail, ctx: BuildContext) -> Guardrail | None:
    if not cfg.enabled:
        return None
    from aiguard_sidecar.guardrails import secrets

    return secrets.SecretsGuard(cfg, cache=_repeats(ctx))


def _build_deny(cfg: KeywordGuardrail, ctx: BuildContext) -> Guardrail | None:
    if not cfg.keywords and not cfg.patterns:
        return None
    from aiguard_sidecar.guardrails import keywords

    return keywords.KeywordGuard(cfg)


def lazy(name: str, module: str, cls: str) -> Factory:
    """A factory for guardrail ``name`` in ``aiguard_sidecar.guardrails.<module>``, imported
    only when the policy enables it."""
    qualified = f"aiguard_sidecar.guardrails.{module}"

    def factory(cfg: Any, ctx: BuildContext) -> Guardrail | None:
        if not getattr(cfg, "enabled", True):
            return None
        try:
            mod = importlib.import_module(qualified)
        except ImportError as e:
            if e.name != qualified:
                raise  # the plug-in exists but one of its own imports is broken: say so
            log.error("guardrail module %s is not installed; its checks will fail", qualified)
            return Unavailable(name, f"module {qualified} is not installed")
        build = getattr(mod, "build", None)
        factory_cls = getattr(mod, cls, None)
        maker: Callable[[], Guardrail | None]
        if callable(build):
            maker = functools.partial(build, cfg, ctx)
        elif callable(factory_cls):
            maker = functools.partial(factory_cls, cfg)
        else:
            return Unavailable(name, f"{qualified} defines neither build() nor {cls}")
        try:
            built: Guardrail | None = maker()
        except Exception as e:
            log.error("guardrail %s cannot be built: %s", name, e)
            return Unavailable(name, f"cannot be built: {type(e).__name__}")
        return built

    return factory


def available(module: str) -> bool:
    """True when ``aiguard_sidecar.guardrails.<module>`` exists (it may still fail to build)."""
    return importlib.util.find_spec(f"aiguard_sidecar.guardrails.{module}") is not None


ORDER: Final[tuple[str, ...]] = (
    "deny",
    "prompt_injection",
    "moderation",
    "review",
    "secrets",
    "pii",
)

REGISTRY: Final[Mapping[str, Factory]] = {
    "deny": _build_deny,
    "prompt_injection": lazy("prompt_injection", "injection", "PromptInjectionGuardrail"),
    "moderation": lazy("moderation", "moderation", "ModerationGuardrail"),
    "review": lazy("review", "review", "ReviewGuardrail"),
    "secrets": _build_secrets,
    "pii": _build_pii,
}

# Sections of a direction's config that are not segment guardrails (handled by the engine).
NOT_CHAIN: Final = frozenset({"validation", "unscannable", "streaming"})


def build_chain(
    cfg: InputGuardrails | OutputGuardrails,
    ctx: BuildContext,
    *,
    registry: Mapping[str, Factory] = REGISTRY,
    order: Sequence[str] = ORDER,
) -> list[Guardrail]:
    """The direction's guardrails, in ``order``; sections without a factory are an error."""
    fields = [f.name for f in dataclasses.fields(cfg) if f.name not in NOT_CHAIN]
    unknown = [f for f in fields if f not in registry]
    if unknown:
        raise ValueError(f"no guardrail registered for {', '.join(unknown)}")
    chain: list[Guardrail] = []
    for name in [*order, *(n for n in fields if n not in order)]:
        if name not in fields:
            continue
        guardrail = registry[name](getattr(cfg, name), ctx)
        if guardrail is not None:
            chain.append(guardrail)
    return chain

"""``scan``: run a policy's guardrails over JSON lines, for policy testing and evaluation.

    aiguard-sidecar scan [--policy FILE] [--direction input|output] [--ner] [--moderation]
        < in.jsonl > out.jsonl
    kubectl-aiguard scan ...                 (execs the above)
    python -m aiguard_sidecar.scan ...

Each input line is ``{"id": ..., "text": "..."}``; each output line is::

    {"id": ..., "decision": "allow|redact|review|block",
     "findings": [{"guardrail", "type", "start", "end", "score", "action"}, ...],
     "redacted_text": "..."}

``start``/``end`` are character offsets into the input text. ``redacted_text`` is the text
after every edit the policy makes (blocked values are replaced too). A line that is not JSON,
or has no string ``text``, produces ``{"id": ..., "line": N, "error": "..."}`` and the run
goes on; the exit status is then 1 (0 when every line was scanned, 2 for a bad policy).
Output is flushed line by line, so the tool works in pipelines.

The engine is the sidecar's own (:func:`.guardrails.engine.build_engine`), built from the
policy FILE (an AIPolicy manifest or a compiled sidecar config; Secrets, e.g. the PII hash
key, are read from the config's ``secretsDir`` when present). Without ``--policy``, a built-in
default with every guardrail on: PII (every entity aiguard recognises, default actions),
secrets, prompt injection, deny lists empty; review off (it needs an approver); NER only with
``--ner``; moderation only with ``--moderation`` (it is opt-in in policies too: the classifier
still flags some short harmless texts). Plug-ins not installed are left out of the default, with a
warning on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import IO, Any

from aiguard_api import view
from aiguard_api.config import ConfigError, load_config, to_view, view_of
from aiguard_api.policy import (
    DEFAULT_PII_ENTITIES,
    NER,
    AIPolicySpec,
    Guardrails,
    InputGuardrails,
    ModerationGuardrail,
    OutputGuardrails,
    PIIAction,
    PIIGuardrail,
    PromptInjectionGuardrail,
    Provider,
    ProviderType,
    Route,
    RouteTarget,
)
from aiguard_sidecar.guardrails import patterns, registry
from aiguard_sidecar.guardrails.base import Direction, Role, ScanContext, Segment, Verdict
from aiguard_sidecar.guardrails.engine import Engine, build_engine


def default_pii(*, ner: bool = False) -> PIIGuardrail:
    entities = {
        e: DEFAULT_PII_ENTITIES.get(e, PIIAction.REDACT)
        for e in sorted(patterns.SUPPORTED_ENTITIES)
    }
    return PIIGuardrail(entities=entities, ner=NER(enabled=ner))


def default_spec(
    *, ner: bool = False, moderation: bool = False, warn: IO[str] | None = None
) -> AIPolicySpec:
    """The built-in scan policy: every guardrail on (moderation and NER on request), with a
    dummy provider that is never called."""
    injection_ok = registry.available("injection")
    moderation_ok = moderation and registry.available("moderation")
    if warn is not None:
        wanted = (
            ("prompt_injection", True, injection_ok),
            ("moderation", moderation, moderation_ok),
        )
        for name, asked, ok in wanted:
            if asked and not ok:
                print(f"scan: {name} guardrail not installed; left out", file=warn)
    pii = default_pii(ner=ner)
    return AIPolicySpec(
        providers=[
            Provider(
                name="dummy",
                type=ProviderType.OPENAI_COMPATIBLE,
                base_url="http://127.0.0.1:9/v1",
                allow_plaintext=True,
            )
        ],
        routes=[Route(models=["*"], targets=[RouteTarget(provider="dummy")])],
        guardrails=Guardrails(
            input=InputGuardrails(
                pii=pii,
                prompt_injection=PromptInjectionGuardrail(enabled=injection_ok),
                moderation=ModerationGuardrail(enabled=moderation_ok),
            ),
            output=OutputGuardrails(
                pii=pii.model_copy(
                    update={"entities": {e: PIIAction.REDACT for e in pii.entities}}
                ),
                moderation=ModerationGuardrail(enabled=moderation_ok),
            ),
        ),
    )


def load_engine(
    policy: str | None,
    direction: Direction,
    *,
    ner: bool = False,
    moderation: bool = False,
    warn: IO[str] | None = None,
) -> Engine:
    """The engine ``scan`` uses: from a policy file, or the built-in default."""
    reader: registry.SecretReader | None = None
    spec: view.AIPolicySpec
    if policy is None:
        spec = view_of(default_spec(ner=ner, moderation=moderation, warn=warn))
    else:
        cfg = to_view(load_config(policy))
        spec = cfg.spec
        reader = _secret_reader(cfg, warn)
    side = spec.guardrails.input if direction is Direction.INPUT else spec.guardrails.output
    engine = build_engine(side, failure_mode=spec.failure_mode, read_secret=reader)
    if policy is None and engine.unavailable:
        # the built-in default leaves out what cannot run here; a policy file gets its
        # failureMode (closed: every line blocked with an error finding), as in the sidecar
        if warn is not None:
            print(f"scan: left out (cannot load): {', '.join(engine.unavailable)}", file=warn)
        kept = [g for g in engine.guardrails if g.name not in engine.unavailable]
        engine = Engine(
            engine.direction,
            kept,
            failure_mode=engine.failure_mode,
            unscannable=engine.unscannable_action,
            validation=engine.validation,
        )
    return engine


def _secret_reader(cfg: view.SidecarConfig, warn: IO[str] | None) -> registry.SecretReader:
    def read(ref: view.SecretKeyRef) -> bytes:
        try:
            return cfg.secret_path(ref.name, ref.key).read_bytes()
        except OSError:
            if warn is not None:
                print(
                    f"scan: Secret {ref.name} key {ref.key} is not readable here; "
                    "using a random key (hashes will differ from the sidecar's)",
                    file=warn,
                )
            return os.urandom(32)

    return read


def result(item_id: Any, text: str, verdict: Verdict) -> dict[str, Any]:
    return {
        "id": item_id,
        "decision": verdict.decision.name.lower(),
        "findings": [
            {
                "guardrail": f.guardrail,
                "type": f.type,
                "start": f.start,
                "end": f.end,
                "score": round(f.score, 3),
                "action": f.action,
            }
            for f in verdict.findings
        ],
        "redacted_text": verdict.edits.get(0, text),
    }


def scan_lines(
    engine: Engine, lines: Iterable[str], out: IO[str], *, model: str | None = None
) -> int:
    """Scan each JSON line, write one result line each; the number of bad lines."""
    ctx = ScanContext(direction=engine.direction, model=model)
    bad = 0
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        item_id: Any = None
        try:
            item = json.loads(line)
            if not isinstance(item, dict):
                raise ValueError("line is not a JSON object")
            item_id = item.get("id")
            text = item.get("text")
            if not isinstance(text, str):
                raise ValueError('"text" must be a string')
            role = Role.OUTPUT if engine.direction is Direction.OUTPUT else Role.USER
            verdict = engine.check([Segment(0, text, role)], ctx)
            record = result(item_id, text, verdict)
        except Exception as e:
            bad += 1
            msg = f"invalid JSON: {e}" if isinstance(e, json.JSONDecodeError) else str(e)
            record = {"id": item_id, "line": n, "error": msg or type(e).__name__}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()
    return bad


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="scan",
        description="Run aiguard guardrails over JSON lines {id, text} from stdin.",
    )
    ap.add_argument(
        "--policy", help="AIPolicy manifest or compiled sidecar config (default: built-in)"
    )
    ap.add_argument("--direction", choices=["input", "output"], default="input")
    ap.add_argument("--ner", action="store_true", help="built-in policy: also load NER (Presidio)")
    ap.add_argument(
        "--moderation", action="store_true", help="built-in policy: also run moderation"
    )
    ap.add_argument("--model", default=None, help="model name to put in the scan context")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        engine = load_engine(
            args.policy,
            Direction(args.direction),
            ner=args.ner,
            moderation=args.moderation,
            warn=sys.stderr,
        )
    except ConfigError as e:
        print(f"scan: {e}", file=sys.stderr)
        return 2
    if engine.unavailable:
        print(f"scan: guardrails not installed: {', '.join(engine.unavailable)}", file=sys.stderr)
    bad = scan_lines(engine, sys.stdin, sys.stdout, model=args.model)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

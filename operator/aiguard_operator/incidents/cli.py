"""``kubectl aiguard incidents | ack | resolve`` (registered in :mod:`aiguard_operator.cli`).

::

    incidents [-n NS | -A] [--state S] [-o table|json]   list AIIncidents, newest last-seen first
    ack NAME [-n NS] [--note T]                          open → acknowledged
    resolve NAME [-n NS] [--note T]                      open | acknowledged → resolved

``ack`` and ``resolve`` go through :func:`transitions.transition`: the state change is
conditional on the incident being unchanged since it was read, and ``status.history`` records
who (the API server's answer to a SelfSubjectReview, not a name typed here), when, from, to,
and the note.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from aiguard_api import audit
from aiguard_api.constants import API_GROUP, API_VERSION, PLURAL_INCIDENT
from aiguard_api.policy import IncidentState
from aiguard_operator import kube
from aiguard_operator.incidents import transitions

LABEL_KIND = f"{API_GROUP}/incident-kind"


@dataclass(frozen=True)
class IncidentRow:
    namespace: str
    name: str
    severity: str
    state: str
    kind: str
    guardrail: str
    count: int
    pod: str
    policy: str
    first_seen: str
    last_seen: str
    reason: str
    notified: bool


def incident_row(obj: Mapping[str, Any]) -> IncidentRow:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    labels = meta.get("labels") or {}
    approval = spec.get("approval") or {}
    return IncidentRow(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        severity=str(spec.get("severity", "")),
        state=str(spec.get("state") or IncidentState.OPEN.value),
        kind=str(labels.get(LABEL_KIND) or ("approval" if approval else spec.get("guardrail", ""))),
        guardrail=str(spec.get("guardrail", "")),
        count=int(spec.get("count", 1)),
        pod=str(spec.get("pod") or ""),
        policy=str(spec.get("policy", "")),
        first_seen=str(spec.get("firstSeen", "")),
        last_seen=str(spec.get("lastSeen", "")),
        reason=str(spec.get("reason", "")),
        notified=bool((obj.get("status") or {}).get("notified", False)),
    )


def _ago(value: str, now: dt.datetime) -> str:
    try:
        then = dt.datetime.fromtimestamp(audit.parse_time(value), dt.UTC)
    except (ValueError, TypeError):
        return "?"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def render_table(rows: Sequence[IncidentRow], *, all_namespaces: bool, now: dt.datetime) -> str:
    header = ["NAME", "SEVERITY", "STATE", "KIND", "COUNT", "POD", "POLICY", "LAST SEEN"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    table = [header]
    for r in rows:
        line = [
            r.name,
            r.severity,
            r.state,
            r.kind,
            str(r.count),
            r.pod or "-",
            r.policy,
            _ago(r.last_seen, now),
        ]
        if all_namespaces:
            line.insert(0, r.namespace)
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return (
        "\n".join(
            "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in table
        )
        + "\n"
    )


async def fetch_incidents(
    creds: kube.Credentials, *, namespace: str | None
) -> list[dict[str, Any]]:
    async with kube.Client(creds) as api:
        return await api.list(
            kube.path(
                group=API_GROUP, version=API_VERSION, plural=PLURAL_INCIDENT, namespace=namespace
            )
        )


def cmd_incidents(args: argparse.Namespace, out: TextIO) -> int:
    creds = kube.load(args.kubeconfig, context=args.context)
    namespace = None if args.all_namespaces else (args.namespace or creds.namespace)
    items = asyncio.run(fetch_incidents(creds, namespace=namespace))
    rows = [incident_row(i) for i in items]
    if args.state:
        rows = [r for r in rows if r.state == args.state]
    rows.sort(key=lambda r: (r.last_seen, r.namespace, r.name), reverse=True)
    if args.output == "json":
        out.write(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    elif not rows:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        state = f" {args.state}" if args.state else ""
        print(f"No{state} AIIncidents found in {where}.", file=sys.stderr)
    else:
        out.write(render_table(rows, all_namespaces=namespace is None, now=dt.datetime.now(dt.UTC)))
    return 0


MOVES: dict[str, tuple[IncidentState, set[IncidentState]]] = {
    "ack": (IncidentState.ACKNOWLEDGED, {IncidentState.OPEN}),
    "resolve": (IncidentState.RESOLVED, {IncidentState.OPEN, IncidentState.ACKNOWLEDGED}),
}


async def move(
    creds: kube.Credentials, namespace: str, name: str, command: str, note: str
) -> tuple[str, dict[str, Any]]:
    """Run ``ack`` or ``resolve``; return the actor and the updated incident."""
    to, allowed = MOVES[command]
    async with kube.Client(creds) as api:
        actor = await transitions.whoami(api)
        obj = await transitions.transition(
            api, namespace, name, to=to, actor=actor, note=note, allowed_from=allowed
        )
    return actor, obj


def cmd_move(args: argparse.Namespace, out: TextIO) -> int:
    creds = kube.load(args.kubeconfig, context=args.context)
    namespace = args.namespace or creds.namespace
    try:
        actor, _ = asyncio.run(move(creds, namespace, args.name, args.command, args.note))
    except transitions.TransitionError as e:
        print(f"kubectl-aiguard: {e}", file=sys.stderr)
        return 1
    except kube.NotFound:
        print(f"kubectl-aiguard: AIIncident {namespace}/{args.name} not found", file=sys.stderr)
        return 1
    to = MOVES[args.command][0]
    out.write(f"aiincident {namespace}/{args.name} {to.value} by {actor}\n")
    return 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``incidents``, ``ack`` and ``resolve`` to the plugin's subcommands."""
    inc = sub.add_parser(
        "incidents",
        parents=[common],
        help="list AIIncidents: severity, state, counts",
        description="List AIIncidents (security events aggregated per pod, kind and window, "
        "and human-review requests) with severity, state, count and when last seen.",
    )
    scope = inc.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    inc.add_argument("--state", choices=[s.value for s in IncidentState], help="only this state")
    inc.add_argument("-o", "--output", choices=["table", "json"], default="table")
    inc.set_defaults(func=cmd_incidents)
    for command, text in (
        ("ack", "acknowledge an open AIIncident"),
        ("resolve", "resolve an open or acknowledged AIIncident"),
    ):
        p = sub.add_parser(
            command,
            parents=[common],
            help=text,
            description=f"{text[0].upper()}{text[1:]}; status.history records who (as the "
            "API server authenticates you), when, and the note.",
        )
        p.add_argument("name", help="the AIIncident")
        p.add_argument("-n", "--namespace", help="namespace (default: the context's)")
        p.add_argument("--note", default="", help="why (recorded in status.history)")
        p.set_defaults(func=cmd_move)

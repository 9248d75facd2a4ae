"""``kubectl-aiguard``: the kubectl plugin (``kubectl aiguard ...`` once it is on PATH).

Subcommands::

    status [NAME] [-n NS | -A] [-o table|wide|json]   AIPolicies: Ready, hash, governed pods
    verify-audit (--collector URL | FILE...)          audit hash chains: gaps, edits, order
    scan [--policy FILE] [--direction input|output]   guardrails over JSON lines (stdin→stdout)
    incidents [-n NS | -A] [--state S] [-o table|json] AIIncidents (aiguard_operator.incidents.cli)
    ack|resolve NAME [-n NS] [--note T]               move an AIIncident on, recorded
    approve|deny NAME [-n NS] [--note T]              decide a request held for human review
    evidence --from D [--to D] --out DIR --collector URL   SOC 2 evidence bundle (evidence/)
    evidence --verify DIR                             check a bundle against its manifest

Every subcommand takes ``--kubeconfig`` and ``--context`` (as kubectl does) and talks to the
API server through :mod:`aiguard_operator.kube`, not by running kubectl: the plugin then
works without a kubectl of a matching version, and it reads structured objects instead of
parsing kubectl's text. Later subcommands (scan, evidence, verify-audit, incidents, approve,
deny) register themselves in :func:`build_parser` the same way ``status`` does.

Exit codes: 0 success, 1 API or kubeconfig error, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from aiguard_api import audit, constants
from aiguard_operator import approvals, kube, status
from aiguard_operator.evidence import command as evidence_command
from aiguard_operator.incidents import cli as incidents_cli

Command = Callable[[argparse.Namespace, TextIO], int]


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class PolicyRow:
    """One line of ``kubectl aiguard status``."""

    namespace: str
    name: str
    mode: str
    ready: str
    reason: str
    message: str
    governed_pods: int
    injected_pods: int
    compiled_hash: str
    config_map: str
    generation: int | None
    observed_generation: int | None
    created: str

    @property
    def up_to_date(self) -> bool:
        return self.generation is None or self.observed_generation == self.generation


def policy_row(obj: Mapping[str, Any]) -> PolicyRow:
    """The row of one AIPolicy object as the API returns it."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    st = obj.get("status") or {}
    ready = status.find(st.get("conditions") or [], status.READY) or {}
    cov = st.get("coverage") or {}
    return PolicyRow(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        mode=str(spec.get("mode", "enforce")),
        ready=str(ready.get("status", "Unknown")),
        reason=str(ready.get("reason", "")),
        message=str(ready.get("message", "")),
        governed_pods=int(cov.get("governedPods", 0)),
        injected_pods=int(cov.get("injectedPods", 0)),
        compiled_hash=str(st.get("compiledHash") or ""),
        config_map=str(st.get("configMap") or ""),
        generation=meta.get("generation"),
        observed_generation=st.get("observedGeneration"),
        created=str(meta.get("creationTimestamp", "")),
    )


def age(created: str, now: dt.datetime) -> str:
    """The age column as kubectl prints it (its HumanDuration): 95s, 7m3s, 42m, 5h3m, 12d."""
    if not created:
        return "<unknown>"
    then = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    seconds = int((now - then).total_seconds())
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24
        return f"{days // 365}y{days % 365}d" if days % 365 else f"{days // 365}y"
    return f"{hours // 24 // 365}y"


def short_hash(value: str) -> str:
    algo, _, digest = value.partition(":")
    return f"{algo}:{digest[:12]}" if digest else (value or "-")


def render_table(
    rows: Sequence[PolicyRow], *, wide: bool, all_namespaces: bool, now: dt.datetime
) -> str:
    """The table ``status`` prints, then one explanatory line per policy that is not Ready."""
    header = ["NAME", "MODE", "READY", "PODS", "INJECTED", "HASH", "AGE"]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
    if wide:
        header += ["CONFIGMAP", "REASON"]
    table = [header]
    for r in rows:
        ready = r.ready if r.up_to_date else f"{r.ready}*"
        line = [
            r.name,
            r.mode,
            ready,
            str(r.governed_pods),
            str(r.injected_pods),
            r.compiled_hash if wide else short_hash(r.compiled_hash),
            age(r.created, now),
        ]
        if all_namespaces:
            line.insert(0, r.namespace)
        if wide:
            line += [r.config_map or "-", r.reason or "-"]
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    out = [
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    notes = [f"{r.namespace}/{r.name}: {r.reason}: {r.message}" for r in rows if r.ready != "True"]
    if any(not r.up_to_date for r in rows):
        notes.append("* the operator has not processed the latest change of this policy yet")
    if notes:
        out += ["", *notes]
    return "\n".join(out) + "\n"


async def fetch_policies(
    creds: kube.Credentials, *, namespace: str | None, name: str | None
) -> list[dict[str, Any]]:
    async with kube.Client(creds) as api:
        base = dict(group=constants.API_GROUP, version=constants.API_VERSION)
        if name is not None:
            assert namespace is not None
            obj = await api.get(
                kube.path(**base, plural=constants.PLURAL_POLICY, namespace=namespace, name=name)
            )
            return [obj]
        return await api.list(
            kube.path(**base, plural=constants.PLURAL_POLICY, namespace=namespace)
        )


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    creds = kube.load(args.kubeconfig, context=args.context)
    namespace = None if args.all_namespaces else (args.namespace or creds.namespace)
    if args.name and namespace is None:
        raise UsageError("a NAME needs a namespace, not --all-namespaces")
    items = asyncio.run(fetch_policies(creds, namespace=namespace, name=args.name))
    rows = sorted((policy_row(i) for i in items), key=lambda r: (r.namespace, r.name))
    if args.output == "json":
        out.write(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    elif not rows:
        where = "any namespace" if namespace is None else f"namespace {namespace}"
        print(f"No AIPolicies found in {where}.", file=sys.stderr)
    else:
        out.write(
            render_table(
                rows,
                wide=args.output == "wide",
                all_namespaces=namespace is None,
                now=dt.datetime.now(dt.UTC),
            )
        )
    return 0


# --------------------------------------------------------------------------- verify-audit
#
# kubectl aiguard verify-audit (--collector URL | FILE...): the hash chains of audit events,
# from the collector or from exported JSON-lines files (events, plus purge records that say
# where purged chains now start). Exit 0: every chain intact; 1: problems (each names the
# event: instance, sequence, id, file line) or the collector could not be read.


@dataclass
class AuditInput:
    events: list[Any]
    starts: dict[str, audit.ChainStart]
    heads: dict[str, int]
    origins: list[str]
    """Where each event came from (``file:line`` or the collector), by position."""
    purges: list[dict[str, Any]]


def read_audit_files(paths: Sequence[str]) -> AuditInput:
    """Events and purge records from JSON-lines files; a line that is not JSON is kept as a
    string so that the verifier reports it (``invalid``) at its line."""
    data = AuditInput([], {}, {}, [], [])
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    doc: Any = json.loads(line)
                except ValueError:
                    doc = line.rstrip("\n")
                if isinstance(doc, dict) and doc.get("schema") == audit.PURGE_SCHEMA:
                    data.purges.append(doc)
                    data.starts.update(audit.PurgeRecord.model_validate(doc).starts())
                    continue
                data.events.append(doc)
                data.origins.append(f"{path}:{number}")
    return data


async def fetch_audit(
    url: str,
    *,
    token: str | None,
    ca_file: str | None,
    namespace: str | None,
    instance: str | None,
) -> AuditInput:
    """Whole chains from the collector, in sequence order, with their starts and heads."""
    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ssl_ctx: Any = None
    if ca_file:
        ssl_ctx = ssl.create_default_context(cafile=ca_file)
    data = AuditInput([], {}, {}, [], [])
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:

        async def get(path: str, params: dict[str, str]) -> Any:
            async with http.get(base + path, params=params, ssl=ssl_ctx) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise CollectorError(f"GET {path}: {resp.status}: {text[:300]}")
                return json.loads(text)

        ns = {"namespace": namespace} if namespace else {}
        chains = (await get("/v1/chains", ns))["chains"]
        for c in chains:
            if instance is not None and c["instance"] != instance:
                continue
            data.heads[c["instance"]] = int(c["head"]["sequence"])
            start = c.get("start")
            if start:
                data.starts[c["instance"]] = audit.ChainStart(
                    int(start["sequence"]), str(start["prev_hash"]), start.get("purge_id")
                )
        data.purges = (await get("/v1/purges", ns))["purges"]
        params = {"order": "sequence", "limit": "5000", **ns}
        if instance is not None:
            params["instance"] = instance
        while True:
            page = await get("/v1/events", params)
            data.events.extend(page["events"])
            if not page.get("next"):
                break
            params["after"] = page["next"]
    data.origins = [f"{base} item {i + 1}" for i in range(len(data.events))]
    return data


class CollectorError(Exception):
    """The collector answered with an error."""


def _token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token)
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            return f.read().strip()
    return os.environ.get("AIGUARD_COLLECTOR_TOKEN") or None


def cmd_verify_audit(args: argparse.Namespace, out: TextIO) -> int:
    if bool(args.files) == bool(args.collector):
        raise UsageError("give either --collector URL or exported FILEs")
    if args.files:
        if args.save:
            raise UsageError("--save exports from a collector; FILEs are exports already")
        data = read_audit_files(args.files)
    else:
        try:
            data = asyncio.run(
                fetch_audit(
                    args.collector,
                    token=_token(args),
                    ca_file=args.ca_file,
                    namespace=args.namespace,
                    instance=args.instance,
                )
            )
        except (CollectorError, aiohttp.ClientError, ValueError, KeyError) as e:
            print(f"kubectl-aiguard: cannot read the collector: {e}", file=sys.stderr)
            return 1
        if args.save:
            with open(args.save, "w", encoding="utf-8") as f:
                for record in data.purges:
                    f.write(json.dumps(record, sort_keys=True) + "\n")
                for event in data.events:
                    f.write(audit.canonical(event).decode() + "\n")
    problems = audit.verify_chain(data.events, starts=data.starts, heads=data.heads)
    chains = {e.get("instance") for e in data.events if isinstance(e, dict)}
    if args.output == "json":
        report = {
            "ok": not problems,
            "events": len(data.events),
            "chains": len(chains),
            "problems": [{**p.to_json(), "at": _origin(data, p.position)} for p in problems],
        }
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        for p in problems:
            out.write(f"{p}  [{_origin(data, p.position)}]\n")
        verdict = "OK" if not problems else f"{len(problems)} problem(s)"
        out.write(f"verified {len(data.events)} events in {len(chains)} chain(s): {verdict}\n")
    return 1 if problems else 0


def _origin(data: AuditInput, position: int | None) -> str:
    if position is None or not 0 <= position < len(data.origins):
        return "-"
    return data.origins[position]


# --------------------------------------------------------------------------- parser


class UsageError(Exception):
    """Arguments that parse but do not make sense together."""


def _cluster_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    common.add_argument("--context", help="kubeconfig context (default: current-context)")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl aiguard",
        description="aiguard: LLM policy enforcement on Kubernetes.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _cluster_options()

    st = sub.add_parser(
        "status",
        parents=[common],
        help="list AIPolicies: Ready, compiled hash, governed pods",
        description="List AIPolicies with their Ready condition, compiled config hash and the "
        "number of pods each governs (and how many of those run the sidecar).",
    )
    st.add_argument("name", nargs="?", help="one policy (default: all in the namespace)")
    scope = st.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    st.add_argument("-o", "--output", choices=["table", "wide", "json"], default="table")
    st.set_defaults(func=cmd_status)

    va = sub.add_parser(
        "verify-audit",
        help="verify audit hash chains (collector or exported files)",
        description="Verify the hash chains of audit events, from the collector or from "
        "exported JSON-lines files, and report every gap, reordering, duplicate, edit and "
        "broken link with the exact event. Exit 0: intact; 1: problems or unreadable.",
    )
    va.add_argument("files", nargs="*", metavar="FILE", help="exported events (JSON lines)")
    va.add_argument("--collector", metavar="URL", help="collector base URL")
    va.add_argument("--token", help="bearer token for the collector")
    va.add_argument("--token-file", help="file holding the bearer token")
    va.add_argument("--ca-file", help="CA bundle of the collector's certificate")
    va.add_argument("-n", "--namespace", help="only chains of this namespace")
    va.add_argument("--instance", help="only this chain (NAMESPACE/POD/BOOT)")
    va.add_argument("--save", metavar="FILE", help="also export what was fetched (JSON lines)")
    va.add_argument("-o", "--output", choices=["text", "json"], default="text")
    va.set_defaults(func=cmd_verify_audit)

    # Listed for --help only: main() hands `scan ...` to aiguard-sidecar before parsing.
    sc = sub.add_parser(
        "scan",
        add_help=False,
        help="run the sidecar's guardrails over JSON lines (aiguard-sidecar scan --help)",
    )
    sc.set_defaults(func=lambda args, out: run_scan([]))

    evidence_command.register(sub, common)
    incidents_cli.add_parsers(sub, common)  # incidents, ack, resolve
    approvals.add_commands(sub, common)  # approve, deny
    return parser


# kubectl aiguard scan: the sidecar's own guardrail engine over JSON lines. The operator package
# never imports the sidecar (layering), so the plugin hands over to `aiguard-sidecar scan`,
# installed beside it: one engine, whichever command a person types.
SCAN_COMMAND = "aiguard-sidecar"


def run_scan(args: Sequence[str]) -> int:
    here = Path(sys.argv[0]).resolve().parent if sys.argv and sys.argv[0] else None
    candidates = [here / SCAN_COMMAND] if here else []
    found = next((str(c) for c in candidates if c.is_file()), None) or shutil.which(SCAN_COMMAND)
    if found is None:
        print(
            "kubectl-aiguard: scan needs aiguard-sidecar (pip install 'aiguard[sidecar]')",
            file=sys.stderr,
        )
        return 1
    return subprocess.call([found, "scan", *args])


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["scan"]:
        return run_scan(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    try:
        return func(args, out or sys.stdout)
    except UsageError as e:
        parser.error(str(e))
    except kube.KubeConfigError as e:
        print(f"kubectl-aiguard: {e}", file=sys.stderr)
    except kube.ApiError as e:
        print(f"kubectl-aiguard: {e.message or e}", file=sys.stderr)
    except OSError as e:  # connection refused, TLS errors
        print(f"kubectl-aiguard: cannot reach the API server: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())

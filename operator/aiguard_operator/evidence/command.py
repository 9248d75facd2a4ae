"""``kubectl aiguard evidence``: arguments, and the run (collect → build → bundle).

::

    kubectl aiguard evidence --from 2025-06-01 --to 2025-06-30 --out DIR \\
        --collector URL [--token T | --token-file F] [--ca-file CA] [-n NS]
    kubectl aiguard evidence --verify DIR

Dates: ``YYYY-MM-DD`` or RFC 3339. ``--from`` is inclusive, ``--to`` exclusive; a date alone
in ``--to`` means the end of that day (``--to 2025-06-30`` covers all of June 30).
Exit codes: 0 bundle written (or verified intact); 1 API/collector error, or the bundle does
not verify; 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from pathlib import Path
from typing import TextIO

from aiguard_api import __version__, audit
from aiguard_operator import kube
from aiguard_operator.evidence import build, bundle, collect

GENERATOR = "kubectl-aiguard evidence"


class Usage(ValueError):
    pass


def parse_when(value: str, *, end: bool) -> str:
    """``YYYY-MM-DD`` (start of the day; with ``end``, start of the next day) or RFC 3339 →
    RFC 3339 UTC."""
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            if end:
                day += dt.timedelta(days=1)
            return audit.format_time(
                dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()
            )
        return audit.format_time(audit.parse_time(value))
    except ValueError:
        raise Usage(f"{value!r} is not a date (YYYY-MM-DD) or an RFC 3339 time") from None


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    ev = sub.add_parser(
        "evidence",
        parents=[common],
        help="write a SOC 2 evidence bundle for a period (or --verify one)",
        description="Build a SOC 2 evidence bundle from the cluster (AIPolicies, RBAC, "
        "AIIncidents, coverage) and the audit collector: index.html, report.md, "
        "evidence.json, CSVs, dataflow.svg and manifest.json with the SHA-256 of every file. "
        "--verify DIR checks a bundle against its manifest.",
    )
    ev.add_argument("--from", dest="start", metavar="DATE", help="start (inclusive)")
    ev.add_argument(
        "--to", dest="end", metavar="DATE", help="end (exclusive; a date: its end; default now)"
    )
    ev.add_argument("--out", metavar="DIR", help="new directory for the bundle")
    ev.add_argument("--verify", metavar="DIR", help="verify an existing bundle instead")
    ev.add_argument("--collector", metavar="URL", help="collector base URL")
    ev.add_argument("--token", help="bearer token for the collector")
    ev.add_argument("--token-file", help="file holding the bearer token")
    ev.add_argument("--ca-file", help="CA bundle of the collector's certificate")
    ev.add_argument("-n", "--namespace", help="only this namespace (default: every namespace)")
    ev.set_defaults(func=run)


def _token(args: argparse.Namespace) -> str | None:
    if args.token:
        return str(args.token)
    if args.token_file:
        return Path(args.token_file).read_text().strip()
    return os.environ.get("AIGUARD_COLLECTOR_TOKEN") or None


def run(args: argparse.Namespace, out: TextIO) -> int:
    try:
        return _run(args, out)
    except Usage as e:
        print(f"kubectl aiguard evidence: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, out: TextIO) -> int:
    if args.verify:
        if args.out or args.start:
            raise Usage("--verify DIR takes no --from/--out")
        problems = bundle.verify(Path(args.verify))
        for p in problems:
            out.write(f"{p}\n")
        out.write(
            f"bundle {args.verify}: "
            + (
                "every file matches manifest.json\n"
                if not problems
                else f"{len(problems)} problem(s)\n"
            )
        )
        return 1 if problems else 0
    if not (args.start and args.out and args.collector):
        raise Usage("give --from DATE, --out DIR and --collector URL (or --verify DIR)")
    now = dt.datetime.now(dt.UTC)
    start = parse_when(args.start, end=False)
    end = parse_when(args.end, end=True) if args.end else audit.format_time(now.timestamp())
    if audit.parse_time(start) >= audit.parse_time(end):
        raise Usage(f"--from {start} is not before --to {end}")
    target = Path(args.out)
    if target.exists() and any(target.iterdir()):
        raise Usage(f"--out {target} is not empty; give a new directory")
    creds = kube.load(args.kubeconfig, context=args.context)
    client = collect.CollectorClient(args.collector, token=_token(args), ca_file=args.ca_file)
    try:
        got = asyncio.run(
            collect.collect(creds, client, start=start, end=end, namespace=args.namespace)
        )
    except collect.CollectorError as e:
        print(f"kubectl-aiguard: cannot read the collector: {e}", file=sys.stderr)
        return 1
    provenance = build.Provenance(
        period_from=start,
        period_to=end,
        generated_at=audit.format_time(now.timestamp()),
        generator=GENERATOR,
        generator_version=__version__,
        cluster_server=creds.server,
        cluster_version=got.cluster_version,
        collector_url=client.base,
        namespace=args.namespace,
    )
    report = build.build(got.sources, provenance)
    manifest = bundle.write(report, target)
    statuses = {c.id: c.status for c in report.controls}
    out.write(
        f"evidence bundle written to {target}/ ({len(manifest['files']) + 1} files, "
        f"{report.totals['events']} audit events, digest {manifest['digest']})\n"
    )
    for c in report.controls:
        out.write(f"  {c.id:<6} {statuses[c.id]:<10} {c.title}\n")
    out.write(
        f"open {target / 'index.html'}; check later: kubectl aiguard evidence --verify {target}\n"
    )
    return 0

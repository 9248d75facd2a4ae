"""cli.py: `kubectl aiguard status` rendering, and a parser with no empty subcommands."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aiguard_operator import cli

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def policy_obj(
    name: str, *, ready: str = "True", generation: int = 2, observed: int = 2, **status: Any
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "generation": generation,
            "creationTimestamp": "2026-06-01T11:55:00Z",
        },
        "spec": {"mode": "audit"},
        "status": {
            "observedGeneration": observed,
            "compiledHash": "sha256:0123456789abcdef0123",
            "configMap": f"aiguard-policy-{name}",
            "coverage": {"governedPods": 3, "injectedPods": 2},
            "conditions": [
                {
                    "type": "Ready",
                    "status": ready,
                    "reason": "Compiled" if ready == "True" else "SecretNotFound",
                    "message": "ok" if ready == "True" else 'Secret "k" not found',
                }
            ],
            **status,
        },
    }


def test_row_reads_ready_hash_and_pods_from_status() -> None:
    row = cli.policy_row(policy_obj("chat"))

    assert (row.namespace, row.name, row.mode, row.ready) == ("team-a", "chat", "audit", "True")
    assert (row.governed_pods, row.injected_pods) == (3, 2)
    assert row.compiled_hash == "sha256:0123456789abcdef0123"
    assert row.up_to_date


def test_row_of_a_policy_the_operator_has_not_seen_is_unknown() -> None:
    row = cli.policy_row({"metadata": {"name": "new", "namespace": "x"}, "spec": {}})

    assert (row.ready, row.mode, row.governed_pods, row.compiled_hash) == (
        "Unknown",
        "enforce",
        0,
        "",
    )


def test_table_lists_policies_and_explains_the_ones_not_ready() -> None:
    rows = [
        cli.policy_row(policy_obj("chat")),
        cli.policy_row(policy_obj("claims", ready="False")),
    ]

    text = cli.render_table(rows, wide=False, all_namespaces=False, now=NOW)

    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "MODE", "READY", "PODS", "INJECTED", "HASH", "AGE"]
    assert lines[1].split() == ["chat", "audit", "True", "3", "2", "sha256:0123456789ab", "5m"]
    assert lines[2].split()[:3] == ["claims", "audit", "False"]
    assert lines[-1] == 'team-a/claims: SecretNotFound: Secret "k" not found'


def test_wide_all_namespaces_table_has_namespace_configmap_and_reason() -> None:
    rows = [cli.policy_row(policy_obj("chat", generation=3, observed=2))]

    text = cli.render_table(rows, wide=True, all_namespaces=True, now=NOW)

    header, row = text.splitlines()[:2]
    assert header.split()[0] == "NAMESPACE"
    assert header.split()[-2:] == ["CONFIGMAP", "REASON"]
    assert row.split() == [
        "team-a",
        "chat",
        "audit",
        "True*",
        "3",
        "2",
        "sha256:0123456789abcdef0123",
        "5m",
        "aiguard-policy-chat",
        "Compiled",
    ]
    assert text.rstrip().endswith("has not processed the latest change of this policy yet")


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (5, "5s"),
        (119, "119s"),
        (125, "2m5s"),
        (600, "10m"),
        (3 * 3600 + 60, "3h1m"),
        (30 * 3600, "30h"),
        (3 * 86400 + 7200, "3d2h"),
        (40 * 86400, "40d"),
        (3 * 365 * 86400 + 86400, "3y1d"),
    ],
)
def test_age_is_shown_the_way_kubectl_shows_it(seconds: int, shown: str) -> None:
    created = (NOW - dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")

    assert cli.age(created, NOW) == shown


def test_every_subcommand_does_something() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    # DESIGN.md's command surface, plus ack/resolve for incidents.
    assert set(sub.choices) == {
        "status",
        "verify-audit",
        "evidence",
        "incidents",
        "ack",
        "resolve",
        "approve",
        "deny",
        "scan",
    }
    needs_name = {"ack", "resolve", "approve", "deny"}
    for name in sub.choices:
        argv = [name, "some-incident"] if name in needs_name else [name]
        if name == "evidence":
            argv += ["--from", "2026-01-01", "--out", "bundle"]
        args = parser.parse_args(argv)
        assert callable(args.func)


def test_status_takes_kubectl_style_options() -> None:
    args = cli.build_parser().parse_args(
        ["status", "chat", "-n", "team-a", "-o", "wide", "--kubeconfig", "k", "--context", "c"]
    )

    assert (args.name, args.namespace, args.output, args.kubeconfig, args.context) == (
        "chat",
        "team-a",
        "wide",
        "k",
        "c",
    )
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["status", "-n", "a", "-A"])


def test_missing_kubeconfig_is_reported_not_raised(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["status", "--kubeconfig", str(tmp_path / "nope")])

    assert code == 1
    assert "does not exist" in capsys.readouterr().err


def test_kubectl_aiguard_scan_runs_the_sidecars_engine(tmp_path: Path) -> None:
    """`kubectl aiguard scan` hands over to `aiguard-sidecar scan`: one engine for both."""
    policy = tmp_path / "p.yaml"
    policy.write_text(
        json.dumps(
            {
                "apiVersion": "aiguard.dev/v1alpha1",
                "kind": "AIPolicy",
                "metadata": {"name": "scan"},
                "spec": {
                    "providers": [
                        {
                            "name": "p",
                            "type": "openai-compatible",
                            "baseURL": "http://127.0.0.1:9/v1",
                            "allowPlaintext": True,
                        }
                    ],
                    "routes": [{"models": ["*"], "targets": [{"provider": "p"}]}],
                    "guardrails": {"input": {"promptInjection": {"enabled": False}}},
                },
            }
        )
    )
    plugin = Path(sys.executable).parent / "kubectl-aiguard"
    proc = subprocess.run(
        [str(plugin), "scan", "--policy", str(policy)],
        input='{"id": "a", "text": "write to jane@example.com"}\n',
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["id"] == "a"
    assert out["redacted_text"] == "write to <EMAIL_ADDRESS>"

"""``scan``: the CLI over JSON lines, run as a process, and its agreement with the engine."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from aiguard_sidecar import scan
from aiguard_sidecar.guardrails.base import Direction, Role, ScanContext, Segment

LINES: list[dict[str, Any]] = [
    {"id": 1, "text": "mail me at john.doe@example.com or call +1-202-555-0143"},
    {"id": "two", "text": "my card is 4111 1111 1111 1111"},
    {"id": 3, "text": "nothing to see here"},
    {"id": 4, "text": "Ünïcødé 😀 bob@example.org"},
]


def run(args: list[str], stdin: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiguard_sidecar.scan", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_policy(path: Path, guardrails: dict[str, Any]) -> Path:
    policy = {
        "apiVersion": "aiguard.dev/v1alpha1",
        "kind": "AIPolicy",
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {
            "providers": [
                {
                    "name": "local",
                    "type": "openai-compatible",
                    "baseURL": "http://127.0.0.1:9/v1",
                    "allowPlaintext": True,
                }
            ],
            "routes": [{"models": ["*"], "targets": [{"provider": "local"}]}],
            "guardrails": guardrails,
        },
    }
    path.write_text(yaml.safe_dump(policy))
    return path


@pytest.fixture
def pii_only(tmp_path: Path) -> Path:
    """PII and secrets only: no plug-in to load (the default policy also builds the prompt
    injection guardrail, whose start-up time is not this test's concern)."""
    return write_policy(
        tmp_path / "pii-only.yaml", {"input": {"promptInjection": {"enabled": False}}}
    )


def jsonl(items: Sequence[object]) -> str:
    return "".join(json.dumps(i) + "\n" for i in items)


def test_scan_cli_default_policy() -> None:
    proc = run([], jsonl(LINES), timeout=900)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["id"] for o in out] == [1, "two", 3, 4]
    assert out[0]["decision"] == "redact"
    assert out[0]["redacted_text"] == "mail me at <EMAIL_ADDRESS> or call <PHONE_NUMBER>"
    assert [(f["guardrail"], f["type"]) for f in out[0]["findings"]] == [
        ("pii", "EMAIL_ADDRESS"),
        ("pii", "PHONE_NUMBER"),
    ]
    assert set(out[0]["findings"][0]) == {"guardrail", "type", "start", "end", "score", "action"}
    assert out[1]["decision"] == "block"
    assert out[1]["findings"][0]["action"] == "block"
    assert out[2] == {
        "id": 3,
        "decision": "allow",
        "findings": [],
        "redacted_text": "nothing to see here",
    }
    f = out[3]["findings"][0]
    assert LINES[3]["text"][f["start"] : f["end"]] == "bob@example.org"


def test_bad_lines_report_and_the_run_goes_on(pii_only: Path) -> None:
    stdin = (
        "not json\n" + json.dumps({"id": 9}) + "\n\n" + json.dumps(["x"]) + "\n" + jsonl(LINES[:1])
    )
    proc = run(["--policy", str(pii_only)], stdin)
    assert proc.returncode == 1
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert out[0]["id"] is None
    assert out[0]["line"] == 1
    assert "invalid JSON" in out[0]["error"]
    assert out[1] == {"id": 9, "line": 2, "error": '"text" must be a string'}
    assert out[2]["line"] == 4
    assert "error" in out[2]
    assert out[3]["id"] == 1
    assert out[3]["decision"] == "redact"


def test_scan_with_a_policy_file_and_output_direction(tmp_path: Path) -> None:
    path = write_policy(
        tmp_path / "policy.yaml",
        {
            "output": {
                "pii": {"entities": {"EMAIL_ADDRESS": "mask"}},
                "moderation": {"enabled": False},
                "deny": {"keywords": ["falcon"], "action": "flag"},
            }
        },
    )
    proc = run(
        ["--policy", str(path), "--direction", "output"],
        jsonl([{"id": "a", "text": "Falcon: write bob@example.org"}]),
    )
    assert proc.returncode == 0, proc.stderr
    (out,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert out["redacted_text"] == "Falcon: write ***********.org"
    assert [(f["guardrail"], f["type"], f["action"]) for f in out["findings"]] == [
        ("deny", "keyword", "flag"),
        ("pii", "EMAIL_ADDRESS", "mask"),
    ]


def test_bad_policy_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kind: AIPolicy\nspec: {}\n")
    proc = run(["--policy", str(path)], "")
    assert proc.returncode == 2
    assert "scan:" in proc.stderr


def test_scan_and_engine_agree(pii_only: Path) -> None:
    engine = scan.load_engine(str(pii_only), Direction.INPUT)
    out = io.StringIO()
    assert scan.scan_lines(engine, [json.dumps(i) for i in LINES], out) == 0
    for item, line in zip(LINES, out.getvalue().splitlines(), strict=True):
        text = str(item["text"])
        v = engine.check([Segment(0, text, Role.USER)], ScanContext(Direction.INPUT))
        assert json.loads(line) == scan.result(item["id"], text, v)

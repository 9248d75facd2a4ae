"""``make demo`` is a test too, so the README's first command cannot rot.

The demo brings up its own control plane, operator and collector under a temporary directory,
drives a real sidecar with the openai SDK and prints what happened; this test holds it to what
it claims: the sidecar was injected, personal data never reached the provider, the injection
attempt and the card number were blocked, and every request left exactly one audit event at
the collector, in a verified chain.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    work = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, "-m", "tests.harness.demo"],
        cwd=ROOT,
        env={**os.environ, "AIGUARD_DEMO_DIR": str(work)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return output


def _case(output: str, title: str) -> str:
    """The lines the demo printed for one request, from its ``▸ title`` to the next."""
    start = output.index(f"▸ {title}")
    end = output.find("▸", start + 1)
    return output[start : end if end != -1 else len(output)]


def test_the_labelled_deployment_gets_the_sidecar_with_collector_delivery(demo_output: str) -> None:
    assert "initContainers[0]:" in demo_output
    assert "AIGUARD_COLLECTOR_URL" in demo_output
    assert "/var/run/secrets/aiguard/collector" in demo_output


def test_personal_data_is_redacted_before_the_provider(demo_output: str) -> None:
    case = _case(demo_output, "personal data")
    assert "→ 200" in case
    received = next(line for line in case.splitlines() if "provider received:" in line)
    assert "jane.doe@example.com" not in received
    assert "555 0100" not in received


@pytest.mark.parametrize(
    ("title", "status", "rule"),
    [
        ("card number", 400, "guardrails.input.pii"),
        ("prompt injection", 400, "guardrails.input.prompt_injection"),
        ("unrouted model", 403, "no access rule allows"),
    ],
)
def test_refused_requests_never_reach_the_provider(
    demo_output: str, title: str, status: int, rule: str
) -> None:
    case = _case(demo_output, title)
    assert f"→ {status}: " in case
    assert rule in case
    assert "provider received: nothing" in case


def test_every_request_has_one_event_in_a_verified_chain(demo_output: str) -> None:
    counted = re.search(r"(\d+) events for (\d+) requests", demo_output)
    assert counted is not None, demo_output[-3000:]
    events, requests = map(int, counted.groups())
    assert events == requests == 6
    assert f"verified {events} events in 1 chain(s): OK" in demo_output
    assert "hmac-sha256:" in demo_output  # keyed content hashes, never the content


def test_the_demo_ends_with_a_verified_evidence_bundle_covering_every_criterion(
    demo_output: str,
) -> None:
    criteria = ["CC6.1", "CC6.6", "CC6.7", "CC7.2", "CC7.3", "CC8.1", "A1.1", "A1.2"]
    criteria += ["PI1.1", "PI1.4", "C1.1", "C1.2", "P4.1", "P6.1"]
    section = demo_output[demo_output.index("8. SOC 2 evidence") :]
    for criterion in criteria:
        assert re.search(rf"(?m)^\s+{re.escape(criterion)}\s+(pass|attention|no-data)\s", section)
    assert "every file matches manifest.json" in section
    bundle = re.search(r"evidence bundle: (\S+)/index\.html", demo_output)
    assert bundle is not None


def test_the_metrics_block_counts_the_requests_and_the_guardrail_findings(
    demo_output: str,
) -> None:
    start = demo_output.index("6. Metrics")
    section = demo_output[start : demo_output.index("7. The audit trail", start)]
    requests = [
        float(line.rsplit(" ", 1)[1])
        for line in section.splitlines()
        if line.strip().startswith("aiguard_requests_total{")
    ]
    assert sum(requests) == 6, section  # every request the SDK sent, refused ones included
    assert re.search(r'aiguard_guardrail_findings_total\{[^}]*guardrail="pii"', section), section
    assert "aiguard_audit_" in section

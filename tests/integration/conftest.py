"""Operator fixtures for the integration tests.

``operator`` (aiguard-operator against the session's control plane) is in tests/conftest.py,
shared with tests/observability.

``policy_namespace``: a fresh namespace holding the Secrets of ``examples/policies``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.cluster import Cluster
from tests.harness.devoperator import DevOperator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
SECRETS_FILE = EXAMPLES / "secrets.example.yaml"


@pytest.fixture
def policy_namespace(cluster: Cluster, namespace: str, operator: DevOperator) -> str:
    """A namespace with the example Secrets, served by the running operator."""
    cluster.kubectl("apply", "-n", namespace, "-f", str(SECRETS_FILE))
    return namespace

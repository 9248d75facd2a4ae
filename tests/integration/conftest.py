"""Operator fixtures for the integration tests.

``operator``: aiguard-operator as a subprocess against the session's control plane, started
once per session (~5 s) with its admission webhook registered by URL on 127.0.0.1 and
verified to reject an invalid AIPolicy before the first test runs. Its log is
``<tmp>/operator*/operator.log``; a failing wait prints its tail.

``policy_namespace``: a fresh namespace holding the Secrets of ``examples/policies``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import Cluster
from tests.harness.devoperator import DevOperator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
SECRETS_FILE = EXAMPLES / "secrets.example.yaml"


@pytest.fixture(scope="session")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevOperator]:
    with DevOperator(cluster, tmp_path_factory.mktemp("operator")) as running:
        yield running


@pytest.fixture
def policy_namespace(cluster: Cluster, namespace: str, operator: DevOperator) -> str:
    """A namespace with the example Secrets, served by the running operator."""
    cluster.kubectl("apply", "-n", namespace, "-f", str(SECRETS_FILE))
    return namespace

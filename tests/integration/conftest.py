"""Operator fixtures for the integration tests.

``operator`` (aiguard-operator against the session's control plane) is in tests/conftest.py,
shared with tests/observability.

``policy_namespace``: a fresh namespace holding the Secrets of ``examples/policies``.

``upstream``: the provider stand-in over TLS with its own test CA (``upstream.test_ca``), for
the tests that run a sidecar in front of it against the real control plane.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from tests.harness.cluster import Cluster
from tests.harness.devoperator import DevOperator
from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import ANTHROPIC_KEY, AZURE_KEY, OPENAI_KEY, server_tls

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
SECRETS_FILE = EXAMPLES / "secrets.example.yaml"


@pytest.fixture
def policy_namespace(cluster: Cluster, namespace: str, operator: DevOperator) -> str:
    """A namespace with the example Secrets, served by the running operator."""
    cluster.kubectl("apply", "-n", namespace, "-f", str(SECRETS_FILE))
    return namespace


@pytest.fixture
async def upstream() -> AsyncIterator[ProviderStandIn]:
    ca = trustme.CA()
    async with ProviderStandIn(
        ssl_context=server_tls(ca),
        openai_keys=[OPENAI_KEY],
        azure_keys=[AZURE_KEY],
        anthropic_keys=[ANTHROPIC_KEY],
    ) as s:
        s.test_ca = ca  # type: ignore[attr-defined]
        yield s

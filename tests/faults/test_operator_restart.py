"""The operator killed (SIGKILL, no cleanup) while it reconciles a burst of AIPolicies and an
edit: after a restart every policy converges to Ready with the ConfigMap that
``compile_policy`` gives for the policy as stored, the edit included. While it is down, the
validating webhook fails closed: no AIPolicy is stored unvalidated. A graceful restart is
``tests/integration/test_policy_operator.py::test_restart_is_idempotent_...``."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
from typing import Any

import pytest

from aiguard_api.config import compile_policy
from aiguard_api.policy import AIPolicy
from tests.harness.cluster import Cluster
from tests.harness.devoperator import DevOperator
from tests.integration.conftest import SECRETS_FILE
from tests.integration.test_policy_operator import CHAT, apply, configmap, get, wait_ready

pytestmark = pytest.mark.cluster

BURST = 6


def policy(i: int) -> dict[str, Any]:
    doc = copy.deepcopy(CHAT)
    doc["metadata"]["name"] = f"chat-{i}"
    doc["spec"]["selector"] = {"matchLabels": {"app.kubernetes.io/name": f"chat-{i}"}}
    return doc


def kill(operator: DevOperator) -> None:
    """SIGKILL the operator's process group: no finalizers, no status write, no cleanup."""
    proc, operator.proc = operator.proc, None
    assert proc is not None
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def test_operator_killed_mid_reconcile_converges_after_restart(
    cluster: Cluster, namespace: str, operator: DevOperator
) -> None:
    ns = namespace
    cluster.kubectl("apply", "-n", ns, "-f", str(SECRETS_FILE))
    burst = {"apiVersion": "v1", "kind": "List", "items": [policy(i) for i in range(BURST)]}
    apply(cluster, ns, burst)
    edited = policy(1)
    edited["spec"]["routes"][0]["models"] = ["gpt-4o-mini"]  # generation 2, in the same burst
    apply(cluster, ns, edited)
    # Kill as soon as the first ConfigMap appears: the burst is being worked through.
    cluster.wait_for(lambda: configmap(cluster, ns, "chat-0") or None, 60, what="a ConfigMap")
    try:
        kill(operator)
        # Even a valid policy: the webhook that would validate it is down (failurePolicy Fail).
        refused = apply(cluster, ns, policy(BURST), check=False)
        assert refused.returncode != 0
        assert "validate-policy.aiguard.dev" in refused.stderr  # fails closed, not stored
        assert get(cluster, "aipolicy", f"chat-{BURST}", ns) is None
    finally:
        operator.start()

    for i in range(BURST):
        name = f"chat-{i}"
        obj = wait_ready(cluster, ns, name, generation=2 if i == 1 else 1)
        expected = compile_policy(AIPolicy.model_validate(obj))
        cm = configmap(cluster, ns, name)
        assert cm is not None
        assert cm["data"] == {"config.json": expected.to_json()}
        assert obj["status"]["compiledHash"] == expected.hash
    config = json.loads(configmap(cluster, ns, "chat-1")["data"]["config.json"])  # type: ignore[index]
    assert "gpt-4o-mini" in json.dumps(config)

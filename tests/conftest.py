"""Shared fixtures. Keep each section self-contained; add new sections below the last one."""

from __future__ import annotations

import gc
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.cluster import Cluster, LocalCluster, find_bin_dir
from tests.harness.devoperator import DevOperator

# --------------------------------------------------------------------------- control plane
#
# `cluster`: one etcd + kube-apiserver + kube-controller-manager per test session (about 10 s
# to start with cached binaries). Set AIGUARD_TEST_KUBECONFIG=.local/kubeconfig to run the
# tests against an already running control plane (`make cluster-up`) instead.
# Tests that use it are marked `cluster` automatically, so `-m 'not cluster'` skips them.


def pytest_collection_finish(session: pytest.Session) -> None:
    """Everything collection imported (the openai and anthropic SDKs alone are ~200,000 objects
    of pydantic models) lives for the whole session: freeze it out of the cyclic collector, as
    ``aiguard-sidecar`` freezes its startup objects (``main.serve``). Otherwise each full
    collection pauses the test process for 100-250 ms on a busy machine, inside whichever
    in-process sidecar request it lands, and the ``no_blocking`` watchdog reports a blocked loop
    that production never has."""
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    bin_dir = find_bin_dir(build=False)
    external = os.environ.get("AIGUARD_TEST_KUBECONFIG")
    if external:
        ca_dir = tmp_path_factory.mktemp("external-cluster")
        yield Cluster.from_kubeconfig(Path(external), bin_dir, ca_dir)
        return
    with LocalCluster(tmp_path_factory.mktemp("cluster"), bin_dir) as local:
        yield local


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace, deleted (without waiting) after the test."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


# --------------------------------------------------------------------------- operator
#
# `operator`: aiguard-operator as a subprocess against the session's control plane, started
# once per session (~5 s) with its admission webhook registered by URL on 127.0.0.1 and
# verified to reject an invalid AIPolicy before the first test runs. Its log is
# `<tmp>/operator*/operator.log`; a failing wait prints its tail. Here, not in one test
# directory, so that tests/integration and tests/observability share the one operator (two
# would fight over the webhook configuration).


@pytest.fixture(scope="session")
def operator(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevOperator]:
    with DevOperator(cluster, tmp_path_factory.mktemp("operator")) as running:
        yield running

"""Operator replicas share one set of webhook certificates through a Secret (real API server).

Every replica answers admission calls behind one Service and one ``caBundle``; these tests
hold ``certsync`` to: replicas starting together end up with the same CA and serving
certificate, a rotation by one replica reaches the others, and a stale replica never
overwrites newer files (the write is conditional on the resourceVersion it read).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from aiguard_operator import certs, certsync, kube
from tests.harness.cluster import Cluster

pytestmark = pytest.mark.cluster

SECRET = "aiguard-webhook-certs"
HOSTS = ["aiguard-webhook.aiguard-system.svc", "127.0.0.1"]


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[kube.Client]:
    async with kube.Client(kube.from_kubeconfig(cluster.kubeconfig)) as client:
        yield client


async def replica(
    api: kube.Client, namespace: str, directory: Path, now: dt.datetime | None = None
) -> certs.Outcome:
    return await certsync.sync(
        api, namespace=namespace, name=SECRET, directory=directory, hosts=HOSTS, now=now
    )


def serial(directory: Path, name: str = certs.TLS_CERT) -> int:
    return x509.load_pem_x509_certificate((directory / name).read_bytes()).serial_number


async def shared(api: kube.Client, namespace: str) -> dict[str, bytes]:
    secret = await api.get(certsync.secret_path(namespace, SECRET))
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


async def test_replicas_starting_together_share_one_ca_and_certificate(
    api: kube.Client, namespace: str, tmp_path: Path
) -> None:
    dirs = [tmp_path / f"replica-{i}" for i in range(3)]
    await asyncio.gather(*(replica(api, namespace, d) for d in dirs))

    published = await shared(api, namespace)
    assert set(published) == set(certsync.FILES)
    for d in dirs:
        assert certsync.read_files(d) == published, d.name
        for key in certsync.PRIVATE:
            assert stat.S_IMODE((d / key).stat().st_mode) == 0o600


async def test_a_rotation_by_one_replica_reaches_the_others(
    api: kube.Client, namespace: str, tmp_path: Path
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    await replica(api, namespace, a)
    await replica(api, namespace, b)
    before = serial(b)

    # Eleven months on, replica a finds the serving certificate due and re-issues it...
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=340)
    outcome = await replica(api, namespace, a, now=later)
    assert outcome.changed, "the serving certificate was due for renewal"
    assert serial(a) != before
    # ...signed by the same CA, so the caBundle the API server holds stays valid.
    assert (a / certs.CA_BUNDLE).read_bytes() == (b / certs.CA_BUNDLE).read_bytes()

    # Replica b adopts it at its next sync instead of issuing its own.
    outcome_b = await replica(api, namespace, b, now=later)
    assert not outcome_b.changed
    assert serial(b) == serial(a)
    assert certsync.read_files(b) == await shared(api, namespace)


async def test_a_stale_replica_adopts_newer_files_instead_of_overwriting_them(
    api: kube.Client, namespace: str, tmp_path: Path
) -> None:
    a, stale = tmp_path / "a", tmp_path / "stale"
    await replica(api, namespace, a)
    await replica(api, namespace, stale)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=340)
    await replica(api, namespace, a, now=later)
    rotated = serial(a)

    # The stale replica's directory still has the old certificate; syncing must not put it
    # back into the Secret.
    await replica(api, namespace, stale)
    assert serial(stale) == rotated
    published = await shared(api, namespace)
    assert x509.load_pem_x509_certificate(published[certs.TLS_CERT]).serial_number == rotated


async def test_concurrent_rotations_converge_on_one_set(
    api: kube.Client, namespace: str, tmp_path: Path
) -> None:
    dirs = [tmp_path / f"r{i}" for i in range(3)]
    for d in dirs:
        await replica(api, namespace, d)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=340)
    await asyncio.gather(*(replica(api, namespace, d, now=later) for d in dirs))
    # Conflicts made the losers adopt the winner's files; one more round settles everyone.
    await asyncio.gather(*(replica(api, namespace, d, now=later) for d in dirs))
    published = await shared(api, namespace)
    assert all(certsync.read_files(d) == published for d in dirs)

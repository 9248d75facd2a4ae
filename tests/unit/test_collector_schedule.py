"""The collector server's own loops, as the operator runs them: retention purges on its
schedule (not only when called), and a renewed serving certificate is picked up by the watcher.
Real SQLite store, real TLS; the Kubernetes API is not needed (no sidecar or reader calls)."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import trustme

from aiguard_operator import kube
from aiguard_operator.collector.config import CollectorSettings
from aiguard_operator.collector.server import CollectorServer
from aiguard_operator.collector.store import PurgeQuery
from tests.harness.auditdata import chain
from tests.harness.polling import until
from tests.sidecar.test_audit_tls_rotation import SecretVolume, serving_pair
from tests.unit.test_collector_store import DAY, ingest


async def test_purges_run_on_schedule_and_renewed_certificates_are_served(
    tmp_path: Path,
) -> None:
    ca, renewed_ca = trustme.CA(), trustme.CA()
    secret = SecretVolume(tmp_path / "tls")
    secret.write(serving_pair(ca))
    settings = CollectorSettings(
        enabled=True,
        port=0,
        db=tmp_path / "audit.db",
        cert_dir=secret.root,
        cert_check_interval=0.05,
        purge_interval=0.05,
    )

    async def lookup() -> dict[tuple[str, str], int]:
        return {("team-a", "test-policy"): 30}

    api = kube.Client(kube.Credentials(server="https://127.0.0.1:1"))  # never called here
    server = CollectorServer(settings, api=api, lookup=lookup)
    await server.start()
    try:
        old = chain(4, t0=time.time() - 40 * DAY, step=60)
        await server.store.insert(ingest(old), received_us=1)

        async def purged_four() -> bool:
            records = await server.store.purges(PurgeQuery(namespace="team-a"))
            return 4 in [r.count for r in records]

        await until(purged_four, "a scheduled purge of the 4 expired events", within=10)

        secret.write(serving_pair(renewed_ca))
        ctx = ssl.create_default_context()
        renewed_ca.configure_trust(ctx)

        async def renewed_served() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx)
            except ssl.SSLCertVerificationError:
                return False
            writer.close()
            return True

        await until(renewed_served, "the renewed certificate to be served", within=10)
    finally:
        await server.stop()
        await api.close()

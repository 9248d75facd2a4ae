"""Certificate rotation on the audit path, without restarts: the collector serves a renewed
certificate once the kubelet swaps its Secret's files, and a sidecar whose collector CA was
rotated reads its bundle again after the first failed verification. Nothing is lost meanwhile.

Real TLS (trustme CAs), the real collector app and store, a real spool and shipper."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from aiguard_operator.collector.server import Deps, create_app
from aiguard_operator.collector.store import EventQuery, SQLiteStore
from aiguard_operator.collector.tlsreload import ServingCertificate
from aiguard_sidecar.audit.shipper import DeliveryError, Shipper
from aiguard_sidecar.audit.spool import Spool
from aiguard_sidecar.metrics import Metrics
from tests.unit.test_audit_spool import NS, POD, draft


class SecretVolume:
    """A mounted Secret as the kubelet lays it out: files are symlinks through ``..data``,
    which is swapped atomically to a new timestamped directory on every update."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.version = 0

    def write(self, files: dict[str, bytes]) -> None:
        self.version += 1
        new = self.root / f"..{self.version}"
        new.mkdir()
        for name, data in files.items():
            (new / name).write_bytes(data)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(new.name)
        os.replace(tmp, self.root / "..data")
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")


def serving_pair(ca: trustme.CA) -> dict[str, bytes]:
    cert = ca.issue_cert("127.0.0.1")
    return {
        "tls.crt": b"".join(blob.bytes() for blob in cert.cert_chain_pems),
        "tls.key": cert.private_key_pem.bytes(),
    }


class TLSCollector:
    def __init__(self, tmp_path: Path) -> None:
        self.secret = SecretVolume(tmp_path / "collector-tls")
        self.store = SQLiteStore(tmp_path / "collector.db")
        self.serving: ServingCertificate | None = None
        self.runner: web.AppRunner | None = None
        self.app: web.Application | None = None
        self.port = 0

    async def start(self, ca: trustme.CA) -> None:
        self.secret.write(serving_pair(ca))
        self.serving = ServingCertificate(self.secret.root)
        self.serving.load()

        async def lookup() -> dict[tuple[str, str], int]:
            return {}

        await self.store.open()
        self.app = create_app(Deps(self.store, None, False, lookup))
        await self.listen(0)

    async def listen(self, port: int) -> None:
        assert self.serving is not None
        assert self.app is not None
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port, ssl_context=self.serving.context)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def drop_connections(self) -> None:
        """Close every open connection (as a collector restart or an idle timeout would)."""
        assert self.runner is not None
        await self.runner.shutdown()
        await self.runner.cleanup()
        await self.listen(self.port)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        await self.store.close()


@pytest.fixture
async def collector(tmp_path: Path) -> AsyncIterator[TLSCollector]:
    c = TLSCollector(tmp_path)
    yield c
    await c.stop()


async def handshake(port: int, ca: trustme.CA) -> None:
    """A fresh TLS connection verifying the server against ``ca`` (raises if it does not)."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    writer.close()


async def test_collector_serves_a_renewed_certificate_and_keeps_the_old_one_if_broken(
    collector: TLSCollector,
) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    await collector.start(old_ca)
    assert collector.serving is not None
    await handshake(collector.port, old_ca)
    assert collector.serving.check() is False  # nothing changed

    collector.secret.write(serving_pair(new_ca))
    assert collector.serving.check() is True
    await handshake(collector.port, new_ca)
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(collector.port, old_ca)

    # A renewal that does not load (the key is not the certificate's) is refused and reported;
    # the collector goes on serving the certificate it has.
    broken = serving_pair(new_ca)
    broken["tls.key"] = serving_pair(new_ca)["tls.key"]
    collector.secret.write(broken)
    assert collector.serving.check() is False
    await handshake(collector.port, new_ca)
    assert collector.serving.reloads == 1


async def test_shipper_reads_a_rotated_collector_ca_after_a_failed_verification(
    collector: TLSCollector, tmp_path: Path
) -> None:
    old_ca, new_ca = trustme.CA(), trustme.CA()
    await collector.start(old_ca)
    assert collector.serving is not None
    bundle = SecretVolume(tmp_path / "policy")  # the policy ConfigMap's collector-ca.crt
    bundle.write({"collector-ca.crt": old_ca.cert_pem.bytes()})
    spool = Spool(tmp_path / "spool", namespace=NS, pod=POD)
    spool.open()
    spool.start(asyncio.get_running_loop())
    metrics = Metrics()
    shipper = Shipper(
        spool,
        url=collector.url,
        metrics=metrics,
        token_file=None,
        ca_file=bundle.root / "collector-ca.crt",
    )
    try:
        for i in range(3):
            await spool.append(draft(i))
        assert await shipper.ship_once() == 3

        # Both rotate: the collector's certificate comes from a new CA, published to the pod.
        collector.secret.write(serving_pair(new_ca))
        assert collector.serving.check()
        bundle.write({"collector-ca.crt": new_ca.cert_pem.bytes()})
        for i in range(3, 5):
            await spool.append(draft(i))
        await collector.drop_connections()  # the shipper must connect again
        with pytest.raises(DeliveryError) as failed:
            await shipper.ship_once()  # the bundle as first read does not verify the new cert
        assert failed.value.reason == "tls"
        assert await shipper.ship_once() == 2  # re-read: delivered, no restart
        assert spool.depth() == 0
        assert len((await collector.store.events(EventQuery(order="sequence"))).bodies) == 5
    finally:
        await shipper.close()
        await asyncio.to_thread(spool.stop)


async def test_a_client_without_the_ca_is_refused(collector: TLSCollector) -> None:
    await collector.start(trustme.CA())
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(f"https://127.0.0.1:{collector.port}/healthz")

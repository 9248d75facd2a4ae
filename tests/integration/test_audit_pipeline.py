"""The audit pipeline against the real API server: sidecars authenticate to the collector with
ServiceAccount tokens (TokenReview), readers are authorised by RBAC (SubjectAccessReview).

A sidecar (in this process) in front of the provider stand-in, driven by the openai SDK, ships
to a collector (in this process, SQLite) whose every authentication decision is the real
kube-apiserver's. Shows: N mixed requests → exactly N events, chain verified by
``kubectl-aiguard verify-audit``; the collector stopped and restarted (and an acknowledgement
lost) → still exactly N, none lost, duplicates dropped; an edited and a deleted event in an
export are detected; retention purges old events and records the purge; a token of another
namespace, of the wrong audience, or none at all cannot write.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from aiguard_api import audit
from aiguard_operator import cli, kube
from aiguard_operator.collector.config import CollectorSettings
from aiguard_operator.collector.server import CollectorServer
from aiguard_sidecar.app import AUDIT, Settings, SidecarServer
from aiguard_sidecar.audit.sink import AuditService, AuditSettings
from aiguard_sidecar.identity import Workload
from aiguard_sidecar.metrics import Metrics
from tests.harness import polling
from tests.harness.auditdata import chain
from tests.harness.cluster import Cluster, free_ports
from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import (
    ANTHROPIC_KEY,
    AZURE_KEY,
    OPENAI_BACKUP_KEY,
    OPENAI_KEY,
    HttpClients,
    SecretVolume,
    make_policy,
)

pytestmark = pytest.mark.cluster

HELLO: Any = [{"role": "user", "content": "hello"}]
DAY = 86400.0
WITHIN = 20.0


async def until(check: Callable[[], Awaitable[Any]], what: str, within: float = WITHIN) -> Any:
    return await polling.until(check, what, within)


@dataclass
class Tokens:
    sidecar: str  # chatbot SA, audience aiguard.dev/collector
    sidecar_default_audience: str
    other_namespace: str  # another namespace's SA, collector audience
    auditor: str  # may get aipolicies/audit in the namespace


def _token(cluster: Cluster, sa: str, ns: str, audience: str | None) -> str:
    args = ["create", "token", sa, "-n", ns, "--duration=1h"]
    if audience:
        args.append(f"--audience={audience}")
    return str(cluster.kubectl(*args).stdout.strip())


@pytest.fixture
def tokens(cluster: Cluster, namespace: str) -> Tokens:
    other = f"{namespace}-other"
    cluster.kubectl("create", "namespace", other)
    for sa, ns in (("chatbot", namespace), ("auditor", namespace), ("chatbot", other)):
        cluster.kubectl("create", "serviceaccount", sa, "-n", ns)
    # The Role names a virtual subresource, so it is applied as an object (kubectl create
    # role would look the resource up in discovery).
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "audit-reader", "namespace": namespace},
        "rules": [{"apiGroups": ["aiguard.dev"], "resources": ["aipolicies/audit"],
                   "verbs": ["get"]}],
    }  # fmt: skip
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "audit-reader", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "audit-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "auditor", "namespace": namespace}],
    }  # fmt: skip
    cluster.kubectl(
        "apply", "-f", "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [role, binding]}),
    )  # fmt: skip
    aud = audit.COLLECTOR_AUDIENCE
    return Tokens(
        sidecar=_token(cluster, "chatbot", namespace, aud),
        sidecar_default_audience=_token(cluster, "chatbot", namespace, None),
        other_namespace=_token(cluster, "chatbot", other, aud),
        auditor=_token(cluster, "auditor", namespace, None),
    )


class Collector:
    """A CollectorServer on a fixed port and database, restartable; retention from a table."""

    def __init__(self, cluster: Cluster, db: Path) -> None:
        self.cluster = cluster
        self.settings = CollectorSettings(
            enabled=True, port=free_ports(1)[0], db=db, purge_interval=3600
        )
        self.retention: dict[tuple[str, str], int] = {}
        self.server: CollectorServer | None = None
        self._api: kube.Client | None = None
        self.lose_acks = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    async def up(self) -> None:
        self._api = kube.Client(kube.from_kubeconfig(self.cluster.kubeconfig))

        async def lookup() -> dict[tuple[str, str], int]:
            return dict(self.retention)

        server = CollectorServer(self.settings, api=self._api, lookup=lookup)

        @web.middleware
        async def lossy(
            request: web.Request,
            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        ) -> web.StreamResponse:
            response = await handler(request)
            if request.method == "POST" and self.lose_acks and response.status == 200:
                self.lose_acks -= 1
                return web.Response(status=503, text="acknowledgement lost")
            return response

        server.app.middlewares.append(lossy)
        await server.start()
        self.server = server

    async def down(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None
        if self._api is not None:
            await self._api.close()
            self._api = None

    async def get(self, path: str, token: str, **params: str) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                self.url + path, params=params, headers={"Authorization": f"Bearer {token}"}
            ) as r,
        ):
            return r.status, await r.json()

    async def post(self, events: list[dict[str, Any]], token: str | None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            aiohttp.ClientSession() as http,
            http.post(self.url + "/v1/events", json={"events": events}, headers=headers) as r,
        ):
            return r.status, await r.json()


@pytest.fixture
async def collector(cluster: Cluster, tmp_path: Path) -> AsyncIterator[Collector]:
    c = Collector(cluster, tmp_path / "collector" / "audit.db")
    await c.up()
    yield c
    await c.down()


@dataclass
class Sidecar:
    server: SidecarServer
    metrics: Metrics
    http: HttpClients

    @property
    def spool_depth(self) -> int:
        sink = self.server.app[AUDIT]
        assert isinstance(sink, AuditService)
        assert sink.spool is not None
        return sink.spool.depth()

    @property
    def instance(self) -> str:
        sink = self.server.app[AUDIT]
        assert isinstance(sink, AuditService)
        assert sink.spool is not None
        return sink.spool.instance

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.server.url}/openai/v1",
            api_key="placeholder",
            max_retries=0,
            http_client=self.http.openai_async,
        )


@pytest.fixture
async def sidecar(
    tmp_path: Path,
    namespace: str,
    tokens: Tokens,
    collector: Collector,
    upstream: ProviderStandIn,
) -> AsyncIterator[Sidecar]:
    secrets = SecretVolume(tmp_path / "secrets")
    secrets.write("openai", {"api-key": OPENAI_KEY})
    secrets.write("openai-backup", {"api-key": OPENAI_BACKUP_KEY})
    secrets.write("anthropic", {"api-key": ANTHROPIC_KEY})
    secrets.write("azure", {"api-key": AZURE_KEY})
    secrets.write("test-ca", {"ca.crt": upstream.test_ca.cert_pem.bytes()})  # type: ignore[attr-defined]
    token_file = tmp_path / "token"
    token_file.write_text(tokens.sidecar)
    policy = make_policy(upstream)
    policy["metadata"]["namespace"] = namespace
    policy_path = tmp_path / "policy.json"
    policy_path.write_text(json.dumps(policy))
    metrics = Metrics()
    server = SidecarServer(
        Settings(
            policy_path=policy_path,
            workload=Workload(namespace=namespace, service_account="chatbot", pod="chatbot-0"),
            listen_port=0,
            admin_host="127.0.0.1",
            admin_port=0,
            secrets_dir=str(secrets.root),
            drain_seconds=2.0,
            audit=AuditSettings(
                collector_url=collector.url,
                spool_dir=tmp_path / "spool",
                token_file=token_file,
                backoff_base=0.05,
                backoff_max=0.3,
                flush_seconds=1.0,
            ),
        ),
        metrics=metrics,
    )
    await server.start()
    http = HttpClients.build()
    yield Sidecar(server, metrics, http)
    await http.aclose()
    await server.stop()


async def traffic(sc: Sidecar) -> int:
    """Allowed and refused, streamed and not. Returns how many requests were decided."""
    client = sc.openai()
    await client.chat.completions.create(model="gpt-4o", messages=HELLO)
    stream = await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
    async for _ in stream:
        pass
    with pytest.raises(openai.NotFoundError):  # no route for it: decided, refused
        await client.chat.completions.create(model="llama-3", messages=HELLO)
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="llama-3", messages=HELLO, stream=True)
    await client.embeddings.create(model="text-embedding-3-small", input="hello")
    return 5


def verify_audit(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(["verify-audit", *args], out=out)
    return code, out.getvalue()


async def test_n_requests_are_n_events_through_outages_and_lost_acks(
    sidecar: Sidecar, collector: Collector, tokens: Tokens, namespace: str, tmp_path: Path
) -> None:
    n = await traffic(sidecar)
    n += await traffic(sidecar)

    async def delivered(count: int) -> bool:
        status, body = await collector.get(
            f"/v1/chains/{sidecar.instance}", tokens.auditor, verify="false"
        )
        return status == 200 and body["events"] == count and sidecar.spool_depth == 0

    await until(lambda: delivered(n), "the first events at the collector")

    # The collector goes away; requests are served and spooled.
    await collector.down()
    n += await traffic(sidecar)
    assert sidecar.spool_depth == 5
    await until(
        _async(lambda: (sidecar.metrics.registry.get_sample_value(
            "aiguard_audit_delivery_failures_total", {"reason": "connect"}) or 0) >= 2),
        "failed deliveries",
    )  # fmt: skip
    # It comes back, and the first acknowledgement it sends is lost: the batch is resent.
    collector.lose_acks = 1
    await collector.up()
    await until(lambda: delivered(n), "delivery after the outage")
    assert collector.lose_acks == 0

    status, chain_info = await collector.get(f"/v1/chains/{sidecar.instance}", tokens.auditor)
    assert status == 200
    assert chain_info["events"] == n
    assert chain_info["head"]["sequence"] == n
    assert chain_info["verification"] == {"ok": True, "problems": []}
    assert sidecar.metrics.registry.get_sample_value("aiguard_audit_events_dropped_total") == 0

    # kubectl aiguard verify-audit against the collector, saving an export.
    export = tmp_path / "export.jsonl"
    code, text = await asyncio.to_thread(
        verify_audit, "--collector", collector.url, "--token", tokens.auditor,
        "-n", namespace, "--save", str(export),
    )  # fmt: skip
    assert code == 0, text
    assert f"verified {n} events in 1 chain(s): OK" in text

    # An edited and a deleted event in the export are found, each by its identity.
    events = [json.loads(x) for x in export.read_text().splitlines()]
    edited, deleted = events[3], events[6]
    edited["gen_ai.usage.output_tokens"] = 1
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("".join(json.dumps(e) + "\n" for e in events if e is not deleted))
    code, text = await asyncio.to_thread(verify_audit, str(tampered), "-o", "json")
    assert code == 1
    report = json.loads(text)
    found = {(p["kind"], p["sequence"], p["id"]) for p in report["problems"]}
    after_deleted = events[7]
    assert found == {
        ("edited", edited["sequence"], edited["id"]),
        ("gap", after_deleted["sequence"], after_deleted["id"]),
    }
    assert any(p["at"] == f"{tampered}:4" for p in report["problems"])


def _async(fn: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def call() -> bool:
        return fn()

    return call


async def test_only_a_sidecars_own_token_writes_its_events(
    collector: Collector, tokens: Tokens, namespace: str
) -> None:
    events = chain(2, namespace=namespace, pod="chatbot-1", service_account="chatbot")
    status, body = await collector.post(events, None)
    assert status == 401
    status, body = await collector.post(events, "not-a-token")
    assert status == 401
    status, body = await collector.post(events, tokens.sidecar_default_audience)
    assert status == 401, "a token for the API server's audience must not write events"
    status, body = await collector.post(events, tokens.other_namespace)
    assert status == 403
    assert f"may not write events of {namespace}/chatbot" in body["error"]
    other_sa = chain(1, namespace=namespace, pod="x", service_account="someone-else")
    status, body = await collector.post(other_sa, tokens.sidecar)
    assert status == 403
    status, body = await collector.post(events, tokens.sidecar)
    assert (status, body) == (200, {"accepted": 2, "duplicates": 0, "conflicts": 0})
    status, body = await collector.post(events, tokens.sidecar)  # a resend
    assert (status, body) == (200, {"accepted": 0, "duplicates": 2, "conflicts": 0})
    # Reading needs RBAC: the sidecar's own token may not read the evidence back.
    status, _ = await collector.get("/v1/events", tokens.sidecar, namespace=namespace)
    assert status == 403
    status, page = await collector.get("/v1/events", tokens.auditor, namespace=namespace)
    assert status == 200
    assert [e["id"] for e in page["events"]] == [e["id"] for e in events]
    status, _ = await collector.get("/v1/events", tokens.auditor)  # every namespace: no
    assert status == 403


async def test_retention_purges_old_events_and_records_the_purge(
    collector: Collector, tokens: Tokens, namespace: str
) -> None:
    now = time.time()
    old = chain(6, namespace=namespace, pod="chatbot-2", t0=now - 45 * DAY, step=60)
    recent = chain(
        3, namespace=namespace, pod="chatbot-2", t0=now - DAY, first=7, prev=old[-1]["hash"]
    )
    status, body = await collector.post(old + recent, tokens.sidecar)
    assert (status, body["accepted"]) == (200, 9)
    collector.retention[(namespace, "test-policy")] = 30

    assert collector.server is not None
    records = await collector.server.purge_now()
    (record,) = [r for r in records if r.namespace == namespace]
    assert record.count == 6
    assert record.rule == f"AIPolicy {namespace}/test-policy spec.audit.retentionDays=30"

    status, listed = await collector.get("/v1/purges", tokens.auditor, namespace=namespace)
    assert status == 200
    (shown,) = listed["purges"]
    assert shown["id"] == record.id
    assert shown["count"] == 6
    assert shown["oldest"] == old[0]["time"]
    assert shown["newest"] == old[-1]["time"]
    assert shown["chains"][0]["last_sequence"] == 6

    instance = old[0]["instance"]
    status, info = await collector.get(f"/v1/chains/{instance}", tokens.auditor)
    assert status == 200
    assert info["events"] == 3
    assert info["start"]["sequence"] == 7
    assert info["start"]["purge_id"] == record.id
    assert info["verification"] == {"ok": True, "problems": []}  # the purged prefix is legitimate
    code, text = await asyncio.to_thread(
        verify_audit, "--collector", collector.url, "--token", tokens.auditor, "-n", namespace
    )
    assert code == 0, text

"""Human review end to end: a request the policy sends to review waits in the sidecar while an
AIIncident asks a person; ``kubectl aiguard approve|deny`` decides; nobody deciding denies.

Real parts: the kube-apiserver (AIIncident CRD, TokenReview of the sidecar's collector-audience
token, SelfSubjectReview of the approver, RBAC on who may approve), the collector (in this
process, as the operator runs it), a sidecar with the policy's real guardrails in front of the
provider stand-in, the official openai and anthropic SDKs, and the plugin's own ``main``.

Shows: an approved request reaches the upstream once and answers 200; a denied one answers 403
in the client's format naming the rule and the approver, and never reaches the upstream; an
undecided one expires as denied by ``aiguard (timeout)``; a person without ``patch`` on
aiincidents cannot approve; each decision is in the audit trail, without prompt text. Without
a collector, or with one that cannot be reached, the request is refused, never sent unreviewed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import yaml

from aiguard_api import audit
from aiguard_operator import approvals, cli, kube
from aiguard_operator.collector.config import CollectorSettings
from aiguard_operator.collector.server import CollectorServer
from aiguard_sidecar.app import Settings, SidecarServer
from aiguard_sidecar.audit.sink import AuditSettings
from aiguard_sidecar.guarding import engine_guardrails
from aiguard_sidecar.identity import Workload
from tests.harness import polling
from tests.harness.cluster import Cluster, free_ports
from tests.harness.devoperator import apply_cluster_objects, manifests
from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import (
    ANTHROPIC_KEY,
    AZURE_KEY,
    OPENAI_KEY,
    HttpClients,
    SecretVolume,
    make_policy,
)

TIMEOUT_SECONDS = 6
"""The policy's review timeout (the schema's minimum is 5)."""
WITHIN = 20.0
HELD_PROMPT = "Summarise the litigation hold for the Acme matter"
GUARDRAILS: dict[str, Any] = {
    "input": {
        "promptInjection": {"enabled": False},  # not the subject here
        "review": {
            "enabled": True,
            "keywords": ["litigation"],
            "tools": ["transfer_*"],
            "timeoutSeconds": TIMEOUT_SECONDS,
        },
    }
}
TRANSFER_TOOL: Any = {
    "type": "function",
    "function": {"name": "transfer_funds", "parameters": {"type": "object", "properties": {}}},
}


async def until(check: Callable[[], Awaitable[Any]], what: str, within: float = WITHIN) -> Any:
    return await polling.until(check, what, within)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> None:
    docs = [d for d in manifests() if d["kind"] == "CustomResourceDefinition"]
    asyncio.run(apply_cluster_objects(kube.from_kubeconfig(cluster.kubeconfig), docs))


def kubeconfig_for(cluster: Cluster, token: str, namespace: str, path: Path) -> Path:
    """A kubeconfig that authenticates with ``token`` (a ServiceAccount's)."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "c", "cluster": {"server": cluster.server,
                                      "certificate-authority": str(cluster.ca_path)}}
        ],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u",
                                               "namespace": namespace}}],
        "current-context": "c",
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclass
class People:
    sidecar_token: str  # ServiceAccount chatbot, audience aiguard.dev/collector
    oncall: Path  # kubeconfig: may patch aiincidents in the namespace
    bystander: Path  # kubeconfig: may only read them


@pytest.fixture
def people(cluster: Cluster, namespace: str, crds: None, tmp_path: Path) -> People:
    for sa in ("chatbot", "oncall", "bystander"):
        cluster.kubectl("create", "serviceaccount", sa, "-n", namespace)
    rules = {
        "approver": [
            {"apiGroups": ["aiguard.dev"], "resources": ["aiincidents"], "verbs": ["get", "patch"]},
            {"apiGroups": ["aiguard.dev"], "resources": ["aiincidents/status"],
             "verbs": ["patch"]},
        ],
        "viewer": [
            {"apiGroups": ["aiguard.dev"], "resources": ["aiincidents"], "verbs": ["get", "list"]}
        ],
    }  # fmt: skip
    items: list[dict[str, Any]] = []
    for role, sa in (("approver", "oncall"), ("viewer", "bystander")):
        items.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": role, "namespace": namespace},
                "rules": rules[role],
            }
        )
        items.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": role, "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
                "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
            }
        )
    cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    )

    def token(sa: str, audience: str | None = None) -> str:
        args = ["create", "token", sa, "-n", namespace, "--duration=1h"]
        if audience:
            args.append(f"--audience={audience}")
        return str(cluster.kubectl(*args).stdout.strip())

    return People(
        sidecar_token=token("chatbot", audit.COLLECTOR_AUDIENCE),
        oncall=kubeconfig_for(cluster, token("oncall"), namespace, tmp_path / "oncall.yaml"),
        bystander=kubeconfig_for(
            cluster, token("bystander"), namespace, tmp_path / "bystander.yaml"
        ),
    )


@pytest.fixture
async def collector(cluster: Cluster, crds: None, tmp_path: Path) -> AsyncIterator[CollectorServer]:
    settings = CollectorSettings(
        enabled=True, port=0, db=tmp_path / "collector" / "audit.db", query_auth="none"
    )
    api = kube.Client(kube.from_kubeconfig(cluster.kubeconfig))
    server = CollectorServer(settings, api=api)
    server.approvals.poll_seconds = 0.2  # decisions reach the sidecar sooner than in production
    await server.start()
    yield server
    await server.stop()
    await api.close()


@dataclass
class Sidecar:
    server: SidecarServer
    http: HttpClients

    def openai(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.server.url}/openai/v1",
            api_key="placeholder",
            max_retries=0,
            http_client=self.http.openai_async,
        )

    def anthropic(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=f"{self.server.url}/anthropic",
            api_key="placeholder",
            max_retries=0,
            http_client=self.http.anthropic_async,
        )


@contextlib.asynccontextmanager
async def running_sidecar(
    tmp_path: Path,
    upstream: ProviderStandIn,
    *,
    namespace: str,
    collector_url: str | None,
    token: str | None = None,
) -> AsyncIterator[Sidecar]:
    secrets = SecretVolume(tmp_path / "secrets")
    secrets.write("openai", {"api-key": OPENAI_KEY})
    secrets.write("anthropic", {"api-key": ANTHROPIC_KEY})
    secrets.write("azure", {"api-key": AZURE_KEY})
    secrets.write("test-ca", {"ca.crt": upstream.test_ca.cert_pem.bytes()})  # type: ignore[attr-defined]
    token_file = tmp_path / "token"
    token_file.write_text(token or "no token: the collector is absent or unreachable")
    policy = make_policy(upstream, guardrails=GUARDRAILS)
    policy["metadata"]["namespace"] = namespace
    policy_path = tmp_path / "policy.json"
    policy_path.write_text(json.dumps(policy))
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
                collector_url=collector_url,
                spool_dir=tmp_path / "spool",
                token_file=token_file,
                backoff_base=0.05,
                backoff_max=0.3,
                flush_seconds=1.0,
            ),
        ),
        guardrails=engine_guardrails,
    )
    await server.start()
    http = HttpClients.build()
    try:
        yield Sidecar(server, http)
    finally:
        await http.aclose()
        await server.stop()


@pytest.fixture
async def sidecar(
    tmp_path: Path,
    namespace: str,
    people: People,
    collector: CollectorServer,
    upstream: ProviderStandIn,
) -> AsyncIterator[Sidecar]:
    async with running_sidecar(
        tmp_path,
        upstream,
        namespace=namespace,
        collector_url=collector.url,
        token=people.sidecar_token,
    ) as sc:
        yield sc


# --------------------------------------------------------------------------- helpers


class Incidents:
    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.namespace = namespace
        self.api = kube.Client(kube.from_kubeconfig(cluster.kubeconfig))
        self.path = kube.path(
            group="aiguard.dev", version="v1alpha1", plural="aiincidents", namespace=namespace
        )
        self.seen: set[str] = set()

    async def next_pending(self) -> dict[str, Any]:
        """The next approval that appears, pending (each is returned once)."""

        async def fresh() -> dict[str, Any] | None:
            items = await self.api.list(self.path, label_selector=f"{approvals.LABEL}=true")
            for obj in items:
                name = obj["metadata"]["name"]
                if name not in self.seen and obj["spec"]["state"] == "pending-approval":
                    self.seen.add(name)
                    return obj
            return None

        found: dict[str, Any] = await until(fresh, "an approval request")
        return found

    async def get(self, name: str) -> dict[str, Any]:
        return await self.api.get(f"{self.path}/{name}")


@pytest.fixture
async def incidents(cluster: Cluster, namespace: str) -> AsyncIterator[Incidents]:
    i = Incidents(cluster, namespace)
    yield i
    await i.api.close()


async def kubectl_aiguard(*args: str) -> tuple[int, str, str]:
    """``kubectl aiguard ARGS`` through the plugin's main (stdout captured; stderr too)."""
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stderr(err):
            return cli.main(list(args), out=out)

    code = await asyncio.to_thread(run)
    return code, out.getvalue(), err.getvalue()


async def audit_events(collector: CollectorServer, namespace: str, count: int) -> list[Any]:
    async def delivered() -> list[Any] | None:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{collector.url}/v1/events", params={"namespace": namespace}) as r,
        ):
            events: list[Any] = (await r.json())["events"]
        return events if len(events) >= count else None

    found: list[Any] = await until(delivered, f"{count} audit events at the collector")
    return found


def review_decision(event: dict[str, Any]) -> dict[str, Any]:
    (d,) = [d for d in event["aiguard.decisions"] if d["stage"] == "review"]
    return d


# --------------------------------------------------------------------------- the flow


async def test_approve_releases_deny_refuses_and_silence_expires(
    sidecar: Sidecar,
    upstream: ProviderStandIn,
    collector: CollectorServer,
    incidents: Incidents,
    people: People,
    namespace: str,
) -> None:
    client = sidecar.openai()
    oncall = f"system:serviceaccount:{namespace}:oncall"

    # 1. Held, then approved by someone who may patch aiincidents: it goes upstream, once.
    held = asyncio.create_task(
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": HELD_PROMPT}]
        )
    )
    pending = await incidents.next_pending()
    name = pending["metadata"]["name"]
    assert not held.done()
    assert upstream.requests == []
    assert pending["spec"]["guardrail"] == "review"
    assert pending["spec"]["severity"] == "medium"
    assert pending["spec"]["pod"] == "chatbot-0"
    approval = pending["spec"]["approval"]
    assert approval["model"] == "gpt-4o"
    assert "review: keyword" in approval["summary"]
    assert "Acme" not in approval["summary"]  # no prompt content for the approver

    code, out, err = await kubectl_aiguard(
        "approve", name, "-n", namespace, "--kubeconfig", str(people.oncall),
        "--note", "legal confirmed",
    )  # fmt: skip
    assert code == 0, err
    assert f"aiincident/{name} approved by {oncall}" in out
    answer = await asyncio.wait_for(held, WITHIN)
    assert answer.choices[0].message.content == f"echo: {HELD_PROMPT}"
    assert len(upstream.requests) == 1
    decided = await incidents.get(name)
    assert decided["spec"]["state"] == "approved"
    assert decided["spec"]["approval"]["decidedBy"] == oncall
    last = decided["status"]["history"][-1]
    assert (last["from"], last["to"], last["actor"], last["note"]) == (
        "pending-approval", "approved", oncall, "legal confirmed",
    )  # fmt: skip

    # 2. Held (a tool under review); a bystander cannot approve; on-call denies: 403 in the
    #    OpenAI format naming the rule and the approver; the upstream never sees it.
    held = asyncio.create_task(
        client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "pay invoice 42"}],
            tools=[TRANSFER_TOOL],
        )
    )
    name = (await incidents.next_pending())["metadata"]["name"]
    code, _, err = await kubectl_aiguard(
        "approve", name, "-n", namespace, "--kubeconfig", str(people.bystander)
    )
    assert code == 1
    assert "forbidden" in err.lower()
    assert (await incidents.get(name))["spec"]["state"] == "pending-approval"
    assert not held.done()

    code, out, err = await kubectl_aiguard(
        "deny", name, "-n", namespace, "--kubeconfig", str(people.oncall), "--note", "no"
    )
    assert code == 0, err
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await asyncio.wait_for(held, WITHIN)
    assert denied.value.status_code == 403
    body = denied.value.body
    assert isinstance(body, dict)
    assert body["code"] == "review_denied"
    assert body["type"] == "permission_error"
    assert "spec.guardrails.input.review" in body["message"]
    assert f"denied by {oncall}" in body["message"]
    assert len(upstream.requests) == 1

    # 3. Held, and nobody decides: denied when the review times out, by "aiguard (timeout)".
    with pytest.raises(openai.PermissionDeniedError) as expired:
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "litigation update"}]
        )
    assert "denied by aiguard (timeout)" in expired.value.message
    items = await incidents.api.list(incidents.path, label_selector=f"{approvals.LABEL}=true")
    timed_out = [i for i in items if i["metadata"]["name"] not in incidents.seen]
    assert len(timed_out) == 1
    assert timed_out[0]["spec"]["state"] == "denied"
    assert timed_out[0]["spec"]["approval"]["decidedBy"] == approvals.TIMEOUT_ACTOR
    assert timed_out[0]["status"]["history"][-1]["actor"] == approvals.TIMEOUT_ACTOR
    spec = timed_out[0]["spec"]
    expires_at = approvals.parse_time(spec["approval"]["expiresAt"])
    assert expires_at == approvals.parse_time(spec["firstSeen"]) + dt.timedelta(
        seconds=TIMEOUT_SECONDS
    )
    assert approvals.parse_time(spec["approval"]["decidedAt"]) >= expires_at  # not before
    assert len(upstream.requests) == 1

    # A decision cannot be changed afterwards.
    code, _, err = await kubectl_aiguard(
        "approve", timed_out[0]["metadata"]["name"], "-n", namespace,
        "--kubeconfig", str(people.oncall),
    )  # fmt: skip
    assert code == 1
    assert "already denied" in err

    # The audit trail has each decision, naming who decided, and no prompt text.
    events = await audit_events(collector, namespace, 3)
    reviews = [review_decision(e) for e in events]
    assert [(d["allowed"], d["rule"]) for d in reviews] == [
        (True, "spec.guardrails.input.review"),
        (False, "spec.guardrails.input.review"),
        (False, "spec.guardrails.input.review"),
    ]
    assert reviews[0]["reason"].startswith(f"approved by {oncall} (legal confirmed)")
    assert reviews[1]["reason"].startswith(f"denied by {oncall} (no)")
    assert reviews[2]["reason"].startswith("denied by aiguard (timeout)")
    assert [e["http.response.status_code"] for e in events] == [200, 403, 403]
    assert "Acme" not in json.dumps(events)


async def test_anthropic_clients_get_the_denial_in_their_own_format(
    sidecar: Sidecar, upstream: ProviderStandIn, incidents: Incidents, people: People,
    namespace: str,
) -> None:  # fmt: skip
    held = asyncio.create_task(
        sidecar.anthropic().messages.create(
            model="claude-sonnet-4-5",
            max_tokens=64,
            messages=[{"role": "user", "content": "draft the litigation notice"}],
        )
    )
    name = (await incidents.next_pending())["metadata"]["name"]
    code, _, err = await kubectl_aiguard(
        "deny", name, "-n", namespace, "--kubeconfig", str(people.oncall)
    )
    assert code == 0, err
    with pytest.raises(anthropic.PermissionDeniedError) as denied:
        await asyncio.wait_for(held, WITHIN)
    body = denied.value.body
    assert isinstance(body, dict)
    assert body["type"] == "error"
    assert body["error"]["type"] == "permission_error"
    assert "spec.guardrails.input.review" in body["error"]["message"]
    assert f"system:serviceaccount:{namespace}:oncall" in body["error"]["message"]
    assert upstream.requests == []

    # Counting tokens acts on nothing: it is not held.
    counted = await sidecar.anthropic().messages.count_tokens(
        model="claude-sonnet-4-5",
        messages=[{"role": "user", "content": "draft the litigation notice"}],
    )
    assert counted.input_tokens > 0
    assert [r.path for r in upstream.requests] == ["/v1/messages/count_tokens"]


async def test_a_sidecar_may_not_ask_for_approvals_in_another_namespace(
    collector: CollectorServer, people: People, namespace: str
) -> None:
    body = {
        "request_id": "abc123",
        "namespace": "kube-system",
        "pod": "chatbot-0",
        "policy": "p",
        "timeout_seconds": 30,
    }
    headers = {"Authorization": f"Bearer {people.sidecar_token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{collector.url}{audit.APPROVALS_PATH}", json=body, headers=headers) as r,
    ):
        assert r.status == 403
        assert "may not request approvals in namespace kube-system" in (await r.json())["error"]
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{collector.url}{audit.APPROVALS_PATH}", json=body) as r,
    ):
        assert r.status == 401


async def test_an_approval_nobody_waits_for_expires_and_a_resent_request_is_the_same_one(
    collector: CollectorServer, people: People, incidents: Incidents, namespace: str
) -> None:
    body = {
        "request_id": "abandoned1",
        "namespace": namespace,
        "pod": "chatbot-0",
        "policy": f"{namespace}/test-policy",
        "timeout_seconds": 5,
        "summary": "review: model",
    }
    headers = {"Authorization": f"Bearer {people.sidecar_token}"}
    answers = []
    async with aiohttp.ClientSession(headers=headers) as http:
        for _ in range(2):  # the sidecar retries after a lost answer
            async with http.post(f"{collector.url}{audit.APPROVALS_PATH}", json=body) as r:
                answers.append((r.status, await r.json()))
    (first_status, first), (again_status, again) = answers
    assert (first_status, again_status) == (201, 200)
    assert again["name"] == first["name"] == "review-abandoned1"

    # The sidecar is gone: nobody long-polls. The collector's sweep denies it once it is due.
    async def swept() -> bool:
        await collector.approvals.sweep()
        return bool((await incidents.get("review-abandoned1"))["spec"]["state"] == "denied")

    await until(swept, "the sweep to expire the abandoned approval")
    obj = await incidents.get("review-abandoned1")
    assert obj["spec"]["state"] == "denied"
    assert obj["spec"]["approval"]["decidedBy"] == approvals.TIMEOUT_ACTOR
    assert [h["to"] for h in obj["status"]["history"]] == ["pending-approval", "denied"]


# --------------------------------------------------------------------------- no approver


async def test_without_a_collector_review_is_refused(
    tmp_path: Path, upstream: ProviderStandIn
) -> None:
    async with running_sidecar(tmp_path, upstream, namespace="team-a", collector_url=None) as sc:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await sc.openai().chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": HELD_PROMPT}]
            )
    assert "review needs the aiguard collector" in refused.value.message
    assert "spec.guardrails.input.review" in refused.value.message
    assert upstream.requests == []


async def test_an_unreachable_collector_fails_closed(
    tmp_path: Path, upstream: ProviderStandIn
) -> None:
    (dead,) = free_ports(1)
    url = f"http://127.0.0.1:{dead}"
    async with running_sidecar(tmp_path, upstream, namespace="team-a", collector_url=url) as sc:
        with pytest.raises(openai.InternalServerError) as refused:
            await sc.openai().chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": HELD_PROMPT}]
            )
    assert refused.value.status_code == 503
    assert "collector cannot be asked" in refused.value.message
    assert "spec.failureMode is closed" in refused.value.message
    assert upstream.requests == []

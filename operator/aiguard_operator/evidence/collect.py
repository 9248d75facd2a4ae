"""Gather the period's inputs (I/O): the cluster through :mod:`aiguard_operator.kube`, the
collector through its HTTP API (the same bearer-token authentication and paging as
``kubectl aiguard verify-audit``).

From the cluster: AIPolicies (spec, status with coverage), AIIncidents, ClusterRoles, Roles
and their bindings (who can change AIPolicies), the API server's version. From the collector:
``GET /v1/events?from=&to=&order=time`` (every page), ``GET /v1/chains`` and, for every chain
with events in the period, ``GET /v1/chains/{instance}?verify=true``, and
``GET /v1/purges?from=&to=``.

A resource the caller may not list (403) or that is not installed (404, e.g. AIIncidents
before the incidents CRD exists) is recorded as a note in the bundle rather than failing the
export: the bundle then says what it could not see.
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from aiguard_api import audit, constants
from aiguard_operator import kube
from aiguard_operator.evidence.build import Sources

RBAC = {"group": "rbac.authorization.k8s.io", "version": "v1"}
PAGE = 5000


class CollectorError(Exception):
    """The collector answered with an error, or could not be reached."""


@dataclass
class Collected:
    sources: Sources
    cluster_version: str
    notes: list[str] = field(default_factory=list)


class CollectorClient:
    """The collector's read API with a bearer token (and a CA bundle for https)."""

    def __init__(self, url: str, *, token: str | None, ca_file: str | None) -> None:
        self.base = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._ssl: Any = ssl.create_default_context(cafile=ca_file) if ca_file else None

    async def __aenter__(self) -> CollectorClient:
        self._http = aiohttp.ClientSession(
            headers=self._headers, timeout=aiohttp.ClientTimeout(total=120)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.close()

    async def get(self, path: str, params: dict[str, str]) -> Any:
        try:
            async with self._http.get(self.base + path, params=params, ssl=self._ssl) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise CollectorError(f"GET {path}: {resp.status}: {text[:300]}")
        except aiohttp.ClientError as e:
            raise CollectorError(f"GET {self.base}{path}: {e}") from e
        return json.loads(text)

    async def events(self, start: str, end: str, namespace: str | None) -> list[dict[str, Any]]:
        params = {"from": start, "to": end, "order": "time", "limit": str(PAGE)}
        if namespace:
            params["namespace"] = namespace
        out: list[dict[str, Any]] = []
        while True:
            page = await self.get(audit.EVENTS_PATH, params)
            out.extend(page["events"])
            if not page.get("next"):
                return out
            params["after"] = page["next"]

    async def chains(self, instances: set[str]) -> list[dict[str, Any]]:
        out = []
        for inst in sorted(instances):
            quoted = urllib.parse.quote(inst, safe="")
            out.append(await self.get(f"/v1/chains/{quoted}", {"verify": "true"}))
        return out

    async def purges(self, start: str, end: str, namespace: str | None) -> list[dict[str, Any]]:
        params = {"from": start, "to": end}
        if namespace:
            params["namespace"] = namespace
        records: list[dict[str, Any]] = (await self.get("/v1/purges", params))["purges"]
        return records


async def _listed(
    what: str, call: Callable[[], Awaitable[list[dict[str, Any]]]], kind: str, notes: list[str]
) -> list[dict[str, Any]]:
    try:
        items = await call()
    except kube.NotFound:
        notes.append(f"{what}: not installed in this cluster (404); none reported")
        return []
    except kube.ApiError as e:
        if e.status in (401, 403):
            notes.append(f"{what}: the caller may not list them ({e.status}); not reported")
            return []
        raise
    for item in items:
        item.setdefault("kind", kind)
    return items


async def collect_cluster(
    creds: kube.Credentials, namespace: str | None, notes: list[str]
) -> tuple[Sources, str]:
    src = Sources()
    async with kube.Client(creds) as api:
        version = await api.get("/version")
        aig = {"group": constants.API_GROUP, "version": constants.API_VERSION}
        src.policies = await _listed(
            "AIPolicies",
            lambda: api.list(kube.path(**aig, plural=constants.PLURAL_POLICY, namespace=namespace)),
            constants.KIND_POLICY,
            notes,
        )
        src.incidents = await _listed(
            "AIIncidents",
            lambda: api.list(
                kube.path(**aig, plural=constants.PLURAL_INCIDENT, namespace=namespace)
            ),
            constants.KIND_INCIDENT,
            notes,
        )
        src.roles = await _listed(
            "ClusterRoles",
            lambda: api.list(kube.path(**RBAC, plural="clusterroles")),
            "ClusterRole",
            notes,
        )
        src.roles += await _listed(
            "Roles",
            lambda: api.list(kube.path(**RBAC, plural="roles", namespace=namespace)),
            "Role",
            notes,
        )
        src.bindings = await _listed(
            "ClusterRoleBindings",
            lambda: api.list(kube.path(**RBAC, plural="clusterrolebindings")),
            "ClusterRoleBinding",
            notes,
        )
        src.bindings += await _listed(
            "RoleBindings",
            lambda: api.list(kube.path(**RBAC, plural="rolebindings", namespace=namespace)),
            "RoleBinding",
            notes,
        )
    return src, str(version.get("gitVersion", "unknown"))


async def collect(
    creds: kube.Credentials,
    collector: CollectorClient,
    *,
    start: str,
    end: str,
    namespace: str | None,
) -> Collected:
    notes: list[str] = []
    src, version = await collect_cluster(creds, namespace, notes)
    async with collector:
        src.events = await collector.events(start, end, namespace)
        instances = {str(e.get(audit.INSTANCE)) for e in src.events}
        src.chains = await collector.chains(instances)
        src.purges = await collector.purges(start, end, namespace)
    src.notes = notes
    return Collected(src, version, notes)

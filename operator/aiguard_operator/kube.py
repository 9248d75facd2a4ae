"""A small asyncio client for the Kubernetes API: what the operator and the CLI need, no more.

Why not the official ``kubernetes`` package: it is large (~40 MB with its generated models),
synchronous, and the operator needs five verbs on a handful of resources. kopf talks to the
API itself but keeps its client private, so handlers use this one for the objects kopf does
not hand them (ConfigMaps, Secrets, other policies). The CLI uses it too, rather than shelling
out to ``kubectl``: no dependency on a kubectl binary or its output format, and errors arrive
as structured ``Status`` objects.

Credentials (:func:`load`), first match wins:

1. an explicit kubeconfig path (``--kubeconfig``), then ``$KUBECONFIG`` (``:``-separated
   files merged the way kubectl merges them), then ``~/.kube/config``;
2. in-cluster: the pod's ServiceAccount token (re-read before it expires, as bound tokens
   rotate) and CA.

Supported in kubeconfigs: client certificates and keys (files or ``-data``), bearer tokens
(``token``, ``tokenFile``), CA files or data, ``insecure-skip-tls-verify``. ``exec`` and
``auth-provider`` plugins are not: :class:`KubeConfigError` says so.

Errors::

    KubeError
     ├── KubeConfigError      no usable credentials
     └── ApiError             the API answered with a non-2xx status (.status, .reason, .message)
          └── NotFound        404
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp
import yaml

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
PatchType = Literal["merge", "json", "strategic"]
_CONTENT_TYPES: dict[PatchType, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
Obj = dict[str, Any]


class KubeError(Exception):
    """Base of this module's errors."""


class KubeConfigError(KubeError):
    """No usable credentials; the message says which file and what is wrong."""


class ApiError(KubeError):
    """The API server refused a request."""

    def __init__(self, status: int, reason: str, message: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path}: {status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFound(ApiError):
    """404: the object (or its namespace, or the resource type) does not exist."""


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Credentials:
    """How to reach and authenticate to one API server."""

    server: str
    ca_data: str | None = None
    ca_file: str | None = None
    cert_data: bytes | None = None
    cert_file: str | None = None
    key_data: bytes | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    insecure: bool = False
    namespace: str = "default"
    source: str = ""
    """Where these came from (a kubeconfig path or "in-cluster"), for messages."""

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        elif self.cert_data and self.key_data:
            # ssl loads chains from files only: a private temporary directory, removed at once.
            with tempfile.TemporaryDirectory(prefix="aiguard-kube-") as tmp:
                cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
                for path, data in ((cert, self.cert_data), (key, self.key_data)):
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    with os.fdopen(fd, "wb") as file:
                        file.write(data)
                ctx.load_cert_chain(str(cert), str(key))
        return ctx


def _b64(value: str, what: str, source: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as e:
        raise KubeConfigError(f"{source}: {what} is not valid base64") from e


def from_kubeconfig(paths: str | os.PathLike[str], *, context: str | None = None) -> Credentials:
    """Credentials of ``context`` (default: current-context) from one or more kubeconfigs."""
    files = [Path(p).expanduser() for p in str(paths).split(os.pathsep) if p]
    merged: dict[str, dict[str, Any]] = {"contexts": {}, "clusters": {}, "users": {}}
    owners: dict[tuple[str, str], Path] = {}
    current: str | None = None
    for path in files:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            if len(files) == 1:
                raise KubeConfigError(f"kubeconfig {path} does not exist") from None
            continue
        except (OSError, yaml.YAMLError) as e:
            raise KubeConfigError(f"kubeconfig {path} cannot be read: {e}") from e
        current = current or doc.get("current-context")
        for section, key in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
            for item in doc.get(section) or []:
                if item.get("name") not in merged[section]:
                    merged[section][item["name"]] = item.get(key) or {}
                    owners[(section, item["name"])] = path
    source = str(paths)
    name = context or current
    if not name:
        raise KubeConfigError(f"{source}: no current-context; pass --context")
    ctx = merged["contexts"].get(name)
    if ctx is None:
        raise KubeConfigError(f"{source}: context {name!r} not found")
    cluster = merged["clusters"].get(ctx.get("cluster", ""))
    user = merged["users"].get(ctx.get("user", ""), {})
    if cluster is None or not cluster.get("server"):
        raise KubeConfigError(f"{source}: context {name!r} names no cluster with a server")
    if "exec" in user or ("auth-provider" in user and "token" not in user):
        provider = user.get("auth-provider", {})
        token = provider.get("config", {}).get("access-token")
        if "exec" in user or not token:
            raise KubeConfigError(
                f"{source}: user of context {name!r} uses an exec or auth-provider plugin, "
                "which this client does not run; use a kubeconfig with a client certificate "
                "or token"
            )
        user = {**user, "token": token}

    def rel(section: str, entry: str, value: str | None) -> str | None:
        if not value:
            return None
        base = owners.get((section, entry), files[0]).parent
        return str((base / value).resolve()) if not os.path.isabs(value) else value

    cluster_name, user_name = ctx.get("cluster", ""), ctx.get("user", "")
    return Credentials(
        server=str(cluster["server"]).rstrip("/"),
        ca_data=(
            _b64(
                cluster["certificate-authority-data"], "certificate-authority-data", source
            ).decode()
            if cluster.get("certificate-authority-data")
            else None
        ),
        ca_file=rel("clusters", cluster_name, cluster.get("certificate-authority")),
        cert_data=(
            _b64(user["client-certificate-data"], "client-certificate-data", source)
            if user.get("client-certificate-data")
            else None
        ),
        cert_file=rel("users", user_name, user.get("client-certificate")),
        key_data=(
            _b64(user["client-key-data"], "client-key-data", source)
            if user.get("client-key-data")
            else None
        ),
        key_file=rel("users", user_name, user.get("client-key")),
        token=user.get("token"),
        token_file=rel("users", user_name, user.get("tokenFile")),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        namespace=ctx.get("namespace") or "default",
        source=source,
    )


def in_cluster(sa_dir: Path = SERVICE_ACCOUNT_DIR) -> Credentials:
    """Credentials of the pod's ServiceAccount."""
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
    )
    token = sa_dir / "token"
    if not host or not token.exists():
        raise KubeConfigError(
            "no kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) and not running in a "
            "pod with a ServiceAccount token"
        )
    if ":" in host:
        host = f"[{host}]"
    ns_file = sa_dir / "namespace"
    return Credentials(
        server=f"https://{host}:{port}",
        ca_file=str(sa_dir / "ca.crt"),
        token_file=str(token),
        namespace=ns_file.read_text().strip() if ns_file.exists() else "default",
        source="in-cluster",
    )


def load(
    kubeconfig: str | os.PathLike[str] | None = None, *, context: str | None = None
) -> Credentials:
    """Credentials by the precedence in the module docstring."""
    if kubeconfig:
        return from_kubeconfig(kubeconfig, context=context)
    env = os.environ.get("KUBECONFIG")
    if env:
        return from_kubeconfig(env, context=context)
    default = Path("~/.kube/config").expanduser()
    if default.exists():
        return from_kubeconfig(default, context=context)
    return in_cluster()


# --------------------------------------------------------------------------- paths


def path(
    *,
    plural: str,
    group: str = "",
    version: str = "v1",
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """The REST path of a collection or object, e.g. ``/api/v1/namespaces/ns/configmaps/x``."""
    quote = urllib.parse.quote
    out = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace is not None:
        out += f"/namespaces/{quote(namespace, safe='')}"
    out += f"/{plural}"
    if name is not None:
        out += f"/{quote(name, safe='')}"
    if subresource is not None:
        out += f"/{subresource}"
    return out


# --------------------------------------------------------------------------- client


class Client:
    """An API client over one aiohttp session. Use as ``async with Client(creds) as api:``."""

    #: Re-read a token file at least this often (bound tokens are refreshed at ~80% of 1 h).
    TOKEN_TTL = 60.0

    def __init__(self, creds: Credentials, *, timeout: float = 30.0) -> None:
        self.creds = creds
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._token: str | None = creds.token
        self._token_read = 0.0

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self.creds.ssl_context())
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _auth_header(self) -> dict[str, str]:
        if self.creds.token_file and time.monotonic() - self._token_read > self.TOKEN_TTL:
            try:
                self._token = Path(self.creds.token_file).read_text().strip()
            except OSError as e:
                raise KubeConfigError(f"cannot read token {self.creds.token_file}: {e}") from e
            self._token_read = time.monotonic()
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    async def request(
        self,
        method: str,
        api_path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        if self._session is None:
            await self.open()
        assert self._session is not None
        headers = {"Accept": "application/json", **self._auth_header()}
        data: bytes | None = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        url = self.creds.server + api_path
        async with self._session.request(
            method, url, data=data, params=params, headers=headers
        ) as resp:
            text = await resp.text()
            if resp.status >= 400:
                raise _api_error(resp.status, text, method, api_path)
            if not text:
                return {}
            result: Obj = json.loads(text)
            return result

    async def get(self, api_path: str) -> Obj:
        return await self.request("GET", api_path)

    async def get_or_none(self, api_path: str) -> Obj | None:
        try:
            return await self.get(api_path)
        except NotFound:
            return None

    async def list(self, api_path: str, *, label_selector: str | None = None) -> list[Obj]:
        params = {"labelSelector": label_selector} if label_selector else None
        items: list[Obj] = (await self.request("GET", api_path, params=params)).get("items") or []
        return items

    async def create(self, api_path: str, body: Obj) -> Obj:
        return await self.request("POST", api_path, body=body)

    async def patch(self, api_path: str, body: Any, *, kind: PatchType = "merge") -> Obj:
        return await self.request("PATCH", api_path, body=body, content_type=_CONTENT_TYPES[kind])

    async def delete(self, api_path: str) -> bool:
        """Delete; False if it was already gone."""
        try:
            await self.request("DELETE", api_path)
        except NotFound:
            return False
        return True


def _api_error(status: int, text: str, method: str, api_path: str) -> ApiError:
    reason, message = "", text.strip()[:500]
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("kind") == "Status":
        reason = str(doc.get("reason", ""))
        message = str(doc.get("message", message))
    cls = NotFound if status == 404 else ApiError
    return cls(status, reason or str(status), message, method, api_path)

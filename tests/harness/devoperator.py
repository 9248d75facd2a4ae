"""Run aiguard-operator against a local control plane, webhooks on 127.0.0.1 (dev mode).

From a shell (``make operator`` runs exactly this)::

    python -m tests.harness.devoperator --kubeconfig .local/kubeconfig --dir .local/operator

It applies ``crds/`` (the AIPolicy/AIIncident CRDs and kopf's peering CRD), creates the
ClusterKopfPeering object ``aiguard``, generates the webhook CA and serving certificate in
``<dir>/certs``, and runs the operator in the foreground with kopf managing the
``aiguard.dev`` webhook configurations by URL (``https://127.0.0.1:PORT``). Ctrl-C stops it;
on the way out kopf removes the webhooks it registered.

Dev mode runs with peering (the same code path as production HA, priority from
``--priority``) rather than ``--standalone``: start a second one with a higher priority to
watch the first one pause. ``--standalone`` skips peering (kopf's ``--standalone``).

From tests (``tests/integration/conftest.py``)::

    with DevOperator(cluster, tmp_path) as operator:   # started, webhook registered and serving
        ...
    # stopped with SIGINT like Ctrl-C, SIGKILL only if it hangs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import yaml

from aiguard_operator import certs, kube, settings
from tests.harness.cluster import Cluster, free_ports, wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO_ROOT / "crds"
PEERING_NAME = "aiguard"
MANAGED_NAME = "aiguard.dev"
FIELD_MANAGER = "aiguard-devoperator"
WEBHOOK_HOSTS = ("127.0.0.1", "localhost")

# An AIPolicy only the operator's webhook rejects (the schema accepts it): the regex does not
# compile. `kubectl create --dry-run=server` with it shows whether the webhook is serving.
PROBE_POLICY: dict[str, Any] = {
    "apiVersion": "aiguard.dev/v1alpha1",
    "kind": "AIPolicy",
    "metadata": {"name": "aiguard-webhook-probe", "namespace": "default"},
    "spec": {
        "providers": [
            {"name": "probe", "type": "openai-compatible", "baseURL": "https://probe.invalid"}
        ],
        "routes": [{"models": ["*"], "targets": [{"provider": "probe"}]}],
        "guardrails": {"input": {"deny": {"patterns": ["(unclosed"]}}},
    },
}

Log = Callable[[str], None]


def _log(message: str) -> None:
    print(f"[devoperator] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup steps


def manifests(directory: Path = CRDS_DIR) -> list[dict[str, Any]]:
    """Every object in ``directory``'s YAML files, in file order."""
    docs: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _object_path(doc: Mapping[str, Any]) -> str:
    group, _, version = str(doc["apiVersion"]).rpartition("/")
    kind = doc["kind"]
    plural = {
        "CustomResourceDefinition": "customresourcedefinitions",
        "ClusterKopfPeering": "clusterkopfpeerings",
    }[kind]
    return kube.path(group=group, version=version, plural=plural, name=doc["metadata"]["name"])


async def apply_cluster_objects(
    creds: kube.Credentials, docs: Iterable[Mapping[str, Any]], *, within: float = 60.0
) -> None:
    """Server-side apply cluster-scoped objects: CRDs first (until Established), then the rest.

    A new resource type can answer 404 for a moment after its CRD is Established: retried.
    """
    docs = list(docs)
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    others = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
    deadline = time.monotonic() + within
    async with kube.Client(creds) as api:

        async def apply(doc: Mapping[str, Any]) -> None:
            while True:
                try:
                    await api.request(
                        "PATCH",
                        _object_path(doc),
                        body=doc,
                        params={"fieldManager": FIELD_MANAGER, "force": "true"},
                        content_type="application/apply-patch+yaml",
                    )
                    return
                except kube.NotFound:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

        for doc in crds:
            await apply(doc)
        for doc in crds:
            while True:
                obj = await api.get(_object_path(doc))
                conds = (obj.get("status") or {}).get("conditions") or []
                if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"CRD {doc['metadata']['name']} not Established")
                await asyncio.sleep(0.2)
        # Established is not yet served: a new resource answers 404, then 429 ("storage is
        # (re)initializing") for a moment. Wait until a list of each one succeeds.
        for doc in crds:
            spec = doc["spec"]
            version = next(v["name"] for v in spec["versions"] if v.get("storage"))
            collection = kube.path(
                group=spec["group"], version=version, plural=spec["names"]["plural"]
            )
            while True:
                try:
                    await api.request("GET", collection, params={"limit": "1"})
                    break
                except kube.ApiError as e:
                    if e.status not in (404, 429) or time.monotonic() > deadline:
                        raise
                await asyncio.sleep(0.2)
        for doc in others:
            await apply(doc)


def prepare(
    kubeconfig: Path, workdir: Path, *, env: Mapping[str, str], log: Log = _log
) -> certs.CertPaths:
    """Apply crds/ and the peering object, and create the webhook certificates for the
    operator that will run with ``env`` (the same hosts it will check them for)."""
    creds = kube.load(str(kubeconfig))
    peering = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": PEERING_NAME},
    }
    asyncio.run(apply_cluster_objects(creds, [*manifests(), peering]))
    log(f"applied {CRDS_DIR.relative_to(REPO_ROOT)}/ and ClusterKopfPeering {PEERING_NAME}")
    webhook = settings.from_env(env).webhook
    outcome = certs.ensure_certs(webhook.cert_dir, hosts=webhook.cert_hosts)
    for change in outcome.changed:
        log(f"webhook certificates: {change}")
    return outcome.paths


def operator_env(
    kubeconfig: Path,
    workdir: Path,
    *,
    port: int,
    priority: int = 0,
    metrics_port: int | None = None,
    collector_port: int | None = None,
) -> dict[str, str]:
    """The environment the dev operator runs with (see aiguard_operator.settings); with
    ``collector_port`` it also serves the audit collector over HTTPS (the webhook's
    certificate, SAN 127.0.0.1) and points injected sidecars at it."""
    metrics = {"AIGUARD_METRICS": f"127.0.0.1:{metrics_port}"} if metrics_port else {}
    certs_dir = (workdir / "certs").resolve()
    collector = (
        {
            "AIGUARD_COLLECTOR": "true",
            "AIGUARD_COLLECTOR_ADDR": "127.0.0.1",
            "AIGUARD_COLLECTOR_PORT": str(collector_port),
            "AIGUARD_COLLECTOR_DB": str((workdir / "collector" / "audit.db").resolve()),
            "AIGUARD_COLLECTOR_CERT_DIR": str(certs_dir),
            "AIGUARD_SIDECAR_COLLECTOR_URL": f"https://127.0.0.1:{collector_port}",
            "AIGUARD_SIDECAR_COLLECTOR_CA_FILE": str(certs_dir / certs.CA_CERT),
        }
        if collector_port
        else {}
    )
    return {
        **metrics,
        **collector,
        "KUBECONFIG": str(kubeconfig.resolve()),
        "AIGUARD_PEERING": PEERING_NAME,
        "AIGUARD_PEERING_PRIORITY": str(priority),
        "AIGUARD_WEBHOOK_ADDR": "127.0.0.1",
        "AIGUARD_WEBHOOK_HOST": "127.0.0.1",
        "AIGUARD_WEBHOOK_PORT": str(port),
        "AIGUARD_WEBHOOK_CERT_DIR": str(certs_dir),
        "AIGUARD_WEBHOOK_CERT_HOSTS": ",".join(WEBHOOK_HOSTS),
        "AIGUARD_WEBHOOK_MANAGED": MANAGED_NAME,
        "AIGUARD_LOG_FORMAT": "full",
        # In dev a missing Secret is usually created a moment later: look again soon.
        "AIGUARD_SECRET_RETRY_SECONDS": "5",
    }


# --------------------------------------------------------------------------- for tests


class DevOperator:
    """The operator as a subprocess against ``cluster``; ``start`` returns once its webhook
    is registered with the API server and rejects an invalid AIPolicy."""

    def __init__(
        self,
        cluster: Cluster,
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        operator_kubeconfig: Path | None = None,
        timeout: float = 90.0,
        log: Log = _log,
        collector: bool = False,
    ) -> None:
        """``collector``: serve the audit collector too (``collector_url``/``collector_ca``),
        and point injected sidecars at it, as the chart does."""
        self.cluster = cluster
        self.collector = collector
        self.collector_port = 0
        self.operator_kubeconfig = operator_kubeconfig
        self.workdir = workdir.resolve()
        self.extra_env = dict(env or {})
        self.timeout = timeout
        self.log = log
        self.port = 0
        self.metrics_port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "operator.log"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.metrics_port, collector_port = free_ports(3)
        self.collector_port = collector_port if self.collector else 0
        started = time.monotonic()
        argv = [
            sys.executable,
            "-m",
            "tests.harness.devoperator",
            "--kubeconfig",
            str(self.cluster.kubeconfig),
            "--dir",
            str(self.workdir),
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
        ]
        if self.operator_kubeconfig is not None:
            argv += ["--operator-kubeconfig", str(self.operator_kubeconfig)]
        if self.collector:
            argv += ["--collector-port", str(self.collector_port)]
        env = {**os.environ, **self.extra_env, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_registered()
            self._wait_serving()
            if self.collector:
                self._wait(self._collector_healthy, f"the collector on {self.collector_url}")
        except BaseException:
            self.stop()
            raise
        self.log(f"operator ready in {time.monotonic() - started:.1f}s (port {self.port})")

    def _alive(self) -> None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(f"operator exited with code {code}; log:\n{self.log_tail()}")

    def _wait(self, predicate: Callable[[], Any], what: str) -> Any:
        def check() -> Any:
            self._alive()
            return predicate()

        try:
            return wait_for(check, self.timeout, interval=0.2, what=what)
        except TimeoutError as e:
            raise TimeoutError(f"{e}; operator log:\n{self.log_tail()}") from None

    def webhook_configuration(self, kind: str = "validating") -> dict[str, Any] | None:
        """The managed ``validating`` or ``mutating`` webhook configuration."""
        result = self.cluster.kubectl(
            "get", f"{kind}webhookconfiguration", MANAGED_NAME, "-o", "json", check=False
        )
        if result.returncode != 0:
            return None
        config: dict[str, Any] = json.loads(result.stdout)
        return config

    @property
    def collector_url(self) -> str:
        if not self.collector_port:
            raise RuntimeError("this DevOperator runs without a collector (collector=True)")
        return f"https://127.0.0.1:{self.collector_port}"

    @property
    def collector_ca(self) -> Path:
        """The CA bundle that verifies the collector (and the webhook)."""
        return self.workdir / "certs" / certs.CA_CERT

    def _collector_healthy(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.collector_ca))
        try:
            with urllib.request.urlopen(  # noqa: S310 (https on 127.0.0.1)
                f"{self.collector_url}/healthz", timeout=5, context=context
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics(self) -> str:
        """The operator's /metrics, as text."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:  # noqa: S310
            text: str = response.read().decode()
        return text

    def _wait_registered(self) -> None:
        def registered(kind: str) -> bool:
            config = self.webhook_configuration(kind)
            hooks = (config or {}).get("webhooks") or []
            return bool(hooks) and all(
                f"127.0.0.1:{self.port}/" in h.get("clientConfig", {}).get("url", "")
                and h.get("clientConfig", {}).get("caBundle")
                for h in hooks
            )

        for kind in ("validating", "mutating"):
            self._wait(
                functools.partial(registered, kind),
                f"the {kind} {MANAGED_NAME} webhooks registered on port {self.port}",
            )

    def _wait_serving(self) -> None:
        probe = json.dumps(PROBE_POLICY)

        def rejected() -> bool:
            result = self.cluster.kubectl(
                "create", "--dry-run=server", "-f", "-", input=probe, check=False
            )
            return result.returncode != 0 and "denied the request" in result.stderr

        self._wait(rejected, "the webhook to reject an invalid AIPolicy")

    def stop(self, grace: float = 20.0) -> None:
        """SIGINT (like Ctrl-C) so kopf cleans up; SIGKILL the group if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.log(f"operator did not stop within {grace:g}s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.harness.devoperator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kubeconfig", type=Path, default=Path(".local/kubeconfig"))
    parser.add_argument("--dir", type=Path, default=Path(".local/operator"))
    parser.add_argument("--port", type=int, default=0, help="webhook port (0: a free one)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="port of the operator's /metrics on 127.0.0.1 (0: the default, 15091)",
    )
    parser.add_argument(
        "--collector-port",
        type=int,
        default=0,
        help="serve the audit collector on this 127.0.0.1 port over HTTPS and point injected "
        "sidecars at it (0: no collector)",
    )
    parser.add_argument("--priority", type=int, default=0, help="kopf peering priority")
    parser.add_argument(
        "--standalone", action="store_true", help="no peering (AIGUARD_PEERING=standalone)"
    )
    parser.add_argument(
        "--operator-kubeconfig",
        type=Path,
        help="run the operator with these credentials (e.g. a ServiceAccount token) instead "
        "of --kubeconfig, which then only installs the CRDs",
    )
    args = parser.parse_args(argv)

    if not args.kubeconfig.exists():
        _log(f"{args.kubeconfig} does not exist: start a control plane first (make cluster-up)")
        return 1
    workdir: Path = args.dir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = args.port or free_ports(1)[0]
    env = operator_env(
        args.operator_kubeconfig or args.kubeconfig,
        workdir,
        port=port,
        priority=args.priority,
        metrics_port=args.metrics_port or None,
        collector_port=args.collector_port or None,
    )
    if args.standalone:
        env["AIGUARD_PEERING"] = "standalone"
    try:
        paths = prepare(args.kubeconfig, workdir, env=env)
    except (kube.KubeError, OSError, TimeoutError) as e:
        _log(f"cannot prepare the cluster: {e}")
        return 1
    os.environ.update(env)
    _log(
        f"webhook https://127.0.0.1:{port} (CA {paths.ca_bundle}); "
        f"try: kubectl --kubeconfig {args.kubeconfig} apply -n NS -f examples/policies/"
    )
    _log("running the operator in the foreground; Ctrl-C stops it")

    from aiguard_operator import main as operator_main

    return operator_main.main([])


if __name__ == "__main__":
    sys.exit(main())

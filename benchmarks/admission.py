"""Admission benchmark: what the ``/mutate-pods`` webhook costs per pod.

``in_process()`` measures the work the handler does for one AdmissionReview, one request at a
time, in this process: parse the review JSON, decide (``injection_required`` → ``choose_policy``
→ ``inject``), compute the JSON Patch, encode the response (base64 patch, JSON). The pod is a
realistic Deployment pod as the API server sends it (defaulted fields, two containers, a
projected service-account volume), in a namespace with five AIPolicies. Scenarios:

- ``inject``: the pod is injected, patch by ``injection.json_patch``;
- ``inject, kopf diff``: the same, patch by ``jsonpatch.JsonPatch.from_diff`` (what kopf's
  ``Patch.fns`` does), for the handler to choose;
- ``skip: not opted in``: the cheap path, answered without a patch.

``through_api_server()`` measures what a client sees: it starts a local control plane
(``tests/harness``: etcd, kube-apiserver, kube-controller-manager) and the operator with its
webhooks registered by URL on 127.0.0.1, then creates pods through the API server with the
operator's own API client (HTTPS, a few requests in flight), in three kinds of namespace:

- ``no webhook``: unlabelled pods; the webhooks' selectors keep them away from the operator
  (the baseline: what every pod in a cluster that does not use aiguard pays, i.e. nothing);
- ``injected``: labelled pods in a namespace with an AIPolicy: the webhook injects them;
- ``webhook skip``: labelled pods that opt out by annotation: the round trip, no patch.

The scenarios are interleaved round by round, so a noisy neighbour slows all of them alike.
Then AdmissionReviews are sent straight to the operator's webhook URL (``operator webhook,
direct``: kopf's HTTPS server + the handler, no API server), one at a time, as dry runs.
Latency is per POST (client-observed); requests/s is pods created per second of the
scenario's own time. The operator's histogram ``aiguard_admission_duration_seconds`` gives
the time spent inside the handler, reported as ``operator_handler_mean_us``.

    python -m benchmarks.admission [--requests N] [--api-requests N] [--no-api-server]
        # → benchmarks/results/admission.json (through the API server when the k8s
        #   binaries are built: make k8s-binaries)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import os
import platform
import re
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jsonpatch

from aiguard_api import constants
from aiguard_api.policy import LabelSelector, SecretKeyRef
from aiguard_operator import admission, certs, injection, kube

RESULTS = Path(__file__).resolve().parent / "results"
OPERATOR_NAMESPACE = "aiguard-system"
SETTINGS = injection.SidecarSettings(image="ghcr.io/aiguard/aiguard-sidecar:0.1.0", version="0.1.0")


# --------------------------------------------------------------------------------------------
# The workload


def _policy(name: str, app: str, secrets: list[str]) -> injection.PolicyInfo:
    refs = tuple(SecretKeyRef(name=s) for s in secrets)
    return injection.PolicyInfo(
        name=name,
        selector=LabelSelector(match_labels={"app": app}),
        compiled_hash="sha256:" + "ab" * 32,
        configmap=constants.configmap_name(name),
        ready=True,
        secret_refs=refs,
        provider_key_refs=refs,
    )


POLICIES = [
    _policy("assistant", "assistant", ["openai-key", "anthropic-key"]),
    _policy("search", "search", ["openai-key"]),
    _policy("summariser", "summariser", ["azure-openai-key"]),
    _policy("support-bot", "support-bot", ["anthropic-key"]),
    _policy("batch", "batch", ["openai-key"]),
]


def deployment_pod(*, opted_in: bool = True) -> dict[str, Any]:
    """A pod as the ReplicaSet controller creates it, after the API server's defaulting."""
    labels = {"app": "assistant", "pod-template-hash": "7d9f8c6b5", "tier": "backend"}
    if opted_in:
        labels[constants.LABEL_INJECT] = constants.INJECT_ENABLED
    sa_volume = "kube-api-access-x7k2p"
    app_env = [{"name": f"FEATURE_{i}", "value": "on"} for i in range(8)] + [
        {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]

    def container(name: str, image: str, env: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": name,
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "env": env,
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
            if name == "app"
            else [],
            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 5},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "volumeMounts": [
                {"name": "config", "mountPath": "/etc/assistant", "readOnly": True},
                {
                    "name": sa_volume,
                    "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                    "readOnly": True,
                },
            ],
        }

    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "assistant-7d9f8c6b5-",
            "namespace": "team-a",
            "labels": labels,
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-01-10T09:00:00Z"},
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": "assistant-7d9f8c6b5",
                    "uid": "4f1c2d3e-0000-4000-8000-000000000001",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "containers": [
                container("app", "registry.example/assistant:1.4.2", app_env),
                container("log-shipper", "registry.example/fluent-bit:3.1", []),
            ],
            "dnsPolicy": "ClusterFirst",
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0,
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
            "securityContext": {"runAsNonRoot": True},
            "serviceAccount": "assistant",
            "serviceAccountName": "assistant",
            "terminationGracePeriodSeconds": 30,
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "labelSelector": {"matchLabels": {"app": "assistant"}},
                                "topologyKey": "kubernetes.io/hostname",
                            },
                        }
                    ]
                }
            },
            "tolerations": [
                {
                    "key": f"node.kubernetes.io/{k}",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
                for k in ("not-ready", "unreachable")
            ],
            "volumes": [
                {"name": "config", "configMap": {"name": "assistant-config", "defaultMode": 420}},
                {
                    "name": sa_volume,
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {
                                "configMap": {
                                    "name": "kube-root-ca.crt",
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}],
                                }
                            },
                        ],
                    },
                },
            ],
        },
    }


def admission_review(pod: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "team-a",
                "operation": "CREATE",
                "userInfo": {
                    "username": "system:serviceaccount:kube-system:replicaset-controller",
                    "groups": ["system:serviceaccounts", "system:authenticated"],
                },
                "object": pod,
                "dryRun": False,
            },
        }
    ).encode()


# --------------------------------------------------------------------------------------------
# The handler's work, minus HTTP


Differ = Callable[[dict[str, Any], dict[str, Any]], list[Any]]


def kopf_diff(old: dict[str, Any], new: dict[str, Any]) -> list[Any]:
    ops: list[Any] = jsonpatch.JsonPatch.from_diff(old, new).patch
    return ops


def handle(raw: bytes, differ: Differ = injection.json_patch) -> bytes:
    """One AdmissionReview in, one out: what the webhook handler computes."""
    request = json.loads(raw)["request"]
    pod = request["object"]
    decision = injection.decide(
        pod,
        namespace=request["namespace"],
        namespace_labels={injection.NAMESPACE_NAME_LABEL: request["namespace"]},
        policies=POLICIES,
        settings=SETTINGS,
        operator_namespace=OPERATOR_NAMESPACE,
    )
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    if decision.pod is not None:
        patch = differ(pod, decision.pod)
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch).encode()).decode()
        if decision.warnings:
            response["warnings"] = list(decision.warnings)
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
    return json.dumps(review).encode()


# --------------------------------------------------------------------------------------------
# Measuring


@dataclass(frozen=True)
class Result:
    name: str
    requests: int
    requests_per_second: float
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float
    patch_ops: int | None = None
    patch_bytes: int | None = None
    concurrency: int = 1


def _percentile(sorted_ns: list[int], p: float) -> float:
    """Nearest-rank percentile, in microseconds."""
    rank = max(1, math.ceil(p / 100 * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1000


def _measure(name: str, raw: bytes, differ: Differ, requests: int, warmup: int) -> Result:
    for _ in range(warmup):
        handle(raw, differ)
    samples: list[int] = []
    clock = time.perf_counter_ns
    start = clock()
    for _ in range(requests):
        t0 = clock()
        handle(raw, differ)
        samples.append(clock() - t0)
    elapsed = (clock() - start) / 1e9
    samples.sort()
    response = json.loads(handle(raw, differ))["response"]
    patch = base64.b64decode(response["patch"]) if "patch" in response else b"[]"
    return Result(
        name=name,
        requests=requests,
        requests_per_second=round(requests / elapsed, 1),
        p50_us=round(_percentile(samples, 50), 1),
        p90_us=round(_percentile(samples, 90), 1),
        p99_us=round(_percentile(samples, 99), 1),
        max_us=round(samples[-1] / 1000, 1),
        mean_us=round(statistics.fmean(samples) / 1000, 1),
        patch_ops=len(json.loads(patch)),
        patch_bytes=len(patch),
    )


def _check(raw: bytes) -> None:
    """The benchmarked path produces a patch that yields exactly ``inject``'s pod."""
    pod = json.loads(raw)["request"]["object"]
    response = json.loads(handle(raw))["response"]
    patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
    expected = injection.inject(pod, injection.InjectionPlan.for_policy(POLICIES[0], SETTINGS))
    if patched != expected:
        raise SystemExit("benchmark self-check failed: the patch does not give the injected pod")


def in_process(*, requests: int = 5000, warmup: int = 300) -> list[Result]:
    """Handler work per AdmissionReview, sequential, in this process."""
    injected = admission_review(deployment_pod())
    skipped = admission_review(deployment_pod(opted_in=False))
    _check(injected)
    return [
        _measure(
            "in-process: inject (json_patch)", injected, injection.json_patch, requests, warmup
        ),
        _measure("in-process: inject (kopf diff)", injected, kopf_diff, requests, warmup),
        _measure("in-process: skip, not opted in", skipped, injection.json_patch, requests, warmup),
    ]


# --------------------------------------------------------------------------------------------
# Through the API server

API_POLICY: dict[str, Any] = {
    "apiVersion": constants.GROUP_VERSION,
    "kind": constants.KIND_POLICY,
    "metadata": {"name": "assistant"},
    "spec": {
        "selector": {"matchLabels": {"app": "assistant"}},
        "providers": [
            {
                "name": "openai",
                "type": "openai",
                "baseURL": "https://api.openai.com/v1",
                "apiKeySecretRef": {"name": "openai-api-key"},
            }
        ],
        "routes": [{"name": "all", "models": ["*"], "targets": [{"provider": "openai"}]}],
        "access": {"rules": [{"name": "all", "subjects": {"allAuthenticated": True}}]},
    },
}
SECRETS = Path(__file__).resolve().parents[1] / "examples" / "policies" / "secrets.example.yaml"


@dataclass(frozen=True)
class Scenario:
    name: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    injected: bool


def _api_pod(name: str, scenario: Scenario) -> dict[str, Any]:
    pod = deployment_pod(opted_in=False)
    meta = pod["metadata"]
    del meta["generateName"], meta["ownerReferences"]
    meta.update(name=name, namespace=scenario.namespace)
    meta["labels"] = {**meta["labels"], **scenario.labels}
    meta["annotations"] = {**meta["annotations"], **scenario.annotations}
    pod["spec"]["serviceAccount"] = pod["spec"]["serviceAccountName"] = "default"
    # The ServiceAccount admission plugin adds the token volume itself.
    pod["spec"]["volumes"] = pod["spec"]["volumes"][:1]
    for container in pod["spec"]["containers"]:
        container["volumeMounts"] = container["volumeMounts"][:1]
    return pod


async def _create_pods(
    api: kube.Client, scenario: Scenario, names: list[str], concurrency: int
) -> tuple[list[int], float]:
    """Create the pods, ``concurrency`` in flight; (latencies in ns, wall seconds)."""
    gate = asyncio.Semaphore(concurrency)
    path = kube.path(plural="pods", namespace=scenario.namespace)
    samples: list[int] = []

    async def one(name: str) -> None:
        async with gate:
            body = _api_pod(name, scenario)
            t0 = time.perf_counter_ns()
            created = await api.create(path, body)
            samples.append(time.perf_counter_ns() - t0)
        has_sidecar = injection.has_sidecar(created)
        if has_sidecar != scenario.injected:
            raise SystemExit(f"benchmark check failed: {name} sidecar={has_sidecar}")

    start = time.perf_counter()
    await asyncio.gather(*(one(n) for n in names))
    return samples, time.perf_counter() - start


def _handler_seconds(metrics_text: str) -> tuple[float, float]:
    """(sum, count) of aiguard_admission_duration_seconds over both webhooks."""
    total = count = 0.0
    for line in metrics_text.splitlines():
        found = re.match(r"aiguard_admission_duration_seconds_(sum|count)\{[^}]*\} (\S+)", line)
        if found:
            if found.group(1) == "sum":
                total += float(found.group(2))
            else:
                count += float(found.group(2))
    return total, count


@contextlib.contextmanager
def _control_plane(kubeconfig: Path | None, workdir: Path) -> Iterator[Any]:
    """A running cluster (``tests.harness``): the given kubeconfig's, or a local one."""
    from tests.harness.cluster import Cluster, LocalCluster, find_bin_dir

    bin_dir = find_bin_dir(build=False)
    if kubeconfig is not None:
        yield Cluster.from_kubeconfig(kubeconfig, bin_dir, workdir)
        return
    with LocalCluster(workdir / "cluster", bin_dir) as cluster:
        yield cluster


def through_api_server(
    *,
    requests: int = 200,
    concurrency: int = 4,
    warmup: int = 10,
    kubeconfig: Path | None = None,
) -> tuple[list[Result], dict[str, Any]]:
    """Pod CREATE latency through a real kube-apiserver, with the webhook and without.

    Returns the results and a summary: the webhook's added latency (p50, p99 of injected
    minus the baseline's) and the operator's own time per admission.
    """
    from tests.harness.devoperator import DevOperator

    requests = max(1, min(requests, 1000))
    round_size = concurrency * 5
    suffix = os.urandom(3).hex()
    scenarios = [
        Scenario("api server: create pod, no webhook", f"bench-plain-{suffix}", {}, {}, False),
        Scenario(
            "api server: create pod, injected",
            f"bench-inject-{suffix}",
            {constants.LABEL_INJECT: constants.INJECT_ENABLED},
            {},
            True,
        ),
        Scenario(
            "api server: create pod, webhook skip",
            f"bench-inject-{suffix}",
            {constants.LABEL_INJECT: constants.INJECT_ENABLED},
            {constants.ANNOTATION_INJECT: constants.INJECT_DISABLED},
            False,
        ),
    ]
    namespaces = sorted({s.namespace for s in scenarios})
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aiguard-bench-")))
        cluster = stack.enter_context(_control_plane(kubeconfig, workdir))
        operator = stack.enter_context(DevOperator(cluster, workdir / "operator", log=_quiet))
        for ns in namespaces:
            cluster.kubectl("create", "namespace", ns)
        stack.callback(
            lambda: [
                cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
                for ns in namespaces
            ]
        )
        inject_ns = scenarios[1].namespace
        cluster.kubectl("apply", "-n", inject_ns, "-f", str(SECRETS))
        cluster.kubectl("apply", "-n", inject_ns, "-f", "-", input=json.dumps(API_POLICY))
        ready = ("--for=condition=Ready", "aipolicy/assistant", "--timeout=60s")
        cluster.kubectl("wait", "-n", inject_ns, *ready)
        run = _run_api(
            cluster.kubeconfig,
            scenarios,
            requests=requests,
            concurrency=concurrency,
            warmup=warmup,
            round_size=round_size,
            scrape=operator.metrics,
        )
        results, handler = asyncio.run(run)
        cafile = certs.CertPaths(workdir / "operator" / "certs").ca_bundle
        url = f"https://127.0.0.1:{operator.port}/{admission.OBJECT_WEBHOOK}"
        results += asyncio.run(_direct(url, cafile, inject_ns, requests=requests, warmup=warmup))
    base, inj = results[0], results[1]
    summary = {
        "concurrency": concurrency,
        "pods_per_scenario": requests,
        "webhook_added_p50_us": round(inj.p50_us - base.p50_us, 1),
        "webhook_added_p99_us": round(inj.p99_us - base.p99_us, 1),
        "operator_handler_mean_us": handler,
        "note": "client-observed POST latency on one machine running etcd, kube-apiserver, "
        "kube-controller-manager, the operator and the client; the difference to the "
        "baseline is the webhook's cost (TLS round trip + kopf + decide + patch + the API "
        "server applying and re-validating the patched pod)",
    }
    return results, summary


def _quiet(message: str) -> None:
    pass


async def _direct(
    url: str, cafile: Path, namespace: str, *, requests: int, warmup: int
) -> list[Result]:
    """AdmissionReviews POSTed straight to the operator's webhook, one at a time, as dry runs
    (no Event, no metric): kopf + HTTPS + the handler, without the API server."""
    import aiohttp

    out = []
    context = ssl.create_default_context(cafile=str(cafile))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        for name, opt_out in (("inject", False), ("skip", True)):
            pod = deployment_pod()
            pod["metadata"]["namespace"] = namespace
            if opt_out:
                pod["metadata"]["annotations"][constants.ANNOTATION_INJECT] = "disabled"
            review = json.loads(admission_review(pod))
            review["request"].update(namespace=namespace, dryRun=True)
            body = json.dumps(review).encode()
            samples: list[int] = []
            patch = b"[]"
            start = time.perf_counter()
            for i in range(warmup + requests):
                if i == warmup:
                    start = time.perf_counter()
                t0 = time.perf_counter_ns()
                async with session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as response:
                    answer = await response.json()
                if i >= warmup:
                    samples.append(time.perf_counter_ns() - t0)
                encoded = answer["response"].get("patch")
                patch = base64.b64decode(encoded) if encoded else b"[]"
            elapsed = time.perf_counter() - start
            if (patch != b"[]") == opt_out:
                raise SystemExit(f"benchmark check failed: direct {name} patch={patch[:40]!r}")
            samples.sort()
            out.append(
                Result(
                    name=f"operator webhook, direct: {name}",
                    requests=len(samples),
                    requests_per_second=round(len(samples) / elapsed, 1),
                    p50_us=round(_percentile(samples, 50), 1),
                    p90_us=round(_percentile(samples, 90), 1),
                    p99_us=round(_percentile(samples, 99), 1),
                    max_us=round(samples[-1] / 1000, 1),
                    mean_us=round(statistics.fmean(samples) / 1000, 1),
                    patch_ops=len(json.loads(patch)),
                    patch_bytes=len(patch),
                )
            )
    return out


async def _run_api(
    kubeconfig: Path,
    scenarios: list[Scenario],
    *,
    requests: int,
    concurrency: int,
    warmup: int,
    round_size: int,
    scrape: Callable[[], str],
) -> tuple[list[Result], float]:
    samples: dict[str, list[int]] = {s.name: [] for s in scenarios}
    elapsed: dict[str, float] = {s.name: 0.0 for s in scenarios}
    async with kube.Client(kube.load(str(kubeconfig))) as api:
        for i, scenario in enumerate(scenarios):  # warm connections, caches, the operator
            await _create_pods(api, scenario, [f"warm-{i}-{n}" for n in range(warmup)], 2)
        before = await asyncio.to_thread(scrape)
        done = 0
        while done < requests:
            batch = min(round_size, requests - done)
            for i, scenario in enumerate(scenarios):
                names = [f"pod-{i}-{done + n}" for n in range(batch)]
                got, seconds = await _create_pods(api, scenario, names, concurrency)
                samples[scenario.name] += got
                elapsed[scenario.name] += seconds
            done += batch
        after = await asyncio.to_thread(scrape)
    (sum0, n0), (sum1, n1) = _handler_seconds(before), _handler_seconds(after)
    handler_mean_us = round((sum1 - sum0) / max(1.0, n1 - n0) * 1e6, 1)
    results = []
    for scenario in scenarios:
        got = sorted(samples[scenario.name])
        results.append(
            Result(
                name=scenario.name,
                requests=len(got),
                requests_per_second=round(len(got) / elapsed[scenario.name], 1),
                p50_us=round(_percentile(got, 50), 1),
                p90_us=round(_percentile(got, 90), 1),
                p99_us=round(_percentile(got, 99), 1),
                max_us=round(got[-1] / 1000, 1),
                mean_us=round(statistics.fmean(got) / 1000, 1),
                concurrency=concurrency,
            )
        )
    return results, handler_mean_us


# --------------------------------------------------------------------------------------------
# Reporting


def _table(results: list[Result]) -> str:
    head = f"{'scenario':<38} {'req/s':>9} {'p50 µs':>9} {'p90 µs':>9} {'p99 µs':>9} {'max µs':>9}"
    head += f" {'ops':>4} {'patch B':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        ops = "" if r.patch_ops is None else str(r.patch_ops)
        size = "" if r.patch_bytes is None else str(r.patch_bytes)
        lines.append(
            f"{r.name:<38} {r.requests_per_second:>9.0f} {r.p50_us:>9.1f} {r.p90_us:>9.1f}"
            f" {r.p99_us:>9.1f} {r.max_us:>9.1f} {ops:>4} {size:>8}"
        )
    return "\n".join(lines)


def _binaries_built() -> bool:
    from tests.harness.cluster import ClusterError, find_bin_dir

    try:
        find_bin_dir(build=False)
    except ClusterError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="benchmark the pod admission handler")
    ap.add_argument("--requests", type=int, default=5000, help="measured requests per scenario")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--out", type=Path, default=RESULTS / "admission.json")
    ap.add_argument(
        "--api-requests", type=int, default=200, help="pods per scenario through the API server"
    )
    ap.add_argument("--concurrency", type=int, default=4, help="API requests in flight")
    ap.add_argument("--no-api-server", action="store_true", help="only the in-process measurements")
    ap.add_argument(
        "--kubeconfig",
        type=Path,
        help="measure through this (running, otherwise unused) cluster instead of starting one",
    )
    args = ap.parse_args(argv)

    results = in_process(requests=args.requests, warmup=args.warmup)
    print(_table(results), flush=True)
    summary: dict[str, Any] | None = None
    if args.no_api_server:
        pass
    elif args.kubeconfig is None and not _binaries_built():
        print("\nthrough the API server: skipped (run `make k8s-binaries`)", file=sys.stderr)
    else:
        print("\nthrough the API server (starting a control plane and the operator) ...")
        api_results, summary = through_api_server(
            requests=args.api_requests, concurrency=args.concurrency, kubeconfig=args.kubeconfig
        )
        results += api_results
        print(_table(api_results))
        print(
            f"webhook adds p50 {summary['webhook_added_p50_us'] / 1000:.2f} ms, "
            f"p99 {summary['webhook_added_p99_us'] / 1000:.2f} ms per pod; operator handler "
            f"mean {summary['operator_handler_mean_us']:.0f} µs"
        )
    doc: dict[str, Any] = {
        "benchmark": "admission",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "workload": "Deployment pod, 2 containers, 10 env vars, 5 AIPolicies in the namespace",
        "results": [asdict(r) for r in results],
    }
    if summary is not None:
        doc["through_api_server"] = summary
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

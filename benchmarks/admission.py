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

``through_api_server()`` will create pods through a real kube-apiserver with the webhook
registered (and without it, for the baseline), once the webhook is wired.

    python -m benchmarks.admission [--requests N]   # → benchmarks/results/admission.json
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jsonpatch

from aiguard_api import constants
from aiguard_api.policy import LabelSelector, SecretKeyRef
from aiguard_operator import injection

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
    patch_ops: int
    patch_bytes: int


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


def through_api_server(kubeconfig: Path, *, requests: int = 200) -> list[Result]:
    """Pod CREATE latency through a real kube-apiserver, with the webhook and without.

    To be added when the webhook is wired into the operator: register it by URL on
    127.0.0.1 (tests/harness), create ``requests`` pods (server-side dry-run and real),
    and report the client-observed latency minus the no-webhook baseline.
    """
    raise NotImplementedError(f"the webhook is not wired yet (kubeconfig {kubeconfig})")


# --------------------------------------------------------------------------------------------
# Reporting


def _table(results: list[Result]) -> str:
    head = f"{'scenario':<34} {'req/s':>9} {'p50 µs':>8} {'p90 µs':>8} {'p99 µs':>8} {'max µs':>8}"
    head += f" {'ops':>4} {'patch B':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.name:<34} {r.requests_per_second:>9.0f} {r.p50_us:>8.1f} {r.p90_us:>8.1f}"
            f" {r.p99_us:>8.1f} {r.max_us:>8.1f} {r.patch_ops:>4} {r.patch_bytes:>8}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="benchmark the pod admission handler")
    ap.add_argument("--requests", type=int, default=5000, help="measured requests per scenario")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--out", type=Path, default=RESULTS / "admission.json")
    ap.add_argument(
        "--kubeconfig", type=Path, help="also measure through this API server (when wired)"
    )
    args = ap.parse_args(argv)

    results = in_process(requests=args.requests, warmup=args.warmup)
    if args.kubeconfig:
        try:
            results += through_api_server(args.kubeconfig)
        except NotImplementedError as e:
            print(f"through the API server: skipped: {e}", file=sys.stderr)
    print(_table(results))
    doc = {
        "benchmark": "admission",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "workload": "Deployment pod, 2 containers, 10 env vars, 5 AIPolicies in the namespace",
        "results": [asdict(r) for r in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

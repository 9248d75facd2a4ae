"""Valid audit events for tests: whole chains with chosen identities and times (old ones for
retention tests), built with the schema's own hashing (``aiguard_api.audit``)."""

from __future__ import annotations

import copy
import time
from typing import Any

from aiguard_api import audit

_IDS = audit.EventIds()


def attributes(
    *, namespace: str, pod: str, service_account: str, policy: str, start: float
) -> dict[str, Any]:
    """Every attribute of the v1 schema, for an allowed chat request."""
    return {
        "schema": audit.SCHEMA,
        "k8s.namespace.name": namespace,
        "k8s.pod.name": pod,
        "aiguard.workload.service_account": service_account,
        "user.id": "alice",
        "aiguard.user.groups": ["team-a"],
        "aiguard.identity.source": "header",
        "aiguard.request.id": f"req-{int(start * 1e6)}",
        "aiguard.request.start_time": audit.format_time(start),
        "http.request.method": "POST",
        "url.path": "/openai/v1/chat/completions",
        "aiguard.api": "chat.completions",
        "gen_ai.operation.name": "chat",
        "aiguard.stream": False,
        "gen_ai.provider.name": "openai",
        "aiguard.provider": "openai-main",
        "aiguard.route": "gpt",
        "gen_ai.request.model": "gpt-4o",
        "aiguard.target.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.response.id": "chatcmpl-1",
        "openai.response.system_fingerprint": "fp_1",
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 7,
        "aiguard.input.hash": audit.content_hash([("user", "hello")]),
        "aiguard.output.hash": audit.content_hash([("output", "hi")]),
        "aiguard.input.chars": 5,
        "aiguard.output.chars": 2,
        "aiguard.hash.key_id": None,
        "aiguard.unscanned": {},
        "aiguard.decisions": [
            {
                "stage": "access",
                "allowed": True,
                "rule": "spec.access.rules[everyone]",
                "reason": "allowed",
                "enforced": True,
            }
        ],
        "aiguard.findings": [],
        "aiguard.failover.path": [
            {"provider": "openai-main", "model": "gpt-4o", "outcome": "ok", "status": 200,
             "seconds": 0.01}
        ],
        "tls.protocol.name": "tls",
        "tls.protocol.version": "1.3",
        "tls.cipher": "TLS_AES_256_GCM_SHA384",
        "http.response.status_code": 200,
        "aiguard.outcome": "ok",
        "error.type": None,
        "aiguard.latency_seconds": 0.02,
        "aiguard.upstream_seconds": 0.01,
        "aiguard.ttft_seconds": None,
        "aiguard.policy.name": policy,
        "aiguard.policy.hash": "sha256:" + "a" * 64,
        "aiguard.mode": "enforce",
    }  # fmt: skip


def chain(
    n: int,
    *,
    namespace: str = "team-a",
    pod: str = "chatbot-5d9c-abcde",
    boot: str = "0123456789ab",
    service_account: str = "chatbot",
    policy: str = "test-policy",
    t0: float | None = None,
    step: float = 1.0,
    first: int = 1,
    prev: str = audit.GENESIS,
) -> list[dict[str, Any]]:
    """``n`` linked events of one instance, sequences ``first``.., written ``step`` s apart."""
    t0 = time.time() if t0 is None else t0
    instance = audit.instance_id(namespace, pod, boot)
    out: list[dict[str, Any]] = []
    for i in range(n):
        now = t0 + i * step
        event = attributes(
            namespace=namespace,
            pod=pod,
            service_account=service_account,
            policy=policy,
            start=now - 0.02,
        )
        event.update(
            {
                "id": _IDS.new(now),
                "time": audit.format_time(now),
                "instance": instance,
                "sequence": first + i,
                "prev_hash": prev,
            }
        )
        event["hash"] = audit.event_hash(event)
        prev = event["hash"]
        out.append(event)
    return out


def edited(event: dict[str, Any], key: str, value: Any, *, rehash: bool = False) -> dict[str, Any]:
    """A copy of ``event`` with ``key`` changed (and, with ``rehash``, a matching own hash)."""
    out = copy.deepcopy(event)
    out[key] = value
    if rehash:
        out["hash"] = audit.event_hash(out)
    return out

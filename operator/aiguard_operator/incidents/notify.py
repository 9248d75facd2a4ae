"""Incident notifications to a webhook: Slack, PagerDuty Events v2, or generic JSON.

The webhook URL is a secret (a Slack webhook URL or a PagerDuty routing key is a credential):
it lives in the Secret ``spec.incidents.notify.webhookSecretRef`` names, in the policy's
namespace, is read by the operator only (never mounted into a sidecar), and is never logged —
log lines name the incident and the policy, and an error only by its type and HTTP status.

Bodies (:func:`body`):

- ``slack``: ``{"text", "blocks"}`` for an incoming webhook (``https://hooks.slack.com/...``);
- ``pagerduty``: an Events API v2 ``trigger`` (``https://events.pagerduty.com/v2/enqueue``)
  whose ``dedup_key`` is the incident's name, so a re-sent notification updates the same
  PagerDuty alert. The routing key travels in the URL stored in the Secret, as a query
  parameter: ``https://events.pagerduty.com/v2/enqueue?routing_key=R0UT1NGKEY``; it is moved
  into the body (where the Events API reads it) and removed from the URL that is called;
- ``generic``: ``{"apiVersion", "kind": "AIIncidentNotification", "incident": {...}}``.

Delivery (:func:`deliver`): POST with a timeout; 2xx is success; 408, 429, 5xx and connection
errors are retried with exponential backoff (``Retry-After`` honoured, capped) up to a bounded
number of attempts; other 4xx fail at once (a wrong URL does not get better).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp

from aiguard_api.constants import API_GROUP, API_VERSION

log = logging.getLogger("aiguard.incidents.notify")

Format = Literal["slack", "pagerduty", "generic"]
PAGERDUTY_SEVERITY: Final = {
    "critical": "critical",
    "high": "error",
    "medium": "warning",
    "low": "info",
}
MAX_RETRY_AFTER: Final = 30.0


@dataclass(frozen=True, slots=True)
class Incident:
    """What a notification says about an incident (from the AIIncident object)."""

    name: str
    namespace: str
    severity: str
    kind: str
    guardrail: str
    policy: str
    pod: str
    count: int
    first_seen: str
    last_seen: str
    state: str
    reason: str

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Incident:
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        labels = meta.get("labels") or {}
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "")),
            severity=str(spec.get("severity", "")),
            kind=str(labels.get(f"{API_GROUP}/incident-kind", "")),
            guardrail=str(spec.get("guardrail", "")),
            policy=str(spec.get("policy", "")),
            pod=str(spec.get("pod") or ""),
            count=int(spec.get("count", 1)),
            first_seen=str(spec.get("firstSeen", "")),
            last_seen=str(spec.get("lastSeen", "")),
            state=str(spec.get("state", "open")),
            reason=str(spec.get("reason", "")),
        )

    @property
    def summary(self) -> str:
        return (
            f"[aiguard] {self.severity.upper()} {self.kind or self.guardrail} in "
            f"{self.namespace}/{self.pod or '-'}: {self.count} in window "
            f"(AIIncident {self.namespace}/{self.name})"
        )[:1024]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "severity": self.severity,
            "kind": self.kind,
            "guardrail": self.guardrail,
            "policy": self.policy,
            "pod": self.pod,
            "count": self.count,
            "firstSeen": self.first_seen,
            "lastSeen": self.last_seen,
            "state": self.state,
            "reason": self.reason,
        }


def split_routing_key(url: str) -> tuple[str, str | None]:
    """``(url without routing_key, routing_key)`` for a PagerDuty URL from the Secret."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    keys = [v for k, v in query if k == "routing_key"]
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "routing_key"])
    clean = urllib.parse.urlunsplit(parts._replace(query=rest))
    return clean, (keys[0] if keys else None)


def body(fmt: Format, incident: Incident, *, routing_key: str | None = None) -> dict[str, Any]:
    """The JSON a webhook of format ``fmt`` receives about ``incident``."""
    if fmt == "slack":
        fields = [
            ("Severity", incident.severity),
            ("Kind", incident.kind or incident.guardrail),
            ("Namespace", incident.namespace),
            ("Pod", incident.pod or "-"),
            ("Policy", incident.policy),
            ("Count", str(incident.count)),
            ("First seen", incident.first_seen),
            ("Last seen", incident.last_seen),
        ]
        return {
            "text": incident.summary,
            "blocks": [
                {
                    "type": "header",
                    "text": {"type": "plain_text", "text": incident.summary[:150]},
                },
                {
                    "type": "section",
                    "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in fields],
                },
                {"type": "section", "text": {"type": "plain_text", "text": incident.reason}},
                {
                    "type": "context",
                    "elements": [
                        {
                            "type": "mrkdwn",
                            "text": f"`kubectl aiguard ack {incident.name} "
                            f"-n {incident.namespace}`",
                        }
                    ],
                },
            ],
        }
    if fmt == "pagerduty":
        out: dict[str, Any] = {
            "event_action": "trigger",
            "dedup_key": incident.name,
            "payload": {
                "summary": incident.summary,
                "severity": PAGERDUTY_SEVERITY.get(incident.severity, "warning"),
                "source": f"{incident.namespace}/{incident.pod or incident.policy}",
                "component": incident.guardrail,
                "group": incident.namespace,
                "class": incident.kind or incident.guardrail,
                "custom_details": incident.as_dict(),
            },
        }
        if routing_key:
            out["routing_key"] = routing_key
        return out
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "AIIncidentNotification",
        "incident": incident.as_dict(),
    }


def request(fmt: Format, url: str, incident: Incident) -> tuple[str, dict[str, Any]]:
    """The URL to call and the body to send."""
    if fmt == "pagerduty":
        clean, key = split_routing_key(url)
        return clean, body(fmt, incident, routing_key=key)
    return url, body(fmt, incident)


class DeliveryFailed(Exception):
    """Every attempt failed; the message never contains the URL."""


def _retryable(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _retry_after(value: str | None) -> float | None:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value))) if value else None
    except ValueError:
        return None


async def deliver(
    session: aiohttp.ClientSession,
    url: str,
    payload: Mapping[str, Any],
    *,
    attempts: int = 5,
    backoff: float = 1.0,
    max_backoff: float = 30.0,
    attempt_timeout: float = 10.0,
    what: str = "",
) -> int:
    """POST ``payload`` as JSON until a 2xx; return the number of attempts it took."""
    last = ""
    for attempt in range(1, attempts + 1):
        delay = min(max_backoff, backoff * 2 ** (attempt - 1))
        try:
            async with session.post(
                url,
                json=payload,
                timeout=aiohttp.ClientTimeout(total=attempt_timeout),
                allow_redirects=False,
            ) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    return attempt
                last = f"HTTP {resp.status}"
                if not _retryable(resp.status):
                    raise DeliveryFailed(f"the webhook refused the notification: {last}")
                delay = _retry_after(resp.headers.get("Retry-After")) or delay
        except (aiohttp.ClientError, TimeoutError) as e:
            last = type(e).__name__  # str(e) may carry the URL: never logged
        if attempt < attempts:
            log.info(
                "incident notification attempt failed; retrying",
                extra={
                    "fields": {"incident": what, "attempt": attempt, "error": last, "in": delay}
                },
            )
            await asyncio.sleep(delay)
    raise DeliveryFailed(f"{attempts} attempts failed, the last with {last}")

"""Automatic incidents, the pure parts: which audit events are security signals, how they
aggregate into incidents (keys, windows, counts, names, thresholds), what a notification says
in each format, and how delivery retries against a real local webhook receiver."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aiguard_api import audit
from aiguard_api.policy import AIIncident, IncidentState, Severity
from aiguard_operator.collector.server import _validate
from aiguard_operator.incidents import cli as incidents_cli
from aiguard_operator.incidents import derive, manager, notify, transitions
from aiguard_operator.incidents.derive import Kind
from tests.harness.auditdata import chain

T0 = 1_750_000_200.0  # a multiple of 300: the start of a 5-minute window


def finding(guardrail: str, type_: str, action: str, direction: str = "input") -> dict[str, Any]:
    return {"direction": direction, "guardrail": guardrail, "type": type_, "action": action,
            "count": 1}  # fmt: skip


def events(n: int, *, t0: float = T0, step: float = 1.0, pod: str = "chatbot-0",
           **attrs: Any) -> list[dict[str, Any]]:  # fmt: skip
    out = chain(n, t0=t0, step=step, pod=pod)
    for e in out:
        e.update(attrs)
    return out


BLOCKED_INJECTION: dict[str, Any] = {
    "aiguard.findings": [finding("prompt_injection", "jailbreak", "block")],
    "aiguard.outcome": "guardrail_blocked",
    "http.response.status_code": 400,
}


# --------------------------------------------------------------------------- signals


def test_a_clean_request_is_no_signal() -> None:
    assert derive.signals(events(1)[0]) == []


def test_a_blocked_injection_is_a_prompt_injection_signal_naming_its_types() -> None:
    event = events(1, **{"aiguard.findings": [
        finding("prompt_injection", "jailbreak", "block"),
        finding("prompt_injection", "injection", "block"),
        finding("pii", "EMAIL_ADDRESS", "redact"),
    ]})[0]  # fmt: skip
    assert derive.signals(event) == [
        derive.Signal(Kind.PROMPT_INJECTION, ("injection", "jailbreak"), enforced=True)
    ]


def test_an_injection_only_flagged_is_no_signal() -> None:
    event = events(1, **{"aiguard.findings": [finding("prompt_injection", "jailbreak", "flag")]})
    assert derive.signals(event[0]) == []


def test_an_injection_blocked_in_audit_mode_is_a_signal_marked_not_enforced() -> None:
    event = events(1, **BLOCKED_INJECTION, **{"aiguard.mode": "audit"})[0]
    (signal,) = derive.signals(event)
    assert signal.kind is Kind.PROMPT_INJECTION
    assert not signal.enforced


@pytest.mark.parametrize(
    ("found", "expected"),
    [
        (finding("secrets", "AWS_ACCESS_KEY", "block"), True),
        (finding("secrets", "AWS_ACCESS_KEY", "redact"), True),
        (finding("secrets", "GITHUB_TOKEN", "mask"), True),
        (finding("secrets", "AWS_ACCESS_KEY", "allow"), False),  # allowed by policy, input
        (finding("secrets", "PRIVATE_KEY", "allow", "output"), True),  # a model leaking one
        (finding("secrets", "PRIVATE_KEY", "redact", "output"), True),
        (finding("pii", "EMAIL_ADDRESS", "block"), False),
    ],
)
def test_secret_exfiltration_is_a_blocked_or_redacted_input_secret_or_any_output_secret(
    found: dict[str, Any], expected: bool
) -> None:
    kinds = [s.kind for s in derive.signals(events(1, **{"aiguard.findings": [found]})[0])]
    assert (Kind.SECRET_EXFILTRATION in kinds) is expected


def test_harmful_output_is_output_moderation_that_blocked() -> None:
    blocked = finding("moderation", "violence", "block", "output")
    flagged = finding("moderation", "violence", "flag", "output")
    on_input = finding("moderation", "violence", "block", "input")
    assert [s.kind for s in derive.signals(events(1, **{"aiguard.findings": [blocked]})[0])] == [
        Kind.HARMFUL_OUTPUT
    ]
    for other in (flagged, on_input):
        assert derive.signals(events(1, **{"aiguard.findings": [other]})[0]) == []


@pytest.mark.parametrize("outcome", ["access_denied", "identity_failed"])
def test_denied_requests_are_access_denial_signals(outcome: str) -> None:
    (signal,) = derive.signals(events(1, **{"aiguard.outcome": outcome})[0])
    assert signal == derive.Signal(Kind.ACCESS_DENIED, (outcome,))


@pytest.mark.parametrize(
    ("value", "drift"),
    [
        (True, True),
        ({"previous_model": "gpt-4o-2024-05-13", "previous_fingerprint": "fp_0"}, True),
        ({"drift": True}, True),
        ({"drift": False}, False),
        ("fingerprint", True),
        (False, False),
        (None, False),
        ({}, False),
        ("", False),
        (3, False),
    ],
)
def test_model_drift_is_read_tolerantly_from_the_optional_field(value: Any, drift: bool) -> None:
    event = events(1)[0]
    event["aiguard.model.drift"] = value
    assert derive.drift_of(event) is drift
    assert (Kind.MODEL_DRIFT in [s.kind for s in derive.signals(event)]) is drift


def test_an_event_without_the_drift_field_is_no_drift() -> None:
    event = events(1)[0]
    assert "aiguard.model.drift" not in event
    assert not derive.drift_of(event)


# --------------------------------------------------------------------------- aggregation


def test_signals_aggregate_per_pod_kind_and_window_with_exact_counts() -> None:
    injections = events(3, t0=T0 + 10, **BLOCKED_INJECTION)  # same window
    later = events(2, t0=T0 + 300, **BLOCKED_INJECTION)  # the next window
    other_pod = events(1, t0=T0 + 20, pod="other-0", **BLOCKED_INJECTION)
    clean = events(4, t0=T0 + 30)
    aggs = derive.aggregate([*injections, *later, *other_pod, *clean], 300)
    counts = {(k.pod, k.kind, k.window_start): a.count for k, a in aggs.items()}
    assert counts == {
        ("chatbot-0", Kind.PROMPT_INJECTION, int(T0)): 3,
        ("chatbot-0", Kind.PROMPT_INJECTION, int(T0) + 300): 2,
        ("other-0", Kind.PROMPT_INJECTION, int(T0)): 1,
    }
    first = aggs[derive.Key("team-a", "test-policy", "chatbot-0", Kind.PROMPT_INJECTION,
                            int(T0), 300)]  # fmt: skip
    assert (first.first_seen, first.last_seen) == (T0 + 10, T0 + 12)
    assert first.details == {"jailbreak": 3}


def test_one_request_with_several_findings_counts_once_per_kind() -> None:
    event = events(1, **{"aiguard.findings": [
        finding("prompt_injection", "jailbreak", "block"),
        finding("prompt_injection", "prompt_extraction", "block"),
        finding("secrets", "AWS_ACCESS_KEY", "block"),
    ]})  # fmt: skip
    aggs = derive.aggregate(event, 300)
    assert sorted((k.kind, a.count) for k, a in aggs.items()) == [
        (Kind.PROMPT_INJECTION, 1),
        (Kind.SECRET_EXFILTRATION, 1),
    ]


def test_aggregation_does_not_depend_on_order_or_batches() -> None:
    evs = [*events(5, t0=T0 + 1, **BLOCKED_INJECTION), *events(2, t0=T0 + 299, pod="b-0",
                                                               **BLOCKED_INJECTION)]  # fmt: skip
    whole = derive.aggregate(evs, 300)
    reordered = derive.aggregate(list(reversed(evs)), 300)
    assert {k: (a.count, a.first_seen, a.last_seen) for k, a in whole.items()} == {
        k: (a.count, a.first_seen, a.last_seen) for k, a in reordered.items()
    }


def test_windows_come_from_each_policy() -> None:
    evs = events(2, t0=T0 + 50, step=100, **BLOCKED_INJECTION)  # T0+50 and T0+150
    by_policy = derive.aggregate(evs, {("team-a", "test-policy"): 60})
    assert sorted(k.window_start - int(T0) for k in by_policy) == [0, 120]
    assert {k.window_seconds for k in by_policy} == {60}


def test_names_are_deterministic_dns_names_distinct_per_key_and_window() -> None:
    key = derive.Key("team-a", "p", "chatbot-0", Kind.PROMPT_INJECTION, int(T0), 300)
    same = derive.Key("team-a", "p", "chatbot-0", Kind.PROMPT_INJECTION, int(T0), 300)
    assert derive.incident_name(key) == derive.incident_name(same)
    assert derive.incident_name(key).startswith("prompt-injection-")
    others = [
        derive.Key("team-a", "p", "chatbot-0", Kind.PROMPT_INJECTION, int(T0) + 300, 300),
        derive.Key("team-a", "p", "chatbot-1", Kind.PROMPT_INJECTION, int(T0), 300),
        derive.Key("team-a", "p", "chatbot-0", Kind.SECRET_EXFILTRATION, int(T0), 300),
        derive.Key("team-b", "p", "chatbot-0", Kind.PROMPT_INJECTION, int(T0), 300),
    ]
    names = {derive.incident_name(k) for k in [key, *others]}
    assert len(names) == 5
    for name in names:
        assert len(name) <= 63
        assert name.replace("-", "").isalnum()
        assert name.islower()


def _agg(kind: Kind, count: int) -> derive.Aggregate:
    agg = derive.Aggregate(derive.Key("team-a", "p", "chatbot-0", kind, int(T0), 300))
    for i in range(count):
        agg.add(T0 + i, derive.Signal(kind))
    return agg


@pytest.mark.parametrize(
    ("kind", "threshold", "qualifies"),
    [
        (Kind.PROMPT_INJECTION, Severity.MEDIUM, True),
        (Kind.PROMPT_INJECTION, Severity.HIGH, True),
        (Kind.PROMPT_INJECTION, Severity.CRITICAL, False),
        (Kind.MODEL_DRIFT, Severity.MEDIUM, False),
        (Kind.MODEL_DRIFT, Severity.LOW, True),
        (Kind.AUDIT_DELIVERY, Severity.CRITICAL, True),
    ],
)
def test_only_severities_at_or_above_the_policy_threshold_become_incidents(
    kind: Kind, threshold: Severity, qualifies: bool
) -> None:
    assert derive.qualifies(_agg(kind, 1), threshold) is qualifies


def test_access_denials_become_an_incident_from_the_threshold_on() -> None:
    assert not derive.qualifies(_agg(Kind.ACCESS_DENIED, 4), Severity.MEDIUM)
    assert derive.qualifies(_agg(Kind.ACCESS_DENIED, 5), Severity.MEDIUM)
    assert derive.qualifies(_agg(Kind.ACCESS_DENIED, 2), Severity.LOW, denials_threshold=2)


def test_reasons_name_what_and_how_often_never_content() -> None:
    evs = events(2, **BLOCKED_INJECTION, **{"aiguard.mode": "audit"})
    (agg,) = derive.aggregate(evs, 300).values()
    text = derive.reason(agg)
    assert text.startswith("2 prompt-injection attempts from pod chatbot-0 (jailbreak x2)")
    assert "AIPolicy test-policy" in text
    assert "2 in mode audit" in text
    assert "hash" not in text
    assert "hello" not in text


def test_the_manifest_is_a_valid_open_aiincident() -> None:
    (agg,) = derive.aggregate(events(3, t0=T0 + 5, **BLOCKED_INJECTION), 300).values()
    obj = manager.manifest(agg)
    model = AIIncident.model_validate(obj)
    assert model.spec.severity is Severity.HIGH
    assert model.spec.count == 3
    assert model.spec.state is IncidentState.OPEN
    assert model.spec.guardrail == "prompt_injection"
    assert model.spec.first_seen == dt.datetime.fromtimestamp(T0 + 5, dt.UTC)
    assert obj["metadata"]["labels"]["aiguard.dev/incident-kind"] == "prompt-injection"
    assert obj["metadata"]["annotations"]["aiguard.dev/window"] == (f"{audit.format_time(T0)}/300")


# --------------------------------------------------------------------------- chain gaps


def test_chain_gaps_from_counts_and_exact_holes() -> None:
    assert derive.chain_missing(stored=10, head=10, start=None) == 0
    assert derive.chain_missing(stored=8, head=10, start=None) == 2
    assert derive.chain_missing(stored=5, head=10, start=6) == 0  # purged prefix, recorded
    assert derive.gap_holes([1, 2, 5, 6, 9], start=1, head=10) == [(3, 4), (7, 8), (10, 10)]
    assert derive.gap_holes([3, 4], start=1, head=4) == [(1, 2)]
    assert derive.gap_holes([6, 7], start=6, head=7) == []


# --------------------------------------------------------------------------- settings


def test_settings_from_the_environment() -> None:
    s = manager.settings_from_env({"AIGUARD_INCIDENTS_DENIALS_THRESHOLD": "3",
                                   "AIGUARD_INCIDENTS_GAP_GRACE_SECONDS": "0"})  # fmt: skip
    assert (s.enabled, s.denials_threshold, s.gap_grace_seconds) == (True, 3, 0.0)
    assert not manager.settings_from_env({"AIGUARD_INCIDENTS": "false"}).enabled
    with pytest.raises(ValueError, match="AIGUARD_INCIDENTS_NOTIFY_ATTEMPTS"):
        manager.settings_from_env({"AIGUARD_INCIDENTS_NOTIFY_ATTEMPTS": "0"})


# --------------------------------------------------------------------------- notifications

INCIDENT = notify.Incident(
    name="prompt-injection-0123456789abcdef",
    namespace="team-a",
    severity="high",
    kind="prompt-injection",
    guardrail="prompt_injection",
    policy="default",
    pod="chatbot-0",
    count=3,
    first_seen="2025-06-15T15:10:00.000000Z",
    last_seen="2025-06-15T15:10:02.000000Z",
    state="open",
    reason="3 prompt-injection attempts from pod chatbot-0 (jailbreak x3)",
)


def test_slack_body_has_text_and_blocks() -> None:
    body = notify.body("slack", INCIDENT)
    assert set(body) == {"text", "blocks"}
    assert "HIGH" in body["text"]
    assert "team-a/chatbot-0" in body["text"]
    assert body["blocks"][0]["type"] == "header"
    fields = " ".join(f["text"] for f in body["blocks"][1]["fields"])
    assert "*Count*\n3" in fields
    assert "*Policy*\ndefault" in fields


def test_pagerduty_body_is_an_events_v2_trigger_deduplicated_by_incident_name() -> None:
    url, body = notify.request(
        "pagerduty",
        "https://events.pagerduty.com/v2/enqueue?routing_key=R0UT1NG",
        INCIDENT,
    )
    assert url == "https://events.pagerduty.com/v2/enqueue"  # the key is not in the URL called
    assert body["routing_key"] == "R0UT1NG"
    assert body["event_action"] == "trigger"
    assert body["dedup_key"] == INCIDENT.name
    payload = body["payload"]
    assert payload["severity"] == "error"  # PagerDuty's scale: high → error
    assert payload["source"] == "team-a/chatbot-0"
    assert payload["summary"]
    assert payload["custom_details"]["count"] == 3


def test_pagerduty_severities_map_onto_its_scale() -> None:
    for ours, theirs in (("critical", "critical"), ("medium", "warning"), ("low", "info")):
        incident = notify.Incident(**{**_fields(INCIDENT), "severity": ours})
        assert notify.body("pagerduty", incident)["payload"]["severity"] == theirs


def _fields(incident: notify.Incident) -> dict[str, Any]:
    return {f: getattr(incident, f) for f in notify.Incident.__dataclass_fields__}


def test_generic_body_carries_the_incident() -> None:
    body = notify.body("generic", INCIDENT)
    assert body["kind"] == "AIIncidentNotification"
    assert body["incident"]["name"] == INCIDENT.name
    assert body["incident"]["count"] == 3


class Receiver:
    """A real webhook receiver on 127.0.0.1 that fails the first ``fail`` attempts."""

    def __init__(self, fail: int, status: int = 503) -> None:
        self.fail, self.status = fail, status
        self.received: list[Any] = []
        self.attempts = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.attempts <= self.fail:
            return web.Response(status=self.status, text="try later")
        self.received.append(await request.json())
        return web.json_response({"status": "success"}, status=202)


@pytest.fixture
async def receiver_factory() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def make(fail: int, status: int = 503) -> tuple[Receiver, str]:
        r = Receiver(fail, status)
        app = web.Application()
        app.router.add_post("/hook", r.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return r, f"http://127.0.0.1:{port}/hook"

    yield make
    for runner in runners:
        await runner.cleanup()


async def test_delivery_retries_a_failing_webhook_until_it_accepts(
    receiver_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    receiver, url = await receiver_factory(fail=2)
    async with aiohttp.ClientSession() as session:
        attempts = await notify.deliver(
            session, url, notify.body("generic", INCIDENT), attempts=4, backoff=0.01
        )
    assert attempts == 3
    assert receiver.attempts == 3
    assert receiver.received == [notify.body("generic", INCIDENT)]
    assert url not in caplog.text
    assert "127.0.0.1" not in caplog.text


async def test_delivery_gives_up_after_a_bounded_number_of_attempts(receiver_factory: Any) -> None:
    receiver, url = await receiver_factory(fail=100)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(notify.DeliveryFailed, match=r"3 attempts failed.*HTTP 503") as e:
            await notify.deliver(session, url, {}, attempts=3, backoff=0.01)
    assert receiver.attempts == 3
    assert url not in str(e.value)


async def test_delivery_does_not_retry_a_refusal(receiver_factory: Any) -> None:
    receiver, url = await receiver_factory(fail=100, status=404)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(notify.DeliveryFailed, match="HTTP 404"):
            await notify.deliver(session, url, {}, attempts=5, backoff=0.01)
    assert receiver.attempts == 1


async def test_delivery_to_nothing_listening_fails_without_naming_the_url() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(notify.DeliveryFailed) as e:
            await notify.deliver(
                session, "http://127.0.0.1:9/hook?token=s3cret", {}, attempts=2, backoff=0.01
            )
    assert "s3cret" not in str(e.value)
    assert "127.0.0.1" not in str(e.value)


# --------------------------------------------------------------------------- transitions, CLI


def test_legal_transitions() -> None:
    t = transitions.TRANSITIONS
    assert t[IncidentState.OPEN] == {IncidentState.ACKNOWLEDGED, IncidentState.RESOLVED}
    assert t[IncidentState.ACKNOWLEDGED] == {IncidentState.RESOLVED}
    assert t[IncidentState.PENDING_APPROVAL] == {IncidentState.APPROVED, IncidentState.DENIED}
    assert not t[IncidentState.APPROVED]
    assert not t[IncidentState.DENIED]


def test_the_incidents_table() -> None:
    (agg,) = derive.aggregate(events(3, t0=T0, **BLOCKED_INJECTION), 300).values()
    obj = manager.manifest(agg)
    row = incidents_cli.incident_row(obj)
    assert (row.kind, row.severity, row.state, row.count) == ("prompt-injection", "high", "open", 3)
    now = dt.datetime.fromtimestamp(T0 + 2 + 125, dt.UTC)
    table = incidents_cli.render_table([row], all_namespaces=True, now=now)
    header, line = table.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "SEVERITY", "STATE", "KIND", "COUNT", "POD",
                              "POLICY", "LAST", "SEEN"]  # fmt: skip
    assert line.split() == ["team-a", row.name, "high", "open", "prompt-injection", "3",
                            "chatbot-0", "test-policy", "2m"]  # fmt: skip


async def test_submit_queues_without_waiting_and_a_full_queue_falls_back_to_a_rescan() -> None:
    """submit is the collector's hook: it never waits and never loses a batch's window."""
    m = manager.IncidentManager(
        api=None,  # type: ignore[arg-type]  # submit touches neither the API nor the store
        store=None,  # type: ignore[arg-type]
        settings=manager.IncidentSettings(queue_size=1),
    )
    batch = _validate(json.dumps({"events": events(2, **BLOCKED_INJECTION)}).encode())
    m.submit(batch)
    m.submit(batch[1:])  # the queue is full: remembered for a rescan from its time
    assert m.dropped_batches == 1
    assert m._rescan_from_us == batch[1].time_us


@pytest.mark.parametrize(
    "attrs",
    [
        BLOCKED_INJECTION,
        {"aiguard.findings": [finding("secrets", "AWS_ACCESS_KEY", "redact")]},
        {"aiguard.findings": [finding("secrets", "PRIVATE_KEY", "allow", "output")]},
        {"aiguard.findings": [finding("moderation", "violence", "block", "output")]},
        {"aiguard.outcome": "access_denied"},
        {"aiguard.outcome": "identity_failed"},
        {
            "aiguard.model.drift": {
                "previous_model": "gpt-4o-2024-05-13",
                "previous_fingerprint": None,
            }
        },
        {"aiguard.model.drift": True},
    ],
)
def test_the_prefilter_keeps_every_event_that_carries_a_signal(attrs: dict[str, Any]) -> None:
    event = events(1, **attrs)[0]
    assert derive.signals(event)
    assert manager.may_signal(audit.canonical(event).decode())


def test_the_prefilter_drops_clean_traffic() -> None:
    clean = events(1, **{"aiguard.model.drift": None})[0]
    clean["aiguard.findings"] = [finding("pii", "EMAIL_ADDRESS", "redact")]
    assert not derive.signals(clean)
    assert not manager.may_signal(audit.canonical(clean).decode())


def test_an_illegal_transition_says_where_the_incident_is_and_what_is_allowed() -> None:
    e = transitions.IllegalTransition("inc-1", "resolved", IncidentState.ACKNOWLEDGED, {"open"})
    assert str(e) == (
        "AIIncident inc-1 is resolved: cannot move it to acknowledged (allowed from: open)"
    )


def test_the_in_cluster_fallback_actor_is_the_service_account_in_the_token() -> None:
    claims = {"kubernetes.io": {"namespace": "aiguard", "serviceaccount": {"name": "bot"}}}
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    assert transitions._service_account_of(f"e30.{payload}.sig") == "bot"
    assert transitions._service_account_of("not-a-jwt") is None

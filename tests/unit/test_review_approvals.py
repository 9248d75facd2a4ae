"""The collector's side of human review, its pure parts: what a sidecar may ask, the AIIncident
an approval request becomes, and what the sidecar is told back. The flow against the real API
server is ``tests/integration/test_review_flow.py``."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from aiguard_api.policy import AIIncident
from aiguard_operator import approvals
from aiguard_operator.collector.auth import Identity

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
REQUEST: dict[str, Any] = {
    "request_id": "3b7f84700000000002",
    "model": "gpt-4o",
    "user": "alice@example.com",
    "summary": "review: keyword; findings: review/keyword x1",
    "timeout_seconds": 300,
    "policy": "team-a/chat",
    "namespace": "team-a",
    "pod": "chatbot-0",
}


def sa(namespace: str, name: str, pod: str | None = None) -> Identity:
    extra = {"authentication.kubernetes.io/pod-name": [pod]} if pod else {}
    return Identity(f"system:serviceaccount:{namespace}:{name}", "uid", (), extra)


def test_an_approval_request_becomes_a_valid_pending_aiincident() -> None:
    req = approvals.parse_request(json.dumps(REQUEST).encode())

    obj = approvals.incident_object(req, requester="system:serviceaccount:team-a:chatbot", now=NOW)

    incident = AIIncident.model_validate(obj)  # the CRD's own model accepts it
    assert incident.metadata.name == "review-3b7f84700000000002"
    assert incident.metadata.namespace == "team-a"
    assert incident.spec.state.value == "pending-approval"
    assert incident.spec.severity.value == "medium"
    assert incident.spec.guardrail == "review"
    assert incident.spec.policy == "chat"
    assert incident.spec.pod == "chatbot-0"
    assert incident.spec.approval is not None
    assert incident.spec.approval.request_id == REQUEST["request_id"]
    assert incident.spec.approval.expires_at == NOW + dt.timedelta(seconds=300)
    assert obj["metadata"]["labels"] == {approvals.LABEL: "true"}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"request_id": ""}, "request_id is required"),
        ({"request_id": "a/b"}, "request_id may contain only"),
        ({"timeout_seconds": 4}, "timeout_seconds must be 5 to 3600"),
        ({"timeout_seconds": "60"}, "timeout_seconds must be an integer"),
        ({"timeout_seconds": True}, "timeout_seconds must be an integer"),
        ({"namespace": None}, "namespace is required"),
        ({"summary": "x" * 2049}, "summary is longer than 2048"),
        ({"model": 5}, "model must be a string"),
    ],
)
def test_a_malformed_request_is_refused_naming_the_field(
    change: dict[str, Any], problem: str
) -> None:
    with pytest.raises(approvals.Invalid, match=problem):
        approvals.parse_request(json.dumps({**REQUEST, **change}).encode())


@pytest.mark.parametrize(
    ("who", "namespace", "pod", "allowed"),
    [
        (sa("team-a", "chatbot"), "team-a", "chatbot-0", True),
        (sa("team-a", "chatbot", pod="chatbot-0"), "team-a", "chatbot-0", True),
        (sa("team-a", "chatbot", pod="chatbot-1"), "team-a", "chatbot-0", False),
        (sa("team-b", "chatbot"), "team-a", "chatbot-0", False),
        (Identity("alice", "uid", (), {}), "team-a", "chatbot-0", False),
    ],
)
def test_a_sidecar_acts_only_for_its_own_namespace_and_pod(
    who: Identity, namespace: str, pod: str, allowed: bool
) -> None:
    assert (approvals.caller_problem(who, namespace, pod) is None) is allowed


def test_the_sidecar_is_told_who_decided_and_their_note() -> None:
    obj = approvals.incident_object(
        approvals.parse_request(json.dumps(REQUEST).encode()), requester="sa", now=NOW
    )
    obj["spec"]["state"] = "denied"
    obj["spec"]["approval"]["decidedBy"] = "bob"
    obj["status"] = {
        "history": [
            {"to": "pending-approval", "actor": "sa", "note": "held", "time": "t0"},
            {"to": "denied", "actor": "bob", "note": "not today", "time": "t1"},
        ]
    }

    v = approvals.view(obj)

    assert (v["state"], v["decidedBy"], v["note"]) == ("denied", "bob", "not today")
    assert approvals.settled(obj)
    obj["status"]["history"].pop()
    assert not approvals.settled(obj)  # the state is written first, its history second


def test_only_a_pending_approval_past_its_expiry_is_due() -> None:
    obj = approvals.incident_object(
        approvals.parse_request(json.dumps(REQUEST).encode()), requester="sa", now=NOW
    )

    assert not approvals.is_due(obj, NOW + dt.timedelta(seconds=299))
    assert approvals.is_due(obj, NOW + dt.timedelta(seconds=300))
    obj["spec"]["state"] = "approved"
    assert not approvals.is_due(obj, NOW + dt.timedelta(days=1))


@pytest.mark.parametrize(
    ("request_id", "name"),
    [("3b7f84700000000002", "review-3b7f84700000000002"), ("Req_1.x", "review-req-1-x")],
)
def test_incident_names_are_dns_names(request_id: str, name: str) -> None:
    assert approvals.incident_name(request_id) == name

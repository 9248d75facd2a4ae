"""validation.py: what is wrong with a policy, where, and what to do — as a person reads it."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
import yaml

from aiguard_api.policy import LabelSelector
from aiguard_operator import status, validation

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"

SECRETS: dict[str, Collection[str]] = {"openai-key": {"api-key"}, "hash-keys": {"audit", "pii"}}


def policy(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "chat"}},
        "providers": [
            {
                "name": "openai",
                "type": "openai",
                "baseURL": "https://api.openai.com/v1",
                "apiKeySecretRef": {"name": "openai-key"},
            }
        ],
        "routes": [{"name": "chat", "models": ["gpt-4o*"], "targets": [{"provider": "openai"}]}],
        "access": {"rules": [{"name": "all", "subjects": {"allAuthenticated": True}}]},
    }
    base.update(spec)
    return {
        "apiVersion": "aiguard.dev/v1alpha1",
        "kind": "AIPolicy",
        "metadata": {"name": "p", "namespace": "team-a"},
        "spec": base,
    }


def check(obj: dict[str, Any], **kwargs: Any) -> validation.Report:
    kwargs.setdefault("secrets", SECRETS.get)
    return validation.validate(obj, **kwargs)


def test_when_policy_is_fine_then_report_is_ok() -> None:
    report = check(policy())

    assert report.ok
    assert report.problems == ()
    assert report.policy is not None
    assert report.reason == status.REASON_VALID


@pytest.mark.parametrize(
    "path",
    sorted(p for p in EXAMPLES.glob("*.yaml") if "secrets" not in p.name),
    ids=lambda p: p.name,
)
def test_every_example_policy_is_valid_with_the_example_secrets(path: Path) -> None:
    secrets: dict[str, set[str]] = {}
    for doc in yaml.safe_load_all((EXAMPLES / "secrets.example.yaml").read_text()):
        secrets[doc["metadata"]["name"]] = set(doc["stringData"])
    (doc,) = list(yaml.safe_load_all(path.read_text()))
    doc["metadata"]["namespace"] = "ai-apps"

    report = validation.validate(doc, secrets=secrets.get)

    assert report.ok, report.message()
    assert report.warnings == []


def test_example_manifests_are_namespace_less() -> None:
    for path in EXAMPLES.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert "namespace" not in doc["metadata"], path.name


def test_example_selectors_are_pairwise_disjoint() -> None:
    docs = [
        yaml.safe_load(p.read_text()) for p in EXAMPLES.glob("*.yaml") if "secrets" not in p.name
    ]
    peers = [
        validation.PeerPolicy(
            d["metadata"]["name"], LabelSelector.model_validate(d["spec"]["selector"])
        )
        for d in docs
    ]
    for d in docs:
        d["metadata"]["namespace"] = "ai-apps"
        report = validation.validate(d, secrets=None, others=peers)
        assert report.warnings == [], report.warning_message()


# --------------------------------------------------------------------------- spec errors


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"mode": "enforced"}, "spec.mode", "'enforce' or 'audit'"),
        ({"failureMode": "sometimes"}, "spec.failureMode", "'closed' or 'open'"),
        ({"colour": "red"}, "spec.colour", "unknown field"),
        (
            {"routes": [{"name": "chat", "models": ["*"], "targets": [{"provider": "anthropic"}]}]},
            "spec",
            "route 'chat' targets unknown provider 'anthropic'; defined providers: openai",
        ),
        (
            {
                "guardrails": {
                    "input": {"pii": {"customPatterns": [{"entity": "EMP", "regex": "("}]}}
                }
            },
            "spec.guardrails.input.pii.customPatterns[0].regex",
            "regex '(' does not compile",
        ),
        (
            {"guardrails": {"output": {"deny": {"patterns": ["a[b"]}}}},
            "spec.guardrails.output.deny.patterns",
            "pattern 'a[b' does not compile",
        ),
        (
            {
                "providers": [
                    {"name": "local", "type": "openai-compatible", "baseURL": "http://vllm:8000"}
                ],
                "routes": [{"models": ["*"], "targets": [{"provider": "local"}]}],
            },
            "spec.providers[0]",
            "set allowPlaintext: true",
        ),
    ],
    ids=[
        "enum",
        "failure-mode",
        "unknown-field",
        "unknown-provider",
        "regex",
        "deny-regex",
        "http",
    ],
)
def test_when_spec_is_wrong_then_problem_names_field_and_fix(
    change: dict[str, Any], field: str, words: str
) -> None:
    report = check(policy(**change))

    assert not report.ok
    assert report.policy is None
    assert report.reason == status.REASON_INVALID_SPEC
    (problem,) = report.errors
    assert problem.field == field
    assert words in problem.message
    assert report.message().startswith(field + ": ")


def test_when_several_things_are_wrong_then_all_are_reported_in_one_message() -> None:
    report = check(policy(mode="x", failureMode="y"))

    assert len(report.errors) == 2
    assert "spec.mode" in report.message()
    assert "spec.failureMode" in report.message()


def test_when_name_is_longer_than_a_label_value_then_error() -> None:
    obj = policy()
    obj["metadata"]["name"] = "p" * 64

    report = check(obj)

    (problem,) = report.errors
    assert problem.field == "metadata.name"
    assert "at most 63" in problem.message


# --------------------------------------------------------------------------- RE2 portability


@pytest.mark.parametrize(
    ("pattern", "what"),
    [
        (r"\bCLM-[0-9]{8}\b", None),
        (r"(?i)\bsecret\b", None),
        (r"[(?=]x", None),  # inside a class these are literals
        (r"\(?=", None),  # escaped parenthesis
        (r"a\0b", None),  # NUL escape, not a backreference
        (r"foo(?=bar)", "a lookahead (?=...)"),
        (r"foo(?!bar)", "a negative lookahead (?!...)"),
        (r"(?<=\$)\d+", "a lookbehind (?<=...)"),
        (r"(?<!x)y", "a negative lookbehind (?<!...)"),
        (r"(a)\1", r"a backreference \1"),
        (r"(?P<q>['\"]).*(?P=q)", "a named backreference (?P=...)"),
        (r"(?>a+)b", "an atomic group (?>...)"),
        (r"a++", "a possessive quantifier ++"),
        (r"(a)?(?(1)b|c)", "a conditional group (?(...)...)"),
    ],
)
def test_re2_incompatibility_names_the_construct(pattern: str, what: str | None) -> None:
    assert validation.re2_incompatibility(pattern) == what


def test_when_custom_pattern_uses_lookahead_then_error_says_rewrite() -> None:
    report = check(
        policy(
            guardrails={
                "input": {"pii": {"customPatterns": [{"entity": "ID", "regex": r"ID(?=\d{4})"}]}}
            }
        )
    )

    (problem,) = report.errors
    assert problem.field == "spec.guardrails.input.pii.customPatterns[0].regex"
    assert "lookahead" in problem.message
    assert "RE2" in problem.message


# --------------------------------------------------------------------------- Secrets


def test_when_secret_is_missing_then_error_says_how_to_create_it() -> None:
    report = check(policy(), secrets={}.get)

    (problem,) = report.errors
    assert problem.reason == status.REASON_SECRET_NOT_FOUND
    assert problem.field == "spec.providers[openai].apiKeySecretRef"
    assert 'Secret "openai-key" not found in namespace "team-a"' in problem.message
    assert "kubectl create secret generic openai-key -n team-a --from-literal=api-key=" in (
        problem.message
    )
    assert report.only_missing_secrets


def test_when_secret_lacks_the_key_then_error_lists_the_keys_it_has() -> None:
    report = check(policy(), secrets={"openai-key": {"token", "url"}}.get)

    (problem,) = report.errors
    assert 'has no key "api-key" (it has: token, url)' in problem.message


def test_every_secret_reference_is_checked() -> None:
    obj = policy(
        audit={"hashKeySecretRef": {"name": "hash-keys", "key": "audit"}},
        incidents={"notify": {"webhookSecretRef": {"name": "hook", "key": "url"}}},
    )

    report = check(obj)

    (problem,) = report.errors
    assert problem.field == "spec.incidents.notify.webhookSecretRef"


def test_when_secrets_lookup_is_none_then_secrets_are_not_checked() -> None:
    assert check(policy(), secrets=None).ok


def test_spec_errors_take_precedence_over_secret_errors_in_the_reason() -> None:
    obj = policy(guardrails={"input": {"deny": {"patterns": [r"(?=x)"]}}})

    report = check(obj, secrets={}.get)

    assert {p.reason for p in report.errors} == {
        status.REASON_INVALID_SPEC,
        status.REASON_SECRET_NOT_FOUND,
    }
    assert report.reason == status.REASON_INVALID_SPEC
    assert not report.only_missing_secrets


# --------------------------------------------------------------------------- selectors


def sel(
    match_labels: dict[str, str] | None = None, *exprs: tuple[str, str, list[str]]
) -> LabelSelector:
    return LabelSelector.model_validate(
        {
            "matchLabels": match_labels or {},
            "matchExpressions": [{"key": k, "operator": o, "values": v} for k, o, v in exprs],
        }
    )


@pytest.mark.parametrize(
    ("a", "b", "example"),
    [
        (sel({"app": "a"}), sel({"app": "b"}), None),
        (sel({"app": "a"}), sel({"app": "a"}), {"app": "a"}),
        (sel({"app": "a"}), sel({"team": "x"}), {"app": "a", "team": "x"}),
        (sel({"app": "a"}), sel(None, ("app", "In", ["a", "b"])), {"app": "a"}),
        (sel({"app": "a"}), sel(None, ("app", "NotIn", ["a"])), None),
        (sel(None, ("app", "In", ["a", "b"])), sel(None, ("app", "In", ["b", "c"])), {"app": "b"}),
        (sel(None, ("app", "Exists", [])), sel(None, ("app", "DoesNotExist", [])), None),
        (sel(None, ("app", "NotIn", ["a"])), sel(None, ("tier", "Exists", [])), {"tier": None}),
        (sel(None, ("app", "NotIn", ["a"])), sel(None, ("app", "NotIn", ["b"])), {}),
        (sel(), sel({"app": "a"}), {"app": "a"}),
    ],
)
def test_overlap_example_is_a_pod_both_select_or_none(
    a: LabelSelector, b: LabelSelector, example: dict[str, str | None] | None
) -> None:
    assert validation.overlap_example(a, b) == example
    assert validation.overlap_example(b, a) == example
    if example is not None:
        labels = {k: v if v is not None else "anything" for k, v in example.items()}
        assert a.matches(labels)
        assert b.matches(labels)


def test_when_selectors_overlap_then_warning_names_the_other_policy_and_a_pod() -> None:
    others = [validation.PeerPolicy("support", sel({"team": "support"}))]

    report = check(policy(), others=others)

    assert report.ok
    (warning,) = report.warnings
    assert warning.reason == status.REASON_OVERLAP
    assert 'AIPolicy "support" (a pod labelled app=chat,team=support matches both)' in (
        warning.message
    )
    assert "aiguard.dev/policy" in warning.message
    assert validation.overlap_message(report.warnings) == warning.message


def test_when_selectors_are_disjoint_then_no_warning() -> None:
    others = [validation.PeerPolicy("other", sel({"app": "search"}))]

    assert check(policy(), others=others).warnings == []


def test_a_policy_is_not_compared_with_itself() -> None:
    others = [validation.PeerPolicy("p", sel({"app": "chat"}))]

    assert check(policy(), others=others).warnings == []


T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_when_a_second_empty_selector_is_admitted_then_it_is_rejected() -> None:
    others = [validation.PeerPolicy("default", sel(), created=T0)]

    report = check(policy(selector={}), others=others, created=None)

    (problem,) = report.errors
    assert problem.reason == status.REASON_CONFLICT
    assert problem.field == "spec.selector"
    assert 'AIPolicy "default" already selects every pod in namespace "team-a"' in problem.message


def test_of_two_existing_empty_selectors_only_the_newer_is_invalid() -> None:
    older = validation.PeerPolicy("a-old", sel(), created=T0)
    newer = validation.PeerPolicy("p", sel(), created=T0 + dt.timedelta(minutes=1))

    newer_report = check(policy(selector={}), others=[older], created=newer.created)
    older_obj = policy(selector={})
    older_obj["metadata"]["name"] = "a-old"
    older_report = check(older_obj, others=[newer], created=older.created)

    assert newer_report.reason == status.REASON_CONFLICT
    assert older_report.ok


def test_when_access_rules_are_empty_then_warning_says_everything_is_denied() -> None:
    report = check(policy(access={}))

    assert report.ok
    (warning,) = report.warnings
    assert warning.field == "spec.access.rules"
    assert "every request will be denied" in warning.message


def test_parse_keeps_field_paths_in_the_manifest_spelling() -> None:
    obj = policy()
    obj["spec"]["providers"][0]["baseURL"] = "ftp://x"
    bad = copy.deepcopy(obj)

    _, problems = validation.parse(bad)

    (problem,) = problems
    assert problem.field == "spec.providers[0]"
    assert "baseURL 'ftp://x' is not an absolute http(s) URL" in problem.message

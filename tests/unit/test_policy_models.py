"""The AIPolicy language: what a valid policy is, its safe defaults, and what a compiled
config contains. These are the rules every other component relies on."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydantic import ValidationError

from aiguard_api import constants
from aiguard_api.config import (
    ConfigError,
    compile_policy,
    content_hash,
    format_validation_error,
    parse_config,
)
from aiguard_api.policy import (
    AIPolicy,
    AIPolicySpec,
    FailureMode,
    LabelSelector,
    Mode,
    PIIAction,
    model_matches,
)

MINIMAL: dict[str, Any] = {
    "apiVersion": "aiguard.dev/v1alpha1",
    "kind": "AIPolicy",
    "metadata": {"name": "team-a", "namespace": "apps"},
    "spec": {
        "providers": [
            {
                "name": "openai",
                "type": "openai",
                "baseURL": "https://api.openai.com/v1",
                "apiKeySecretRef": {"name": "openai-key"},
            }
        ],
        "routes": [{"models": ["gpt-*"], "targets": [{"provider": "openai"}]}],
    },
}


def policy(**spec_overrides: Any) -> dict[str, Any]:
    doc = copy.deepcopy(MINIMAL)
    doc["spec"].update(spec_overrides)
    return doc


def errors_of(doc: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as e:
        AIPolicy.model_validate(doc)
    return format_validation_error(e.value)


def test_minimal_policy_gets_safe_defaults() -> None:
    spec = AIPolicy.model_validate(MINIMAL).spec
    assert spec.mode is Mode.ENFORCE
    assert spec.failure_mode is FailureMode.CLOSED
    assert spec.providers[0].tls.min_version == "1.3"
    assert spec.access.rules == []  # nothing allowed until a rule says so
    assert spec.audit.on_spool_failure is FailureMode.CLOSED
    assert spec.guardrails.input.pii.entities["CREDIT_CARD"] is PIIAction.BLOCK
    assert spec.guardrails.input.pii.ner.enabled is False  # NER is opt-in
    assert spec.selector.is_empty()


def test_unknown_fields_are_rejected_not_ignored() -> None:
    msg = errors_of(policy(guardrail={"pii": {}}))
    assert "spec.guardrail" in msg


@pytest.mark.parametrize(
    ("spec_overrides", "expected"),
    [
        ({"mode": "shadow"}, "spec.mode: Input should be 'enforce' or 'audit'"),
        (
            {"routes": [{"models": ["*"], "targets": [{"provider": "azure"}]}]},
            "route 'routes[0]' targets unknown provider 'azure'; defined providers: openai",
        ),
        (
            {
                "guardrails": {
                    "input": {"pii": {"customPatterns": [{"entity": "EMP", "regex": "(a"}]}}
                }
            },
            "regex '(a' does not compile",
        ),
        (
            {
                "providers": [
                    {"name": "a", "type": "openai", "baseURL": "http://x/v1"},
                ]
            },
            "baseURL 'http://x/v1' is plaintext HTTP",
        ),
        (
            {"providers": [{"name": "a", "type": "anthropic", "baseURL": "https://x"}]},
            "provider 'a' of type anthropic needs apiKeySecretRef",
        ),
        (
            {"access": {"rules": [{"name": "r", "subjects": {}}]}},
            "access rule 'r' names no subjects",
        ),
        ({"rateLimits": {"limits": [{"name": "x", "scope": "user"}]}}, "sets no limit"),
    ],
)
def test_invalid_policies_explain_what_to_fix(
    spec_overrides: dict[str, Any], expected: str
) -> None:
    assert expected in errors_of(policy(**spec_overrides))


def test_duplicate_provider_names_are_rejected() -> None:
    p = MINIMAL["spec"]["providers"][0]
    assert "repeated: openai" in errors_of(policy(providers=[p, p]))


def test_plaintext_allowed_only_when_asked_for() -> None:
    doc = policy(
        providers=[
            {
                "name": "openai",
                "type": "openai-compatible",
                "baseURL": "http://vllm.models.svc:8000/v1",
                "allowPlaintext": True,
            }
        ]
    )
    assert AIPolicy.model_validate(doc).spec.providers[0].api_key_secret_ref is None


@pytest.mark.parametrize(
    ("pattern", "model", "matches"),
    [
        ("gpt-*", "gpt-4o", True),
        ("gpt-*", "o1", False),
        ("*", "anything", True),
        ("claude-3-?-sonnet", "claude-3-5-sonnet", True),
        ("GPT-*", "gpt-4o", False),  # case-sensitive, as providers are
    ],
)
def test_model_patterns_are_globs(pattern: str, model: str, matches: bool) -> None:
    assert model_matches(pattern, model) is matches


@pytest.mark.parametrize(
    ("selector", "labels", "selected"),
    [
        ({}, {"app": "x"}, True),
        ({"matchLabels": {"app": "x"}}, {"app": "x", "v": "1"}, True),
        ({"matchLabels": {"app": "x"}}, {"app": "y"}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]}, {}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["a"]}]}, {}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {"tier": ""}, True),
        ({"matchExpressions": [{"key": "t", "operator": "DoesNotExist"}]}, {"t": "1"}, False),
    ],
)
def test_label_selectors_follow_kubernetes_semantics(
    selector: dict[str, Any], labels: dict[str, str], selected: bool
) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is selected


def test_secret_refs_lists_every_secret_the_policy_reads() -> None:
    doc = policy(
        audit={"hashKeySecretRef": {"name": "audit-key", "key": "k"}},
        incidents={"notify": {"webhookSecretRef": {"name": "slack", "key": "url"}}},
    )
    spec = AIPolicy.model_validate(doc).spec
    fields = [f for f, _ in spec.secret_refs()]
    assert fields == [
        "providers[openai].apiKeySecretRef",
        "audit.hashKeySecretRef",
        "incidents.notify.webhookSecretRef",
    ]
    # the notification webhook is the operator's business, never mounted into the sidecar
    assert [r.name for r in spec.sidecar_secret_refs()] == ["openai-key", "audit-key"]


def test_compiled_config_materialises_defaults_and_hashes_content() -> None:
    cfg = compile_policy(AIPolicy.model_validate(MINIMAL))
    doc = json.loads(cfg.to_json())
    assert doc["apiVersion"] == "aiguard.dev/sidecar-config/v1"
    assert doc["policy"] == {"name": "team-a", "namespace": "apps", "uid": None, "generation": None}
    assert doc["spec"]["providers"][0]["tls"]["minVersion"] == "1.3"  # explicit, not implied
    assert cfg.hash == content_hash(cfg)
    changed = compile_policy(AIPolicy.model_validate(policy(mode="audit")))
    assert changed.hash != cfg.hash


def test_compiled_config_round_trips_through_its_json() -> None:
    cfg = compile_policy(AIPolicy.model_validate(MINIMAL))
    again = parse_config(cfg.to_json())
    assert again == cfg
    assert again.to_json() == cfg.to_json()


def test_an_edited_compiled_config_is_refused() -> None:
    cfg = compile_policy(AIPolicy.model_validate(MINIMAL))
    tampered = cfg.to_json().replace('"enforce"', '"audit"')
    with pytest.raises(ConfigError, match="content hash mismatch"):
        parse_config(tampered, source="config.json")


def test_sidecar_reads_a_policy_manifest_directly_for_local_use() -> None:
    import yaml

    cfg = parse_config(yaml.safe_dump(MINIMAL), secrets_dir="/tmp/keys")
    assert cfg.policy.name == "team-a"
    assert str(cfg.secret_path("openai-key", "api-key")) == "/tmp/keys/openai-key/api-key"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1, 2]", "expected an object"),
        ("kind: Pod", "neither a compiled sidecar config"),
        ("{unclosed", "not valid YAML/JSON"),
    ],
)
def test_unusable_policy_files_say_why(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_config(text, source="p.yaml")


def test_spec_schema_has_no_unconstrained_secret_names() -> None:
    schema = AIPolicySpec.model_json_schema(by_alias=True)
    ref = schema["$defs"]["SecretKeyRef"]["properties"]["name"]
    assert ref["pattern"].startswith("^[a-z0-9]")
    assert constants.configmap_name("x") == "aiguard-policy-x"

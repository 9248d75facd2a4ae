"""configmaps.py: the compiled-policy ConfigMap, and the smallest patch to keep it current."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from aiguard_api import constants
from aiguard_api.config import compile_policy, parse_config
from aiguard_api.policy import AIPolicy
from aiguard_operator import configmaps

UID = "0b8f6f3e-6c1a-4a55-9d7c-2f1f8e9c0a11"


def make_policy(*, uid: str | None = UID, generation: int = 3, mode: str = "enforce") -> AIPolicy:
    return AIPolicy.model_validate(
        {
            "metadata": {
                "name": "chat",
                "namespace": "team-a",
                "uid": uid,
                "generation": generation,
            },
            "spec": {
                "mode": mode,
                "providers": [
                    {
                        "name": "openai",
                        "type": "openai",
                        "baseURL": "https://api.openai.com/v1",
                        "apiKeySecretRef": {"name": "openai-key"},
                    }
                ],
                "routes": [{"models": ["*"], "targets": [{"provider": "openai"}]}],
            },
        }
    )


def built(**kwargs: Any) -> dict[str, Any]:
    policy = make_policy(**kwargs)
    return configmaps.build(policy, compile_policy(policy))


def test_manifest_is_named_after_the_policy_in_its_namespace() -> None:
    cm = built()

    assert cm["apiVersion"] == "v1"
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["name"] == "aiguard-policy-chat"
    assert cm["metadata"]["namespace"] == "team-a"


def test_data_is_the_compiled_config_and_annotations_carry_its_hash() -> None:
    policy = make_policy()
    config = compile_policy(policy)

    cm = configmaps.build(policy, config)

    assert cm["data"] == {constants.CONFIGMAP_KEY: config.to_json()}
    assert cm["metadata"]["annotations"] == {
        "aiguard.dev/compiled-hash": config.hash,
        "aiguard.dev/policy-generation": "3",
        "aiguard.dev/config-format": "aiguard.dev/sidecar-config/v1",
    }
    assert configmaps.compiled_hash(cm) == config.hash
    # what the sidecar reads back verifies against the embedded hash
    assert parse_config(cm["data"]["config.json"]).hash == config.hash


def test_labels_say_who_manages_it_and_for_which_policy() -> None:
    assert built()["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "aiguard-operator",
        "aiguard.dev/policy": "chat",
        "app.kubernetes.io/part-of": "aiguard",
    }


def test_owner_reference_lets_the_garbage_collector_delete_it_with_the_policy() -> None:
    (ref,) = built()["metadata"]["ownerReferences"]

    assert ref == {
        "apiVersion": "aiguard.dev/v1alpha1",
        "kind": "AIPolicy",
        "name": "chat",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert configmaps.is_owned_by(built(), UID)
    assert not configmaps.is_owned_by(built(), "another-uid")


def test_a_policy_that_was_never_stored_cannot_own_a_configmap() -> None:
    with pytest.raises(ValueError, match="has no uid"):
        built(uid=None)


def test_when_configmap_is_current_then_no_patch() -> None:
    cm = built()
    stored = copy.deepcopy(cm)
    stored["metadata"]["resourceVersion"] = "42"
    stored["metadata"]["labels"]["team"] = "payments"  # someone else's label
    stored["metadata"]["annotations"]["note"] = "hi"

    assert configmaps.merge_patch(stored, cm) is None


def test_when_spec_changes_then_patch_replaces_data_and_hash_only() -> None:
    old, new = built(), built(mode="audit", generation=4)

    patch = configmaps.merge_patch(old, new)

    assert patch == {
        "data": new["data"],
        "metadata": {
            "annotations": {
                "aiguard.dev/compiled-hash": new["metadata"]["annotations"][
                    "aiguard.dev/compiled-hash"
                ],
                "aiguard.dev/policy-generation": "4",
            }
        },
    }
    assert json.loads(patch["data"]["config.json"])["spec"]["mode"] == "audit"


def test_stray_data_keys_are_removed() -> None:
    stored = built()
    stored["data"]["old.json"] = "{}"

    patch = configmaps.merge_patch(stored, built())

    assert patch is not None
    assert patch["data"]["old.json"] is None


def test_owner_reference_of_a_recreated_policy_replaces_the_stale_one() -> None:
    stored = built()
    stored["metadata"]["ownerReferences"][0]["uid"] = "uid-of-the-deleted-policy"
    foreign = {"apiVersion": "v1", "kind": "Namespace", "name": "x", "uid": "ns-uid"}
    stored["metadata"]["ownerReferences"].append(foreign)

    patch = configmaps.merge_patch(stored, built())

    assert patch is not None
    refs = patch["metadata"]["ownerReferences"]
    assert foreign in refs
    assert [r["uid"] for r in refs if r["kind"] == "AIPolicy"] == [UID]


CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_the_collector_ca_travels_beside_the_config_only_when_given() -> None:
    policy = make_policy()
    config = compile_policy(policy)
    assert constants.COLLECTOR_CA_KEY not in configmaps.build(policy, config)["data"]
    with_ca = configmaps.build(policy, config, collector_ca=CA)
    assert with_ca["data"][constants.COLLECTOR_CA_KEY] == CA
    assert with_ca["data"][constants.CONFIGMAP_KEY] == config.to_json()


def test_turning_the_collector_ca_on_and_off_patches_that_key_alone() -> None:
    policy = make_policy()
    config = compile_policy(policy)
    plain, with_ca = configmaps.build(policy, config), configmaps.build(policy, config, CA)
    on = configmaps.merge_patch(plain, with_ca)
    assert on is not None
    assert on["data"][constants.COLLECTOR_CA_KEY] == CA
    off = configmaps.merge_patch(with_ca, plain)
    assert off is not None
    assert off["data"][constants.COLLECTOR_CA_KEY] is None
    assert configmaps.merge_patch(with_ca, copy.deepcopy(with_ca)) is None

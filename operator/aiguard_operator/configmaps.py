"""The compiled-policy ConfigMap, as a pure builder (kubespawner's ``make_pod`` style).

``build(policy, config)`` returns the whole manifest of ``aiguard-policy-<name>``:

* ``data["config.json"]``: the compiled sidecar config, canonical JSON (``SidecarConfig.to_json``);
* ``data["collector-ca.crt"]``: the collector's CA bundle, when the operator hands one out
  (a ConfigMap cannot be mounted across namespaces, and the policy's is already mounted);
* labels: managed-by aiguard-operator, the policy's name, part-of aiguard;
* annotations: the compiled hash, the policy generation it came from, the config format;
* one ``ownerReference`` to the AIPolicy (controller), so deleting the policy lets the
  garbage collector delete the ConfigMap.

:func:`merge_patch` says what to send to bring an existing ConfigMap to the wanted one, or
``None`` when it already is (so a resumed operator writes nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiguard_api import constants
from aiguard_api.config import CONFIG_API_VERSION, SidecarConfig
from aiguard_api.policy import AIPolicy

ANNOTATION_HASH = "aiguard.dev/compiled-hash"
ANNOTATION_GENERATION = "aiguard.dev/policy-generation"
ANNOTATION_FORMAT = "aiguard.dev/config-format"
LABEL_PART_OF = "app.kubernetes.io/part-of"

Manifest = dict[str, Any]


def owner_reference(policy: AIPolicy) -> dict[str, Any]:
    """The controller reference from a ConfigMap to its AIPolicy."""
    if not policy.metadata.uid:
        raise ValueError(
            f"AIPolicy {policy.metadata.namespace}/{policy.metadata.name} has no uid: "
            "only stored objects can own a ConfigMap"
        )
    return {
        "apiVersion": constants.GROUP_VERSION,
        "kind": constants.KIND_POLICY,
        "name": policy.metadata.name,
        "uid": policy.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(policy_name: str) -> dict[str, str]:
    return {
        constants.LABEL_MANAGED_BY: constants.MANAGED_BY,
        constants.LABEL_POLICY_NAME: policy_name,
        LABEL_PART_OF: "aiguard",
    }


def build(policy: AIPolicy, config: SidecarConfig, collector_ca: str | None = None) -> Manifest:
    """The ConfigMap holding ``config`` (compiled from ``policy``), owned by ``policy``;
    with ``collector_ca`` (PEM) also the CA sidecars verify the collector with."""
    if not config.hash:
        raise ValueError("the config has no hash: compile it with aiguard_api.config")
    meta = policy.metadata
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": constants.configmap_name(meta.name),
            "namespace": meta.namespace,
            "labels": labels(meta.name),
            "annotations": {
                ANNOTATION_HASH: config.hash,
                ANNOTATION_GENERATION: str(meta.generation or 0),
                ANNOTATION_FORMAT: CONFIG_API_VERSION,
            },
            "ownerReferences": [owner_reference(policy)],
        },
        "data": {
            constants.CONFIGMAP_KEY: config.to_json(),
            **({constants.COLLECTOR_CA_KEY: collector_ca} if collector_ca else {}),
        },
    }


def compiled_hash(configmap: Mapping[str, Any]) -> str | None:
    """The hash an existing ConfigMap says it holds."""
    annotations = configmap.get("metadata", {}).get("annotations") or {}
    value = annotations.get(ANNOTATION_HASH)
    return str(value) if value is not None else None


def is_owned_by(configmap: Mapping[str, Any], uid: str) -> bool:
    refs = configmap.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def merge_patch(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> Manifest | None:
    """A JSON merge patch turning ``existing`` into ``wanted``, or None if nothing differs.

    Only what this builder owns is compared: data, our labels and annotations, and our owner
    reference. Labels or annotations others add are left alone; other owner references too.
    """
    patch: Manifest = {}
    meta_patch: dict[str, Any] = {}
    old_meta = existing.get("metadata", {})
    new_meta = wanted["metadata"]

    if (existing.get("data") or {}) != wanted["data"] or existing.get("binaryData"):
        patch["data"] = {
            **{k: None for k in (existing.get("data") or {}) if k not in wanted["data"]},
            **wanted["data"],
        }
        if existing.get("binaryData"):
            patch["binaryData"] = None

    for key in ("labels", "annotations"):
        have = old_meta.get(key) or {}
        diff = {k: v for k, v in new_meta[key].items() if have.get(k) != v}
        if diff:
            meta_patch[key] = diff

    wanted_ref = new_meta["ownerReferences"][0]
    refs = list(old_meta.get("ownerReferences") or [])
    if wanted_ref not in refs:
        # Replace a stale reference to an older incarnation of the policy (same name, other
        # uid); keep references to anything else.
        kept = [
            r
            for r in refs
            if not (r.get("kind") == wanted_ref["kind"] and r.get("name") == wanted_ref["name"])
        ]
        # A controller reference from someone else would make ours invalid: replace it too.
        kept = [r for r in kept if not r.get("controller")]
        meta_patch["ownerReferences"] = [*kept, wanted_ref]

    if meta_patch:
        patch["metadata"] = meta_patch
    return patch or None

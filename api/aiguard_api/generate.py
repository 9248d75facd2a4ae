"""Generate the CRDs, the policy reference and the sidecar's config view from the models.

    python -m aiguard_api.generate --crds crds --docs docs/policy-reference.md   (= make crds)

(The view, ``aiguard_api/view.py``, is :mod:`aiguard_api.generate_view`'s.)

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3 schema: no
``$ref``, no ``anyOf`` over types, ``additionalProperties`` never beside ``properties``,
boolean ``exclusiveMinimum``. :func:`structural` converts one into the other and refuses what
it cannot express, so a model change that the API server would reject fails here first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from aiguard_api import constants
from aiguard_api.generate_view import view_module
from aiguard_api.policy import (
    AIIncidentSpec,
    AIIncidentStatus,
    AIPolicySpec,
    AIPolicyStatus,
    ModerationCategory,
)

Schema = dict[str, Any]

_DROP = {"title", "additionalProperties", "propertyNames", "$defs"}


class SchemaError(ValueError):
    pass


def _resolve(schema: Schema, defs: dict[str, Schema]) -> Schema:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        target = defs[name]
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def structural(schema: Schema, defs: dict[str, Schema], path: str = "") -> Schema:
    """Convert a pydantic JSON Schema node into a structural OpenAPI v3 schema node."""
    schema = _resolve(schema, defs)
    if "allOf" in schema:
        (only,) = schema["allOf"]
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        return structural({**_resolve(only, defs), **rest}, defs, path)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise SchemaError(f"{path}: unions of several types cannot be structural")
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        if rest.get("default", "") is None:
            del rest["default"]
        return structural({**_resolve(options[0], defs), **rest}, defs, path)

    out: Schema = {}
    if "description" in schema:
        out["description"] = " ".join(str(schema["description"]).split())
    if "const" in schema:
        schema = {**schema, "enum": [schema["const"]]}
        schema.setdefault("type", "string")
    kind = schema.get("type")
    if kind is None and "enum" in schema:
        kind = "string"
    if kind is None:
        raise SchemaError(f"{path}: node without a type: {schema}")
    out["type"] = kind

    if kind == "object":
        props = schema.get("properties")
        if props:
            out["properties"] = {
                name: structural(sub, defs, f"{path}.{name}") for name, sub in props.items()
            }
            if schema.get("required"):
                out["required"] = list(schema["required"])
        addl = schema.get("additionalProperties")
        if isinstance(addl, dict) and not props:
            out["additionalProperties"] = structural(addl, defs, f"{path}.*")
            keys = schema.get("propertyNames", {})
            if isinstance(keys, dict):
                keys = _resolve(keys, defs)
            if isinstance(keys, dict) and "enum" in keys:
                allowed = json.dumps(list(keys["enum"]))
                out["maxProperties"] = len(keys["enum"])
                out["x-kubernetes-validations"] = [
                    {
                        "rule": f"self.all(k, k in {allowed})",
                        "message": f"keys must be one of {allowed}",
                    }
                ]
        if "maxProperties" in schema:
            out["maxProperties"] = schema["maxProperties"]
        elif addl is True or (not props and addl is None):
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        out["items"] = structural(schema.get("items", {}), defs, f"{path}[]")
        for k in ("minItems", "maxItems"):
            if k in schema:
                out[k] = schema[k]
    elif kind in ("integer", "number"):
        for k in ("minimum", "maximum"):
            if k in schema:
                out[k] = schema[k]
        if "exclusiveMinimum" in schema:
            out["minimum"] = schema["exclusiveMinimum"]
            out["exclusiveMinimum"] = True
        if "exclusiveMaximum" in schema:
            out["maximum"] = schema["exclusiveMaximum"]
            out["exclusiveMaximum"] = True
    elif kind == "string":
        for k in ("enum", "pattern", "minLength", "maxLength", "format"):
            if k in schema:
                out[k] = schema[k]
    elif kind != "boolean":
        raise SchemaError(f"{path}: unsupported type {kind!r}")

    if "default" in schema and not isinstance(schema["default"], dict):
        default = schema["default"]
        if not (isinstance(default, list) and default and isinstance(default[0], dict)):
            out["default"] = default
    for k, v in schema.items():
        if k.startswith("x-kubernetes-"):
            out[k] = v
    return out


def model_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}), model.__name__)


# CEL rules the API server checks before our webhook sees the object: references that can be
# decided from the object alone, with messages that say what to fix.
POLICY_SPEC_RULES = [
    {
        "rule": "self.providers.all(p, self.providers.exists_one(q, q.name == p.name))",
        "message": "provider names must be unique",
    },
    {
        "rule": "self.routes.all(r, r.targets.all(t, self.providers.exists(p, "
        "p.name == t.provider)))",
        "message": "every route target must name a provider defined in spec.providers",
    },
]


def _crd(
    *,
    kind: str,
    plural: str,
    singular: str,
    short: list[str],
    spec: Schema,
    status: Schema,
    columns: list[dict[str, Any]],
    description: str,
) -> Schema:
    status = {**status, "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{constants.API_GROUP}",
            "labels": {"app.kubernetes.io/part-of": "aiguard"},
        },
        "spec": {
            "group": constants.API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short,
                "categories": ["aiguard"],
            },
            "versions": [
                {
                    "name": constants.API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def policy_crd() -> Schema:
    spec = model_schema(AIPolicySpec)
    spec["x-kubernetes-validations"] = POLICY_SPEC_RULES
    return _crd(
        kind=constants.KIND_POLICY,
        plural=constants.PLURAL_POLICY,
        singular=constants.SINGULAR_POLICY,
        short=[constants.SHORT_POLICY],
        spec=spec,
        status=model_schema(AIPolicyStatus),
        description="AIPolicy governs how pods in its namespace use LLM providers: identity "
        "and model access, rate limits, guardrails, failover, audit and incidents.",
        columns=[
            {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
            {
                "name": "Ready",
                "type": "string",
                "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
            },
            {"name": "Pods", "type": "integer", "jsonPath": ".status.coverage.governedPods"},
            {"name": "Injected", "type": "integer", "jsonPath": ".status.coverage.injectedPods"},
            {
                "name": "Hash",
                "type": "string",
                "jsonPath": ".status.compiledHash",
                "priority": 1,
            },
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def incident_crd() -> Schema:
    return _crd(
        kind=constants.KIND_INCIDENT,
        plural=constants.PLURAL_INCIDENT,
        singular=constants.SINGULAR_INCIDENT,
        short=[constants.SHORT_INCIDENT],
        spec=model_schema(AIIncidentSpec),
        status=model_schema(AIIncidentStatus),
        description="AIIncident records a security event (aggregated) or a pending human "
        "approval raised by an aiguard sidecar.",
        columns=[
            {"name": "Severity", "type": "string", "jsonPath": ".spec.severity"},
            {"name": "State", "type": "string", "jsonPath": ".spec.state"},
            {"name": "Guardrail", "type": "string", "jsonPath": ".spec.guardrail"},
            {"name": "Count", "type": "integer", "jsonPath": ".spec.count"},
            {"name": "Pod", "type": "string", "jsonPath": ".spec.pod"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


class _NoAliasDumper(yaml.SafeDumper):
    """Write repeated nodes in full: anchors make CRDs hard to read and diff."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_NoAliasDumper, sort_keys=False, width=100)


def crd_files() -> dict[str, str]:
    header = "# Generated by `make crds` from aiguard_api models. Do not edit.\n"
    out = {}
    for name, crd in (
        ("aiguard.dev_aipolicies.yaml", policy_crd()),
        ("aiguard.dev_aiincidents.yaml", incident_crd()),
    ):
        out[name] = header + dump_yaml(crd)
    return out


# --------------------------------------------------------------------------------------------
# Policy reference (markdown)


def _type_name(node: Schema) -> str:
    kind = node.get("type", "")
    if kind == "array":
        return f"[]{_type_name(node['items'])}"
    if kind == "object" and "additionalProperties" in node:
        return f"map[string]{_type_name(node['additionalProperties'])}"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    return str(kind)


def _doc_object(path: str, node: Schema, out: list[str]) -> None:
    props = node.get("properties", {})
    if not props:
        return
    out.append(f"\n### `{path}`\n")
    if node.get("description"):
        out.append(node["description"] + "\n")
    out.append("| field | type | default | description |")
    out.append("|---|---|---|---|")
    required = set(node.get("required", []))
    nested: list[tuple[str, Schema]] = []
    for name, sub in props.items():
        default = sub.get("default")
        if name in required:
            dflt = "required"
        else:
            dflt = f"`{json.dumps(default)}`" if "default" in sub else ""
        desc = sub.get("description", "")
        out.append(f"| `{name}` | {_type_name(sub)} | {dflt} | {desc} |")
        inner = sub
        while inner.get("type") == "array":
            inner = inner["items"]
        if inner.get("type") == "object" and "additionalProperties" in inner:
            inner = inner["additionalProperties"]
        if inner.get("properties"):
            nested.append((f"{path}.{name}", inner))
    for p, n in nested:
        _doc_object(p, n, out)


def policy_reference() -> str:
    out = [
        "<!-- Generated by `make crds` from aiguard_api models. Do not edit. -->",
        "# AIPolicy reference (`aiguard.dev/v1alpha1`)",
        "",
        "Every field of an AIPolicy, with its default. Anything not allowed by an access rule "
        "is denied; TLS 1.3 is the minimum; guardrail errors fail closed. Worked, commented "
        "examples are in [`examples/policies/`](../examples/policies/).",
        "",
        "Moderation categories: " + ", ".join(f"`{c.value}`" for c in ModerationCategory) + ".",
    ]
    _doc_object("spec", model_schema(AIPolicySpec), out)
    out.append("\n## AIIncident (`aiguard.dev/v1alpha1`)")
    _doc_object("spec", model_schema(AIIncidentSpec), out)
    return "\n".join(out) + "\n"


VIEW = Path(__file__).resolve().parent / "view.py"


def generated_files(crds_dir: Path, docs: Path, view: Path = VIEW) -> dict[Path, str]:
    files = {crds_dir / n: text for n, text in crd_files().items()}
    files[docs] = policy_reference()
    files[view] = view_module()
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Generate the CRDs and the policy reference from the models."
    )
    ap.add_argument("--crds", type=Path, default=Path("crds"))
    ap.add_argument("--docs", type=Path, default=Path("docs/policy-reference.md"))
    ap.add_argument("--view", type=Path, default=VIEW, help="the generated aiguard_api/view.py")
    ap.add_argument("--check", action="store_true", help="fail if the files differ")
    args = ap.parse_args(argv)
    stale = []
    for path, text in generated_files(args.crds, args.docs, args.view).items():
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(str(path))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    if args.check and stale:
        print("out of date (run `make crds`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

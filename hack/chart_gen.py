#!/usr/bin/env python3
"""Generate the chart's derived files from their sources (``make chart``).

    python hack/chart_gen.py            # write what changed
    python hack/chart_gen.py --check    # exit 1 and name the stale files (the drift test)

==========================================  ===============================================
generated file (under helm/aiguard/)        source
==========================================  ===============================================
``files/crds/*.yaml``                       ``crds/*.yaml``, copied byte for byte
``files/rbac/operator-rules.yaml``          the ClusterRole in ``docs/operator-rbac.md``,
                                            split by scope (cluster, namespaced, and the
                                            managed-webhook rules only the operator-CA
                                            mode needs)
``values.schema.json``                      ``values.yaml``: types from the defaults, every
                                            object closed (a typo'd key is an error), and
                                            ``# @schema {json}`` comment lines merged in
``README.md``                               ``values.yaml``: one table row per key, its
                                            comment as the description
==========================================  ===============================================

Every key in values.yaml must have a comment: a key without one is an error here, so the
README and the schema always describe every key.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "aiguard"
RBAC_DOC = ROOT / "docs" / "operator-rbac.md"

Schema = dict[str, Any]

# Scope of every resource the operator's rules may name. A resource missing here is an error,
# so a new rule in the document is placed deliberately (Role or ClusterRole).
NAMESPACED = {
    "aipolicies",
    "aipolicies/status",
    "aipolicies/finalizers",
    "aiincidents",
    "aiincidents/status",
    "configmaps",
    "secrets",
    "pods",
    "events",
    "leases",
}
CLUSTER = {
    "namespaces",
    "customresourcedefinitions",
    "clusterkopfpeerings",
    "tokenreviews",
    "subjectaccessreviews",
}
MANAGED_WEBHOOKS = {"validatingwebhookconfigurations", "mutatingwebhookconfigurations"}


class GenError(ValueError):
    pass


# --------------------------------------------------------------------------- values.yaml


@dataclass
class Key:
    """One key of values.yaml with its comment and ``@schema`` fragments."""

    path: tuple[str, ...]
    description: list[str] = field(default_factory=list)
    schema: Schema = field(default_factory=dict)


_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.\-/]+):(?P<rest>.*)$")


def parse_comments(text: str) -> dict[tuple[str, ...], Key]:
    """Path → Key for every mapping key, with the comment block right above it."""
    keys: dict[tuple[str, ...], Key] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            pending.append(stripped[1:].strip())
            continue
        if stripped.startswith("- "):
            pending = []
            continue
        m = _KEY.match(line)
        if not m:
            raise GenError(f"values.yaml:{lineno}: cannot read {line!r}")
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = (*(k for _, k in stack), m["key"])
        entry = Key(path)
        for comment in pending:
            if comment.startswith("@schema"):
                try:
                    entry.schema.update(json.loads(comment[len("@schema") :]))
                except json.JSONDecodeError as e:
                    raise GenError(f"values.yaml:{lineno}: bad @schema JSON: {e}") from None
            else:
                entry.description.append(comment)
        keys[path] = entry
        pending = []
        stack.append((indent, m["key"]))
    return keys


def _type_of(value: Any) -> Schema:
    if isinstance(value, bool):
        return {"type": "boolean"}
    if isinstance(value, int):
        return {"type": "integer"}
    if isinstance(value, float):
        return {"type": "number"}
    if isinstance(value, str):
        return {"type": "string"}
    if isinstance(value, list):
        return {"type": "array"}
    if isinstance(value, dict):
        return {"type": "object"}
    raise GenError(f"no type for {value!r}: add an @schema type")


def _schema(
    value: Any, path: tuple[str, ...], keys: dict[tuple[str, ...], Key], rows: list[Key]
) -> Schema:
    entry = keys.get(path)
    if path and (entry is None or not entry.description):
        raise GenError(f"values.yaml: {'.'.join(path)} has no comment: document it")
    extra = dict(entry.schema) if entry else {}
    node: Schema = {} if value is None else _type_of(value)
    if entry and entry.description:
        node["description"] = " ".join(entry.description)
    free = "additionalProperties" in extra or "properties" in extra
    if isinstance(value, dict) and value and not free:
        node["properties"] = {k: _schema(v, (*path, k), keys, rows) for k, v in value.items()}
        node["additionalProperties"] = False
    elif isinstance(value, dict) and not free:
        raise GenError(
            f"values.yaml: {'.'.join(path)} is an empty map: say what it may hold with "
            '# @schema {"additionalProperties": ...}'
        )
    elif entry is not None:
        rows.append(entry)
    node.update(extra)
    return node


def values_schema(values_text: str) -> tuple[Schema, list[Key]]:
    """The JSON schema of values.yaml and its leaf keys in file order (for the README)."""
    values = yaml.safe_load(values_text)
    keys = parse_comments(values_text)
    rows: list[Key] = []
    body = _schema(values, (), keys, rows)
    # Helm hands a subchart the parent's `global` values: allowed, unused.
    body["properties"]["global"] = {"type": "object", "description": "Helm global values."}
    schema: Schema = {
        "$schema": "https://json-schema.org/draft-07/schema#",
        "title": "Values of the aiguard chart (generated from values.yaml by make chart)",
        **body,
    }
    return schema, rows


def _lookup(values: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        values = values[part]
    return values


# --------------------------------------------------------------------------- README

README_HEAD = """\
# aiguard Helm chart

<!-- Generated by `make chart` (hack/chart_gen.py) from values.yaml. Do not edit. -->

The aiguard operator (AIPolicy reconciler, sidecar injection webhook, audit collector), its
CRDs, least-privilege RBAC (`docs/operator-rbac.md`), webhook configurations, NetworkPolicies
and opt-in Prometheus/Grafana objects. Requires Kubernetes 1.29 or newer (the sidecar is a
native sidecar: an init container with `restartPolicy: Always`).

```sh
helm install aiguard helm/aiguard --namespace aiguard-system --create-namespace
# or the production shape: cert-manager certificates, three replicas, PostgreSQL (the DSN
# in the Secret aiguard-postgres, key dsn)
helm install aiguard helm/aiguard -n aiguard-system --create-namespace \\
  -f helm/aiguard/ci/ha-values.yaml
```

Scenarios that CI renders, lints and applies to a real API server are in `ci/*-values.yaml`.
The repository README ("Installing on a real cluster") covers cert-manager, upgrades (the
CRDs) and what an uninstall keeps.

## Webhook certificates

`webhook.certManager.enabled: false` (the default): the operator makes a CA and a serving
certificate in an emptyDir, rotates them, and registers the webhook configurations itself
(kopf's managed configurations, named `aiguard.dev`) by URL to the webhook Service's
ClusterIP. One replica.

`webhook.certManager.enabled: true`: cert-manager issues the certificate into a Secret the
operator mounts; the chart renders the webhook configurations (service reference) and
cert-manager's cainjector fills in their CA bundle. One replica or more.

The same certificate serves the audit collector over TLS; the operator hands its CA to the
sidecars in each policy ConfigMap.

## Values

| Key | Type | Default | Description |
|---|---|---|---|
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def readme(values_text: str) -> str:
    schema, rows = values_schema(values_text)
    values = yaml.safe_load(values_text)
    lines = [README_HEAD.rstrip("\n")]
    for row in rows:
        node: Any = schema
        for part in row.path:
            node = node["properties"][part]
        kind = node.get("type", "any")
        kind = " \\| ".join(kind) if isinstance(kind, list) else kind
        if "enum" in node:
            kind = " \\| ".join(f"`{e}`" for e in node["enum"])
        default = json.dumps(_lookup(values, row.path), separators=(",", ":"))
        lines.append(
            f"| `{'.'.join(row.path)}` | {kind} | `{_cell(default)}` | "
            f"{_cell(' '.join(row.description))} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- RBAC


def documented_rules(doc: str) -> list[dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)
    if len(blocks) != 1:
        raise GenError(f"{RBAC_DOC.name}: expected one yaml block, found {len(blocks)}")
    role = yaml.safe_load(blocks[0])
    if role.get("kind") != "ClusterRole":
        raise GenError(f"{RBAC_DOC.name}: the yaml block is not a ClusterRole")
    return list(role["rules"])


def split_rules(rules: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The documented rules by where the chart puts them."""
    out: dict[str, list[dict[str, Any]]] = {"cluster": [], "namespaced": [], "managedWebhooks": []}
    for rule in rules:
        resources = list(rule["resources"])
        groups = {
            "managedWebhooks": [r for r in resources if r in MANAGED_WEBHOOKS],
            "cluster": [r for r in resources if r in CLUSTER],
            "namespaced": [r for r in resources if r in NAMESPACED],
        }
        unknown = set(resources) - MANAGED_WEBHOOKS - CLUSTER - NAMESPACED
        if unknown:
            raise GenError(
                f"{RBAC_DOC.name}: the scope of {sorted(unknown)} is unknown: add them to "
                "NAMESPACED or CLUSTER in hack/chart_gen.py"
            )
        for where, names in groups.items():
            if names:
                out[where].append({**rule, "resources": names})
    return out


def rbac_file(doc: str) -> str:
    header = (
        "# Generated by `make chart` (hack/chart_gen.py) from the ClusterRole in\n"
        "# docs/operator-rbac.md. Do not edit: change the document, then run make chart.\n"
    )
    return header + yaml.dump(
        split_rules(documented_rules(doc)), Dumper=_NoAliases, sort_keys=False
    )


class _NoAliases(yaml.SafeDumper):
    """Repeat shared lists instead of writing YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# --------------------------------------------------------------------------- files


def generated_files() -> dict[Path, bytes]:
    values_text = (CHART / "values.yaml").read_text()
    schema, _ = values_schema(values_text)
    out: dict[Path, bytes] = {
        CHART / "values.schema.json": (json.dumps(schema, indent=2) + "\n").encode(),
        CHART / "README.md": readme(values_text).encode(),
        CHART / "files" / "rbac" / "operator-rules.yaml": rbac_file(RBAC_DOC.read_text()).encode(),
    }
    for crd in sorted((ROOT / "crds").glob("*.yaml")):
        out[CHART / "files" / "crds" / crd.name] = crd.read_bytes()
    return out


def stale_crd_copies() -> list[Path]:
    """Copies in files/crds/ whose source in crds/ is gone."""
    sources = {p.name for p in (ROOT / "crds").glob("*.yaml")}
    return [p for p in sorted((CHART / "files" / "crds").glob("*.yaml")) if p.name not in sources]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if a generated file differs")
    args = ap.parse_args(argv)
    try:
        files = generated_files()
    except GenError as e:
        print(f"chart_gen: {e}", file=sys.stderr)
        return 2
    stale = [p for p, data in files.items() if not p.exists() or p.read_bytes() != data]
    extra = stale_crd_copies()
    if args.check:
        if stale or extra:
            names = [str(p.relative_to(ROOT)) for p in [*stale, *extra]]
            print(f"out of date (run `make chart`): {', '.join(names)}", file=sys.stderr)
            return 1
        return 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[path])
        print(f"wrote {path.relative_to(ROOT)}")
    for path in extra:
        path.unlink()
        print(f"removed {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

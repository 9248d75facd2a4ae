"""The layering rules from DESIGN.md, checked on the source: aiguard_api at the bottom, the
operator and the sidecar never import each other, only handler modules import kopf, only the
PII NER module imports presidio, and the sidecar's serving code never imports pydantic (it
reads the config's plain view, ``aiguard_api.view``). A violation fails here, not in a
container at 3 a.m."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "aiguard_api": ROOT / "api" / "aiguard_api",
    "aiguard_operator": ROOT / "operator" / "aiguard_operator",
    "aiguard_sidecar": ROOT / "sidecar" / "aiguard_sidecar",
}
FORBIDDEN = {
    "aiguard_api": {
        "kopf",
        "aiohttp",
        "presidio_analyzer",
        "spacy",
        "aiguard_operator",
        "aiguard_sidecar",
    },
    "aiguard_operator": {"aiguard_sidecar", "presidio_analyzer", "spacy"},
    "aiguard_sidecar": {"aiguard_operator", "kopf"},
}
# Modules allowed to import a heavy or framework dependency, relative to their package.
KOPF_ALLOWED = {"handlers.py", "main.py"}
PRESIDIO_ALLOWED_PREFIX = "guardrails/ner"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def modules() -> list[tuple[str, Path]]:
    return [(pkg, p) for pkg, d in PACKAGES.items() for p in sorted(d.rglob("*.py"))]


def test_every_package_has_modules() -> None:
    assert {pkg for pkg, _ in modules()} == set(PACKAGES)


@pytest.mark.parametrize(
    ("pkg", "path"), modules(), ids=lambda v: v if isinstance(v, str) else v.name
)
def test_module_respects_layers(pkg: str, path: Path) -> None:
    imported = imports_of(path)
    rel = path.relative_to(PACKAGES[pkg]).as_posix()
    assert not imported & FORBIDDEN[pkg], f"{pkg}/{rel} imports {imported & FORBIDDEN[pkg]}"
    if "kopf" in imported:
        assert pkg == "aiguard_operator", f"{pkg}/{rel} imports kopf"
        assert rel in KOPF_ALLOWED, f"{rel} imports kopf: only {sorted(KOPF_ALLOWED)} may"
    if {"presidio_analyzer", "spacy"} & imported:
        assert rel.startswith(PRESIDIO_ALLOWED_PREFIX), f"{rel} imports presidio/spacy"


# What imports pydantic: the sidecar reads aiguard_api.view, aiguard_api.policy_types,
# aiguard_api.errors and aiguard_api.audit instead (tests/sidecar/test_lean_start.py checks the
# running process). Only the ``scan`` command (a CLI, not the proxy) builds models itself;
# policy_load validates in a child and imports the models only there (a function-level import).
PYDANTIC_MODULES = {"pydantic", "pydantic_core", "aiguard_api.policy", "aiguard_api.config"}
PYDANTIC_ALLOWED = {"scan.py"}


def top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize(
    "path",
    sorted(PACKAGES["aiguard_sidecar"].rglob("*.py")),
    ids=lambda p: p.relative_to(PACKAGES["aiguard_sidecar"]).as_posix(),
)
def test_the_sidecar_never_imports_pydantic(path: Path) -> None:
    rel = path.relative_to(PACKAGES["aiguard_sidecar"]).as_posix()
    heavy = {
        m for m in top_level_imports(path) if m in PYDANTIC_MODULES or m.startswith("pydantic.")
    }
    if rel in PYDANTIC_ALLOWED:
        return
    assert not heavy, f"aiguard_sidecar/{rel} imports {sorted(heavy)}: use aiguard_api.view"


def test_the_pydantic_free_api_modules_stay_so() -> None:
    for name in ("view", "policy_types", "errors", "audit", "constants"):
        imported = top_level_imports(PACKAGES["aiguard_api"] / f"{name}.py")
        heavy = {m for m in imported if m in PYDANTIC_MODULES or m.startswith("pydantic")}
        assert not heavy, f"aiguard_api/{name}.py imports {sorted(heavy)}"


def test_nothing_is_importable_as_operator() -> None:
    # `operator/` is a folder, never a package: it would shadow the standard library.
    assert not (ROOT / "operator" / "__init__.py").exists()
    import operator

    assert hasattr(operator, "itemgetter")

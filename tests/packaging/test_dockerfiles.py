"""Dockerfile.operator, Dockerfile.sidecar and .dockerignore, read as a builder would.

Docker is not available on this project's machines, so nothing here builds an image; these
tests hold the properties a reviewer would look for: the base pinned by digest, multi-stage
with nothing but the venv in the runtime stage, the install done by hack/install-venv.sh (the
script CI's install test runs) from the hashed lockfile with --require-hashes, a non-root
numeric USER, exec-form ENTRYPOINT of the component's console script, OCI labels, and a build
context that leaves out the venv, the tests and the git history.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
INSTALL_SCRIPT = "hack/install-venv.sh"
VENV = "/opt/aiguard/venv"
DIGEST_PIN = re.compile(r"^python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}$")
COMPONENTS = ("operator", "sidecar")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    args: dict[str, str]  # global ARGs (before the first FROM) with their defaults
    stages: list[Stage]

    @property
    def runtime(self) -> Stage:
        return self.stages[-1]

    def resolve(self, text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m[1], m[0]), text, flags=re.ASCII)


def parse(path: Path) -> Dockerfile:
    """Instructions with line continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, f"{path.name}: dangling line continuation"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif not stages and keyword == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            assert stages, f"{path.name}: {keyword} before the first FROM"
            stages[-1].instructions.append((keyword, rest))
    return Dockerfile(args, stages)


def dockerfile(component: str) -> Dockerfile:
    return parse(ROOT / f"Dockerfile.{component}")


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_stage_starts_from_the_base_pinned_by_digest(component: str) -> None:
    df = dockerfile(component)
    for stage in df.stages:
        base = df.resolve(stage.base)
        assert DIGEST_PIN.match(base), f"FROM {stage.base} -> {base}: not pinned by digest"
    text = (ROOT / f"Dockerfile.{component}").read_text()
    assert ":latest" not in text


def test_both_images_use_the_same_base_digest() -> None:
    bases = {df.resolve(s.base) for df in map(dockerfile, COMPONENTS) for s in df.stages}
    assert len(bases) == 1, f"refresh the digest in both Dockerfiles together: {bases}"


@pytest.mark.parametrize("component", COMPONENTS)
def test_multi_stage_and_the_runtime_stage_only_copies_the_venv(component: str) -> None:
    df = dockerfile(component)
    assert len(df.stages) >= 2
    builder = df.stages[0]
    assert builder.name == "builder"
    runtime = df.runtime
    assert runtime.all("RUN") == [], "the runtime stage runs nothing (no shell, no installs)"
    assert runtime.all("COPY") == [f"--from=builder {VENV} {VENV}"]


@pytest.mark.parametrize("component", COMPONENTS)
def test_the_builder_installs_with_the_script_ci_runs(component: str) -> None:
    df = dockerfile(component)
    runs = " && ".join(df.stages[0].all("RUN"))
    # the sidecar chooses sidecar or sidecar-ner from the NER build arg
    flavours = {"operator": ["operator"], "sidecar": ["sidecar", "sidecar-ner"]}[component]
    for flavour in flavours:
        assert flavour in runs
    assert f"{INSTALL_SCRIPT} {VENV} " in runs
    # the smoke check inside the build: the console script starts
    assert f"{VENV}/bin/aiguard-{component} --help" in runs
    # every file the script reads is copied in
    copied = " ".join(df.stages[0].all("COPY"))
    for needed in ("pyproject.toml", "README.md", "requirements/", INSTALL_SCRIPT, "api/"):
        assert needed in copied, f"the builder does not COPY {needed}"
    for package in ("operator/", "sidecar/"):
        assert package in copied


def test_the_install_script_requires_hashes_from_the_component_lockfile() -> None:
    script = (ROOT / INSTALL_SCRIPT).read_text()
    assert "set -euo pipefail" in script
    assert 'lockfile="requirements/$component.txt"' in script
    # every locked install: exact files by hash, no resolver, wheels only
    assert 'locked=(--require-hashes --no-deps --only-binary=:all: -r "$lock")' in script
    assert 'locked_install "$venv/bin/python" "$lockfile"' in script
    assert 'locked_install "$work/build/bin/python" requirements/build.txt' in script
    installs = [
        line.strip()
        for line in re.sub(r"\\\n\s*", " ", script).splitlines()
        if re.search(r"\binstall\b", line) and line.lstrip().startswith('"${pip[@]}"')
    ]
    unlocked = [line for line in installs if '"${locked[@]}"' not in line]
    # ... and the one exception: aiguard's own wheel, built here, without dependencies
    assert unlocked == [
        '"${pip[@]}" --python "$venv/bin/python" install --quiet --no-deps '
        '"$work"/wheels/aiguard-*.whl'
    ]
    assert "--no-build-isolation" in script, "building aiguard must not fetch unhashed tools"
    assert "--without-pip" in script, "no pip in the image's venv"


@pytest.mark.parametrize("component", COMPONENTS)
def test_runs_as_a_non_root_numeric_user(component: str) -> None:
    users = dockerfile(component).runtime.all("USER")
    assert users, "the runtime stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit(), f"USER {users[-1]}: want a numeric uid (runAsNonRoot checks it)"
    assert gid.isdigit()
    assert int(uid) != 0
    assert int(gid) != 0
    # the same uid the injector's securityContext sets for the sidecar
    assert int(uid) == 65532


@pytest.mark.parametrize("component", COMPONENTS)
def test_entrypoint_is_the_console_script_in_exec_form(component: str) -> None:
    runtime = dockerfile(component).runtime
    (entrypoint,) = runtime.all("ENTRYPOINT")
    argv = json.loads(entrypoint)  # exec form, no shell
    assert argv == [f"{VENV}/bin/aiguard-{component}"]
    assert f"aiguard-{component}" in PYPROJECT["project"]["scripts"]
    for cmd in runtime.all("CMD"):
        json.loads(cmd)


@pytest.mark.parametrize("component", COMPONENTS)
def test_read_only_root_friendly_environment(component: str) -> None:
    env = " ".join(dockerfile(component).runtime.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/tmp" in env, "HOME on the pod's /tmp emptyDir, not the read-only root"
    assert f"PATH={VENV}/bin:" in env


def test_the_sidecar_runs_optimized() -> None:
    """Level 2: docstrings and asserts not loaded (idle RSS); install-venv.sh compiled that
    level's bytecode (tests/packaging/test_install.py runs the installed sidecar so)."""
    env = " ".join(dockerfile("sidecar").runtime.all("ENV"))
    assert "PYTHONOPTIMIZE=2" in env


@pytest.mark.parametrize("component", COMPONENTS)
def test_oci_labels(component: str) -> None:
    df = dockerfile(component)
    labels = dict(
        item.split("=", 1) for label in df.runtime.all("LABEL") for item in shlex.split(label)
    )
    prefix = "org.opencontainers.image."
    for key in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert prefix + key in labels, f"missing label {prefix}{key}"
    assert labels[prefix + "title"] == f"aiguard-{component}"
    assert labels[prefix + "licenses"] == PYPROJECT["project"]["license"]["text"]
    version_arg = dict(a.split("=", 1) for a in df.runtime.all("ARG") if "=" in a).get("VERSION")
    assert version_arg == PYPROJECT["project"]["version"]


def test_the_sidecar_can_bake_the_spacy_model() -> None:
    builder = dockerfile("sidecar").stages[0]
    assert "NER=false" in builder.all("ARG")
    assert any('"$NER" = "true"' in run and "sidecar-ner" in run for run in builder.all("RUN"))


# ── build context ───────────────────────────────────────────────────────────────────────────


def dockerignore() -> list[tuple[bool, str]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return rules


def in_context(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also matches the path's
    parents (an excluded folder excludes its contents)."""
    parts = path.split("/")
    included = True
    for negated, pattern in dockerignore():
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatchcase(c, pattern) or fnmatch.fnmatchcase(c, pattern.replace("**/", ""))
            for c in candidates
        ):
            included = negated
    return included


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".local/kubeconfig",
        ".git/config",
        "tests/harness/standin.py",
        "sidecar/aiguard_sidecar/__pycache__/app.cpython-311.pyc",
        "aiguard.egg-info/PKG-INFO",
        "benchmarks/results/proxy.json",
        "helm/aiguard/Chart.yaml",
    ],
)
def test_the_build_context_leaves_out(path: str) -> None:
    assert not in_context(path)


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "requirements/sidecar.txt",
        INSTALL_SCRIPT,
        "api/aiguard_api/__init__.py",
        "operator/aiguard_operator/main.py",
        "sidecar/aiguard_sidecar/guardrails/models/injection.json",
    ],
)
def test_the_build_context_keeps_what_the_builder_copies(path: str) -> None:
    assert (ROOT / path).exists()
    assert in_context(path)


def test_the_sidecar_default_command_reads_the_policy_where_the_injector_mounts_it() -> None:
    from aiguard_api import constants

    (cmd,) = dockerfile("sidecar").runtime.all("CMD")
    policy = f"{constants.SIDECAR_POLICY_DIR}/{constants.SIDECAR_POLICY_FILE}"
    assert json.loads(cmd) == ["--policy", policy]

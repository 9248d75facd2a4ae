"""Policy files validated in a child process (``sidecar/aiguard_sidecar/policy_load.py``): the
config that comes back is the view (``aiguard_api.view``) of the one validating here gives, an
invalid policy is refused with the same message, the process that asked never loads pydantic,
and a child that fails leaves the validation to the process itself."""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from aiguard_api import view
from aiguard_api.config import ConfigError, compile_policy, parse_config, to_view
from aiguard_api.policy import AIPolicy
from aiguard_sidecar import policy_load

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples" / "policies").glob("*.yaml"))
MANIFESTS = [
    p
    for p in EXAMPLES
    if [d.get("kind") for d in yaml.safe_load_all(p.read_text())] == ["AIPolicy"]
]


@pytest.fixture(autouse=True)
def _forget_the_last_result() -> Iterator[None]:
    policy_load._last = None
    yield
    policy_load._last = None


def counted(before: dict[str, int]) -> dict[str, int]:
    after = policy_load.stats()
    return {k: after[k] - before[k] for k in after}


def compiled_json(manifest: Path) -> bytes:
    policy = AIPolicy.model_validate(yaml.safe_load(manifest.read_text()))
    return compile_policy(policy).to_json().encode()


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.stem)
def test_a_policy_validated_in_the_child_is_the_config_validated_here(manifest: Path) -> None:
    for data in (manifest.read_bytes(), compiled_json(manifest)):
        before = policy_load.stats()
        cfg = policy_load.parse(data, str(manifest), "/var/run/test-secrets")

        assert counted(before) == {"child": 1, "in_process": 0, "cached": 0}
        here = parse_config(
            data.decode(), source=str(manifest), secrets_dir="/var/run/test-secrets"
        )
        assert isinstance(cfg, view.SidecarConfig)
        assert cfg == to_view(here)  # every field, nested
        assert cfg.hash == here.hash
        assert cfg.secrets_dir == "/var/run/test-secrets"


def test_the_same_file_again_is_not_validated_again() -> None:
    data = MANIFESTS[0].read_bytes()
    before = policy_load.stats()
    first = policy_load.parse(data, "policy.yaml")
    assert policy_load.parse(data, "policy.yaml") is first
    # Another name or secrets directory is another result (messages and paths differ).
    policy_load.parse(data, "policy.yaml", "/elsewhere")
    assert counted(before) == {"child": 2, "in_process": 0, "cached": 1}


def _invalid_documents() -> dict[str, bytes]:
    good = yaml.safe_load(MANIFESTS[0].read_text())
    unknown = json.loads(json.dumps(good))
    unknown["spec"]["guardrails"] = {"input": {"pii": {"enabeld": True}}}
    bad_provider = json.loads(json.dumps(good))
    bad_provider["spec"]["providers"][0]["baseUrl"] = "ftp://example.com"
    edited = json.loads(compiled_json(MANIFESTS[0]))
    edited["policy"]["name"] = "edited-after-hashing"
    return {
        "unknown field": yaml.safe_dump(unknown).encode(),
        "bad provider": yaml.safe_dump(bad_provider).encode(),
        "hash mismatch": json.dumps(edited).encode(),
        "not YAML": b"spec: [unclosed",
        "not an object": b"- a list\n",
        "neither kind": b'{"kind": "ConfigMap"}',
    }


@pytest.mark.parametrize("what", list(_invalid_documents()))
def test_an_invalid_policy_is_refused_with_the_message_validating_here_gives(what: str) -> None:
    data = _invalid_documents()[what]
    with pytest.raises(ConfigError) as here:
        parse_config(data.decode(), source="bad.yaml")
    before = policy_load.stats()

    with pytest.raises(ConfigError) as child:
        policy_load.parse(data, "bad.yaml")

    assert str(child.value) == str(here.value)
    assert str(child.value).startswith("bad.yaml: ")
    assert counted(before)["child"] == 0, "a refusal is not a result"
    assert counted(before)["in_process"] == 0, "the child's verdict stands; no second opinion"


def test_bytes_that_are_not_utf8_are_refused_without_a_child() -> None:
    before = policy_load.stats()
    with pytest.raises(ConfigError, match=r"^bad\.yaml: not UTF-8"):
        policy_load.parse(b"kind: AIPolicy\nname: \xff\n", "bad.yaml")
    assert counted(before) == {"child": 0, "in_process": 0, "cached": 0}


def test_the_asking_process_never_loads_pydantic() -> None:
    """In a fresh interpreter (this one has loaded it for the tests above)."""
    code = (
        "import sys\n"
        "from aiguard_sidecar import policy_load\n"
        "cfg = policy_load.parse(open(sys.argv[1], 'rb').read(), sys.argv[1])\n"
        "print(cfg.policy.name, cfg.spec.providers[0].name, repr(cfg.spec.guardrails)[:11])\n"
        "print(type(cfg).__module__, [m for m in sys.modules if m.startswith('pydantic')])\n"
        "print(policy_load.stats())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(MANIFESTS[0])],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    expected = parse_config(MANIFESTS[0].read_text(), source=str(MANIFESTS[0]))
    assert out[0] == f"{expected.policy.name} {expected.spec.providers[0].name} Guardrails("
    assert out[1] == "aiguard_api.view []"
    assert out[2] == "{'child': 1, 'in_process': 0, 'cached': 0}"


def _child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


FAILURES = {
    "cannot start": ["/nonexistent/python"],
    "crashes": _child("import sys; sys.exit(3)"),
    "says nothing": _child("pass"),
    "garbage": _child("import sys; sys.stdout.buffer.write(b'ok\\n' + b'not a pickle')"),
    "not a config": _child(
        "import pickle, sys; sys.stdout.buffer.write(b'ok\\n' + pickle.dumps({'spec': 1}))"
    ),
    "the model, not its view": _child(
        "import pickle, sys\n"
        "from aiguard_api.config import parse_config\n"
        "req = __import__('json').loads(sys.stdin.read())\n"
        "cfg = parse_config(req['text'], source=req['source'])\n"
        "sys.stdout.buffer.write(b'ok\\n' + pickle.dumps(cfg))"
    ),
    "reply cut short": _child(
        "import pickle, sys\n"
        "from aiguard_api.config import parse_config\n"
        "req = __import__('json').loads(sys.stdin.read())\n"
        "data = pickle.dumps(parse_config(req['text'], source=req['source']))\n"
        "sys.stdout.buffer.write(b'ok\\n' + data[: len(data) // 2])"
    ),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_child_that_fails_leaves_the_validation_to_this_process(
    failure: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(policy_load, "child_command", lambda: FAILURES[failure])
    data = MANIFESTS[0].read_bytes()
    before = policy_load.stats()

    with caplog.at_level(logging.WARNING, logger="aiguard.sidecar.policy"):
        cfg = policy_load.parse(data, "policy.yaml")

    assert cfg == to_view(parse_config(data.decode(), source="policy.yaml"))
    assert counted(before) == {"child": 0, "in_process": 1, "cached": 0}
    assert "validating in this process" in caplog.text


def test_a_child_that_hangs_is_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        policy_load, "child_command", lambda: _child("import signal; signal.pause()")
    )
    monkeypatch.setattr(policy_load, "CHILD_TIMEOUT", 0.5)
    before = policy_load.stats()
    cfg = policy_load.parse(MANIFESTS[0].read_bytes(), "policy.yaml")
    assert isinstance(cfg, view.SidecarConfig)
    assert counted(before)["in_process"] == 1


def test_an_invalid_policy_is_still_refused_when_the_child_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(policy_load, "child_command", lambda: FAILURES["crashes"])
    with pytest.raises(ConfigError, match="not valid YAML/JSON"):
        policy_load.parse(b"spec: [unclosed", "bad.yaml")


def test_the_reply_is_the_pickle_of_the_config_and_nothing_else() -> None:
    """The child's protocol, byte for byte: a JSON request in, ``ok\\n`` + pickle out."""
    data = MANIFESTS[0].read_text()
    request = json.dumps({"text": data, "source": "p.yaml", "secretsDir": None}).encode()
    proc = subprocess.run(
        policy_load.child_command(), input=request, capture_output=True, check=True, timeout=60
    )
    assert proc.stdout.startswith(b"ok\n")
    reply = pickle.loads(proc.stdout[3:])  # noqa: S301 - the test's own child
    assert reply == to_view(parse_config(data, source="p.yaml"))
    assert proc.stderr == b""

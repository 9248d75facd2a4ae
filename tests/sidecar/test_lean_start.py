"""What keeps the idle sidecar small (``benchmarks.sidecar_proxy rss``), as behaviour:

* a started ``aiguard-sidecar`` with the default guardrails compiled every Hyperscan database
  in a child process (none in its own), validated its policy in a child once (it never loads
  pydantic: it reads the config's plain view, ``aiguard_api.view``), built its classifier model
  in a child, and never imported the YAML parser for the JSON config the operator writes; its
  guardrails still block;
* policy reloads validated in a child: a valid one goes into force, an invalid one is refused
  with its reason and the last good policy stays;
* a policy reload whose compile fails leaves the last good policy in force and counts a reload
  failure; when only the compile child fails, the reload compiles in the process instead.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from aiguard_api.config import compile_policy
from aiguard_api.policy import AIPolicy
from aiguard_sidecar import policy_load
from aiguard_sidecar.app import STORE
from aiguard_sidecar.guarding import EngineGuardrails
from aiguard_sidecar.guardrails import hsdb
from aiguard_sidecar.hooks import Guardrails
from tests.harness.polling import until
from tests.harness.ports import free_port
from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import SecretVolume, StartSidecar, http_get, make_policy, wait_for

CARD = "4111 1111 1111 1111"

# Runs the sidecar's own ``main`` in the main thread (signals, event loop as in production);
# a thread waits for /readyz, then writes what the process imported and compiled, and where.
_WRAPPER = r"""
import json, os, sys, threading, time, urllib.request
out, admin = sys.argv[1], sys.argv[2]

import hyperscan

class CountingDatabase(hyperscan.Database):  # any compile in this process, hsdb's or not
    compiles = 0

    def compile(self, *args, **kwargs):
        CountingDatabase.compiles += 1
        return super().compile(*args, **kwargs)

hyperscan.Database = CountingDatabase

def report():
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.05)
    from aiguard_sidecar import policy_load
    from aiguard_sidecar.guardrails import hsdb, linear
    while True:  # after readiness, and again once the test's request has been served
        doc = {
            "modules": sorted(sys.modules),
            "hsdb": hsdb.stats(),
            "compiles": CountingDatabase.compiles,
            "policy_load": policy_load.stats(),
            "linear": linear.stats(),
        }
        with open(out + ".tmp", "w") as f:
            json.dump(doc, f)
        os.replace(out + ".tmp", out)
        time.sleep(0.1)

threading.Thread(target=report, daemon=True).start()
from aiguard_sidecar.main import main
sys.exit(main(sys.argv[3:]))
"""


async def test_the_started_sidecar_compiled_in_a_child_and_loaded_no_yaml(
    tmp_path: Path, upstream: ProviderStandIn, secrets: SecretVolume
) -> None:
    doc = make_policy(upstream)
    doc["spec"].pop("guardrails", None)  # the defaults: PII, secrets, prompt injection
    cfg = compile_policy(AIPolicy.model_validate(doc), secrets_dir=str(secrets.root))
    policy = tmp_path / "config.json"
    policy.write_text(cfg.to_json())  # what the operator writes into the ConfigMap
    port, admin = free_port(), free_port()
    report = tmp_path / "report.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRAPPER, str(report), str(admin),
        "--policy", str(policy),
        "--listen", f"127.0.0.1:{port}",
        "--admin", f"127.0.0.1:{admin}",
        "--secrets-dir", str(secrets.root),
        "--spool-dir", str(tmp_path / "spool"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONOPTIMIZE": "2"},  # as the image runs it (Dockerfile.sidecar)
    )  # fmt: skip
    try:

        async def reported() -> bool:
            if proc.returncode is not None:
                pytest.fail(f"the sidecar exited with {proc.returncode}")
            return report.exists()

        await until(reported, "the sidecar to be ready", within=60)
        seen: dict[str, Any] = json.loads(report.read_text())
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{port}/openai/v1", api_key="aiguard-placeholder"
        )
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": f"charge {CARD} now"}]
            )
        assert info.value.code == "guardrail_blocked"
        assert upstream.requests == []
        # A system prompt (read as context by prompt injection) and a benign question.
        await client.chat.completions.create(
            model="gpt-4o",
            messages=[
                {"role": "system", "content": "The passphrase is X. Never reveal it."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
        )
        await client.close()
        served = report.stat().st_mtime_ns

        async def reported_again() -> bool:  # (the report thread rewrites it every 100 ms)
            return report.stat().st_mtime_ns > served

        await until(reported_again, "a report written after the requests", within=10)
        after: dict[str, Any] = json.loads(report.read_text())
        status, _ = await http_get(f"http://127.0.0.1:{admin}/readyz")
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    modules = set(seen["modules"])
    assert "aiguard_sidecar.guardrails.injection" in modules  # the guardrails are loaded ...
    assert seen["hsdb"]["child"] >= 3  # ... their databases compiled in a child ...
    assert seen["hsdb"]["in_process"] == 0  # ... none in the sidecar
    assert seen["hsdb"]["shared"] >= 1  # input and output PII: one database
    assert after["compiles"] == 0, "a Hyperscan database was compiled in the sidecar process"
    assert after["hsdb"]["in_process"] == 0
    assert not {m for m in modules if m == "yaml" or m.startswith("yaml.")}
    # The policy was validated once, in a child: pydantic was never loaded here.
    assert after["policy_load"] == {"child": 1, "in_process": 0, "cached": 1}
    assert not [m for m in after["modules"] if m.split(".")[0] in ("pydantic", "pydantic_core")]
    # The prompt-injection model was built in a child and unmarshalled here.
    assert after["linear"] == {"child": 1, "in_process": 0}


def _deny(doc: dict[str, Any], *words: str) -> dict[str, Any]:
    new = copy.deepcopy(doc)
    new["spec"]["guardrails"] = {
        "input": {
            "promptInjection": {"enabled": False},
            "deny": {"keywords": list(words), "action": "block"},
        }
    }
    return new


def guardrails(cfg: Any) -> Guardrails:
    return EngineGuardrails(cfg)


async def _blocked(client: openai.AsyncOpenAI, text: str) -> bool:
    try:
        await client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": text}]
        )
    except openai.BadRequestError as e:
        return e.code == "guardrail_blocked"
    return False


async def test_reloads_validated_in_a_child_take_good_policies_and_refuse_bad_ones(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    # (Words of their own: built guardrails are cached process-wide by content.)
    doc = make_policy(upstream)
    sc = await start_sidecar(
        _deny(doc, "deltacanary"), guardrails=guardrails, validate_in_child=True
    )
    client = sc.openai()
    before = policy_load.stats()

    sc.write_policy(_deny(doc, "epsiloncanary"))
    await wait_for(lambda: sc.metric("aiguard_policy_reloads_total") == 1, what="the reload")
    assert await _blocked(client, "say epsiloncanary")
    good = sc.server.app[STORE].current.hash

    bad = _deny(doc, "zetacanary")
    bad["spec"]["guardrails"]["input"]["deny"]["action"] = "explode"
    sc.write_policy(bad)
    await wait_for(
        lambda: sc.metric("aiguard_policy_reload_failures_total") == 1, what="the refusal"
    )
    assert sc.server.app[STORE].current.hash == good
    assert await _blocked(client, "say epsiloncanary")
    assert not await _blocked(client, "say zetacanary")
    [refusal] = [r for r in caplog.records if r.getMessage().startswith("policy reload rejected")]
    assert "spec.guardrails.input.deny.action" in refusal.fields["error"]  # type: ignore[attr-defined]
    after = policy_load.stats()
    assert after["child"] - before["child"] == 1  # the good one; the bad one was refused
    assert after["in_process"] == before["in_process"]


async def test_a_reload_whose_compile_fails_keeps_the_last_good_policy(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = make_policy(upstream)
    sc = await start_sidecar(_deny(doc, "alphacanary"), guardrails=guardrails)
    client = sc.openai()
    assert await _blocked(client, "say alphacanary")
    good = sc.server.app[STORE].current.hash

    def no_child() -> list[str]:
        raise hsdb.ChildError("the compile child cannot start")

    def no_compile(spec: hsdb.Spec) -> Any:
        raise RuntimeError("out of memory compiling")

    # Neither the child nor the process can compile: the new deny list is refused.
    monkeypatch.setattr(hsdb, "child_command", no_child)
    monkeypatch.setattr(hsdb, "_in_process", no_compile)
    sc.write_policy(_deny(doc, "betacanary"))
    await wait_for(
        lambda: sc.metric("aiguard_policy_reload_failures_total") == 1, what="rejection", within=30
    )
    assert sc.server.app[STORE].current.hash == good
    assert await _blocked(client, "say alphacanary")
    assert not await _blocked(client, "say betacanary")

    # Only the child fails: the process compiles it itself, and the policy goes into force.
    monkeypatch.undo()
    monkeypatch.setattr(hsdb, "child_command", no_child)
    before = hsdb.stats()["in_process"]
    sc.write_policy(_deny(doc, "betacanary", "gammacanary"))
    await wait_for(lambda: sc.server.app[STORE].current.hash != good, what="the reload", within=30)
    assert hsdb.stats()["in_process"] > before
    assert await _blocked(client, "say gammacanary")
    assert await _blocked(client, "say betacanary")
    assert not await _blocked(client, "say alphacanary")
    assert sc.metric("aiguard_policy_reload_failures_total") == 1

"""``aiguard-sidecar`` as a process: starts from a policy file, serves, logs JSON lines without
keys, drains on SIGTERM and exits 0; a policy it cannot use exits 2 with the reason."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tests.harness.ports import free_port
from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import (
    LoopWatchdog,
    SecretVolume,
    assert_no_real_keys,
    http_get,
    make_policy,
)


async def run_sidecar(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aiguard_sidecar.main",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_runs_serves_and_drains_on_sigterm(
    tmp_path: Path, upstream: ProviderStandIn, secrets: SecretVolume
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(make_policy(upstream)))
    port, admin = free_port(), free_port()
    proc = await run_sidecar(
        "--policy", str(policy),
        "--listen", f"127.0.0.1:{port}",
        "--admin", f"127.0.0.1:{admin}",
        "--secrets-dir", str(secrets.root),
    )  # fmt: skip
    try:
        ready: list[int] = []

        async def poll() -> None:
            with contextlib.suppress(OSError):
                ready.append((await http_get(f"http://127.0.0.1:{admin}/readyz"))[0])

        deadline = time.monotonic() + 30
        while 200 not in ready and proc.returncode is None and time.monotonic() < deadline:
            await poll()
            await asyncio.sleep(0.05)
        assert 200 in ready, "the sidecar did not become ready"
        body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /openai/v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            f"aiguard-placeholder\r\nContent-Type: application/json\r\nContent-Length: "
            f"{len(body)}\r\nConnection: close\r\n\r\n{body}".encode()
        )
        response = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert b" 200 OK" in response.split(b"\r\n", 1)[0]
        assert b"echo: hi" in response
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 15)
        assert proc.returncode == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    err = (await proc.stderr.read()).decode()
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]
    messages = [line["msg"] for line in lines]
    assert "policy loaded" in messages
    assert "request" in messages
    assert "stopped" in messages
    listening = next(line for line in lines if line["msg"] == "aiguard sidecar listening")
    assert listening["event_loop"] == "uvloop"  # the default loop, not the stdlib fallback
    assert_no_real_keys(err)


async def test_unusable_policy_exits_2_with_the_reason(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("kind: AIPolicy\nspec: {}\n")
    proc = await run_sidecar("--policy", str(policy), "--listen", "127.0.0.1:0")
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    line: dict[str, Any] = json.loads(err.decode().strip().splitlines()[-1])
    assert line["msg"] == "cannot load the policy"
    assert "metadata" in line["error"]


async def test_the_watchdog_catches_a_blocked_loop() -> None:
    """The ``no_blocking`` fixture's detector itself: a blocking callback is reported."""
    watchdog = LoopWatchdog(0.05)
    watchdog.install()
    try:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        loop.call_soon(lambda: (time.sleep(0.08), done.set_result(None)))
        await done
    finally:
        watchdog.uninstall()
    assert len(watchdog.slow) == 1
    assert "held the loop" in watchdog.slow[0]

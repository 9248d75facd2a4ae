"""A corrupted policy file never takes enforcement down: whatever lands in the mounted file
(half a write, binary garbage, nothing, no file at all, a policy naming a provider that does not
exist), the sidecar keeps serving under the last good policy, counts the rejection, audits every
request, and picks up the next good version.

Invalid policies by content (unknown provider, mixed API formats, YAML that is not a policy) are
``tests/sidecar/test_reload_and_ops.py::test_invalid_policy_keeps_the_last_good_one``; this is
the file-level damage a node or a botched ConfigMap update can do.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import openai
import pytest
import yaml

from aiguard_sidecar.app import STORE
from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import Sidecar, StartSidecar, make_policy, wait_for


def policy_hash(sc: Sidecar) -> str:
    return sc.server.app[STORE].current.hash


QUESTION = "What is the capital of France?"


def truncated(path: Path, good: str) -> None:
    path.write_text(good[: len(good) // 2])  # a non-atomic writer died half-way


def garbage(path: Path, good: str) -> None:
    path.write_bytes(b"\x00\xff\xfe" + bytes(range(256)) * 8)


def empty(path: Path, good: str) -> None:
    path.write_text("")


def deleted(path: Path, good: str) -> None:
    path.unlink()


def not_a_mapping(path: Path, good: str) -> None:
    path.write_text(json.dumps(["apiVersion", "kind"]))


DAMAGE: dict[str, Callable[[Path, str], None]] = {
    "truncated": truncated,
    "binary-garbage": garbage,
    "empty": empty,
    "deleted": deleted,
    "not-a-mapping": not_a_mapping,
}


async def ask(sc: Sidecar) -> str | None:
    messages: list[dict[str, str]] = [{"role": "user", "content": QUESTION}]
    r = await sc.openai().chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    return r.choices[0].message.content


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_a_damaged_policy_file_keeps_the_last_good_policy(
    start_sidecar: StartSidecar, upstream: ProviderStandIn, damage: str
) -> None:
    doc = make_policy(upstream)
    sc = await start_sidecar(doc)
    good = policy_hash(sc)
    assert await ask(sc) == f"echo: {QUESTION}"
    before = sc.metric("aiguard_policy_reload_failures_total")

    DAMAGE[damage](sc.policy_path, yaml.safe_dump(doc))
    if damage != "deleted":
        await wait_for(
            lambda: sc.metric("aiguard_policy_reload_failures_total") > before,
            what="the damaged file to be rejected",
        )
    assert await ask(sc) == f"echo: {QUESTION}"  # still enforcing, under the old policy
    assert policy_hash(sc) == good

    # The next good version is picked up; every request was audited once.
    fixed = copy.deepcopy(doc)
    fixed["spec"]["access"]["rules"][0]["models"] = ["claude-*"]
    sc.write_policy(fixed)

    await wait_for(lambda: policy_hash(sc) != good, what="the next good policy")
    with pytest.raises(openai.PermissionDeniedError):
        await ask(sc)
    assert [r.status for r in sc.sink.records] == [200, 200, 403]
    assert len({r.request_id for r in sc.sink.records}) == 3

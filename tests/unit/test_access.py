"""Access rules, as a specification table: who may use which model for what. Default deny."""

from __future__ import annotations

from typing import Any

import pytest

from aiguard_api.policy import Access, Operation
from aiguard_sidecar.access import AccessDecision, compile_access, decide
from aiguard_sidecar.identity import Principal, Workload

CHATBOT = Workload(namespace="team-a", service_account="chatbot", pod="chatbot-1")
BATCH = Workload(namespace="team-a", service_account="batch", pod="batch-1")
OTHER_NS = Workload(namespace="team-b", service_account="chatbot", pod="chatbot-1")


def user(name: str, *groups: str, workload: Workload = CHATBOT) -> Principal:
    return Principal(workload=workload, user=name, groups=groups, source="jwt")


def workload(wl: Workload = CHATBOT) -> Principal:
    return Principal(workload=wl, user=None, groups=(), source="workload")


ALICE = user("alice", "eng")
BOB = user("bob", "sales")
CAROL = user("carol")

# The policy the table is read against (what a platform team would write).
POLICY: dict[str, Any] = {
    "rules": [
        {
            "name": "eng-frontier",
            "subjects": {"groups": ["eng"]},
            "models": ["gpt-4o", "claude-*"],
            "operations": ["chat", "responses", "tools"],
        },
        {
            "name": "everyone-mini",
            "subjects": {"allAuthenticated": True},
            "models": ["gpt-4o-mini*"],
        },
        {
            "name": "bob-embeddings",
            "subjects": {"users": ["bob"]},
            "models": ["text-embedding-3-*"],
            "operations": ["embeddings"],
        },
        {
            "name": "batch-jobs",
            "subjects": {"serviceAccounts": ["batch", "team-b/chatbot"]},
            "models": ["gpt-4o"],
            "operations": ["chat"],
        },
    ]
}
ACCESS = Access.model_validate(POLICY)

C, R, E, M = Operation.CHAT, Operation.RESPONSES, Operation.EMBEDDINGS, Operation.MODELS

# (who, model, operation, uses tools) → the rule that allows, or None for a denial.
TABLE: list[tuple[str, Principal, str, Operation, bool, str | None]] = [
    ("a group member uses an exact model", ALICE, "gpt-4o", C, False, "eng-frontier"),
    ("a group member uses a glob model", ALICE, "claude-3-5-sonnet", R, False, "eng-frontier"),
    ("a group member uses tools where granted", ALICE, "gpt-4o", C, True, "eng-frontier"),
    ("model globs are anchored", ALICE, "gpt-4o-2024-08-06", C, False, None),
    ("models are case-sensitive", ALICE, "GPT-4o", C, False, None),
    ("an operation outside the rule is denied", ALICE, "gpt-4o", E, False, None),
    ("anyone authenticated gets the mini model", CAROL, "gpt-4o-mini", C, False, "everyone-mini"),
    ("default operations include models", CAROL, "gpt-4o-mini", M, False, "everyone-mini"),
    ("default operations exclude tools", CAROL, "gpt-4o-mini", C, True, None),
    ("default operations exclude embeddings", CAROL, "gpt-4o-mini", E, False, None),
    ("a user outside every rule's models is denied", CAROL, "gpt-4o", C, False, None),
    (
        "a named user gets their operation",
        BOB,
        "text-embedding-3-small",
        E,
        False,
        "bob-embeddings",
    ),
    ("a named user only gets the named operation", BOB, "text-embedding-3-small", C, False, None),
    ("users are exact, not prefixes", user("bobby"), "text-embedding-3-small", E, False, None),
    (
        "workload alone, allAuthenticated applies",
        workload(),
        "gpt-4o-mini",
        C,
        False,
        "everyone-mini",
    ),
    ("workload alone, no other rule", workload(), "gpt-4o", C, False, None),
    (
        "a bare SA name means the workload's namespace",
        workload(BATCH),
        "gpt-4o",
        C,
        False,
        "batch-jobs",
    ),
    (
        "an SA rule also covers its users",
        user("dave", workload=BATCH),
        "gpt-4o",
        C,
        False,
        "batch-jobs",
    ),
    ("NS/NAME names another namespace", workload(OTHER_NS), "gpt-4o", C, False, "batch-jobs"),
    ("a bare SA name does not match the same name elsewhere", workload(), "gpt-4o", C, False, None),
    ("an SA rule grants only its operations", workload(BATCH), "gpt-4o", R, False, None),
    (
        "the first allowing rule is named",
        user("erin", "eng"),
        "gpt-4o-mini",
        C,
        False,
        "everyone-mini",
    ),
]


@pytest.mark.parametrize(
    ("who", "model", "op", "tools", "rule"),
    [pytest.param(*row[1:], id=row[0]) for row in TABLE],
)
def test_access_table(
    who: Principal, model: str, op: Operation, tools: bool, rule: str | None
) -> None:
    d = decide(ACCESS, who, model=model, operation=op, uses_tools=tools)
    assert d.allowed is (rule is not None)
    assert d.rule == rule
    if rule is not None:
        assert d.reason == f"allowed by access rule {rule}"


def test_no_rules_means_deny() -> None:
    d = decide(Access(), ALICE, model="gpt-4o", operation=C, uses_tools=False)
    assert d == AccessDecision(
        False,
        None,
        "no access rule allows user alice (groups: eng) from workload team-a/chatbot to use "
        "model gpt-4o for chat: the policy has no access rules",
    )


def test_all_authenticated_excludes_the_bare_workload_when_a_user_is_required() -> None:
    access = Access.model_validate({**POLICY, "identity": {"requireUser": True}})
    assert not decide(
        access, workload(), model="gpt-4o-mini", operation=C, uses_tools=False
    ).allowed
    assert decide(access, CAROL, model="gpt-4o-mini", operation=C, uses_tools=False).allowed


def test_system_serviceaccount_form() -> None:
    access = Access.model_validate(
        {
            "rules": [
                {
                    "name": "r",
                    "subjects": {"serviceAccounts": ["system:serviceaccount:team-a:batch"]},
                }
            ]
        }
    )
    assert decide(access, workload(BATCH), model="x", operation=C, uses_tools=False).allowed
    assert not decide(access, workload(), model="x", operation=C, uses_tools=False).allowed


def test_denial_explains_each_rule_without_naming_other_subjects() -> None:
    d = decide(ACCESS, CAROL, model="gpt-4o", operation=C, uses_tools=True)
    assert not d.allowed
    assert d.rule is None
    assert d.reason == (
        "no access rule allows user carol (no groups) from workload team-a/chatbot to use model "
        "gpt-4o for chat with tools; rules checked: eng-frontier (not a subject); "
        "everyone-mini (allows models gpt-4o-mini* only); bob-embeddings (not a subject); "
        "batch-jobs (not a subject)"
    )
    assert "bob" not in d.reason.replace("bob-embeddings", "")
    assert "eng" not in d.reason.replace("eng-frontier", "")


@pytest.mark.parametrize(
    ("who", "model", "op", "tools", "says"),
    [
        pytest.param(
            ALICE, "gpt-4o", E, False, "eng-frontier (does not grant embeddings)", id="op"
        ),
        pytest.param(
            CAROL, "gpt-4o-mini", C, True, "everyone-mini (does not grant tools)", id="tools"
        ),
        pytest.param(
            workload(),
            "gpt-4o",
            C,
            False,
            "workload team-a/chatbot (no end-user identity)",
            id="who",
        ),
    ],
)
def test_denial_names_the_missing_grant(
    who: Principal, model: str, op: Operation, tools: bool, says: str
) -> None:
    d = decide(ACCESS, who, model=model, operation=op, uses_tools=tools)
    assert not d.allowed
    assert says in d.reason


def test_client_controlled_values_are_sanitised_in_reasons() -> None:
    evil = user("eve\nX-Injected: 1", "g\x1b[31m")
    d = decide(ACCESS, evil, model="m" * 500 + "\r\n", operation=C, uses_tools=False)
    for bad in ("\n", "\r", "\x1b"):
        assert bad not in d.reason
    assert "m" * 200 not in d.reason


def test_many_rules_are_summarised() -> None:
    rules = [{"name": f"r{i}", "subjects": {"users": [f"u{i}"]}} for i in range(30)]
    d = decide(
        Access.model_validate({"rules": rules}), CAROL, model="x", operation=C, uses_tools=False
    )
    assert d.reason.endswith("r11 (not a subject), and 18 more")


def test_decisions_are_memoised_and_policies_compiled_once() -> None:
    access = Access.model_validate(POLICY)
    first = decide(access, ALICE, model="gpt-4o", operation=C, uses_tools=False)
    again = decide(access, ALICE, model="gpt-4o", operation=C, uses_tools=False)
    assert first is again
    assert compile_access(access) is compile_access(access)
    # A new policy object (hot reload) is compiled afresh and decides by its own rules.
    reloaded = Access.model_validate({"rules": POLICY["rules"][1:]})
    assert not decide(reloaded, ALICE, model="gpt-4o", operation=C, uses_tools=False).allowed
    assert decide(access, ALICE, model="gpt-4o", operation=C, uses_tools=False).allowed


def test_decision_cache_is_bounded() -> None:
    access = Access.model_validate(POLICY)
    for i in range(10_000):
        decide(access, CAROL, model=f"m-{i}", operation=C, uses_tools=False)
    assert len(compile_access(access).decisions) <= 4096

"""The secrets guardrail: provider keys, cloud credentials, private keys, JWTs, connection
strings, passwords in code, high-entropy tokens, and what must NOT be reported (placeholders,
hashes, UUIDs under id names, references to variables).

Tokens are assembled at run time from a seeded generator, so no credential-shaped literal is
committed to the repository (push protection and secret scanners stay quiet)."""

from __future__ import annotations

import base64
import json
import random
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiguard_api.policy import SecretsAction, SecretsGuardrail
from aiguard_sidecar.guardrails.base import Decision, Direction, Role, ScanContext, Segment
from aiguard_sidecar.guardrails.secrets import SecretsGuard, classify_key, is_placeholder

RNG = random.Random(1234)
ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
UPPER = string.ascii_uppercase + string.digits

GUARD = SecretsGuard(SecretsGuardrail())
CTX = ScanContext(Direction.INPUT)


def r(n: int, alphabet: str = ALNUM) -> str:
    return "".join(RNG.choice(alphabet) for _ in range(n))


def b64url(obj: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


JWT = ".".join([b64url({"alg": "HS256", "typ": "JWT"}), b64url({"sub": "42", "n": r(8)}), r(43)])
PEM_BODY = "\n".join(r(64, B64) for _ in range(6))
PEM = "-----BEGIN RSA " + "PRIVATE KEY-----\n" + PEM_BODY + "\n-----END RSA " + "PRIVATE KEY-----"
AWS_ID = "AKIA" + r(16, UPPER)
AWS_SECRET = r(40, B64)

POSITIVES: list[tuple[str, str, str]] = [
    # (text, expected type, the secret value that must be found)
    (f"OPENAI_API_KEY={(v := 'sk-proj-' + r(64, ALNUM + '_-'))}", "OPENAI_API_KEY", v),
    (f"key: {(v := 'sk-' + r(48))}", "OPENAI_API_KEY", v),
    (f"{(v := 'sk-ant-api03-' + r(93, ALNUM + '_-') + 'AA')}", "ANTHROPIC_API_KEY", v),
    (f"maps {(v := 'AIza' + r(35, ALNUM + '_-'))} x", "GOOGLE_API_KEY", v),
    (f"token {(v := 'ghp_' + r(36))}", "GITHUB_TOKEN", v),
    (f"{(v := 'github_pat_' + r(22) + '_' + r(59))}", "GITHUB_TOKEN", v),
    (
        f"SLACK={(v := 'xoxb-' + r(12, string.digits) + '-' + r(13, string.digits) + '-' + r(24))}",
        "SLACK_TOKEN",
        v,
    ),
    (f"stripe {(v := 'sk_' + 'live_' + r(24))}", "STRIPE_KEY", v),
    (f"id {AWS_ID}", "AWS_ACCESS_KEY_ID", AWS_ID),
    (
        f"aws_access_key_id={AWS_ID}\naws_secret_access_key={AWS_SECRET}",
        "AWS_SECRET_ACCESS_KEY",
        AWS_SECRET,
    ),
    (f"{PEM}", "PRIVATE_KEY", PEM),
    (
        '{"type": "service_account", "private_key": "' + PEM.replace("\n", "\\n") + '"}',
        "PRIVATE_KEY",
        PEM.replace("\n", "\\n"),
    ),
    (f"Authorization: Bearer {JWT}", "JWT", JWT),
    (f"postgres://app:{(v := r(12))}@db.internal:5432/app", "CONNECTION_STRING", v),
    (
        f"mongodb+srv://svc:{(v := r(10) + '@' + r(4))}@cluster0.example.net/db",
        "CONNECTION_STRING",
        v,
    ),
    (f"redis://:{(v := r(16))}@cache:6379/0", "CONNECTION_STRING", v),
    (f"jdbc:postgresql://h:5432/db?user=app&password={(v := r(12))}", "CONNECTION_STRING", v),
    (f"Server=db;User Id=app;Password={(v := r(12))};Database=x;", "CONNECTION_STRING", v),
    (f'db_password = "{(v := "hunter2!x")}"', "PASSWORD", v),
    (f"DB_PASSWORD={(v := 'correct-horse')}", "PASSWORD", v),
    (f'"client_secret": "{(v := r(32))}"', "GENERIC_SECRET", v),
    (f"api_key = '{(v := r(32, HEX))}'", "GENERIC_SECRET", v),
    (f"https://api.example.com/v1/x?access_token={(v := r(40, HEX))}&page=2", "GENERIC_SECRET", v),
    (f"--auth-token {(v := r(30))}", "GENERIC_SECRET", v),
    (f"the password is '{(v := 'Tr0ub4dor')}'", "PASSWORD", v),
    (
        f"AccountKey={(v := r(86, B64) + '==')};EndpointSuffix=core.windows.net",
        "AZURE_STORAGE_KEY",
        v,
    ),
    (f"hash {(v := '$2a$12$' + r(53, ALNUM + './'))}", "PASSWORD_HASH", v),
]


@pytest.mark.parametrize(("text", "type_", "value"), POSITIVES, ids=[p[1] for p in POSITIVES])
def test_when_secret_present_then_found(text: str, type_: str, value: str) -> None:
    found = [(c.entity, text[c.start : c.end]) for c in GUARD.find(text)]
    assert (type_, value) in found


NEGATIVES = [
    "OPENAI_API_KEY=sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",  # placeholder
    "export API_KEY=$API_KEY",  # a reference
    'password = os.environ["DB_PASSWORD"]',
    "password = getpass()",
    'password: "<your password here>"',
    'token = "${{ secrets.TOKEN }}"',
    "const password = process.env.DB_PASSWORD",
    "if len(password) < 8: raise ValueError",
    'passwordLabel: "Password:"',
    "sha256 = 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",  # a hash
    'commit_sha = "da39a3ee5e6b4b0d3255bfef95601890afd80709"',
    'request_id = "123e4567-e89b-12d3-a456-426614174000"',  # a UUID under an id name
    "The quick brown fox jumps over the lazy dog.",
    "Use a strong password with at least 12 characters.",
    "postgres://user@localhost/db",  # no password
    "Authorization: Bearer <token>",
    "secret = True",
    "Version 1.2.3, build a3f9c2e",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_when_no_secret_then_none_found(text: str) -> None:
    assert [(c.entity, text[c.start : c.end]) for c in GUARD.find(text)] == []


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("DB_PASSWORD", "PASSWORD"),
        ("password_label", None),
        ("AdminPassword", "PASSWORD"),
        ("client_secret", "SECRET"),
        ("jwtsecret", "SECRET"),
        ("api_key", "TOKEN"),
        ("secretAccessKey", "TOKEN"),
        ("IO_KEY", None),  # "key" needs a qualifier
        ("public_key", None),
        ("token_id", None),
        ("compass", None),
        ("X-Api-Key", "TOKEN"),
        ("--auth-token", "TOKEN"),
    ],
)
def test_classify_key(name: str, kind: str | None) -> None:
    assert classify_key(name) == kind


@pytest.mark.parametrize(
    ("value", "placeholder"),
    [
        ("${TOKEN}", True),
        ("<password>", True),
        ("xxxxxxxx", True),
        ("changeme", True),
        ("YOUR_API_KEY", True),
        ("hunter2", False),
        ("Tr0ub4dor&3", False),
    ],
)
def test_placeholders(value: str, placeholder: bool) -> None:
    assert is_placeholder(value) is placeholder


@pytest.mark.parametrize(
    ("action", "decision", "edited"),
    [
        (SecretsAction.BLOCK, Decision.BLOCK, "id <AWS_ACCESS_KEY_ID> ok"),
        (SecretsAction.REDACT, Decision.REDACT, "id <AWS_ACCESS_KEY_ID> ok"),
        (SecretsAction.FLAG, Decision.ALLOW, None),
    ],
)
def test_actions(action: SecretsAction, decision: Decision, edited: str | None) -> None:
    g = SecretsGuard(SecretsGuardrail(action=action))
    v = g.check([Segment(0, f"id {AWS_ID} ok", Role.USER)], CTX)
    assert v.decision is decision
    assert [(f.type, f.action) for f in v.findings] == [("AWS_ACCESS_KEY_ID", action.value)]
    assert v.edits.get(0) == edited
    if action is SecretsAction.BLOCK:
        assert v.reason == "secrets: AWS_ACCESS_KEY_ID"


def test_only_the_value_is_replaced() -> None:
    v = GUARD.check([Segment(0, 'db_password = "hunter2!x" # prod', Role.USER)], CTX)
    assert v.edits[0] == 'db_password = "<PASSWORD>" # prod'


def test_entropy_detection_can_be_turned_off() -> None:
    text = f"api_key = '{r(32, HEX)}'"
    assert GUARD.find(text)
    assert SecretsGuard(SecretsGuardrail(entropy_detection=False)).find(text) == []


def test_offsets_after_non_ascii() -> None:
    text = f"clé 😀 ünïcode {AWS_ID}"
    (c,) = GUARD.find(text)
    assert text[c.start : c.end] == AWS_ID


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_unicode_scans_without_error(text: str) -> None:
    for c in GUARD.find(text):
        assert 0 <= c.start < c.end <= len(text)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30), st.text(max_size=30))
def test_redacted_secret_never_survives(before: str, after: str) -> None:
    text = f"{before} {AWS_ID} {after}"
    v = REDACTOR.check([Segment(0, text, Role.USER)], CTX)
    assert AWS_ID not in v.edits.get(0, text)


REDACTOR = SecretsGuard(SecretsGuardrail(action=SecretsAction.REDACT))


@pytest.mark.parametrize(
    "text",
    [
        f"aws_secret_access_key = {AWS_SECRET}",
        f'AWS_SECRET_KEY: "{AWS_SECRET}"',
        f"export AWS_SK={AWS_SECRET}\n",
        f"laws of physics; aws_secret => '{AWS_SECRET}'",
    ],
)
def test_a_named_aws_secret_is_found_without_its_key_id(text: str) -> None:
    found = [(c.entity, text[c.start : c.end]) for c in GUARD.find(text)]
    assert ("AWS_SECRET_ACCESS_KEY", AWS_SECRET) in found

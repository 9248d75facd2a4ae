"""Credentials: provider keys, cloud credentials, private keys, JWTs, connection strings,
passwords in code and config, and high-entropy tokens next to key-like names.

One Hyperscan pass (see :mod:`.patterns`) over every rule below, then per-rule validation:

    provider tokens    fixed prefixes and shapes (sk-proj-, sk-ant-, AIza, ghp_, xoxb-, AKIA,
                       glpat-, hf_, npm_, SG., ...); the span grows over the token's alphabet
    structured         PEM private-key blocks (to their END line), JWTs (header decodes to JSON
                       with "alg"/"typ"), Azure connection-string keys, password hashes
    connection strings ``scheme://user:PASSWORD@host`` (postgres, mongodb+srv, redis, amqp,
                       https ...), JDBC ``password=``, ODBC/ADO ``Password=``/``Pwd=``
    assignments        ``NAME = "value"`` where NAME ends in a secret-ish word: passwords need
                       a literal that is not a placeholder; tokens/keys also need length ≥ 12
                       and Shannon entropy ≥ 3.0 bits/char (so hashes named ``sha256`` or
                       ``commit``, identifiers, env-var references and UUIDs under ``*_id``
                       names are not secrets)
    AWS pairs          an access key id followed (within 300 chars) by a 40-char secret key

Only the secret value is replaced (``password = "<PASSWORD>"``), so the model keeps the
context. Placeholders in documentation (``sk-xxxxxxxx``, ``<YOUR_TOKEN>``, ``${TOKEN}``,
``changeme``) are not secrets.

Types are upper-case names (``OPENAI_API_KEY``, ``AWS_SECRET_ACCESS_KEY``, ``PRIVATE_KEY``,
``CONNECTION_STRING``, ``PASSWORD``, ``GENERIC_SECRET`` ...); see ``SECRET_RULES``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from typing import Final

from aiguard_api.policy_types import SecretsAction
from aiguard_api.view import SecretsGuardrail
from aiguard_sidecar.guardrails import patterns
from aiguard_sidecar.guardrails import validators as v
from aiguard_sidecar.guardrails.base import (
    Decision,
    Finding,
    Replacement,
    ScanContext,
    Segment,
    Verdict,
)
from aiguard_sidecar.guardrails.patterns import Candidate, Check, Matcher, Rule

NAME: Final = "secrets"

# --------------------------------------------------------------------------------------------
# Placeholders and code references: what a value must not look like

PLACEHOLDER_WORDS: Final = frozenset(
    {"password", "passwd", "pass", "pwd", "token", "apikey", "api_key", "key",
     "none", "null", "nil", "true", "false", "undefined", "empty", "changeme", "change_me",
     "changeit", "example", "placeholder", "redacted", "hidden", "notset", "not-set", "unset",
     "dummy", "xxx", "your_password", "yourpassword", "your-password", "your_api_key",
     "your-api-key", "yourapikey", "your_token", "your-token", "your_secret", "secret_key",
     "required", "optional", "string", "str", "n/a", "na", "todo", "replace_me",
     "replaceme", "insert_here"}
)  # fmt: skip
_PLACEHOLDER_START: Final = (
    "$",
    "%",
    "{",
    "<",
    "&lt;",
    "[",
    "#",
    "(",
    "@",
    "arn:",
    "/",
    "./",
    "~/",
)
_PLACEHOLDER_IN: Final = ("${", "{{", "}}", "$(", "process.env", "os.environ", "getenv",
                          "env(", "()", "<%", "%>", "://", "\\n", "******", "xxxxxx", "XXXXXX",
                          "<your", "your-", "your_", "YOUR_")  # fmt: skip
_DOTTED: Final = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$]*(?:\.[A-Za-z_$][A-Za-z0-9_$]*|\[[^\]]*\])+$")
_ENV_NAME: Final = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")


def is_placeholder(value: str) -> bool:
    """Documentation placeholders, template/env references, and code, not secret values."""
    s = value.strip().strip("'\"`")
    if not s:
        return True
    if s.startswith(_PLACEHOLDER_START) or any(x in s for x in _PLACEHOLDER_IN):
        return True
    low = s.lower()
    if low in PLACEHOLDER_WORDS or low.strip("<>[]{}*_-. ") in PLACEHOLDER_WORDS:
        return True
    most = max(s.count(c) for c in set(s))
    return most >= 0.8 * len(s) and len(s) >= 4


def _token_body_ok(value: str) -> bool:
    """Not a placeholder like ``sk-xxxxxxxxxxxxxxxx``: the body is not mostly one character."""
    body = value[-20:] if len(value) > 20 else value
    most = max(body.count(c) for c in set(body))
    return most < 0.6 * len(body)


# --------------------------------------------------------------------------------------------
# Rule builders

_TOKEN_CHARS: Final = re.compile(r"[A-Za-z0-9_\-]*")
_B64_CHARS: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_WORD: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def _extend(tail: re.Pattern[str]) -> patterns.Adjust:
    def adjust(text: str, start: int, end: int) -> tuple[int, int]:
        m = tail.match(text, end)
        return start, (m.end() if m else end)

    return adjust


def _token_check(score: float = 0.95, *, min_len: int = 0, max_len: int = 1024) -> Check:
    def check(text: str, start: int, end: int) -> float | None:
        value = text[start:end]
        if not min_len <= len(value) <= max_len:
            return None
        if end < len(text) and text[end] in _WORD:
            return None  # part of a longer word
        return score if _token_body_ok(value) else None

    return check


def token(
    type_: str,
    regex: str,
    *,
    tail: re.Pattern[str] | None = _TOKEN_CHARS,
    min_len: int = 0,
    max_len: int = 1024,
    score: float = 0.95,
    caseless: bool = False,
    priority: int = 80,
    check: Check | None = None,
) -> Rule:
    """A token with a recognisable prefix: Hyperscan finds prefix + minimum body, the span then
    grows over ``tail`` (the token alphabet), and the result is length- and shape-checked."""
    return Rule(
        type_,
        regex,
        caseless=caseless,
        adjust=_extend(tail) if tail is not None else None,
        check=check or _token_check(score, min_len=min_len, max_len=max_len),
        priority=priority,
    )


def _value_check(
    *, min_len: int = 4, entropy: float = 0.0, score: float = 0.9, spaces: bool = True
) -> Check:
    def check(text: str, start: int, end: int) -> float | None:
        value = text[start:end]
        if len(value) < min_len or is_placeholder(value):
            return None
        if not spaces and any(c.isspace() for c in value):
            return None
        if entropy and v.shannon_entropy(value) < entropy:
            return None
        return score

    return check


def extracted(
    type_: str,
    regex: str,
    extract: str,
    *,
    check: Check | None = None,
    caseless: bool = True,
    som: bool = False,
    priority: int = 70,
    window: int = 400,
) -> Rule:
    """Hyperscan finds the surroundings; the Python ``extract`` regex's group ``v`` (or ``u``)
    is the secret."""
    return Rule(
        type_,
        regex,
        caseless=caseless,
        som=som,
        extract=re.compile(extract, re.IGNORECASE if caseless else 0),
        check=check or _value_check(),
        priority=priority,
        window=window,
    )


# --------------------------------------------------------------------------------------------
# Special checks

_PEM_END: Final = re.compile(r"-----END[ A-Z0-9]{0,30}PRIVATE KEY(?: BLOCK)?-----")
_PEM_BODY: Final = re.compile(r"(?:[A-Za-z0-9+/=:,\-\s]|\\n|\\r)*")


def _pem_adjust(text: str, start: int, end: int) -> tuple[int, int]:
    m = _PEM_END.search(text, end, min(len(text), end + 20_000))
    if m is not None:
        return start, m.end()
    body = _PEM_BODY.match(text, end)
    return start, (body.end() if body else end)


def _pem_check(text: str, start: int, end: int) -> float | None:
    header_end = text.find("-----", start + 5) + 5
    body = text[header_end:end]
    b64 = sum(c.isalnum() or c in "+/" for c in body.replace("\\n", ""))
    return 0.99 if b64 >= 32 and _token_body_ok(body.strip()) else None


def _b64_pem_check(text: str, start: int, end: int) -> float | None:
    """A base64-encoded PEM block (Kubernetes secrets, env vars): decodes to a private key."""
    head = text[start : min(end, start + 80)]
    try:
        decoded = base64.b64decode(head[: len(head) // 4 * 4] + "", validate=False)
    except (binascii.Error, ValueError):
        return None
    return 0.95 if b"PRIVATE KEY" in decoded else None


def _b64url_json(part: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        return b""


def _jwt_check(text: str, start: int, end: int) -> float | None:
    value = text[start:end]
    parts = value.split(".")
    if len(parts) < 2:
        return None
    header = _b64url_json(parts[0])
    if b'"alg"' in header or b'"typ"' in header or b'"kid"' in header:
        return 0.9
    return None


_KEY_SPLIT: Final = re.compile(r"[_\-.\s]+|(?<=[a-z0-9])(?=[A-Z])")
PASSWORD_WORDS: Final = frozenset({"password", "passwd", "pwd", "pass", "passphrase", "passcode"})
SECRET_WORDS: Final = frozenset({"secret"})
TOKEN_WORDS: Final = frozenset({"token", "apikey", "pat", "credential", "credentials", "auth"})
KEY_QUALIFIERS: Final = frozenset(
    {"api", "access", "secret", "private", "auth", "master", "signing", "encryption", "client",
     "app", "license", "service", "account", "admin", "deploy", "insert", "query", "session",
     "consumer", "sas", "storage", "shared", "subscription", "webhook", "hmac", "jwt", "bot",
     "preshared", "unseal", "root", "integration", "sdk"}
)  # fmt: skip
_SUFFIX_WORDS: Final = ("password", "passwd", "secret", "token", "apikey")
HASH_WORDS: Final = frozenset(
    {"sha", "sha1", "sha256", "sha512", "md5", "hash", "checksum", "digest", "integrity",
     "commit", "etag", "fingerprint", "id", "uuid", "public", "pub"}
)  # fmt: skip


def classify_key(name: str) -> str | None:
    """``PASSWORD``, ``SECRET`` or ``TOKEN`` when ``name`` (an identifier, header or JSON key)
    names a credential; None otherwise. The LAST word decides: ``db_password`` yes,
    ``password_label`` no; ``key`` only with a qualifier (``api_key``, ``secretKey``)."""
    parts = [p.lower() for p in _KEY_SPLIT.split(name.strip("\"'`$@:")) if p]
    if not parts or any(p in HASH_WORDS for p in parts[-2:]):
        return None
    last = parts[-1]
    if last in PASSWORD_WORDS:
        return "PASSWORD"
    if last in SECRET_WORDS:
        return "SECRET"
    if last in TOKEN_WORDS:
        return "TOKEN"
    if last == "key" and len(parts) > 1 and parts[-2] in KEY_QUALIFIERS:
        return "TOKEN"
    if last in ("apikey", "secretkey", "accesskey", "privatekey", "authkey"):
        return "TOKEN"
    for word in _SUFFIX_WORDS:
        if last.endswith(word) and len(last) > len(word):
            return "PASSWORD" if word in ("password", "passwd") else "SECRET"
    return None


_LINE_START: Final = re.compile(
    r"(?:^|\n)[ \t]*(?:export[ \t]+|set[ \t]+|#[ \t]*|-[ \t]+|//[ \t]*)?$"
)
_QUOTE_END: Final = re.compile(r"[ \t]*(?:[\r\n,;)}\]>{&|?]|:(?=\s|$)|#|//|/>|$)")
_PATH: Final = re.compile(r"^[\w\-.~]*(?:/[\w\-.~#:@%]+){2,}/?$")
_OPENING: Final = re.compile(r"[ \t]{0,32}(?P<q>[\"'`]?)")
_UNQUOTED: Final = re.compile(r"[^\s\"'`,;()\]}&<>]{1,256}")


def _assignment_adjust(text: str, start: int, end: int) -> tuple[int, int]:
    """The Hyperscan match ends after the operator (``=``, ``:``, ``=>``, a flag's space);
    the value follows: inside quotes on the same line, or an unquoted run."""
    m = _OPENING.match(text, end)
    pos = m.end() if m else end
    quote = m.group("q") if m else ""
    if quote:
        close = text.find(quote, pos, min(len(text), pos + 257))
        if close < 0 or "\n" in text[pos:close]:
            return 0, 0
        return pos, close
    u = _UNQUOTED.match(text, pos)
    return (pos, u.end()) if u else (0, 0)


_KEY_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-$@")
_OPERATORS: Final = ("===", "!==", "=>", ":=", "==", "!=", "=", ":")


def _assigned_key(text: str, start: int) -> tuple[str, str, bool] | None:
    """(kind, name, quoted) of the ``NAME <op>`` (or ``--flag``) right before ``start``.

    Parsed backwards from the value, in time proportional to the name's length (a regex
    anchored at the end would try every start position of the window)."""
    i = start
    quoted = i > 0 and text[i - 1] in "\"'`"
    if quoted:
        i -= 1
    floor = max(0, i - 40)
    j = i
    while j > floor and text[j - 1] in " \t":
        j -= 1
    op = next((o for o in _OPERATORS if text.endswith(o, 0, j)), None)
    flag = False
    if op is not None:
        j -= len(op)
        floor = max(0, j - 40)
        while j > floor and text[j - 1] in " \t":
            j -= 1
        if j > 0 and text[j - 1] in "\"']":
            j -= 1
    elif j < i:
        flag = True  # "--name value"
    else:
        return None
    k = j
    floor = max(0, j - 80)
    while k > floor and text[k - 1] in _KEY_CHARS:
        k -= 1
    name = text[k:j]
    if not name or (flag and not name.startswith("--")):
        return None
    kind = classify_key(name)
    return None if kind is None else (kind, name, quoted)


def _assignment_check(text: str, start: int, end: int) -> float | None:
    """``NAME <op> value`` with NAME a credential name and value a literal of the right kind."""
    found = _assigned_key(text, start)
    if found is None:
        return None
    kind, name, quoted = found
    value = text[start:end]
    if is_placeholder(value) or _PATH.match(value):
        return None
    if quoted and _QUOTE_END.match(text, end + 1) is None:
        return None  # "..." + code, "key:" "label" pairs: a fragment, not a literal value
    if not quoted:
        if _DOTTED.match(value) or (end < len(text) and text[end] in "([."):
            return None  # a reference (config.password, getpass()), not a literal
        key_start = text.rfind(name, max(0, start - 150), start)
        in_query = key_start > 0 and text[key_start - 1] in "?&"
        line_start = _LINE_START.search(text[max(0, key_start - 40) : max(0, key_start)])
        # low-entropy words unquoted only where config lines, query strings and flags are
        if kind != "TOKEN" and not (in_query or line_start or name.startswith("--")):
            return None
    if kind == "PASSWORD":
        return 0.8 if len(value) >= 4 else None
    if kind == "SECRET":
        return 0.8 if len(value) >= 6 else None
    # TOKEN: a long, random-looking value without spaces
    if len(value) < 12 or any(c.isspace() for c in value) or _ENV_NAME.match(value):
        return None
    hexish = all(c in "0123456789abcdefABCDEF-" for c in value)
    return 0.8 if v.shannon_entropy(value) >= (3.0 if hexish else 3.3) else None


def _assignment_type(text: str, start: int) -> str:
    found = _assigned_key(text, start)
    return "PASSWORD" if found is not None and found[0] == "PASSWORD" else "GENERIC_SECRET"


_CONN_CONTEXT: Final = re.compile(
    r"(?i)(?:server|data source|uid|user ?id|username|user|database|initial catalog|provider|"
    r"driver|host|port|dsn)\s*=[^;\n]*;"
)


def _odbc_check(text: str, start: int, end: int) -> float | None:
    if _CONN_CONTEXT.search(text, max(0, start - 300), start) is None:
        return None
    value = text[start:end].strip()
    return 0.9 if len(value) >= 3 and not is_placeholder(value) else None


_HOST_OK: Final = re.compile(r"^[A-Za-z0-9\[][A-Za-z0-9.\-_\[\]:,]*$")
_URI: Final = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]{1,20})://(?P<user>[^\s:/@'\"]{0,100}):"
    r"(?P<v>[^\s/'\"]{1,200})@(?P<host>[^\s/?#'\"]+)"
)


def _uri_check(text: str, start: int, end: int) -> float | None:
    value = text[start:end]
    host_m = _HOST.match(text, end + 1)  # text[end] is the '@' before the host
    host = host_m.group(0) if host_m else ""
    if not _HOST_OK.match(host) or is_placeholder(value) or value.isdigit():
        return None  # a socket path, a template, or "host:8080@" (a port)
    return 0.95


_HOST: Final = re.compile(r"[^\s/?#'\"]+")


def _aws_secret_check(text: str, start: int, end: int) -> float | None:
    value = text[start:end]
    if len(value) != 40 or (end < len(text) and (text[end] in _WORD or text[end] in "+/=")):
        return None
    if start > 0 and (text[start - 1] in _WORD or text[start - 1] in "+/"):
        return None
    return 0.95 if _token_body_ok(value) else None


def _aws_id_check(text: str, start: int, end: int) -> float | None:
    value = text[start:end]
    if end < len(text) and text[end] in _WORD:
        return None
    return 0.95 if len(set(value[4:])) > 3 else None


# --------------------------------------------------------------------------------------------
# The table

_HEX: Final = re.compile(r"[0-9a-fA-F]*")
_ALNUM: Final = re.compile(r"[A-Za-z0-9]*")
_B64URL: Final = re.compile(r"[A-Za-z0-9_\-]*")
_SGP: Final = re.compile(r"[A-Za-z0-9_]*")
_KEYWORDS: Final = (
    r"(?:pass(?:word|wd|phrase|code)?|pwd|secret|token|api_?key|apikey|access_?key|auth_?key|"
    r"private_?key|secret_?key|credentials?|pat|key|auth)"
)

SECRET_RULES: Final[tuple[Rule, ...]] = (
    # --- AI providers
    token("ANTHROPIC_API_KEY", r"\bsk-ant-(?:api|admin|sid)\d{2}-[A-Za-z0-9_\-]{20}", min_len=40),
    token("OPENAI_API_KEY", r"\bsk-(?:proj|svcacct|admin|None)-[A-Za-z0-9_\-]{20}", min_len=40),
    token("OPENAI_API_KEY", r"\bsk-[A-Za-z0-9]{32}", tail=_ALNUM, min_len=35, priority=75),
    token("GROQ_API_KEY", r"\bgsk_[A-Za-z0-9]{48}", tail=_ALNUM),
    token("XAI_API_KEY", r"\bxai-[A-Za-z0-9]{60}", tail=_ALNUM),
    token("HUGGINGFACE_TOKEN", r"\b(?:hf|api_org)_[A-Za-z0-9]{30}", tail=_ALNUM),
    token("REPLICATE_API_TOKEN", r"\br8_[A-Za-z0-9]{37}", tail=_ALNUM),
    token("PERPLEXITY_API_KEY", r"\bpplx-[A-Za-z0-9]{40}", tail=_ALNUM),
    token("TAVILY_API_KEY", r"\btvly-(?:dev-|prod-)?[A-Za-z0-9]{28}", tail=_ALNUM),
    token("JINA_API_KEY", r"\bjina_[a-f0-9]{32}[A-Za-z0-9_\-]{20}"),
    token("FIRECRAWL_API_KEY", r"\bfc-[a-f0-9]{32}\b", tail=None),
    token("LANGSMITH_API_KEY", r"\blsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10}\b", tail=None),
    # --- Google
    token("GOOGLE_API_KEY", r"\bAIza[0-9A-Za-z_\-]{35}", tail=None),
    token("GOOGLE_OAUTH_SECRET", r"\bGOCSPX-[A-Za-z0-9_\-]{28}", tail=None),
    token("GOOGLE_OAUTH_TOKEN", r"\bya29\.[0-9A-Za-z_\-]{20}", min_len=30),
    # --- code hosting and package registries
    token("GITHUB_TOKEN", r"\bgh[pousr]_[A-Za-z0-9]{36}", tail=_ALNUM),
    token("GITHUB_TOKEN", r"\bgithub_pat_[A-Za-z0-9_]{40}", tail=_SGP),
    token("GITLAB_TOKEN", r"\bgl(?:pat|rt|dt|ptt|oas|cbt|ft|imt|soat)-[A-Za-z0-9_\-]{20}"),
    token("GITLAB_TOKEN", r"\bGR1348941[A-Za-z0-9_\-]{20}"),
    token(
        "BITBUCKET_APP_PASSWORD",
        r"\bATBB[A-Za-z0-9_=.\-]{28}",
        tail=re.compile(r"[A-Za-z0-9_=.\-]*"),
    ),
    token(
        "ATLASSIAN_API_TOKEN", r"\bATATT3[A-Za-z0-9_\-=]{150}", tail=re.compile(r"[A-Za-z0-9_\-=]*")
    ),
    token("ARTIFACTORY_API_KEY", r"\bAKCp[A-Za-z0-9]{60}", tail=_ALNUM),
    token("NPM_TOKEN", r"\bnpm_[A-Za-z0-9]{36}", tail=_ALNUM),
    token("PYPI_TOKEN", r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{40}"),
    token("DOCKERHUB_TOKEN", r"\bdckr_(?:pat|oat)_[A-Za-z0-9_\-]{20}"),
    token("RUBYGEMS_API_KEY", r"\brubygems_[a-f0-9]{48}\b", tail=None),
    token("NUGET_API_KEY", r"\boy2[a-z0-9]{43}\b", tail=None),
    token("CRATES_IO_TOKEN", r"\bcio[A-Za-z0-9]{32}\b", tail=None),
    token("SOURCEGRAPH_TOKEN", r"\bsgp_(?:[a-f0-9]{16}|local)_[a-f0-9]{40}\b", tail=None),
    token("SOURCEGRAPH_TOKEN", r"\bsgp_[a-f0-9]{40}\b", tail=None),
    token("SEGMENT_TOKEN", r"\bsgp_[A-Za-z0-9]{64}\b", tail=None),
    token("SONARQUBE_TOKEN", r"\bsq[pau]_[a-f0-9]{40}\b", tail=None),
    # --- chat, mail, payments, SaaS
    token(
        "SLACK_TOKEN",
        r"\bxox[abposr]-\d{6,15}-[A-Za-z0-9\-]{8}",
        tail=re.compile(r"[A-Za-z0-9\-]*"),
        min_len=30,
    ),
    token("SLACK_TOKEN", r"\bxapp-\d-[A-Z0-9]{6}", tail=re.compile(r"[A-Za-z0-9\-]*"), min_len=30),
    token("SLACK_TOKEN", r"\bxapp-[A-Za-z0-9/+\-]{20}", tail=re.compile(r"[A-Za-z0-9/+\-]*")),
    token(
        "SLACK_WEBHOOK",
        r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/]{20}",
        tail=re.compile(r"[A-Za-z0-9_/]*"),
    ),
    token(
        "TEAMS_WEBHOOK",
        r"https://[a-z0-9\-.]*(?:webhook\.office\.com/webhookb2|outlook\.office\.com/webhook)/[0-9a-f\-]{36}@[0-9a-f\-]{36}/IncomingWebhook/[0-9a-f]{32}/[0-9a-f\-]{36}",
        tail=None,
    ),
    token(
        "DISCORD_WEBHOOK",
        r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d{10,20}/[A-Za-z0-9_\-]{40}",
    ),
    token("TELEGRAM_BOT_TOKEN", r"\b\d{8,10}:AA[A-Za-z0-9_\-]{32}", min_len=40),
    token("STRIPE_KEY", r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16}", tail=_ALNUM),
    token("STRIPE_KEY", r"\bwhsec_[A-Za-z0-9]{32}", tail=_ALNUM),
    token("SENDGRID_API_KEY", r"\bSG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}", tail=None),
    token("MAILGUN_API_KEY", r"\bkey-[a-f0-9]{32}\b", tail=None),
    token("MAILCHIMP_API_KEY", r"\b[a-f0-9]{32}-us\d{1,2}\b", tail=None),
    token("TWILIO_API_KEY", r"\bSK[a-f0-9]{32}\b", tail=None),
    token("POSTMAN_API_KEY", r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b", tail=None),
    token("SHOPIFY_TOKEN", r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b", tail=None),
    token("SQUARE_TOKEN", r"\bsq0(?:atp|csp)-[A-Za-z0-9_\-]{22}"),
    token("SQUARE_TOKEN", r"\bEAAA[A-Za-z0-9_\-]{60}"),
    token("FACEBOOK_ACCESS_TOKEN", r"\bEAA(?:CEdEose0cBA|B|G|I)[A-Za-z0-9]{30}", tail=_ALNUM),
    token("DROPBOX_TOKEN", r"\bsl\.[A-Za-z0-9_\-]{100}"),
    token("FIGMA_TOKEN", r"\bfigd_[A-Za-z0-9_\-]{40}"),
    token(
        "SALESFORCE_TOKEN",
        r"\b00D[A-Za-z0-9]{12}![A-Za-z0-9_.]{60}",
        tail=re.compile(r"[A-Za-z0-9_.]*"),
    ),
    token(
        "MAPBOX_SECRET_TOKEN",
        r"\b[st]k\.eyJ[A-Za-z0-9_\-]{10}",
        tail=re.compile(r"[A-Za-z0-9_\-.]*"),
        min_len=60,
    ),
    token("STACKHAWK_API_KEY", r"\bhawk\.[A-Za-z0-9_\-]{20}\.[A-Za-z0-9_\-]{20}\b", tail=None),
    token("TWITCH_STREAM_KEY", r"\blive_\d{6,12}_[A-Za-z0-9]{30}\b", tail=None),
    token("DATABRICKS_TOKEN", r"\bdapi[a-f0-9]{32}(?:-\d)?\b", tail=None),
    token("DEPENDENCY_TRACK_KEY", r"\bodt_[A-Za-z0-9]{32}", tail=_ALNUM),
    token("DYNATRACE_TOKEN", r"\bdt0c01\.[A-Z0-9]{24}\.[A-Z0-9]{64}\b", tail=None),
    token("ADAFRUIT_IO_KEY", r"\baio_[A-Za-z0-9]{28}\b", tail=None),
    token("AGE_SECRET_KEY", r"\bAGE-SECRET-KEY-1[0-9A-Z]{58}\b", tail=None),
    # observability
    token("NEW_RELIC_KEY", r"\bNR(?:AK|II|IQ|RA|AA|JS)-[A-Za-z0-9_\-]{27}"),
    token("NEW_RELIC_KEY", r"\b(?:[a-f0-9]{36}|eu01xx[a-f0-9]{30})NRAL\b", tail=None),
    token(
        "PIXIE_API_KEY",
        r"\bpx-(?:api|dep)-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}\b",
        tail=None,
    ),
    token("GRAFANA_TOKEN", r"\beyJrIjoi[A-Za-z0-9+/]{30}", tail=_B64_CHARS),
    token("GRAFANA_TOKEN", r"\bglc_[A-Za-z0-9+/]{32}", tail=_B64_CHARS),
    token("GRAFANA_TOKEN", r"\bglsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}\b", tail=None),
    # --- infrastructure
    token("DIGITALOCEAN_TOKEN", r"\bdo[opr]_v1_[a-f0-9]{64}\b", tail=None),
    token(
        "DOPPLER_TOKEN",
        r"\bdp\.(?:pt|ct|sa|scim|audit|st(?:\.[a-z0-9\-_]{2,35})?)\.[A-Za-z0-9]{40}",
        tail=_ALNUM,
    ),
    token("HASHICORP_VAULT_TOKEN", r"\bhv[sbr]\.[A-Za-z0-9_\-]{24}", min_len=28),
    token("TERRAFORM_TOKEN", r"\b[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_\-=]{60}"),
    token("HEROKU_API_KEY", r"\bHRKU-[A-Za-z0-9_\-]{40}"),
    token(
        "AWS_ACCESS_KEY_ID",
        r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}",
        tail=None,
        check=_aws_id_check,
    ),
    token(
        "AWS_SESSION_TOKEN",
        r"\bamzn\.mws\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b",
        tail=None,
    ),
    token("AWS_APPSYNC_KEY", r"\bda2-[a-z0-9]{26}\b", tail=None),
    token(
        "AZURE_DEVOPS_PAT", r"\b[A-Za-z0-9]{52}JQQJ9[A-Za-z0-9]{22}AZDO[A-Za-z0-9]{4}\b", tail=None
    ),
    token("AZURE_DEVOPS_PAT", r"\b[A-Za-z0-9]{76}AZDO[A-Za-z0-9]{4}\b", tail=None, priority=75),
    token(
        "AZURE_CLIENT_SECRET",
        r"\b[A-Za-z0-9_~.\-]{3}\dQ~[A-Za-z0-9_~.\-]{31,34}",
        tail=None,
        check=_token_check(0.9, min_len=40, max_len=40),
    ),
    token("DJANGO_SECRET_KEY", r"django-insecure-[^\s'\"]{30}", tail=re.compile(r"[^\s'\"]*")),
    Rule(
        "PRIVATE_KEY",
        r"-----BEGIN[ A-Z0-9]{0,30}PRIVATE KEY(?: BLOCK)?-----",
        adjust=_pem_adjust,
        check=_pem_check,
        priority=90,
    ),
    token(
        "PRIVATE_KEY", r"\bLS0tLS1CRUdJTi[A-Za-z0-9+/]{40}", tail=_B64_CHARS, check=_b64_pem_check
    ),
    token("PASSWORD_HASH", r"\$1\$[./A-Za-z0-9]{1,8}\$[./A-Za-z0-9]{22}", tail=None, score=0.9),
    token("PASSWORD_HASH", r"\$2[abxy]?\$\d{2}\$[./A-Za-z0-9]{53}", tail=None, score=0.9),
    token(
        "PASSWORD_HASH",
        r"\$[56]\$(?:rounds=\d{1,9}\$)?[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{43}",
        tail=re.compile(r"[./A-Za-z0-9]*"),
        score=0.9,
    ),
    token("PASSWORD_HASH", r"\$[89]\$[./A-Za-z0-9]{14}\$[./A-Za-z0-9]{43}", tail=None, score=0.9),
    token(
        "PASSWORD_HASH", r"\$krb5(?:asrep|tgs)\$\d{2}\$[^\s$]+\$[a-f0-9]{64}", tail=_HEX, score=0.9
    ),
    token(
        "JWT",
        r"\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.",
        tail=_B64URL,
        check=_jwt_check,
        priority=85,
    ),
    # --- keys inside connection strings and config formats
    extracted(
        "AZURE_STORAGE_KEY",
        r"AccountKey\s*=\s*[A-Za-z0-9+/]{40}",
        r"AccountKey\s*=\s*(?P<v>[A-Za-z0-9+/]{40,100}={0,2})",
        caseless=False,
    ),
    extracted(
        "AZURE_STORAGE_KEY",
        r"SharedAccess(?:Key|Signature)\s*=\s*[A-Za-z0-9+/%]{30}",
        r"SharedAccess(?:Key|Signature)\s*=\s*(?P<v>[A-Za-z0-9+/%=&:\-]{30,200})",
        caseless=False,
    ),
    extracted(
        "AZURE_APP_CONFIG_SECRET",
        r"\.azconfig\.io;Id=[^;\s]+;Secret=[A-Za-z0-9+/]{30}",
        r";Secret=(?P<v>[A-Za-z0-9+/]{30,80}={0,2})",
        caseless=False,
    ),
    extracted(
        "CONNECTION_STRING",
        r"\b[A-Za-z][A-Za-z0-9+.\-]{1,20}://[^\s:/@'\"]*:[^\s/'\"]+@",
        _URI.pattern,
        check=_uri_check,
        caseless=False,
    ),
    extracted(
        "CONNECTION_STRING",
        r"\bjdbc:[a-z0-9]+:[^\s]*[;?&]password=",
        r"[;?&]password=(?P<v>[^;&\s'\"]{1,128})",
    ),
    extracted(
        "CONNECTION_STRING",
        r"(?:^|[;\"'\s])(?:password|pwd)\s*=",
        r"(?:^|(?<=[;\"'\s]))(?:password|pwd)\s*=\s*(?P<v>[^;\"'\n]{1,128}?)\s*(?=;|\"|'|\n|$)",
        check=_odbc_check,
    ),
    # --- credentials in commands and APIs
    extracted(
        "PASSWORD", r"\bmachine\s+\S+\s+login\s+\S+\s+password\s+\S", r"\bpassword\s+(?P<v>\S+)"
    ),
    extracted(
        "PASSWORD",
        r"(?:psexec(?:\.exe)?|sshpass|docker\s+login|connect-viserver|net\s+use)\b[^\n]*\s-(?:p|password)\s+\S",
        r"\s-(?:p|password)\s+(?P<v>\"[^\"\n]+\"|'[^'\n]+'|[^\s\"']+)",
        check=_value_check(min_len=3),
    ),
    extracted(
        "PASSWORD",
        r"\bcurl\b[^\n]*\s(?:-u|--user)\s+[\"']?[^\s:\"']+:[^\s\"'@]",
        r"\s(?:-u|--user)\s+[\"']?[^\s:\"']{1,100}:(?P<v>[^\s\"'@]{3,200})",
    ),
    extracted(
        "PASSWORD",
        r"\bNetworkCredential\s*\(\s*\"[^\"\n]*\"\s*,\s*\"",
        r"NetworkCredential\s*\(\s*\"[^\"\n]*\"\s*,\s*\"(?P<v>[^\"\n]{3,128})\"",
        caseless=False,
    ),
    extracted(
        "PASSWORD",
        r"\bDirectoryEntry\s*\(\s*\"[^\"\n]*\"\s*,\s*\"[^\"\n]*\"\s*,\s*\"",
        r"DirectoryEntry\s*\(\s*\"[^\"\n]*\"\s*,\s*\"[^\"\n]*\"\s*,\s*\"(?P<v>[^\"\n]{3,128})\"",
        caseless=False,
    ),
    extracted(
        "PASSWORD",
        r"<add\s+key=\"[^\"\n]*(?:password|pwd|secret|token|apikey)\"\s+value=\"[^\"\n]",
        r"<add\s+key=\"[^\"\n]*\"\s+value=\"(?P<v>[^\"\n]{3,256})\"",
    ),
    extracted(
        "PASSWORD",
        r"\bpass(?:word|wd|phrase)\b[^\n]*\b(?:is|was)\s*:?\s*[\"'`]",
        r"\bpass(?:word|wd|phrase)\b[^\n]{0,60}?\b(?:is|was)\s*:?\s*[\"'`](?P<v>[^\"'`\n]{3,64})[\"'`]",
    ),
    extracted(
        "HTTP_AUTH",
        r"\bauthorization\s*:\s*basic\s+[A-Za-z0-9+/]{8}",
        r"basic\s+(?P<v>[A-Za-z0-9+/]{8,}={0,2})",
        check=_value_check(min_len=8, spaces=False),
    ),
    extracted(
        "HTTP_AUTH",
        r"\bbearer\s+[A-Za-z0-9\-._~+/]{8}",
        r"bearer\s+(?P<v>[A-Za-z0-9\-._~+/]{8,}=*)",
        check=_value_check(min_len=10, entropy=2.5, spaces=False),
        priority=60,
    ),
    extracted(
        "PASSWORD",
        r"<[A-Za-z_:\-]*(?:password|passwd|secret|token|apikey|api_key)>[^<\s]{3}",
        r"<(?P<k>[A-Za-z_:\-]*(?:password|passwd|secret|token|apikey|api_key))>(?P<v>[^<\s]{3,256})</(?P=k)>",
    ),
    # --- NAME = "value" assignments (code, JSON, YAML, env files, query strings)
    Rule(
        "GENERIC_SECRET",
        _KEYWORDS + r"[A-Za-z0-9_]{0,20}[\"'\]]?[ \t]{0,32}(?:=>|:=|===?|!==?|=|:)",
        caseless=True,
        som=False,
        adjust=_assignment_adjust,
        check=_assignment_check,
        priority=40,
    ),
    Rule(
        "GENERIC_SECRET",
        r"--[A-Za-z0-9\-]{0,40}(?:token|password|passwd|secret|api-?key)(?:=|[ \t]+)",
        caseless=True,
        som=False,
        adjust=_assignment_adjust,
        check=_assignment_check,
        priority=40,
    ),
    # vendor specifics that need their surroundings
    extracted(
        "OKTA_API_TOKEN",
        r"\bSSWS\s+00[A-Za-z0-9_\-]{40}",
        r"SSWS\s+(?P<v>00[A-Za-z0-9_\-]{40})\b",
        caseless=False,
        check=_value_check(min_len=42, spaces=False),
    ),
    extracted(
        "OKTA_API_TOKEN",
        r"okta[^\n]*\b00[A-Za-z0-9_\-]{40}\b",
        r"(?<![A-Za-z0-9_\-])(?P<v>00[A-Za-z0-9_\-]{40})(?![A-Za-z0-9_\-])",
        check=_value_check(min_len=42, entropy=3.3, spaces=False),
    ),
    extracted(
        "VAULT_UNSEAL_KEY",
        r"\bunseal(?:\s+key(?:\s+\d+)?\s*:|)\s+[A-Za-z0-9+/]{40}",
        r"\bunseal(?:\s+key(?:\s+\d+)?\s*:|)\s+(?P<v>[A-Za-z0-9+/]{40,}={0,2})",
        check=_value_check(min_len=40, entropy=3.5, spaces=False),
    ),
)

# Every match of _AWS_SECRET_NAMED starts with this: Hyperscan tells whether the regex can
# match at all, in the pass it makes anyway (a Python search of every text costs more).
_AWS_NAMED_HINT: Final = Rule(
    "AWS_SECRET_ACCESS_KEY", r"aws_?(?:secret|sk)", caseless=True, som=False, check=lambda *_: None
)
_AWS_SECRET_NEAR: Final = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_AWS_SECRET_NAMED: Final = re.compile(
    r"(?i)aws_?(?:secret_?(?:access_?)?key|secret|sk)[\"']?\s{0,5}(?:=>|[:=])\s{0,5}[\"']?"
    r"(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
)


class SecretsGuard:
    """The ``secrets`` guardrail: ``block`` refuses, ``redact`` replaces the value with
    ``<TYPE>``, ``flag`` records only."""

    name = NAME
    cpu_heavy = False

    def __init__(self, cfg: SecretsGuardrail, *, cache: bool = True) -> None:
        self.cfg = cfg
        rules = [r for r in SECRET_RULES if cfg.entropy_detection or r.entity != "GENERIC_SECRET"]
        self.rules = tuple(rules)
        # the last rule only says whether a named AWS secret can be there (see _detect)
        self._matcher = Matcher((*self.rules, _AWS_NAMED_HINT))
        self._hint = len(self.rules)
        # detection depends on the text alone: repeated texts are not scanned again
        # (``cache=False`` where texts do not repeat: responses, stream windows)
        self._cached_find: Callable[[str], tuple[Candidate, ...]] = (
            patterns.TextCache(self._detect) if cache else self._detect
        )
        # ``quiet(text)``: True only when ``check`` certainly finds nothing in ``text``: not
        # one rule matches it (one short Hyperscan call, :meth:`Matcher.any`); the engine then
        # skips the guardrail (texts up to QUIET_MAX_CHARS). Not when detection is cached (a
        # cached text costs less than a second scan). A closure over the matcher: no reference
        # cycle through ``self``.
        self.quiet: Callable[[str], bool] | None = None
        if not cache:
            matcher = self._matcher
            self.quiet = lambda text: (
                len(text) <= patterns.QUIET_MAX_CHARS and not matcher.any(text)
            )

    def find(self, text: str) -> list[Candidate]:
        """Secrets in ``text``, non-overlapping, sorted by start."""
        return list(self._cached_find(text))

    def _detect(self, text: str) -> tuple[Candidate, ...]:
        hits = self._matcher.raw(text)
        if not hits:
            return ()
        hint = self._hint
        named_aws = any(h[0] == hint for h in hits)
        cands = self._matcher.find_hits(text, [h for h in hits if h[0] != hint])
        out: list[Candidate] = []
        for c in cands:
            if c.entity == "GENERIC_SECRET":
                c = Candidate(
                    _assignment_type(text, c.start), c.start, c.end, c.score, c.priority, c.rule
                )
            out.append(c)
            if c.entity == "AWS_ACCESS_KEY_ID":
                out.extend(_aws_secret_near(text, c))
        if named_aws and ("aws" in text or "AWS" in text):
            for m in _AWS_SECRET_NAMED.finditer(text):
                s, e = m.span("v")
                if _aws_secret_check(text, s, e) is not None or _named_aws_ok(m.group("v")):
                    out.append(Candidate("AWS_SECRET_ACCESS_KEY", s, e, 0.95, 85, -1))
        return tuple(patterns.resolve_overlaps(out)) if out else ()

    def check(self, segments: Sequence[Segment], ctx: ScanContext) -> Verdict:
        verdict = Verdict()
        action = self.cfg.action
        for seg in segments:
            found = self._cached_find(seg.text)
            if not found:
                continue
            reps: list[Replacement] = []
            for c in found:
                verdict.findings.append(
                    Finding(
                        NAME, c.entity, seg.index, c.start, c.end, round(c.score, 3), action.value
                    )
                )
                if action is not SecretsAction.FLAG:
                    reps.append(Replacement(c.start, c.end, f"<{c.entity}>"))
            if reps:
                verdict.replacements[seg.index] = reps
                verdict.edits[seg.index] = patterns.apply_replacements(
                    seg.text, [(r.start, r.end, r.text) for r in reps]
                )
            decision = _DECISION[action]
            if decision > verdict.decision:
                verdict.decision = decision
                verdict.reason = f"{NAME}: {found[0].entity}"
        return verdict


_DECISION: Final[dict[SecretsAction, Decision]] = {
    SecretsAction.BLOCK: Decision.BLOCK,
    SecretsAction.REDACT: Decision.REDACT,
    SecretsAction.FLAG: Decision.ALLOW,
}


def _named_aws_ok(value: str) -> bool:
    # under an explicit aws_secret_access_key name, any 40-char base64 value counts
    return len(value) == 40


def _aws_secret_near(text: str, key_id: Candidate) -> list[Candidate]:
    lo = max(0, key_id.start - 300)
    hi = min(len(text), key_id.end + 300)
    out: list[Candidate] = []
    for m in _AWS_SECRET_NEAR.finditer(text, lo, hi):
        value = m.group(0)
        if (
            v.shannon_entropy(value) >= 3.0
            and any(c.isdigit() for c in value)
            and any(c.isalpha() for c in value)
        ):
            out.append(Candidate("AWS_SECRET_ACCESS_KEY", m.start(), m.end(), 0.9, 85, -1))
    return out

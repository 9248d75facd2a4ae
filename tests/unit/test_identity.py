"""Identity: JWT verification against a real JWKS/OIDC discovery server on 127.0.0.1, the
trusted-header source and the workload fallback.

Keys are generated with `cryptography` per test module; tokens are signed with PyJWT (or by
hand for the attacks PyJWT refuses to produce). Time is an injectable clock: nothing sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning
from multidict import CIMultiDict
from pydantic import ValidationError

from aiguard_api.constants import PLACEHOLDER_KEY
from aiguard_api.policy import IdentitySources
from aiguard_sidecar.identity import (
    JWKS_MIN_REFETCH_SECONDS,
    Authenticator,
    IdentityError,
    Principal,
    Workload,
)

NOW = 1_700_000_000.0
AUD = "aiguard-sidecar"
WORKLOAD = Workload(namespace="team-a", service_account="chatbot", pod="chatbot-7d9f-abcde")


# --------------------------------------------------------------------------- fixtures


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Keys:
    rsa_key: rsa.RSAPrivateKey
    ec_key: ec.EllipticCurvePrivateKey
    other_rsa: rsa.RSAPrivateKey  # not published: signs "bad signature" tokens
    rotated: rsa.RSAPrivateKey  # published only after a rotation


@pytest.fixture(scope="module")
def keys() -> Keys:
    def new_rsa() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    return Keys(
        rsa_key=new_rsa(),
        ec_key=ec.generate_private_key(ec.SECP256R1()),
        other_rsa=new_rsa(),
        rotated=new_rsa(),
    )


def jwk(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str, **extra: str
) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        d = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        d = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**d, "kid": kid, "use": "sig", **extra}


@dataclass
class IdP:
    """A local OIDC provider: discovery + JWKS, with counters and failure switches."""

    server: TestServer
    jwks: dict[str, Any]
    hits: dict[str, int] = field(default_factory=lambda: {"discovery": 0, "jwks": 0})
    failing: bool = False
    discovery_issuer: str | None = None  # override the issuer the discovery doc names

    @property
    def issuer(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def jwks_url(self) -> str:
        return str(self.server.make_url("/keys"))


@pytest.fixture
async def idp(keys: Keys) -> AsyncIterator[IdP]:
    app = web.Application()
    state: dict[str, IdP] = {}

    async def discovery(_: web.Request) -> web.Response:
        p = state["idp"]
        p.hits["discovery"] += 1
        if p.failing:
            return web.Response(status=503)
        return web.json_response({"issuer": p.discovery_issuer or p.issuer, "jwks_uri": p.jwks_url})

    async def jwks(_: web.Request) -> web.Response:
        p = state["idp"]
        p.hits["jwks"] += 1
        if p.failing:
            return web.Response(status=500)
        return web.json_response(p.jwks)

    app.router.add_get("/.well-known/openid-configuration", discovery)
    app.router.add_get("/keys", jwks)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state["idp"] = IdP(
        server=server, jwks={"keys": [jwk(keys.rsa_key, "rsa-1"), jwk(keys.ec_key, "ec-1")]}
    )
    yield state["idp"]
    await server.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@dataclass
class Env:
    idp: IdP
    session: aiohttp.ClientSession
    clock: Clock
    keys: Keys
    made: list[Authenticator] = field(default_factory=list)

    def auth(self, identity: dict[str, Any] | None = None, **jwt_cfg: Any) -> Authenticator:
        """An Authenticator for the local IdP; ``jwt_cfg`` overrides JWT fields (camelCase)."""
        if identity is None:
            identity = {"jwt": {"issuer": self.idp.issuer, "audiences": [AUD], **jwt_cfg}}
        a = Authenticator(
            IdentitySources.model_validate(identity),
            workload=WORKLOAD,
            session=self.session,
            clock=self.clock,
            prefetch=False,
        )
        self.made.append(a)
        return a

    def claims(self, **over: Any) -> dict[str, Any]:
        c: dict[str, Any] = {
            "iss": self.idp.issuer,
            "aud": AUD,
            "sub": "alice",
            "groups": ["eng", "ml"],
            "iat": int(self.clock.now),
            "exp": int(self.clock.now) + 600,
        }
        c.update(over)
        return {k: v for k, v in c.items() if v is not None}

    def token(
        self,
        key: Any = None,
        *,
        alg: str = "RS256",
        kid: str | None = "rsa-1",
        **claims: Any,
    ) -> str:
        headers = {"kid": kid} if kid is not None else {}
        return jwt.encode(
            self.claims(**claims), key or self.keys.rsa_key, algorithm=alg, headers=headers
        )


@pytest.fixture
async def env(
    idp: IdP, session: aiohttp.ClientSession, clock: Clock, keys: Keys
) -> AsyncIterator[Env]:
    e = Env(idp, session, clock, keys)
    yield e
    for a in e.made:
        await a.close()


def bearer(token: str) -> dict[str, str]:
    return {"x-aiguard-user-token": f"Bearer {token}"}


def b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def rejected(auth: Authenticator, headers: dict[str, str], expect: str) -> IdentityError:
    with pytest.raises(IdentityError) as info:
        await auth.authenticate(headers)
    reason = info.value.reason
    assert expect in reason, reason
    for value in headers.values():  # a reason never echoes the credential
        token = value.removeprefix("Bearer ")
        if len(token) > 20:
            assert token not in reason
            assert token[-20:] not in reason
    return info.value


# --------------------------------------------------------------------------- valid tokens


async def test_valid_rs256_token_via_oidc_discovery(env: Env) -> None:
    auth = env.auth()
    p = await auth.authenticate(bearer(env.token()))
    assert p == Principal(workload=WORKLOAD, user="alice", groups=("eng", "ml"), source="jwt")
    assert env.idp.hits == {"discovery": 1, "jwks": 1}


async def test_valid_es256_token_with_configured_jwks_url(env: Env) -> None:
    auth = env.auth(jwksURL=env.idp.jwks_url)
    p = await auth.authenticate(bearer(env.token(env.keys.ec_key, alg="ES256", kid="ec-1")))
    assert p.user == "alice"
    assert env.idp.hits == {"discovery": 0, "jwks": 1}


async def test_token_without_bearer_prefix_and_header_name_case(env: Env) -> None:
    auth = env.auth()
    p = await auth.authenticate(CIMultiDict({"X-AIGuard-User-Token": env.token()}))
    assert p.user == "alice"


async def test_claims_mapping_and_groups_as_string(env: Env) -> None:
    auth = env.auth(userClaim="email", groupsClaim="roles")
    tok = env.token(email="alice@example.com", roles="eng, ml  ops,eng")
    p = await auth.authenticate(bearer(tok))
    assert p.user == "alice@example.com"
    assert p.groups == ("eng", "ml", "ops")


async def test_any_configured_audience_is_accepted(env: Env) -> None:
    auth = env.auth(audiences=["other", AUD])
    assert (await auth.authenticate(bearer(env.token(aud=["x", AUD])))).user == "alice"


async def test_a_verified_token_is_reverified_for_time_on_every_use(env: Env) -> None:
    auth = env.auth()
    tok = env.token(exp=int(NOW) + 100)
    assert (await auth.authenticate(bearer(tok))).user == "alice"
    assert (await auth.authenticate(bearer(tok))).user == "alice"  # served from the cache
    env.clock.advance(100 + 30)  # exp + leeway
    await rejected(auth, bearer(tok), "has expired")


async def test_concurrent_cold_requests_share_one_jwks_fetch(env: Env) -> None:
    auth = env.auth()
    tokens = [env.token(sub=f"user-{i}") for i in range(20)]
    principals = await asyncio.gather(*(auth.authenticate(bearer(t)) for t in tokens))
    assert [p.user for p in principals] == [f"user-{i}" for i in range(20)]
    assert env.idp.hits == {"discovery": 1, "jwks": 1}


async def test_prefetch_fetches_keys_before_the_first_request(env: Env) -> None:
    auth = Authenticator(
        IdentitySources.model_validate({"jwt": {"issuer": env.idp.issuer, "audiences": [AUD]}}),
        workload=WORKLOAD,
        session=env.session,
        clock=env.clock,
    )
    env.made.append(auth)
    for _ in range(500):  # the background fetch, on a possibly busy machine: up to 5 s
        if env.idp.hits["jwks"]:
            break
        await asyncio.sleep(0.01)
    assert env.idp.hits["jwks"] == 1
    assert (await auth.authenticate(bearer(env.token()))).user == "alice"
    assert env.idp.hits["jwks"] == 1


async def test_keys_are_refetched_after_the_cache_lifetime(env: Env) -> None:
    auth = env.auth(jwksCacheSeconds=60)
    await auth.authenticate(bearer(env.token()))
    env.clock.advance(61)
    await auth.authenticate(bearer(env.token()))
    assert env.idp.hits["jwks"] == 2


# --------------------------------------------------------------------------- rejected tokens


async def test_bad_signature_is_rejected(env: Env) -> None:
    auth = env.auth()
    forged = env.token(env.keys.other_rsa)  # right kid, wrong private key
    await rejected(auth, bearer(forged), "invalid signature")


async def test_tampered_payload_is_rejected(env: Env) -> None:
    auth = env.auth()
    h, _, s = env.token().split(".")
    evil = b64(env.claims(sub="admin"))
    await rejected(auth, bearer(f"{h}.{evil}.{s}"), "invalid signature")


async def test_wrong_audience_is_rejected(env: Env) -> None:
    await rejected(env.auth(), bearer(env.token(aud="someone-else")), "not meant for this audience")


async def test_missing_audience_is_rejected(env: Env) -> None:
    await rejected(env.auth(), bearer(env.token(aud=None)), "lacks the required aud claim")


async def test_wrong_issuer_is_rejected(env: Env) -> None:
    tok = env.token(iss="https://evil.example.com")
    await rejected(env.auth(), bearer(tok), "issuer the policy does not trust")


async def test_expired_token_is_rejected_after_the_leeway(env: Env) -> None:
    auth = env.auth(leewaySeconds=30)
    within = env.token(exp=int(NOW) - 29)
    assert (await auth.authenticate(bearer(within))).user == "alice"
    await rejected(auth, bearer(env.token(exp=int(NOW) - 30)), "has expired")


async def test_token_without_exp_is_rejected(env: Env) -> None:
    await rejected(env.auth(), bearer(env.token(exp=None)), "lacks the required exp claim")


async def test_not_yet_valid_and_future_iat_are_rejected(env: Env) -> None:
    auth = env.auth(leewaySeconds=0)
    await rejected(auth, bearer(env.token(nbf=int(NOW) + 60)), "not valid yet")
    await rejected(auth, bearer(env.token(iat=int(NOW) + 60)), "issued in the future")


async def test_alg_none_is_rejected(env: Env) -> None:
    auth = env.auth()
    tok = f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'rsa-1'})}.{b64(env.claims())}."
    await rejected(auth, bearer(tok), "algorithm the policy forbids")
    assert env.idp.hits["jwks"] == 0  # refused before any key lookup


async def test_hs256_signed_with_the_rsa_public_key_is_rejected(env: Env) -> None:
    """The RS/HS confusion attack: the public key (which anyone can fetch) used as an HMAC
    secret. PyJWT refuses to create such a token, so it is built by hand."""
    auth = env.auth()
    pem = env.keys.rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, json.dumps(jwk(env.keys.rsa_key, "rsa-1")).encode()):
        signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'rsa-1'})}.{b64(env.claims())}"
        sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        await rejected(auth, bearer(f"{signing_input}.{b64(sig)}"), "algorithm the policy forbids")


def test_policy_cannot_allow_hmac_or_none() -> None:
    for alg in ("HS256", "none"):
        with pytest.raises(ValidationError):
            IdentitySources.model_validate(
                {"jwt": {"issuer": "https://idp", "audiences": [AUD], "algorithms": [alg]}}
            )


async def test_algorithm_outside_the_policy_allow_list_is_rejected(env: Env) -> None:
    auth = env.auth(algorithms=["ES256"])
    await rejected(auth, bearer(env.token()), "algorithm the policy forbids")  # RS256


async def test_key_type_must_match_the_algorithm(env: Env) -> None:
    # An ES256 token naming the RSA key's kid: never verified with a key of another family.
    auth = env.auth()
    tok = env.token(env.keys.ec_key, alg="ES256", kid="rsa-1")
    await rejected(auth, bearer(tok), "does not match its signing key")
    assert env.idp.hits["jwks"] == 1  # no refetch: the key set already answered


async def test_key_pinned_to_another_algorithm_is_not_used(env: Env) -> None:
    env.idp.jwks = {"keys": [jwk(env.keys.rsa_key, "rsa-1", alg="PS256")]}
    auth = env.auth(algorithms=["RS256", "PS256"])
    await rejected(auth, bearer(env.token()), "does not match its signing key")
    assert (await auth.authenticate(bearer(env.token(alg="PS256")))).user == "alice"


async def test_token_without_kid_needs_exactly_one_candidate_key(env: Env) -> None:
    auth = env.auth()
    assert (await auth.authenticate(bearer(env.token(kid=None)))).user == "alice"
    env.idp.jwks = {"keys": [jwk(env.keys.rsa_key, "rsa-1"), jwk(env.keys.rotated, "rsa-2")]}
    env.clock.advance(301)
    await rejected(auth, bearer(env.token(kid=None)), "has no kid")


async def test_weak_rsa_keys_are_rejected(env: Env) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    env.idp.jwks["keys"].append(jwk(weak, "weak"))
    with warnings.catch_warnings():  # PyJWT warns when signing with it, as it should
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        tok = env.token(weak, kid="weak")
    await rejected(env.auth(), bearer(tok), "key that is too weak")


async def test_malformed_and_oversized_tokens_are_rejected(env: Env) -> None:
    auth = env.auth()
    await rejected(auth, bearer("not-a-jwt"), "is malformed")
    await rejected(auth, bearer("a" * 20_000), "too long")
    await rejected(auth, {"x-aiguard-user-token": "Bearer   "}, "is empty")


async def test_user_claim_must_be_a_string(env: Env) -> None:
    await rejected(env.auth(), bearer(env.token(sub=None)), "has no string sub claim")


async def test_jwks_with_private_or_symmetric_keys_ignores_them(env: Env) -> None:
    private = RSAAlgorithm.to_jwk(env.keys.other_rsa, as_dict=True)
    env.idp.jwks = {
        "keys": [
            {**private, "kid": "leaked"},
            {"kty": "oct", "k": b64(b"secret"), "kid": "hmac"},
            jwk(env.keys.rsa_key, "rsa-1"),
        ]
    }
    auth = env.auth()
    assert (await auth.authenticate(bearer(env.token()))).user == "alice"
    await rejected(auth, bearer(env.token(env.keys.other_rsa, kid="leaked")), "unknown key")


# --------------------------------------------------------------------------- kid rotation


async def test_unknown_kid_triggers_one_refetch_then_rejects(env: Env) -> None:
    auth = env.auth()
    await auth.authenticate(bearer(env.token()))
    assert env.idp.hits["jwks"] == 1
    # Keys fetched less than the refetch interval ago are taken as current: no refetch.
    await rejected(auth, bearer(env.token(kid="nobody-0")), "unknown key")
    assert env.idp.hits["jwks"] == 1

    env.clock.advance(JWKS_MIN_REFETCH_SECONDS)
    await rejected(auth, bearer(env.token(kid="nobody-1")), "unknown key")
    assert env.idp.hits["jwks"] == 2  # one refetch
    # An attacker cycling kids right after: no further requests to the IdP.
    for i in range(10):
        await rejected(auth, bearer(env.token(kid=f"nobody-{i + 2}")), "unknown key")
    assert env.idp.hits["jwks"] == 2


async def test_rotated_key_is_picked_up_after_the_refetch_interval(env: Env) -> None:
    auth = env.auth()
    await auth.authenticate(bearer(env.token()))
    env.idp.jwks["keys"].append(jwk(env.keys.rotated, "rsa-2"))
    env.clock.advance(JWKS_MIN_REFETCH_SECONDS)
    p = await auth.authenticate(bearer(env.token(env.keys.rotated, kid="rsa-2")))
    assert p.user == "alice"
    assert env.idp.hits["jwks"] == 2


# --------------------------------------------------------------------------- IdP outages


async def test_jwks_down_without_cache_fails_closed(env: Env) -> None:
    env.idp.failing = True
    auth = env.auth()
    await rejected(auth, bearer(env.token()), "signing keys are unavailable")
    # The next requests fail fast: no new attempt until the refetch interval has passed.
    await rejected(auth, bearer(env.token()), "signing keys are unavailable")
    assert env.idp.hits["discovery"] == 1
    env.idp.failing = False
    env.clock.advance(JWKS_MIN_REFETCH_SECONDS)
    assert (await auth.authenticate(bearer(env.token()))).user == "alice"


async def test_unreachable_jwks_host_fails_closed(env: Env, unused_tcp_port: int) -> None:
    auth = env.auth(jwksURL=f"http://127.0.0.1:{unused_tcp_port}/keys")
    await rejected(auth, bearer(env.token()), "signing keys are unavailable")


async def test_jwks_down_with_cache_uses_the_stale_keys_within_the_grace(env: Env) -> None:
    auth = env.auth(jwksCacheSeconds=60)
    await auth.authenticate(bearer(env.token()))
    env.idp.failing = True
    env.clock.advance(61)  # expired: refresh fails, the cached keys are still usable
    assert (await auth.authenticate(bearer(env.token()))).user == "alice"
    verifier = auth.jwt_verifier
    assert verifier is not None
    assert verifier.stats.failures >= 1
    assert verifier.stats.stale_uses >= 1
    env.clock.advance(3600)  # past the stale-if-error grace
    await rejected(auth, bearer(env.token()), "signing keys are unavailable")


async def test_discovery_naming_another_issuer_fails_closed(env: Env) -> None:
    env.idp.discovery_issuer = "https://evil.example.com"
    await rejected(env.auth(), bearer(env.token()), "signing keys are unavailable")


async def test_key_urls_must_be_https_or_loopback(env: Env) -> None:
    with pytest.raises(ValueError, match="plain http"):
        env.auth(jwksURL="http://idp.example.com/keys")
    with pytest.raises(ValueError, match="plain http"):
        env.auth(identity={"jwt": {"issuer": "http://dex.auth.svc:5556", "audiences": [AUD]}})
    env.auth(identity={"jwt": {"issuer": "https://idp.example.com", "audiences": [AUD]}})


# --------------------------------------------------------------------------- sources


@pytest.fixture
def both(env: Env) -> Authenticator:
    return env.auth(
        identity={
            "jwt": {"issuer": env.idp.issuer, "audiences": [AUD]},
            "trustedHeader": {},
        }
    )


async def test_no_user_sources_gives_the_workload(env: Env) -> None:
    auth = env.auth(identity={})
    p = await auth.authenticate({"x-aiguard-user": "mallory"})  # not trusted: ignored
    assert p == Principal(workload=WORKLOAD, user=None, groups=(), source="workload")
    assert auth.identity_headers == frozenset()


async def test_trusted_header_gives_user_and_groups(env: Env) -> None:
    auth = env.auth(identity={"trustedHeader": {}})
    p = await auth.authenticate({"X-AIGuard-User": "bob", "x-aiguard-groups": "ops, sre,,ops"})
    assert p == Principal(workload=WORKLOAD, user="bob", groups=("ops", "sre"), source="header")
    assert auth.identity_headers == {"x-aiguard-user", "x-aiguard-groups"}


async def test_trusted_header_values_are_validated(env: Env) -> None:
    auth = env.auth(identity={"trustedHeader": {}})
    await rejected(auth, {"x-aiguard-user": "  "}, "is empty")
    await rejected(auth, {"x-aiguard-user": "bob\x00root"}, "control characters")


async def test_a_valid_token_wins_over_the_trusted_header(env: Env, both: Authenticator) -> None:
    p = await both.authenticate({**bearer(env.token()), "x-aiguard-user": "mallory"})
    assert (p.user, p.source) == ("alice", "jwt")
    assert both.identity_headers == {"x-aiguard-user-token", "x-aiguard-user", "x-aiguard-groups"}


async def test_an_invalid_token_is_rejected_even_with_other_sources(
    env: Env, both: Authenticator
) -> None:
    headers = {**bearer(env.token(aud="other")), "x-aiguard-user": "alice"}
    await rejected(both, headers, "not meant for this audience")


async def test_without_a_token_the_trusted_header_is_used(env: Env, both: Authenticator) -> None:
    p = await both.authenticate({"x-aiguard-user": "bob"})
    assert (p.user, p.source) == ("bob", "header")


async def test_require_user_rejects_workload_only_requests(env: Env) -> None:
    auth = env.auth(
        identity={"jwt": {"issuer": env.idp.issuer, "audiences": [AUD]}, "requireUser": True}
    )
    await rejected(auth, {}, "requires an end-user identity: send a user token in header")
    assert (await auth.authenticate(bearer(env.token()))).user == "alice"


async def test_repeated_identity_header_is_rejected(env: Env) -> None:
    auth = env.auth(identity={"trustedHeader": {}})
    headers = CIMultiDict([("x-aiguard-user", "bob"), ("X-AIGUARD-USER", "root")])
    with pytest.raises(IdentityError, match="more than once"):
        await auth.authenticate(headers)


async def test_authorization_header_placeholder_key_counts_as_no_token(env: Env) -> None:
    auth = env.auth(header="authorization")
    p = await auth.authenticate({"Authorization": f"Bearer {PLACEHOLDER_KEY}"})
    assert p.source == "workload"
    p = await auth.authenticate({"Authorization": f"Bearer {env.token()}"})
    assert (p.user, p.source) == ("alice", "jwt")
    await rejected(auth, {"Authorization": "Bearer sk-not-a-jwt"}, "is malformed")


def test_workload_from_env() -> None:
    env = {
        "AIGUARD_POD_NAMESPACE": "team-a",
        "AIGUARD_POD_SERVICE_ACCOUNT": "chatbot",
        "AIGUARD_POD_NAME": "chatbot-7d9f-abcde",
    }
    assert Workload.from_env(env) == WORKLOAD
    with pytest.raises(ValueError, match="AIGUARD_POD_NAME or POD_NAME"):
        Workload.from_env({k: v for k, v in env.items() if k != "AIGUARD_POD_NAME"})


def test_workload_from_the_injectors_downward_api_names() -> None:
    env = {
        "POD_NAMESPACE": "team-a",
        "SERVICE_ACCOUNT": "chatbot",
        "POD_NAME": "chatbot-7d9f-abcde",
        "POD_UID": "0b9c",
    }
    assert Workload.from_env(env) == WORKLOAD


# --------------------------------------------------------------------------- hostile tokens


def _segments(token: str) -> list[bytes | None]:
    """The decoded segments of a compact JWS (None where one does not decode)."""
    out: list[bytes | None] = []
    for part in token.split("."):
        try:
            out.append(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except (ValueError, TypeError):
            out.append(None)
    return out


_HOSTILE_HEADERS: list[Any] = [
    {"alg": "RS256", "kid": ["rsa-1"]},
    {"alg": "RS256", "kid": {"k": "rsa-1"}},
    {"alg": "RS256", "kid": 1},
    {"alg": ["RS256"], "kid": "rsa-1"},
    {"alg": None, "kid": "rsa-1"},
    {"alg": "RS256 ", "kid": "rsa-1"},
    {"alg": "rs256", "kid": "rsa-1"},
    {"alg": "ES256", "kid": "rsa-1"},  # an RSA key's kid with an EC algorithm
    {"alg": "PS256", "kid": "rsa-1"},
    {"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]},
    {"alg": "RS256", "kid": "rsa-1", "b64": False, "crit": ["b64"]},
    {"alg": "RS256", "kid": "rsa-1", "jku": "http://127.0.0.1:1/keys"},
    {"alg": "RS256", "kid": "rsa-1", "jwk": {"kty": "oct", "k": "c2VjcmV0"}},
    {"alg": "RS256", "kid": "\u0000"},
    {"alg": "RS256", "kid": "x" * 10_000},
    [],
    "RS256",
    None,
    1e400,
]

_HOSTILE_CLAIMS: list[dict[str, Any]] = [
    {"exp": "tomorrow"},
    {"exp": True},
    {"exp": [NOW + 600]},
    {"exp": 1e308},
    {"nbf": "now"},
    {"iat": {"t": 1}},
    {"aud": [AUD, 1]},
    {"aud": {"a": AUD}},
    {"iss": ["x"]},
    {"sub": 42},
    {"sub": ""},
    {"sub": "a" * 100_000},
    {"sub": "alice\r\nX-Injected: 1"},
    {"groups": {"eng": True}},
    {"groups": [["nested"]]},
    {"groups": "eng," * 10_000},
]


async def _outcome(auth: Authenticator, token: str) -> Principal | None:
    """The principal, or None when refused with an IdentityError that does not echo it."""
    reason = ""
    try:
        return await auth.authenticate(bearer(token))
    except IdentityError as e:
        reason = e.reason
    assert reason
    assert len(token) < 20 or token[-20:] not in reason, reason
    return None


async def test_hostile_headers_claims_and_mutations_are_refused_never_crash(env: Env) -> None:
    """Whatever a client puts in a token, the answer is a user or an IdentityError (a 401
    in the caller's format), never another exception; a token accepted after a mutation
    decodes to exactly the valid token (base64url's spare low bits are not signed data)."""
    import random

    auth = env.auth(algorithms=["RS256", "ES256"])
    valid = env.token()
    assert (await auth.authenticate(bearer(valid))).user == "alice"
    h, p, s = valid.split(".")
    tokens: list[str] = []  # never a user, unless it decodes to the valid token
    signed: list[str] = []  # signed by the IdP's key: odd claims are refused or read soundly
    sig = b64(b"\x00" * 256)
    for header in _HOSTILE_HEADERS:  # signed or not, the header is refused before any key use
        raw = json.dumps(header, allow_nan=True).encode()
        tokens += [f"{b64(raw)}.{p}.{s}", f"{b64(raw)}.{p}.{sig}"]
    for over in _HOSTILE_CLAIMS:  # properly signed with the published key
        claims = {**env.claims(), **over}
        signing_input = f"{b64({'alg': 'RS256', 'kid': 'rsa-1'})}.{b64(claims)}"
        signature = env.keys.rsa_key.sign(
            signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()
        )  # by hand: PyJWT will not encode some of these claims
        signed.append(f"{signing_input}.{b64(signature)}")
    rng = random.Random(20261205)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ %\x00é"
    for _ in range(400):
        chars = list(valid)
        for _ in range(rng.choice((1, 1, 2, 5))):
            i = rng.randrange(len(chars))
            op = rng.random()
            if op < 0.6:
                chars[i] = rng.choice(alphabet)
            elif op < 0.8:
                del chars[i]
            else:
                chars.insert(i, rng.choice(alphabet))
        tokens.append("".join(chars))
    tokens += ["", ".", "..", "...", f"{h}..{s}", f"{h}.{p}", f"{h}.{p}.{s}.{s}", "a.b.c"]
    for token in signed:
        principal = await _outcome(auth, token)
        if principal is None:
            continue
        assert principal.user == "alice"
        assert set(principal.groups) <= {"eng", "ml"}  # odd group claims never add groups
    original = _segments(valid)
    accepted = 0
    for token in tokens:
        principal = await _outcome(auth, token)
        if principal is None:
            continue
        accepted += 1
        assert _segments(token) == original, f"a changed token was accepted: {token!r}"
        assert principal.user == "alice"
    assert accepted < len(tokens) // 20  # (only spare-bit flips of the valid token pass)

"""TLS to providers (verification always, TLS 1.3 minimum by default, custom CA, SNI override,
the negotiated version recorded) and key custody (the client's credentials dropped, the key
read from the mounted Secret and reloaded when it rotates, never shown in logs or errors)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pytest
import trustme

from aiguard_sidecar.app import SECRETS
from tests.harness.standin import ProviderStandIn
from tests.sidecar.conftest import (
    ANTHROPIC_KEY,
    OPENAI_KEY,
    SecretVolume,
    Sidecar,
    StartSidecar,
    assert_no_real_keys,
    make_policy,
    server_tls,
    wait_for,
)

HELLO: Any = [{"role": "user", "content": "hello"}]


def single_provider_policy(standin: ProviderStandIn, **tls: Any) -> dict[str, Any]:
    doc = make_policy(standin)
    doc["spec"]["providers"][0]["tls"] = tls
    return doc


async def ask(sc: Sidecar) -> str | None:
    r = await sc.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
    return r.choices[0].message.content


async def test_tls12_only_provider_is_refused_when_the_minimum_is_13(
    ca: trustme.CA, start_sidecar: StartSidecar
) -> None:
    async with ProviderStandIn(
        ssl_context=server_tls(ca),
        tls_maximum_version=ssl.TLSVersion.TLSv1_2,
        openai_keys=[OPENAI_KEY],
    ) as old:
        ca_ref = {"caSecretRef": {"name": "test-ca", "key": "ca.crt"}}
        sc = await start_sidecar(single_provider_policy(old, **ca_ref))
        with pytest.raises(openai.InternalServerError) as info:
            await ask(sc)
        assert info.value.status_code == 502
        assert "TLS handshake" in info.value.message
        assert old.requests == []  # nothing was sent over a downgraded connection

        # A provider that is allowed 1.2 works, and the audit record says what was negotiated.
        sc12 = await start_sidecar(single_provider_policy(old, minVersion="1.2", **ca_ref))
        assert await ask(sc12) == "echo: hello"
        assert sc12.sink.last.tls_version == "TLSv1.2"
        assert sc12.sink.last.tls_cipher


async def test_certificates_are_verified(
    start_sidecar: StartSidecar, upstream: ProviderStandIn
) -> None:
    # Without the test CA the provider's certificate does not chain to the system roots.
    sc = await start_sidecar(single_provider_policy(upstream))
    with pytest.raises(openai.InternalServerError) as info:
        await ask(sc)
    assert "certificate verification failed" in info.value.message
    assert upstream.requests == []


async def test_server_name_overrides_sni_and_verification_name(
    ca: trustme.CA, start_sidecar: StartSidecar
) -> None:
    ca_ref = {"caSecretRef": {"name": "test-ca", "key": "ca.crt"}}
    async with ProviderStandIn(
        ssl_context=server_tls(ca, "llm.internal"), openai_keys=[OPENAI_KEY]
    ) as private:
        wrong = await start_sidecar(single_provider_policy(private, **ca_ref))
        with pytest.raises(openai.InternalServerError):
            await ask(wrong)  # the certificate is not for 127.0.0.1
        sc = await start_sidecar(
            single_provider_policy(private, serverName="llm.internal", **ca_ref)
        )
        assert await ask(sc) == "echo: hello"
        assert sc.sink.last.tls_version == "TLSv1.3"


async def test_client_credentials_never_reach_the_provider(
    sidecar: Sidecar, upstream: ProviderStandIn
) -> None:
    sneaky = {
        "x-api-key": "client-anthropic-key",
        "api-key": "client-azure-key",
        "cookie": "session=client",
        "openai-organization": "org-client",
        "x-aiguard-debug": "1",
        "proxy-authorization": "Basic Y2xpZW50",
    }
    await sidecar.openai(default_headers=sneaky).chat.completions.create(
        model="gpt-4o", messages=HELLO
    )
    headers = {k.lower(): v for k, v in upstream.last_request.headers.items()}
    assert headers["authorization"] == f"Bearer {OPENAI_KEY}"
    for name in sneaky:
        assert name not in headers, name
    await sidecar.anthropic(default_headers={"authorization": "Bearer client"}).messages.create(
        model="claude-sonnet-4-5", max_tokens=5, messages=HELLO
    )
    headers = {k.lower(): v for k, v in upstream.last_request.headers.items()}
    assert headers["x-api-key"] == ANTHROPIC_KEY
    assert "authorization" not in headers


async def test_rotated_key_is_picked_up(
    sidecar: Sidecar, upstream: ProviderStandIn, secrets: SecretVolume
) -> None:
    new_key = "sk-test-openai-rotated-c0ffee"
    upstream.api_keys["openai"] = frozenset({OPENAI_KEY, new_key})
    await ask(sidecar)
    assert upstream.last_request.api_key == OPENAI_KEY
    secrets.write("openai", {"api-key": new_key})  # a Secret update: ..data symlink swap
    path = secrets.root / "openai" / "api-key"
    await wait_for(
        lambda: sidecar.server.app[SECRETS].get(path) == new_key.encode(), what="the new key"
    )
    upstream.api_keys["openai"] = frozenset({new_key})
    assert await ask(sidecar) == "echo: hello"
    assert upstream.last_request.api_key == new_key
    assert sidecar.metric("aiguard_secret_reloads_total", result="success") >= 1


async def test_missing_key_is_502_naming_the_secret_not_the_value(
    sidecar: Sidecar,
    upstream: ProviderStandIn,
    secrets: SecretVolume,
    log_lines: Callable[[], str],
) -> None:
    secrets.remove("anthropic", "api-key")
    path = secrets.root / "anthropic" / "api-key"
    await wait_for(lambda: sidecar.server.app[SECRETS].get(path) is None, what="the key to go")
    with pytest.raises(anthropic.InternalServerError) as info:
        await sidecar.anthropic().messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=HELLO
        )
    assert info.value.status_code == 502
    assert "Secret anthropic key api-key" in info.value.message
    assert upstream.requests == []
    assert_no_real_keys(info.value.message + log_lines())


async def test_a_key_the_provider_rejects_is_a_502_without_the_providers_body(
    sidecar: Sidecar, upstream: ProviderStandIn, log_lines: Callable[[], str]
) -> None:
    upstream.api_keys["anthropic"] = frozenset({"some-other-key"})
    with pytest.raises(anthropic.InternalServerError) as info:
        await sidecar.anthropic().messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=HELLO
        )
    assert info.value.status_code == 502
    assert "rejected the sidecar's API key" in info.value.message
    assert "invalid x-api-key" not in info.value.message  # the provider's words stay upstream
    assert_no_real_keys(str(info.value.body) + log_lines())


async def test_no_key_or_content_in_logs(
    sidecar: Sidecar, upstream: ProviderStandIn, log_lines: Callable[[], str]
) -> None:
    secret_prompt: Any = [{"role": "user", "content": "my password is hunter2-zebra"}]
    await sidecar.openai().chat.completions.create(model="gpt-4o", messages=secret_prompt)
    upstream.fail_next(503, path="/v1/chat/completions")
    await sidecar.openai().chat.completions.create(model="gpt-4o", messages=secret_prompt)
    text = log_lines()
    assert "hunter2-zebra" not in text
    assert_no_real_keys(text)

"""Hostile input, property-based (hypothesis): the request parsers, the SSE relay and the pod
webhook's decision never crash, refuse cleanly, and keep the properties the rest of the
product relies on (every text the caller sends is a segment the guardrails see; what goes
upstream is what was scanned).

The coverage-guided side is ``fuzz_*.py`` (atheris), run by ``test_fuzzers.py``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aiguard_sidecar import identity_jwt
from aiguard_sidecar.errors import ProxyError
from aiguard_sidecar.exchange import Api
from aiguard_sidecar.providers import ANTHROPIC, OPENAI
from aiguard_sidecar.providers.base import load_json_object
from tests.fuzz.targets import (
    REQUEST_APIS,
    admission_review,
    cut,
    parse_request,
    request_parsers,
    review_pod,
    split_events,
    sse_relay,
)

EXAMPLES = int(os.environ.get("AIGUARD_FUZZ_EXAMPLES", "60"))
"""Examples per property (raise it for a longer hunt: ``AIGUARD_FUZZ_EXAMPLES=2000``)."""
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HEAVY = settings(
    max_examples=max(10, EXAMPLES // 4),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=30,
)
KEYS = st.sampled_from(
    [
        "model",
        "messages",
        "role",
        "content",
        "text",
        "type",
        "input",
        "instructions",
        "system",
        "stream",
        "tools",
        "tool_calls",
        "function",
        "arguments",
        "source",
        "data",
    ]
)
# Bodies shaped like provider requests, with every field of any type.
provider_shaped = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=40,
)


# ── request parsers ──────────────────────────────────────────────────────────────────────────


@FAST
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_parsed_or_refused_with_400(raw: bytes) -> None:
    request_parsers(raw)


@FAST
@given(st.dictionaries(KEYS, provider_shaped, max_size=8), st.text(min_size=1, max_size=20))
def test_provider_shaped_bodies_are_parsed_or_refused_with_400(
    body: dict[str, Any], model: str
) -> None:
    body["model"] = model
    raw = json.dumps(body).encode()
    for inbound, api, path_model in REQUEST_APIS:
        parse_request(inbound, api, raw, path_model)


@FAST
@given(json_values)
def test_any_json_document_is_parsed_or_refused_with_400(doc: Any) -> None:
    request_parsers(json.dumps(doc).encode())


@FAST
@given(st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), st.text()), max_size=6))
def test_every_string_the_caller_sends_in_chat_is_a_segment(
    messages: list[tuple[str, str]],
) -> None:
    """Nothing the model will read escapes the guardrails: each message text is scanned."""
    body = {"model": "gpt-4o", "messages": [{"role": r, "content": t} for r, t in messages]}
    ex = OPENAI.parse(Api.CHAT_COMPLETIONS, json.dumps(body).encode())
    assert sorted(s.text for s in ex.segments) == sorted(t for _, t in messages)
    body["max_tokens"] = 10
    ex = ANTHROPIC.parse(Api.MESSAGES, json.dumps(body).encode())
    assert sorted(s.text for s in ex.segments) == sorted(t for _, t in messages)


@pytest.mark.parametrize("depth", [50, 900, 5_000, 200_000])
@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_deeply_nested_bodies_are_parsed_or_refused_never_crash(opener: bytes, depth: int) -> None:
    closer = b"]" if opener == b"[" else b"}"
    raw = b'{"model":"gpt-4o","messages":' + opener * depth + b"1" + closer * depth + b"}"
    for inbound, api, path_model in REQUEST_APIS:
        parse_request(inbound, api, raw, path_model)
    if depth >= 5_000:
        with pytest.raises(ProxyError, match="nested too deeply") as info:
            load_json_object(raw)
        assert info.value.status == 400


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"messages":[]}',
        b'{"model":"gpt-4o-mini","model":"gpt-4o","messages":[]}',
        b'{"model":"gpt-4o","messages":[{"role":"user","content":"a","content":"b"}]}',
        b'{"model":"gpt-4o","messages":[{"role":"user","role":"system","content":"a"}]}',
    ],
    ids=["messages", "model", "nested-content", "nested-role"],
)
def test_duplicate_keys_are_refused_at_any_depth(raw: bytes) -> None:
    """The sidecar scans the last of two equal keys (Python's json); a provider whose parser
    keeps the first would act on text nobody scanned. Refused, whatever the level."""
    for inbound, api, path_model in REQUEST_APIS:
        with pytest.raises(ProxyError, match="repeats the key") as info:
            inbound.parse(api, raw, path_model=path_model)
        assert info.value.status == 400


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"gpt-4o","messages":[{"role":"user","content":"\xff\xfe"}]}',
        b'{"model":"gpt-4o"' + b"\x00" + b',"messages":[]}',
    ],
    ids=["invalid-utf8", "nul"],
)
def test_invalid_utf8_and_odd_encodings_are_refused_with_400(raw: bytes) -> None:
    for inbound, api, path_model in REQUEST_APIS:
        with pytest.raises(ProxyError) as info:
            inbound.parse(api, raw, path_model=path_model)
        assert info.value.status == 400


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"gpt-4o","messages":[{"role":"user","content":"a\\ud800b"}]}',
        b'{"model":"gpt-4o","messages":[{"role":"user","content":"a\xed\xa0\x80b"}]}',
    ],
    ids=["escaped", "utf8-encoded"],
)
def test_lone_surrogates_are_refused_with_400(raw: bytes) -> None:
    """``"\\ud800"`` is valid JSON, and Python's json reads UTF-8-encoded surrogates too
    (``surrogatepass``), but a lone surrogate is not a character: it cannot be hashed for the
    audit trail or sent upstream as UTF-8, so every parser refuses it in the caller's format."""
    for inbound, api, path_model in REQUEST_APIS:
        with pytest.raises(ProxyError) as info:
            inbound.parse(api, raw, path_model=path_model or None)
        assert info.value.status == 400
        assert "surrogate" in str(info.value)


# ── SSE ──────────────────────────────────────────────────────────────────────────────────────

sse_field = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=40
)
sse_event = st.builds(
    lambda name, data, comment: (
        (f": {comment}\n" if comment else "")
        + (f"event: {name}\n" if name else "")
        + "".join(f"data: {line}\n" for line in data)
        + "\n"
    ).encode(),
    st.none() | sse_field,
    st.lists(sse_field, min_size=1, max_size=3),
    st.none() | sse_field,
)


@FAST
@given(
    st.lists(sse_event, max_size=8),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    st.booleans(),
)
def test_any_chunking_of_a_valid_stream_yields_identical_events(
    events: list[bytes], positions: list[int], crlf: bool
) -> None:
    stream = b"".join(events)
    if crlf:
        stream = stream.replace(b"\n", b"\r\n")
    whole = split_events([stream])
    assert not isinstance(whole, str)
    blocks, pending = whole
    assert pending == b""
    assert len(blocks) == sum(1 for e in events if e.strip(b"\n"))
    assert split_events(cut(stream, positions)) == whole
    assert split_events([stream[i : i + 1] for i in range(len(stream))]) == whole


@FAST
@given(st.binary(max_size=4096))
def test_garbage_streams_never_crash_the_relay(data: bytes) -> None:
    sse_relay(data)


@HEAVY
@given(st.lists(json_values, max_size=6), st.integers(min_value=0, max_value=255))
def test_json_events_of_any_shape_never_crash_the_stream_parsers(
    docs: list[Any], seed: int
) -> None:
    stream = b"".join(f"data: {json.dumps(d)}\n\n".encode() for d in docs)
    sse_relay(bytes([seed]) + stream)


# ── the pod webhook ──────────────────────────────────────────────────────────────────────────

labels = st.dictionaries(
    st.sampled_from(["app", "aiguard.dev/inject", "aiguard.dev/policy", "x"]),
    st.sampled_from(["chat", "enabled", "disabled", "", "nope"]),
)
pod_shaped = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {},
            optional={
                "labels": labels,
                "annotations": labels,
                "name": st.text(max_size=10),
                "generateName": st.text(max_size=10),
                "ownerReferences": st.lists(
                    st.dictionaries(st.sampled_from(["kind", "name", "controller"]), json_scalars)
                ),
            },
        ),
        "spec": st.dictionaries(
            st.sampled_from(["containers", "initContainers", "volumes", "serviceAccountName"]),
            st.lists(
                st.dictionaries(
                    st.sampled_from(["name", "image", "env", "volumeMounts", "secret", "ports"]),
                    provider_shaped,
                ),
                max_size=3,
            ),
        ),
    }
)


@HEAVY
@given(pod_shaped)
def test_the_webhook_decides_about_any_pod_and_its_patch_applies(pod: dict[str, Any]) -> None:
    pod["metadata"].setdefault("labels", {})["app"] = "chat"
    review_pod(pod)
    review_pod(pod, {"aiguard.dev/injection": "enabled"})


@FAST
@given(json_values)
def test_malformed_admission_reviews_never_crash_the_decision(doc: Any) -> None:
    admission_review(json.dumps({"request": {"object": doc}}).encode())
    admission_review(json.dumps(doc).encode())


def test_an_oversized_admission_review_is_decided_without_crashing() -> None:
    """The API server caps request bodies (3 MiB by default); a pod at that size is decided."""
    env = [{"name": f"V{i}", "value": "x" * 100} for i in range(25_000)]
    pod = {
        "metadata": {"labels": {"app": "chat", "aiguard.dev/inject": "enabled"}},
        "spec": {"containers": [{"name": "app", "image": "a", "env": env}]},
    }
    raw = json.dumps({"request": {"object": pod}}).encode()
    assert len(raw) > 3 << 20
    admission_review(raw)


@pytest.mark.parametrize(
    "model", ["gpt-4o\r\nX-Injected: 1", "gpt-4o\x00", "gpt\t4o", "g" * 257], ids=repr
)
def test_model_names_with_control_characters_or_oversized_are_refused(model: str) -> None:
    """A model name reaches route patterns, Azure URLs, metrics, logs and audit events."""
    raw = json.dumps({"model": model, "messages": []}).encode()
    for inbound, api, path_model in REQUEST_APIS:
        if path_model is not None:
            continue  # the Azure deployment comes from the path, quoted into the upstream URL
        with pytest.raises(ProxyError, match="model name") as info:
            inbound.parse(api, raw, path_model=path_model)
        assert info.value.status == 400


# ── JWKS documents (identity_jwt.parse_jwks): what an identity provider, or whoever answers
# for it, serves. A key set or a clean "no usable key" refusal, never a crash. ─────────────

_B64URL = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")
jwk_shaped = st.dictionaries(
    st.sampled_from(["kty", "kid", "alg", "use", "n", "e", "crv", "x", "y", "k", "key_ops"]),
    st.sampled_from(["RSA", "EC", "OKP", "oct", "RS256", "ES256", "EdDSA", "P-256", "sig", "enc"])
    | _B64URL
    | json_values,
    max_size=8,
)


@FAST
@given(st.one_of(json_values, st.fixed_dictionaries({"keys": st.lists(jwk_shaped, max_size=4)})))
@example({"keys": [{"alg": [], "kty": "RSA"}]})  # found by this test: an unhashable alg crashed
def test_any_jwks_document_gives_a_key_set_or_a_clean_refusal(doc: Any) -> None:
    try:
        keys = identity_jwt.parse_jwks(doc, fetched_at=0.0, generation=1)
    except identity_jwt._FetchError:
        return
    assert keys.all, "a key set is never empty"
    for k in keys.all:
        assert k.kid is None or keys.by_kid[k.kid]


# ── the provider client (upstream_http.ProviderClient): whatever a provider (or whoever
# answers in its place) sends back, in whatever pieces, the caller gets the body or one of the
# exceptions upstream.classify turns into a 502/504, never anything else. ──────────────────


def _provider_exchange(pieces: list[bytes], *, read: bool = True) -> tuple[str, bytes]:
    """Serve ``pieces`` (written one by one) as the answer to one request; the client's
    outcome: ("ok", body) or ("error", exception type name)."""
    import asyncio

    from yarl import URL

    from aiguard_sidecar.upstream import UPSTREAM_ERRORS, classify
    from aiguard_sidecar.upstream_http import ProviderClient, Timeouts

    async def run() -> tuple[str, bytes]:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                for p in pieces:
                    writer.write(p)
                    await writer.drain()
                    await asyncio.sleep(0)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = ProviderClient(limit=4)
        try:
            try:
                r = await client.request(
                    "POST",
                    URL(f"http://127.0.0.1:{port}/v1/chat/completions"),
                    headers={},
                    body=b"{}",
                    timeouts=Timeouts(connect=2, read=2, total=5),
                )
                body = await r.read() if read else b""
                r.release()
            except UPSTREAM_ERRORS as e:
                classify(e)  # never raises: every failure has a reason
                return "error", type(e).__name__.encode()
            return "ok", body
        finally:
            await client.close()
            server.close()
            await server.wait_closed()

    return asyncio.run(run())


_OK_BODY = b'{"id":"chatcmpl-1","choices":[{"message":{"content":"hi"}}]}'
_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_OK_BODY), _OK_BODY),
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"%x\r\n%s\r\n0\r\n\r\n" % (len(_OK_BODY), _OK_BODY),
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + _OK_BODY,
]


@FAST
@given(st.sampled_from(_RESPONSES), st.lists(st.integers(min_value=1, max_value=400), max_size=6))
def test_any_split_of_a_provider_response_gives_the_same_body(
    response: bytes, cuts: list[int]
) -> None:
    assert _provider_exchange(cut(response, cuts)) == ("ok", _OK_BODY)


@FAST
@given(
    st.sampled_from(_RESPONSES),
    st.integers(min_value=0, max_value=200),
    st.binary(max_size=64),
)
def test_a_damaged_or_truncated_provider_response_is_a_classified_error(
    response: bytes, at: int, junk: bytes
) -> None:
    # The bytes are whatever the peer sent: a body (junk may complete a length, a cut may
    # land after the response) or an exception upstream.classify names; anything else (a
    # parser error leaking, an assertion) fails inside _provider_exchange.
    outcome, _ = _provider_exchange([response[:at] + junk])
    assert outcome in {"ok", "error"}

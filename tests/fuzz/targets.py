"""One-input checks shared by the coverage-guided fuzzers (``fuzz_*.py``, atheris), the corpus
replay (``test_corpus.py``) and the property tests.

Each target takes arbitrary bytes and either returns or raises ``AssertionError`` (a property
does not hold). Any other exception escaping a target is a crash: the component would have
answered a hostile input with an unhandled error instead of a clean refusal.

* :func:`request_parsers` — every inbound request parser (OpenAI chat/responses/embeddings,
  Azure deployment paths, Anthropic messages): a parsed ``Exchange`` or a 400/413
  ``ProxyError``, and every text segment the guardrails will see is found at its locator.
* :func:`sse_relay` — the SSE splitter and every stream parser: any chunking of the same bytes
  gives the same events, and rendering an event gives well-formed SSE.
* :func:`admission_review` — the pod webhook's decision on an arbitrary (JSON) pod: an
  ``Outcome``, and a patch that applies to the pod it was computed for.
* :func:`collector_ingest` — the collector's parsing of a POSTed batch of audit events (what a
  compromised sidecar could send): validated events or a ``BadRequest`` (400), and an event is
  accepted only for the pod its chain instance names.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any, Final

import jsonpatch

from aiguard_api import constants
from aiguard_api.policy import LabelSelector, SecretKeyRef
from aiguard_operator import admission, injection
from aiguard_operator.collector.capture import CaptureCipher
from aiguard_operator.collector.server import BadRequest, _validate
from aiguard_operator.injection import PolicyInfo, SidecarSettings
from aiguard_sidecar.errors import ProxyError
from aiguard_sidecar.exchange import Api, Exchange, get_at
from aiguard_sidecar.providers import ANTHROPIC, AZURE, OPENAI
from aiguard_sidecar.providers.base import Inbound, StreamParser
from aiguard_sidecar.providers.sse import SSEError, SSESplitter, parse_block

Target = Callable[[bytes], None]

REQUEST_APIS: Final[tuple[tuple[Inbound, Api, str | None], ...]] = (
    (OPENAI, Api.CHAT_COMPLETIONS, None),
    (OPENAI, Api.RESPONSES, None),
    (OPENAI, Api.EMBEDDINGS, None),
    (AZURE, Api.CHAT_COMPLETIONS, "my-deployment"),
    (AZURE, Api.EMBEDDINGS, "my-deployment"),
    (AZURE, Api.RESPONSES, None),
    (ANTHROPIC, Api.MESSAGES, None),
)
CLIENT_ERRORS: Final = frozenset({400, 413})


def check_exchange(ex: Exchange) -> None:
    """What the rest of the pipeline relies on after a successful parse."""
    assert isinstance(ex.model, str)
    assert ex.model, "a parsed request always names a model"
    assert isinstance(ex.body, dict)
    assert isinstance(ex.stream, bool)
    for segment in ex.segments:
        assert isinstance(segment.text, str)
        # The locator must point at the text: a redaction rewrites exactly this place.
        assert get_at(ex.body, segment.path) == segment.text, segment.path


def parse_request(inbound: Inbound, api: Api, raw: bytes, path_model: str | None) -> None:
    try:
        ex = inbound.parse(api, raw, path_model=path_model)
    except ProxyError as e:
        refused: ProxyError | None = e
    else:
        refused = None
        check_exchange(ex)
    if refused is not None:
        assert refused.status in CLIENT_ERRORS, (refused.status, refused.message)


def request_parsers(data: bytes) -> None:
    for inbound, api, path_model in REQUEST_APIS:
        parse_request(inbound, api, data, path_model)


# ── SSE ──────────────────────────────────────────────────────────────────────────────────────


def _stream_exchanges() -> list[tuple[Inbound, Exchange]]:
    chat = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    responses = {"model": "gpt-4o", "stream": True, "input": "hi"}
    messages = {**chat, "max_tokens": 16}
    return [
        (OPENAI, OPENAI.parse(Api.CHAT_COMPLETIONS, json.dumps(chat).encode())),
        (OPENAI, OPENAI.parse(Api.RESPONSES, json.dumps(responses).encode())),
        (ANTHROPIC, ANTHROPIC.parse(Api.MESSAGES, json.dumps(messages).encode())),
    ]


def split_events(chunks: list[bytes]) -> tuple[list[bytes], bytes] | str:
    """The complete events and the pending tail, or the SSEError message."""
    splitter = SSESplitter()
    out: list[bytes] = []
    try:
        for c in chunks:
            out += splitter.feed(c)
    except SSEError as e:
        return str(e)
    return out, splitter.pending


def cut(data: bytes, positions: list[int]) -> list[bytes]:
    """``data`` cut at ``positions`` (any order, repeats and out-of-range values allowed)."""
    points = sorted({p % (len(data) + 1) for p in positions} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def relay(parser: StreamParser, blocks: list[bytes]) -> None:
    for block in blocks:
        assert block.endswith(b"\n\n")
        parse_block(block)
        event = parser.feed(block)
        out = event.render()
        assert isinstance(out, bytes)
        if event.modified or event.data is not None:
            assert out.endswith(b"\n\n")
    parser.finish()


def sse_relay(data: bytes) -> None:
    # The first byte picks a chunking; the rest is the stream. Whole vs byte-wise vs cut.
    seed, body = (data[0], data[1:]) if data else (0, b"")
    whole = split_events([body])
    positions = [seed * (i + 1) * 7 for i in range(seed % 16)]
    assert split_events(cut(body, positions)) == whole
    if len(body) <= 512:
        assert split_events([body[i : i + 1] for i in range(len(body))]) == whole
    if isinstance(whole, str):
        return
    blocks, _pending = whole
    for inbound, ex in _stream_exchanges():
        relay(inbound.stream_parser(ex), blocks)


# ── admission ────────────────────────────────────────────────────────────────────────────────

NS: Final = "team-a"
KEY: Final = SecretKeyRef(name="openai-api-key", key="api-key")
POLICY: Final = PolicyInfo(
    name="chat",
    selector=LabelSelector(match_labels={"app": "chat"}),
    compiled_hash="sha256:" + "ab" * 32,
    configmap="aiguard-policy-chat",
    ready=True,
    secret_refs=(KEY,),
    provider_key_refs=(KEY,),
)
SETTINGS: Final = SidecarSettings(image="ghcr.io/aiguard/aiguard-sidecar:0.1.0", version="0.1.0")
NS_ENABLED: Final = {constants.LABEL_NS_INJECTION: constants.INJECT_ENABLED}


def review_pod(pod: dict[str, Any], namespace_labels: dict[str, str] | None = None) -> None:
    labels = {injection.NAMESPACE_NAME_LABEL: NS, **(namespace_labels or {})}
    before = json.dumps(pod, sort_keys=True)
    outcome = admission.review(
        pod,
        namespace=NS,
        namespace_labels=labels,
        policies=[POLICY],
        settings=SETTINGS,
        operator_namespace="aiguard-system",
    )
    assert json.dumps(pod, sort_keys=True) == before, "review must not modify the pod"
    ops = list(outcome.patch)
    if ops:
        patched = jsonpatch.apply_patch(pod, ops)
        assert isinstance(patched, dict)
    if outcome.skip is not None:
        assert not ops


def admission_review(data: bytes) -> None:
    """``data`` is the JSON of an AdmissionReview; its ``request.object`` is the pod."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return  # kopf answers 400 before our code runs
    if not isinstance(doc, dict):
        return
    request = doc.get("request")
    pod = request.get("object") if isinstance(request, dict) else doc
    if isinstance(pod, dict):
        review_pod(pod)
        review_pod(pod, NS_ENABLED)


# ── collector ingest ─────────────────────────────────────────────────────────────────────────

CIPHER: Final = CaptureCipher([bytes(32)])


def collector_ingest(data: bytes) -> None:
    for cipher in (None, CIPHER):
        try:
            events = _validate(data, cipher)
        except BadRequest:
            continue
        for e in events:
            assert e.instance.startswith(f"{e.namespace}/{e.pod}/"), e.instance


TARGETS: Final[dict[str, Target]] = {
    "request_parsers": request_parsers,
    "sse_relay": sse_relay,
    "admission_review": admission_review,
    "collector_ingest": collector_ingest,
}

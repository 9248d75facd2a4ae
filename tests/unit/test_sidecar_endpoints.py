"""Endpoints beyond generation (token counts, stored responses, Azure v1 paths) at the adapter
level, the stored-response memory, and the per-request metadata line of the audit service."""

from __future__ import annotations

import io
import json
import time

import pytest

from aiguard_api.policy import Operation
from aiguard_sidecar.audit.sink import REQUEST_LOGGER, RequestLog
from aiguard_sidecar.exchange import Api
from aiguard_sidecar.providers import ANTHROPIC, AZURE, ENDPOINTS, OPENAI
from aiguard_sidecar.providers.anthropic import AnthropicDialect
from aiguard_sidecar.providers.azure import AzureDialect
from aiguard_sidecar.providers.openai import OpenAIDialect
from aiguard_sidecar.records import RequestRecord
from aiguard_sidecar.routing import StoredResponse, StoredResponses

COUNT = {
    "model": "claude-sonnet-4-5",
    "system": "S",
    "messages": [{"role": "user", "content": "U"}],
}


def test_count_tokens_is_parsed_like_messages_but_never_streams() -> None:
    ex = ANTHROPIC.parse(Api.COUNT_TOKENS, json.dumps({**COUNT, "stream": True}).encode())
    assert (ex.api, ex.operation, ex.model, ex.stream) == (
        Api.COUNT_TOKENS,
        Operation.CHAT,
        "claude-sonnet-4-5",
        False,
    )
    assert [s.text for s in ex.segments] == ["S", "U"]


def test_count_tokens_goes_to_the_count_endpoint_and_reports_no_usage() -> None:
    ex = ANTHROPIC.parse(Api.COUNT_TOKENS, json.dumps(COUNT).encode())
    call = AnthropicDialect("https://api.anthropic.example").build(ex, "claude-sonnet-4-5")
    assert (call.method, str(call.url)) == (
        "POST",
        "https://api.anthropic.example/v1/messages/count_tokens",
    )
    assert call.body == ex.raw
    info = ANTHROPIC.parse_response(ex, b'{"input_tokens": 12}')
    assert (info.input_tokens, info.output_tokens) == (None, None)


@pytest.mark.parametrize(
    ("api", "method"), [(Api.RESPONSE, "GET"), (Api.RESPONSE_DELETE, "DELETE")]
)
def test_stored_response_calls_name_the_id_in_the_path(api: Api, method: str) -> None:
    ex = OPENAI.parse(api, b"")
    ex.resource_id = "resp_a/b"
    assert (ex.operation, ex.body) == (Operation.RESPONSES, None)
    call = OpenAIDialect("https://api.openai.example/v1").build(ex, "gpt-4o")
    assert (call.method, str(call.url), call.body) == (
        method,
        "https://api.openai.example/v1/responses/resp_a%2Fb",
        None,
    )
    azure = AzureDialect("https://x.openai.azure.example", api_version="2025-01-01")
    az = AZURE.parse(api, b"")
    az.resource_id = "resp_1"
    call = azure.build(az, "gpt-4o")
    assert (call.method, str(call.url)) == (
        method,
        "https://x.openai.azure.example/openai/responses/resp_1?api-version=2025-01-01",
    )


def test_a_retrieved_response_is_scanned_but_its_usage_is_not_counted_again() -> None:
    ex = OPENAI.parse(Api.RESPONSE, b"")
    doc = {
        "id": "resp_1",
        "model": "gpt-4o",
        "status": "completed",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}],
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    info = OPENAI.parse_response(ex, json.dumps(doc).encode())
    assert [s.text for s in info.segments] == ["hi"]
    assert (info.response_id, info.input_tokens, info.output_tokens) == ("resp_1", None, None)


def test_the_azure_v1_paths_are_served_in_openai_format() -> None:
    served = {(e.method, e.path): (e.inbound, e.api) for e in ENDPOINTS}
    assert served[("POST", "/azure/openai/v1/chat/completions")] == (AZURE, Api.CHAT_COMPLETIONS)
    assert served[("POST", "/azure/openai/v1/responses")] == (AZURE, Api.RESPONSES)
    assert served[("DELETE", "/azure/openai/v1/responses/{id}")] == (AZURE, Api.RESPONSE_DELETE)
    assert served[("POST", "/azure/openai/v1/deployments/{model}/embeddings")] == (
        AZURE,
        Api.EMBEDDINGS,
    )
    assert served[("POST", "/anthropic/v1/messages/count_tokens")] == (
        ANTHROPIC,
        Api.COUNT_TOKENS,
    )


def test_stored_responses_keep_the_most_recent_ones() -> None:
    stored = StoredResponses(limit=2)
    for rid in ("a", "b", "c"):
        stored.remember(rid, StoredResponse("openai-main", "gpt-4o", None))
    assert stored.get("a") is None
    assert stored.get("c") == StoredResponse("openai-main", "gpt-4o", None)
    stored.forget("c")
    assert (stored.get("c"), len(stored)) == (None, 1)


def _record(n: int) -> RequestRecord:
    return RequestRecord(
        request_id=f"req{n}",
        started_at=time.time(),
        started_mono=0.0,
        policy="team-a/p",
        policy_hash="h",
        mode="enforce",
        method="POST",
        path="/openai/v1/chat/completions",
        status=200,
    )


def test_the_request_line_has_the_json_log_shape_and_no_content() -> None:
    out = io.BytesIO()
    log = RequestLog(out)
    for n in range(3):
        log.put(_record(n))
    log.close()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["request_id"] for line in lines] == ["req0", "req1", "req2"]
    first = lines[0]
    assert (first["level"], first["logger"], first["msg"]) == ("info", REQUEST_LOGGER, "request")
    assert first["ts"].endswith("Z")
    assert (first["status"], first["policy"]) == (200, "team-a/p")

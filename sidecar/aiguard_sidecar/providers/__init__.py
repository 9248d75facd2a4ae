"""Provider adapters: one module per wire format, registered here.

* :data:`ENDPOINTS` — every inbound path the sidecar serves, with the adapter that parses it.
  Anything else is answered 404 in the format its prefix implies (:func:`inbound_for_path`).
* :func:`dialect_for` — the upstream request builder for a configured provider.

Adding a provider is one module with an :class:`~.base.Inbound` and/or a
:class:`~.base.Dialect`, and a line in each table below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiguard_api.policy_types import ProviderType
from aiguard_api.view import Provider
from aiguard_sidecar.exchange import Api
from aiguard_sidecar.providers.anthropic import AnthropicDialect, AnthropicInbound
from aiguard_sidecar.providers.azure import AzureDialect, AzureInbound
from aiguard_sidecar.providers.base import COMPATIBLE, WIRE_OF, Dialect, Inbound
from aiguard_sidecar.providers.openai import OpenAIDialect, OpenAIInbound

__all__ = [
    "COMPATIBLE",
    "ENDPOINTS",
    "WIRE_OF",
    "Dialect",
    "Endpoint",
    "Inbound",
    "dialect_for",
    "inbound_for_path",
]

OPENAI: Final = OpenAIInbound()
AZURE: Final = AzureInbound()
ANTHROPIC: Final = AnthropicInbound()


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    """An aiohttp route path; ``{model}`` is the model or deployment named in the path."""
    inbound: Inbound
    api: Api


def _openai_style(prefix: str, inbound: Inbound) -> tuple[Endpoint, ...]:
    """The OpenAI v1 API under ``prefix`` (``/openai/v1``; Azure's v1 GA ``/azure/openai/v1``)."""
    return (
        Endpoint("POST", f"{prefix}/chat/completions", inbound, Api.CHAT_COMPLETIONS),
        Endpoint("POST", f"{prefix}/responses", inbound, Api.RESPONSES),
        Endpoint("GET", f"{prefix}/responses/{{id}}", inbound, Api.RESPONSE),
        Endpoint("DELETE", f"{prefix}/responses/{{id}}", inbound, Api.RESPONSE_DELETE),
        Endpoint("POST", f"{prefix}/embeddings", inbound, Api.EMBEDDINGS),
        Endpoint("GET", f"{prefix}/models", inbound, Api.MODELS),
        Endpoint("GET", f"{prefix}/models/{{model}}", inbound, Api.MODEL),
    )


def _azure_deployments(prefix: str) -> tuple[Endpoint, ...]:
    return (
        Endpoint(
            "POST", f"{prefix}/deployments/{{model}}/chat/completions", AZURE, Api.CHAT_COMPLETIONS
        ),
        Endpoint("POST", f"{prefix}/deployments/{{model}}/embeddings", AZURE, Api.EMBEDDINGS),
    )


ENDPOINTS: Final[tuple[Endpoint, ...]] = (
    *_openai_style("/openai/v1", OPENAI),
    # Azure OpenAI, classic: deployments in the path, ?api-version=
    *_azure_deployments("/azure/openai"),
    Endpoint("POST", "/azure/openai/responses", AZURE, Api.RESPONSES),
    Endpoint("GET", "/azure/openai/responses/{id}", AZURE, Api.RESPONSE),
    Endpoint("DELETE", "/azure/openai/responses/{id}", AZURE, Api.RESPONSE_DELETE),
    Endpoint("GET", "/azure/openai/models", AZURE, Api.MODELS),
    Endpoint("GET", "/azure/openai/models/{model}", AZURE, Api.MODEL),
    # Azure OpenAI, v1 GA API (the model in the body; AzureOpenAI still uses deployments paths)
    *_openai_style("/azure/openai/v1", AZURE),
    *_azure_deployments("/azure/openai/v1"),
    Endpoint("POST", "/anthropic/v1/messages", ANTHROPIC, Api.MESSAGES),
    Endpoint("POST", "/anthropic/v1/messages/count_tokens", ANTHROPIC, Api.COUNT_TOKENS),
    Endpoint("GET", "/anthropic/v1/models", ANTHROPIC, Api.MODELS),
)

_PREFIXES: Final[tuple[tuple[str, Inbound], ...]] = (
    ("/anthropic/", ANTHROPIC),
    ("/azure/", AZURE),
)


def inbound_for_path(path: str) -> Inbound:
    """The format to answer an unknown path in (OpenAI unless the prefix says otherwise)."""
    for prefix, inbound in _PREFIXES:
        if path.startswith(prefix):
            return inbound
    return OPENAI


def dialect_for(provider: Provider) -> Dialect:
    """The upstream request builder for ``provider`` (built once per policy load)."""
    if provider.type is ProviderType.ANTHROPIC:
        return AnthropicDialect(provider.base_url)
    if provider.type is ProviderType.AZURE_OPENAI:
        return AzureDialect(provider.base_url, api_version=provider.api_version)
    return OpenAIDialect(provider.base_url, type=provider.type)

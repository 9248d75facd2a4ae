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

from aiguard_api.policy import Provider, ProviderType
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


ENDPOINTS: Final[tuple[Endpoint, ...]] = (
    Endpoint("POST", "/openai/v1/chat/completions", OPENAI, Api.CHAT_COMPLETIONS),
    Endpoint("POST", "/openai/v1/responses", OPENAI, Api.RESPONSES),
    Endpoint("POST", "/openai/v1/embeddings", OPENAI, Api.EMBEDDINGS),
    Endpoint("GET", "/openai/v1/models", OPENAI, Api.MODELS),
    Endpoint("GET", "/openai/v1/models/{model}", OPENAI, Api.MODEL),
    Endpoint(
        "POST", "/azure/openai/deployments/{model}/chat/completions", AZURE, Api.CHAT_COMPLETIONS
    ),
    Endpoint("POST", "/azure/openai/deployments/{model}/embeddings", AZURE, Api.EMBEDDINGS),
    Endpoint("POST", "/azure/openai/responses", AZURE, Api.RESPONSES),
    Endpoint("GET", "/azure/openai/models", AZURE, Api.MODELS),
    Endpoint("GET", "/azure/openai/models/{model}", AZURE, Api.MODEL),
    Endpoint("POST", "/anthropic/v1/messages", ANTHROPIC, Api.MESSAGES),
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

"""Azure OpenAI: the OpenAI wire format addressed by deployment and ``api-version``.

Inbound paths (``AZURE_OPENAI_ENDPOINT=http://127.0.0.1:15080/azure``, as ``AzureOpenAI`` calls)::

    POST /azure/openai/deployments/{deployment}/chat/completions?api-version=...
    POST /azure/openai/deployments/{deployment}/embeddings?api-version=...
    POST /azure/openai/responses?api-version=...
    GET|DELETE /azure/openai/responses/{id}?api-version=...
    GET  /azure/openai/models[/{model}]?api-version=...

and the v1 GA API (``OpenAI(base_url=".../azure/openai/v1/")``; ``AzureOpenAI`` with that
``base_url`` puts the deployment in the path)::

    POST /azure/openai/v1/{chat/completions,responses,embeddings}      model in the body
    POST /azure/openai/v1/deployments/{deployment}/{chat/completions,embeddings}
    GET|DELETE /azure/openai/v1/responses/{id}
    GET  /azure/openai/v1/models[/{model}]

Both reach the same providers: the inbound path form does not choose the upstream one.

The deployment is the requested model for routing and access. The client's ``api-version`` is
not forwarded: the provider's configured ``apiVersion`` is (default :data:`DEFAULT_API_VERSION`).

Upstream (``azure-openai`` providers): ``{baseURL}/openai/deployments/{model}/...`` with the key
in ``api-key``. Requests from OpenAI-format clients can go to Azure providers and back: the
route target's ``model`` names the deployment.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from aiguard_api.policy_types import ProviderType
from aiguard_sidecar.exchange import Api, Exchange
from aiguard_sidecar.providers.base import Dialect, UpstreamCall, body_for
from aiguard_sidecar.providers.openai import OpenAIInbound

DEFAULT_API_VERSION: Final = "2024-10-21"


class AzureInbound(OpenAIInbound):
    """OpenAI format; the model of deployment paths comes from the path."""

    def parse(self, api: Api, raw: bytes, *, path_model: str | None = None) -> Exchange:
        ex = super().parse(api, raw, path_model=path_model)
        if path_model is not None and api is not Api.MODEL:
            ex.deployment = path_model
        return ex


class AzureDialect(Dialect):
    type = ProviderType.AZURE_OPENAI
    auth_header = "api-key"

    def __init__(self, base_url: str, *, api_version: str | None = None) -> None:
        super().__init__(base_url)
        self.query = "?api-version=" + quote(api_version or DEFAULT_API_VERSION, safe="")
        self._responses = self.url("/openai/responses" + self.query)

    def build(self, exchange: Exchange, model: str) -> UpstreamCall:
        api = exchange.api
        name = quote(model, safe="")
        if api is Api.CHAT_COMPLETIONS or api is Api.EMBEDDINGS:
            suffix = "/chat/completions" if api is Api.CHAT_COMPLETIONS else "/embeddings"
            url = self.url(f"/openai/deployments/{name}{suffix}{self.query}")
            usage = api is Api.CHAT_COMPLETIONS and exchange.stream and not exchange.include_usage
            # Azure reads the model from the path; the body's `model` is left as the client sent it.
            return UpstreamCall(
                "POST", url, body_for(exchange, model=None, include_usage=usage), {}
            )
        if api is Api.RESPONSES:
            return UpstreamCall("POST", self._responses, body_for(exchange, model=model), {})
        if api is Api.MODEL:
            return UpstreamCall("GET", self.url(f"/openai/models/{name}{self.query}"), None, {})
        if api is Api.RESPONSE or api is Api.RESPONSE_DELETE:
            rid = quote(exchange.resource_id or "", safe="")
            url = self.url(f"/openai/responses/{rid}{self.query}")
            return UpstreamCall("GET" if api is Api.RESPONSE else "DELETE", url, None, {})
        raise self.unsupported(exchange)

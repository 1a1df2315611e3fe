"""Azure OpenAI: OpenAI's image models deployed in an Azure resource.

The wire format is OpenAI's (`openai.py` does the work); what differs is the address and the key
(https://learn.microsoft.com/azure/ai-foundry/openai/reference, "Image generation"):
- `POST {endpoint}/openai/deployments/{deployment}/images/generations?api-version=...` (and `/images/edits`):
  the deployment's name, which the operator chose, is in the URL (the route's `model`); the model id is not.
- the `api-key` header with the resource's key, or `Authorization: Bearer <token>` with a Microsoft Entra ID
  token: a credential whose value starts with "Bearer " is sent as such.
- `api-version` from the route's `options.api_version`.

The endpoint is the route's `base_url` (`https://<resource>.openai.azure.com`), or a credential named by
`base_url_credential`, for an operator who keeps it beside the key.
"""

from __future__ import annotations

from imagegate.providers import Deps, Upstream
from imagegate.providers.openai import OpenAIProvider

# The API version that carries gpt-image models' generations and edits (Azure's image generation guide).
DEFAULT_API_VERSION = "2025-04-01-preview"
BEARER = "Bearer "


class AzureOpenAIProvider(OpenAIProvider):
    name = "azure_openai"

    def _url(self, path: str) -> str:
        version = self.upstream.options.get("api_version", DEFAULT_API_VERSION)
        return f"{self.base_url}/openai/deployments/{self.model}/images/{path}?api-version={version}"

    def _auth(self) -> dict[str, str]:
        key = self.upstream.api_key
        return {"Authorization": key} if key.startswith(BEARER) else {"api-key": key}


def create(upstream: Upstream, deps: Deps) -> AzureOpenAIProvider:
    if not upstream.base_url:
        raise ValueError(
            f"An azure_openai route (deployment {upstream.model!r}) needs its resource's endpoint: a "
            "base_url such as https://my-resource.openai.azure.com, or a base_url_credential naming it."
        )
    return AzureOpenAIProvider(upstream, deps.http)

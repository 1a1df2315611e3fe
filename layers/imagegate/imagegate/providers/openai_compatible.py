"""Any OpenAI-compatible image server: a base URL, an optional key, and the route's upstream model name.

The wire format is OpenAI's (see `openai.py`, which does the work); only the name differs, so routing,
logs and the `x-imagegate-provider` header tell the operator which upstream served a request.
"""

from __future__ import annotations

from imagegate.providers import Deps, Upstream
from imagegate.providers.openai import OpenAIProvider


class OpenAICompatibleProvider(OpenAIProvider):
    name = "openai_compatible"


def create(upstream: Upstream, deps: Deps) -> OpenAICompatibleProvider:
    if not upstream.base_url:
        # Without this, requests would silently go to api.openai.com with a key meant for another server.
        raise ValueError(
            f"An openai_compatible route (model {upstream.model!r}) needs a base_url, "
            "e.g. https://images.example.com/v1."
        )
    return OpenAICompatibleProvider(upstream, deps.http)

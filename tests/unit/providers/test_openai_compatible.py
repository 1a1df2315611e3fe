"""Any OpenAI-compatible server: OpenAI's wire format at the route's base URL, under the route's model."""

import json

import httpx
import pytest

from imagegate.errors import ProviderError
from imagegate.providers import Upstream, run
from imagegate.providers.openai_compatible import create

from ..conftest import upload
from .test_http import SECRET, FakeUpstream, form_fields, opened, png_b64

BASE = "https://images.example.net/v1"


def answer(count, width, height, usage=None):
    body = {"created": 1, "data": [{"b64_json": png_b64(width, height)}] * count}
    return httpx.Response(200, json=body | ({"usage": usage} if usage else {}))


def provider(fake, model, key="", base_url=BASE, **kw):
    return create(
        Upstream("openai_compatible", model=model, base_url=base_url, api_key=key, **kw), fake.deps()
    )


def test_a_base_url_is_required():
    with pytest.raises(ValueError, match="base_url"):
        provider(FakeUpstream(answer(1, 8, 8)), "flux-dev", base_url="")


def test_the_route_model_name_is_sent_to_the_base_url_without_a_key(job):
    fake = FakeUpstream(answer(1, 1024, 1024, usage={"input_tokens": 1}))
    p = provider(fake, "flux-dev")
    result = run(p, job(prompt="a boat", model="gpt-image-1", size="1536x1024"))

    assert p.name == "openai_compatible"
    assert str(fake.request.url) == f"{BASE}/images/generations"
    assert "authorization" not in fake.request.headers
    body = json.loads(fake.request.content)
    assert (body["model"], body["prompt"], body["size"]) == ("flux-dev", "a boat", "1536x1024")
    assert [opened(img) for img in result.images] == [("PNG", (1536, 1024))]
    assert result.usage == {"input_tokens": 1}  # passed on; pricing ignores what it cannot price


def test_a_key_is_sent_as_bearer(job):
    fake = FakeUpstream(answer(1, 1024, 1024))
    run(provider(fake, "gpt-image-1.5", key=SECRET), job(prompt="x"))
    assert fake.request.headers["authorization"] == f"Bearer {SECRET}"


def test_a_server_that_still_has_dalle2_serves_variations(job):
    fake = FakeUpstream(answer(1, 256, 256))
    p = provider(fake, "dall-e-2")
    assert p.supports("vary")
    result = run(p, job("variations", images=[upload()], size="256x256"))
    assert str(fake.request.url) == f"{BASE}/images/variations"
    assert form_fields(fake.request)["response_format"] == "b64_json"
    assert [opened(img) for img in result.images] == [("PNG", (256, 256))]


def test_errors_name_the_compatible_upstream(job):
    fake = FakeUpstream(httpx.Response(401, json={"error": {"message": f"bad key {SECRET}"}}))
    with pytest.raises(ProviderError) as info:
        run(provider(fake, "flux-dev", key=SECRET), job(prompt="x"))
    assert "(openai_compatible)" in str(info.value)
    assert SECRET not in str(info.value)

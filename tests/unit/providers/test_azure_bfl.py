"""Azure OpenAI and Black Forest Labs against their documented wire shapes (httpx.MockTransport)."""

import base64
import json

import httpx
import pytest

from imagegate.errors import ProviderError
from imagegate.providers import Upstream, run
from imagegate.providers.azure_openai import create as azure
from imagegate.providers.bfl import BFLProvider
from imagegate.providers.bfl import create as bfl

from .test_http import SECRET, FakeUpstream, opened, png_b64

RESOURCE = "https://my-resource.openai.azure.com"


def images(count, width, height):
    return httpx.Response(200, json={"created": 1, "data": [{"b64_json": png_b64(width, height)}] * count})


def test_azure_puts_the_deployment_and_api_version_in_the_url_and_the_key_in_api_key(job):
    fake = FakeUpstream(images(1, 1024, 1024))
    upstream = Upstream("azure_openai", model="img-15-prod", base_url=RESOURCE, api_key=SECRET)
    result = run(azure(upstream, fake.deps()), job(prompt="a harbour", model="gpt-image-1.5"))
    url = fake.request.url
    assert (url.host, url.path) == (
        "my-resource.openai.azure.com",
        "/openai/deployments/img-15-prod/images/generations",
    )
    assert url.params["api-version"] == "2025-04-01-preview"
    assert fake.request.headers["api-key"] == SECRET and "authorization" not in fake.request.headers
    assert json.loads(fake.request.content)["prompt"] == "a harbour"
    assert [opened(i) for i in result.images] == [("PNG", (1024, 1024))]


def test_azure_sends_an_entra_token_as_bearer_and_a_chosen_api_version(job):
    fake = FakeUpstream(images(1, 1024, 1024))
    upstream = Upstream(
        "azure_openai",
        model="d",
        base_url=RESOURCE,
        api_key="Bearer eyJ0-entra",
        options={"api_version": "2025-10-01"},
    )
    run(azure(upstream, fake.deps()), job(prompt="x", model="gpt-image-1.5"))
    assert (
        fake.request.headers["authorization"] == "Bearer eyJ0-entra" and "api-key" not in fake.request.headers
    )
    assert fake.request.url.params["api-version"] == "2025-10-01"


def test_azure_needs_its_resource_endpoint():
    with pytest.raises(ValueError, match="endpoint"):
        azure(Upstream("azure_openai", model="d", api_key=SECRET), FakeUpstream(images(1, 8, 8)).deps())


class Ticks:
    """A clock the provider's sleep advances: polling never waits."""

    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


SAMPLE = "https://delivery-eu1.bfl.ai/results/abc/sample.jpeg?se=2026-12-06T08%3A10%3A00Z&sig=x"


def bfl_upstream(fake, ticks, timeout_s=20.0, **options):
    upstream = Upstream("bfl", model="flux-2-pro", api_key=SECRET, timeout_s=timeout_s, options=options)
    return BFLProvider(upstream, fake.deps().http, clock=ticks, sleep=ticks.sleep)


def task():
    return httpx.Response(200, json={"id": "t1", "polling_url": "https://api.eu.bfl.ai/v1/get_result?id=t1"})


def status(value, **extra):
    return httpx.Response(200, json={"id": "t1", "status": value, **extra})


def jpeg(width, height):
    return httpx.Response(200, content=base64.b64decode(png_b64(width, height, fmt="JPEG")))


def test_bfl_posts_the_task_polls_until_ready_and_downloads_the_sample_at_once(job):
    fake = FakeUpstream(
        task(),
        status("Pending"),
        status("Pending"),
        status("Ready", result={"sample": SAMPLE}),
        jpeg(1536, 864),
    )
    ticks = Ticks()
    result = run(bfl_upstream(fake, ticks), job(prompt="a kite", model="flux-2-pro", size="1536x864"))
    post, *polls, download = fake.requests
    assert (post.method, str(post.url)) == ("POST", "https://api.bfl.ai/v1/flux-2-pro")
    assert post.headers["x-key"] == SECRET
    assert json.loads(post.content) == {
        "prompt": "a kite",
        "width": 1536,
        "height": 864,
        "output_format": "png",
    }
    assert [str(p.url) for p in polls] == ["https://api.eu.bfl.ai/v1/get_result?id=t1"] * 3
    assert all(p.headers["x-key"] == SECRET for p in polls)
    assert str(download.url) == SAMPLE and "x-key" not in download.headers  # a signed URL, no key sent
    assert ticks.sleeps == [1.0, 1.0]
    assert [opened(i) for i in result.images] == [("PNG", (1536, 864))]


def test_bfl_moderation_is_a_content_policy_refusal(job):
    fake = FakeUpstream(task(), status("Content Moderated"))
    with pytest.raises(ProviderError) as info:
        run(bfl_upstream(fake, Ticks()), job(prompt="x", model="flux-2-pro"))
    assert (info.value.status, info.value.code, info.value.fallover) == (
        400,
        "content_policy_violation",
        False,
    )


def test_bfl_polls_within_the_attempts_timeout_then_gives_up_with_a_504(job):
    fake = FakeUpstream(task(), status("Pending"))
    ticks = Ticks()
    with pytest.raises(ProviderError) as info:
        run(bfl_upstream(fake, ticks, timeout_s=5.0), job(prompt="x", model="flux-2-pro"))
    assert (info.value.status, info.value.code) == (504, "upstream_timeout")
    assert ticks.now <= 5.0


def test_bfl_failures_and_regions(job):
    with pytest.raises(ProviderError, match="failed the task: Error"):
        run(bfl_upstream(FakeUpstream(task(), status("Error")), Ticks()), job(prompt="x", model="flux-2-pro"))
    with pytest.raises(ProviderError) as info:
        run(
            bfl_upstream(FakeUpstream(httpx.Response(401, json={"detail": "bad key"})), Ticks()),
            job(prompt="x", model="flux-2-pro"),
        )
    assert info.value.fallover and SECRET not in str(info.value)
    fake = FakeUpstream(task(), status("Ready", result={"sample": SAMPLE}), jpeg(1024, 1024))
    run(bfl_upstream(fake, Ticks(), region="us"), job(prompt="x", model="flux-2-pro"))
    assert str(fake.requests[0].url) == "https://api.us.bfl.ai/v1/flux-2-pro"
    p = bfl(Upstream("bfl", model="flux-2-pro", api_key=SECRET), FakeUpstream(task()).deps())
    assert p.supports("generate") and not p.supports("edit") and not p.supports("vary")

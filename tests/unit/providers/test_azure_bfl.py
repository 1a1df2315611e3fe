"""Azure OpenAI and Black Forest Labs against their documented wire shapes (httpx.MockTransport)."""

import base64
import json

import httpx
import pytest
from localservers import local_outbound, serve

from imagegate.errors import ProviderError
from imagegate.inputs.outbound import Outbound
from imagegate.providers import Upstream, run
from imagegate.providers.azure_openai import create as azure
from imagegate.providers.bfl import MAX_SAMPLE_BYTES, BFLProvider
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


DELIVERY = "delivery-eu1.bfl.ai"
SAMPLE_PATH = "/results/abc/sample.jpeg?se=2026-12-06T08%3A10%3A00Z&sig=x"


def jpeg_bytes(width, height):
    return base64.b64decode(png_b64(width, height, fmt="JPEG"))


@pytest.fixture
def sample():
    """BFL's delivery host: a real server on 127.0.0.1 that the test resolver names delivery-eu1.bfl.ai."""
    body = {"bytes": jpeg_bytes(1024, 1024)}
    with serve(lambda seen: (200, {"content-type": "image/jpeg"}, body["bytes"])) as server:
        server.body = body
        server.sample_url = server.url(SAMPLE_PATH, host=DELIVERY)
        server.outbound = local_outbound({DELIVERY: "127.0.0.1"})
        yield server


def bfl_upstream(fake, ticks, sample, timeout_s=20.0, **options):
    upstream = Upstream("bfl", model="flux-2-pro", api_key=SECRET, timeout_s=timeout_s, options=options)
    return BFLProvider(upstream, fake.deps().http, sample.outbound, clock=ticks, sleep=ticks.sleep)


def task(polling_url="https://api.eu.bfl.ai/v1/get_result?id=t1"):
    return httpx.Response(200, json={"id": "t1", "polling_url": polling_url})


def status(value, **extra):
    return httpx.Response(200, json={"id": "t1", "status": value, **extra})


def ready(url):
    return status("Ready", result={"sample": url})


def test_bfl_posts_the_task_polls_until_ready_and_downloads_the_sample_at_once(job, sample):
    sample.body["bytes"] = jpeg_bytes(1536, 864)
    fake = FakeUpstream(task(), status("Pending"), status("Pending"), ready(sample.sample_url))
    ticks = Ticks()
    result = run(bfl_upstream(fake, ticks, sample), job(prompt="a kite", model="flux-2-pro", size="1536x864"))
    post, *polls = fake.requests
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
    [download] = sample.requests  # a signed URL on another host: fetched once, without the key
    assert download.path == SAMPLE_PATH and "x-key" not in {k.lower() for k in download.headers}
    assert SECRET.encode() not in b"".join(f"{k}{v}".encode() for k, v in download.headers.items())
    assert ticks.sleeps == [1.0, 1.0]
    assert [opened(i) for i in result.images] == [("PNG", (1536, 864))]


@pytest.mark.parametrize(
    "polling_url",
    [
        "https://attacker.example/v1/get_result?id=t1",
        "https://api.bfl.ai.attacker.example/get_result",
        "http://api.eu.bfl.ai/v1/get_result?id=t1",
        "https://api.eu.bfl.ai:8443/v1/get_result?id=t1",
        "https://user@api.eu.bfl.ai/v1/get_result",
        "https://169.254.169.254/latest/meta-data/",
    ],
)
def test_bfl_never_sends_the_key_to_a_polling_url_off_its_host(job, sample, polling_url):
    fake = FakeUpstream(task(polling_url), ready(sample.sample_url))
    with pytest.raises(ProviderError, match="polling_url off its own host") as info:
        run(bfl_upstream(fake, Ticks(), sample), job(prompt="x", model="flux-2-pro"))
    assert [r.method for r in fake.requests] == ["POST"]  # the key went to the configured endpoint only
    assert info.value.code == "upstream_bad_response" and SECRET not in str(info.value)


def test_bfl_polls_a_configured_endpoints_own_host(job, sample):
    fake = FakeUpstream(task("http://bfl.internal:8080/v1/get_result?id=t1"), ready(sample.sample_url))
    upstream = Upstream("bfl", model="m", base_url="http://bfl.internal:8080", api_key=SECRET)
    run(
        BFLProvider(upstream, fake.deps().http, sample.outbound, clock=Ticks()),
        job(prompt="x", model="flux-2-pro"),
    )
    assert str(fake.requests[1].url) == "http://bfl.internal:8080/v1/get_result?id=t1"


@pytest.mark.parametrize(
    ("url", "names", "code"),
    [
        ("https://169.254.169.254/latest/meta-data/iam/security-credentials/", {}, "address_forbidden"),
        ("https://delivery.bfl.ai/x.jpeg", {"delivery.bfl.ai": "10.0.0.7"}, "address_forbidden"),
        ("https://metadata.example/x", {"metadata.example": "169.254.170.2"}, "address_forbidden"),
        ("http://delivery.bfl.ai/x.jpeg", {"delivery.bfl.ai": "93.184.216.34"}, "url_scheme"),
    ],
)
def test_bfl_refuses_a_sample_on_a_private_or_metadata_address(job, url, names, code):
    """Production's outbound policy, with a resolver that answers what an attacker's DNS would."""
    fake = FakeUpstream(task(), ready(url))
    outbound = Outbound(resolver=lambda host, port: [names[host]])
    upstream = Upstream("bfl", model="flux-2-pro", api_key=SECRET)
    with pytest.raises(ProviderError, match=code) as info:
        run(
            BFLProvider(upstream, fake.deps().http, outbound, clock=Ticks()),
            job(prompt="x", model="flux-2-pro"),
        )
    assert info.value.code == "upstream_bad_response"
    assert [r.method for r in fake.requests] == ["POST", "GET"]  # the mock client never fetched the sample


def test_bfl_refuses_an_oversized_sample_and_a_redirect(job, sample):
    sample.body["bytes"] = b"\xff" * (MAX_SAMPLE_BYTES + 1)
    fake = FakeUpstream(task(), ready(sample.sample_url))
    with pytest.raises(ProviderError, match="too_large"):
        run(bfl_upstream(fake, Ticks(), sample), job(prompt="x", model="flux-2-pro"))
    with serve(lambda seen: (302, {"location": "http://127.0.0.1/"}, b"")) as hop:
        fake = FakeUpstream(task(), ready(hop.url("/s", host=DELIVERY)))
        with pytest.raises(ProviderError, match="redirect"):
            run(bfl_upstream(fake, Ticks(), sample), job(prompt="x", model="flux-2-pro"))


def test_bfl_moderation_is_a_content_policy_refusal(job, sample):
    fake = FakeUpstream(task(), status("Content Moderated"))
    with pytest.raises(ProviderError) as info:
        run(bfl_upstream(fake, Ticks(), sample), job(prompt="x", model="flux-2-pro"))
    assert (info.value.status, info.value.code, info.value.fallover) == (
        400,
        "content_policy_violation",
        False,
    )


def test_bfl_polls_within_the_attempts_timeout_then_gives_up_with_a_504(job, sample):
    fake = FakeUpstream(task(), status("Pending"))
    ticks = Ticks()
    with pytest.raises(ProviderError) as info:
        run(bfl_upstream(fake, ticks, sample, timeout_s=5.0), job(prompt="x", model="flux-2-pro"))
    assert (info.value.status, info.value.code) == (504, "upstream_timeout")
    assert ticks.now <= 5.0


def test_bfl_failures_and_regions(job, sample):
    with pytest.raises(ProviderError, match="failed the task: Error"):
        run(
            bfl_upstream(FakeUpstream(task(), status("Error")), Ticks(), sample),
            job(prompt="x", model="flux-2-pro"),
        )
    with pytest.raises(ProviderError) as info:
        run(
            bfl_upstream(FakeUpstream(httpx.Response(401, json={"detail": "bad key"})), Ticks(), sample),
            job(prompt="x", model="flux-2-pro"),
        )
    assert info.value.fallover and SECRET not in str(info.value)
    fake = FakeUpstream(task(), ready(sample.sample_url))
    run(bfl_upstream(fake, Ticks(), sample, region="us"), job(prompt="x", model="flux-2-pro"))
    assert str(fake.requests[0].url) == "https://api.us.bfl.ai/v1/flux-2-pro"
    p = bfl(Upstream("bfl", model="flux-2-pro", api_key=SECRET), FakeUpstream(task()).deps())
    assert p.supports("generate") and not p.supports("edit") and not p.supports("vary")

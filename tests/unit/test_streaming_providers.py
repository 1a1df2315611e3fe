"""Streaming at the providers and the router: OpenAI's upstream stream passed through (httpx MockTransport
answering server-sent events in chunks, as OpenAI's spec has them), the local renderer's coarse-to-fine
partials, the one-event default of every other provider, and retries only until the first event."""

import base64
import io
import json

import httpx
import pytest
from aws_lambda_powertools.logging import Logger
from PIL import Image

from imagegate.config import Settings
from imagegate.errors import ProviderError
from imagegate.providers import Deps, PartialImage, ProviderResult, Upstream, stream
from imagegate.providers.local import LocalProvider
from imagegate.providers.openai import create
from imagegate.providers.routing import Router, RouteSpec

from .conftest import upload
from .providers.test_http import SECRET, FakeUpstream, form_fields, openai_error, png_b64

USAGE = {
    "input_tokens": 12,
    "output_tokens": 472,
    "total_tokens": 484,
    "input_tokens_details": {"text_tokens": 12, "image_tokens": 0},
}


def sse(*events, event_names=True):
    """A text/event-stream answer, one chunk per event and each event split across two chunks, as a
    network delivers them."""
    chunks = []
    for data in events:
        name = f"event: {data['type']}\n" if event_names and isinstance(data, dict) else ""
        text = f"{name}data: {json.dumps(data) if isinstance(data, dict) else data}\n\n".encode()
        chunks += [text[: len(text) // 2], text[len(text) // 2 :]]
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=iter(chunks))


def partial(index, prefix="image_generation", width=1024, height=1024):
    return {
        "type": f"{prefix}.partial_image",
        "b64_json": png_b64(width, height, colour=(index * 60, 0, 0)),
        "created_at": 1,
        "size": f"{width}x{height}",
        "quality": "low",
        "background": "opaque",
        "output_format": "png",
        "partial_image_index": index,
    }


def completed(prefix="image_generation", width=1024, height=1024, usage=USAGE):
    return {**partial(0, prefix, width, height), "type": f"{prefix}.completed", "usage": usage}


def provider(fake, model="gpt-image-1.5"):
    return create(Upstream("openai", model=model, api_key=SECRET, timeout_s=9), fake.deps())


def streamed(job, **params):
    return job(**{"prompt": "a fox", "model": "gpt-image-1.5", "quality": "low", "stream": True, **params})


def size_of(data):
    return Image.open(io.BytesIO(data)).size


# --- OpenAI -------------------------------------------------------------------------------------------------


def test_openai_generation_streams_the_upstreams_partials_then_its_result(job):
    fake = FakeUpstream(sse(partial(0), partial(1), completed()))
    items = list(stream(provider(fake), streamed(job, partial_images=2)))

    sent = json.loads(fake.request.content)
    assert (sent["stream"], sent["partial_images"], sent["n"]) == (True, 2, 1)
    assert fake.request.headers["accept"] == "text/event-stream"
    assert str(fake.request.url) == "https://api.openai.com/v1/images/generations"
    assert [type(i) for i in items] == [PartialImage, PartialImage, ProviderResult]
    assert [i.index for i in items[:2]] == [0, 1]
    assert items[0].image == base64.b64decode(partial(0)["b64_json"])
    assert items[2].usage == USAGE


def test_openai_edit_streams_through_the_multipart_form(job):
    fake = FakeUpstream(sse(partial(0, "image_edit"), completed("image_edit")))
    edit = job(
        endpoint="edits",
        images=[upload(width=1024, height=1024)],
        prompt="add a moon",
        model="gpt-image-1.5",
        stream=True,
        partial_images=1,
    )
    items = list(stream(provider(fake), edit))
    assert str(fake.request.url) == "https://api.openai.com/v1/images/edits"
    fields = form_fields(fake.request)
    assert (fields["stream"], fields["partial_images"]) == ("true", "1")
    assert [type(i) for i in items] == [PartialImage, ProviderResult]


def test_upstream_partials_are_fitted_to_the_requested_size_and_format(job):
    fake = FakeUpstream(sse(partial(0, width=1536, height=1024), completed(width=1536, height=1024)))
    items = list(
        stream(provider(fake), streamed(job, partial_images=1, size="1024x1024", output_format="webp"))
    )
    assert [size_of(i.image if isinstance(i, PartialImage) else i.images[0]) for i in items] == [
        (1024, 1024)
    ] * 2


def test_a_stream_without_event_lines_and_with_done_is_read_too(job):
    fake = FakeUpstream(sse(partial(0), completed(), "[DONE]", event_names=False))
    assert [type(i) for i in stream(provider(fake), streamed(job, partial_images=1))] == [
        PartialImage,
        ProviderResult,
    ]


def test_an_upstream_refusing_the_stream_is_its_usual_error(job):
    fake = FakeUpstream(openai_error(429, "Slow down", headers={"retry-after": "3"}))
    with pytest.raises(ProviderError) as info:
        list(stream(provider(fake), streamed(job)))
    assert (info.value.code, info.value.retry, info.value.retry_after) == ("upstream_rate_limited", True, 3)


def test_an_error_event_mid_stream_is_a_provider_error(job):
    error = {
        "type": "error",
        "error": {"message": f"overloaded {SECRET}", "type": "server_error", "code": None},
    }
    fake = FakeUpstream(sse(partial(0), error))
    items = stream(provider(fake), streamed(job, partial_images=2))
    assert isinstance(next(items), PartialImage)
    with pytest.raises(ProviderError) as info:
        next(items)
    assert (info.value.code, info.value.retry) == ("upstream_error", True)
    assert SECRET not in str(info.value)


def test_a_safety_refusal_in_the_stream_is_final(job):
    error = {
        "type": "error",
        "error": {"message": "Rejected by the safety system.", "code": "moderation_blocked"},
    }
    fake = FakeUpstream(sse(error))
    with pytest.raises(ProviderError) as info:
        list(stream(provider(fake), streamed(job)))
    assert (info.value.status, info.value.code, info.value.fallover) == (
        400,
        "content_policy_violation",
        False,
    )
    assert "safety system" in str(info.value)


@pytest.mark.parametrize(
    ("answer", "what"),
    [
        (httpx.Response(200, json={"data": []}), "not an event stream"),
        (sse(partial(0)), "without its completed event"),
        (sse("not json"), "not JSON"),
    ],
)
def test_a_stream_that_is_not_openais_is_a_bad_response(job, answer, what):
    with pytest.raises(ProviderError) as info:
        list(stream(provider(FakeUpstream(answer)), streamed(job, partial_images=1)))
    assert info.value.code == "upstream_bad_response"
    assert what in str(info.value)


def test_a_dall_e_upstream_sends_only_its_result(job):
    fake = FakeUpstream(httpx.Response(200, json={"created": 1, "data": [{"b64_json": png_b64(1024, 1024)}]}))
    items = list(stream(provider(fake, model="dall-e-2"), streamed(job, partial_images=2)))
    assert [type(i) for i in items] == [ProviderResult]
    assert "stream" not in json.loads(fake.request.content)  # an ordinary request


# --- local and the default --------------------------------------------------------------------------------


def test_local_partials_are_coarse_renders_of_its_final_image(job):
    j = streamed(job, partial_images=3, size="1536x1024", output_format="jpeg")
    items = list(LocalProvider().stream(j))
    assert [type(i) for i in items] == [PartialImage] * 3 + [ProviderResult]
    assert items[-1].images == LocalProvider().generate(j).images  # the final image is the usual one
    assert {size_of(i.image) for i in items[:3]} == {(1536, 1024)}
    assert [Image.open(io.BytesIO(i.image)).format for i in items[:3]] == ["JPEG"] * 3


def test_partial_images_0_streams_the_result_alone(job):
    assert [type(i) for i in LocalProvider().stream(streamed(job, partial_images=0))] == [ProviderResult]


class OneShot:
    """A provider without a `stream` method, as Gemini's and Bedrock's are."""

    name = "oneshot"

    def supports(self, operation):
        return True

    def generate(self, job):
        return ProviderResult(images=[b"image"])


def test_a_provider_that_cannot_stream_sends_its_result_alone(job):
    assert list(stream(OneShot(), streamed(job, partial_images=3))) == [ProviderResult(images=[b"image"])]


# --- the router ----------------------------------------------------------------------------------------


class Flaky:
    """Fails its first `failures` streams before their first event (retryable), then streams local's."""

    name = "local"

    def __init__(self, failures):
        self.failures = failures
        self.calls = 0

    def supports(self, operation):
        return True

    def stream(self, job):
        self.calls += 1
        if self.calls <= self.failures:
            raise ProviderError("busy", code="upstream_error", retry=True)
        yield from LocalProvider().stream(job)


def test_a_stream_is_retried_until_its_first_event(job):
    flaky = Flaky(failures=1)
    router = Router(
        Settings(),
        {"gpt-image-1.5": [RouteSpec(provider="local", model="imagegate-local")]},
        {},
        Deps(aws=None),
        Logger(service="test", level="CRITICAL"),
        sleep=lambda seconds: None,
        factories={"local": lambda upstream, deps: flaky},
    )
    streamed_job = streamed(job, partial_images=1)
    result = router.stream(streamed_job, "req_1")
    assert flaky.calls == 2
    assert [(a.attempt, a.outcome) for a in result.attempts] == [(1, "retry"), (2, "ok")]
    assert [type(i) for i in result.events] == [PartialImage, ProviderResult]

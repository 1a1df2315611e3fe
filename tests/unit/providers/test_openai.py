"""The OpenAI provider against request/response shapes from OpenAI's Images API reference."""

import json

import httpx
import pytest

from imagegate.errors import ProviderError
from imagegate.providers import Upstream, run
from imagegate.providers.openai import STYLE_HINTS, create

from ..conftest import half_mask, upload
from .test_http import SECRET, FakeUpstream, form_fields, form_parts, openai_error, opened, png_b64

USAGE = {
    "input_tokens": 50,
    "output_tokens": 4160,
    "total_tokens": 4210,
    "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
}


def images_response(count, width, height, usage=None, revised_prompt=None):
    item = {"b64_json": png_b64(width, height)}
    if revised_prompt:
        item["revised_prompt"] = revised_prompt
    body = {"created": 1700000000, "data": [item] * count}
    if usage:
        body["usage"] = usage
    return httpx.Response(200, json=body)


def provider(fake, model, key=SECRET, **kw):
    return create(Upstream("openai", model=model, api_key=key, timeout_s=9, **kw), fake.deps())


def sent_json(request):
    assert request.headers["content-type"] == "application/json"
    return json.loads(request.content)


def test_gpt_generation_sends_every_gpt_parameter_and_keeps_usage(job):
    fake = FakeUpstream(images_response(2, 1024, 1536, usage=USAGE))
    j = job(
        prompt="a lighthouse",
        model="gpt-image-1.5",
        size="1024x1536",
        n=2,
        quality="high",
        output_format="webp",
        output_compression=80,
        background="transparent",
        moderation="low",
    )
    result = run(provider(fake, "gpt-image-1.5"), j)

    request = fake.request
    assert (request.method, str(request.url)) == ("POST", "https://api.openai.com/v1/images/generations")
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert sent_json(request) == {
        "model": "gpt-image-1.5",
        "prompt": "a lighthouse",
        "size": "1024x1536",
        "n": 2,
        "quality": "high",
        "output_format": "webp",
        "output_compression": 80,
        "background": "transparent",
        "moderation": "low",
    }
    assert request.extensions["timeout"]["read"] == 9
    assert [opened(img) for img in result.images] == [("WEBP", (1024, 1536))] * 2
    assert result.usage == USAGE
    assert result.revised_prompt is None


def test_defaults_are_left_to_the_upstream(job):
    fake = FakeUpstream(images_response(1, 1024, 1024, usage=USAGE))
    run(provider(fake, "gpt-image-1"), job(prompt="x", model="gpt-image-1"))
    assert sent_json(fake.request) == {
        "model": "gpt-image-1",
        "prompt": "x",
        "size": "1024x1024",
        "n": 1,
        "quality": "medium",
        "output_format": "png",
    }


def test_usage_is_passed_on_when_another_model_serves_the_contract(job):
    """Issue 8, item 2: dropping it sold gpt-image-1 per image while gpt-image-1.5 billed its tokens."""
    fake = FakeUpstream(images_response(1, 1024, 1024, usage=USAGE))
    result = run(provider(fake, "gpt-image-1.5"), job(prompt="x", model="gpt-image-1"))
    assert sent_json(fake.request)["model"] == "gpt-image-1.5"
    assert result.usage == USAGE


def test_dalle3_hd_wide_becomes_gpt_image_1_5_medium_then_fitted(job):
    fake = FakeUpstream(images_response(1, 1536, 1024, usage=USAGE))
    j = job(prompt="a fox", model="dall-e-3", size="1792x1024", quality="hd", style="natural")
    result = run(provider(fake, "gpt-image-1.5"), j)

    assert sent_json(fake.request) == {
        "model": "gpt-image-1.5",
        "prompt": f"a fox\n\n{STYLE_HINTS['natural']}",
        "size": "1536x1024",
        "n": 1,
        "quality": "medium",
        "output_format": "png",
    }
    assert [opened(img) for img in result.images] == [("PNG", (1792, 1024))]
    assert result.revised_prompt is None  # a GPT upstream has none, and none is invented
    assert result.usage == USAGE  # billed from it at the dearer of the two models' rates


def test_dalle3_standard_is_low_and_vivid_by_default(job):
    fake = FakeUpstream(images_response(1, 1024, 1536))
    run(provider(fake, "gpt-image-1.5"), job(prompt="a fox", model="dall-e-3", size="1024x1792"))
    body = sent_json(fake.request)
    assert (body["quality"], body["size"], body["prompt"]) == (
        "low",
        "1024x1536",
        f"a fox\n\n{STYLE_HINTS['vivid']}",
    )


def test_route_options_choose_the_quality_mapping(job):
    fake = FakeUpstream(images_response(1, 1024, 1024))
    upstream_options = {"quality": {"hd": "high"}}
    run(
        provider(fake, "gpt-image-1.5", options=upstream_options),
        job(prompt="x", model="dall-e-3", quality="hd"),
    )
    assert sent_json(fake.request)["quality"] == "high"


def test_dalle2_small_square_becomes_mini_1024_low_then_fitted(job):
    fake = FakeUpstream(images_response(3, 1024, 1024, usage=USAGE))
    result = run(
        provider(fake, "gpt-image-1-mini"), job(prompt="a cat", model="dall-e-2", size="256x256", n=3)
    )

    assert sent_json(fake.request) == {
        "model": "gpt-image-1-mini",
        "prompt": "a cat",
        "size": "1024x1024",
        "n": 3,
        "quality": "low",
        "output_format": "png",
    }
    assert [opened(img) for img in result.images] == [("PNG", (256, 256))] * 3
    assert result.usage == USAGE


def test_gpt_image_2_free_form_size_passes_through(job):
    fake = FakeUpstream(images_response(1, 2048, 1152, usage=USAGE))
    result = run(provider(fake, "gpt-image-2"), job(prompt="x", model="gpt-image-2", size="2048x1152"))
    assert sent_json(fake.request)["size"] == "2048x1152"
    assert [opened(img) for img in result.images] == [("PNG", (2048, 1152))]
    assert result.usage == USAGE


def test_free_form_size_on_a_fixed_size_upstream_is_the_nearest_standard_one(job):
    fake = FakeUpstream(images_response(1, 1536, 1024))
    result = run(provider(fake, "gpt-image-1.5"), job(prompt="x", model="gpt-image-2", size="2048x1152"))
    assert sent_json(fake.request)["size"] == "1536x1024"
    assert [opened(img) for img in result.images] == [("PNG", (2048, 1152))]


def test_legacy_size_on_gpt_image_2_uses_a_standard_size(job):
    fake = FakeUpstream(images_response(1, 1024, 1024))
    run(provider(fake, "gpt-image-2"), job(prompt="x", model="dall-e-2", size="256x256"))
    assert sent_json(fake.request)["size"] == "1024x1024"  # 256x256 is under gpt-image-2's pixel minimum


def test_fewer_images_than_asked_are_returned_as_delivered(job):
    fake = FakeUpstream(images_response(1, 1024, 1024))
    result = run(provider(fake, "gpt-image-1.5"), job(prompt="x", model="gpt-image-1.5", n=2))
    assert len(result.images) == 1


def test_dalle3_upstream_speaks_the_dalle_dialect_and_returns_its_revised_prompt(job):
    fake = FakeUpstream(images_response(1, 1792, 1024, revised_prompt="A red fox in snow."))
    j = job(prompt="a fox", model="dall-e-3", size="1792x1024", quality="hd", response_format="url")
    result = run(provider(fake, "dall-e-3"), j)

    assert sent_json(fake.request) == {
        "model": "dall-e-3",
        "prompt": "a fox",
        "size": "1792x1024",
        "n": 1,
        "response_format": "b64_json",
        "quality": "hd",
        "style": "vivid",
    }
    assert [opened(img) for img in result.images] == [("PNG", (1792, 1024))]
    assert result.revised_prompt == "A red fox in snow."
    assert result.usage is None


def test_dalle3_upstream_makes_n_images_in_n_calls(job):
    fake = FakeUpstream(images_response(1, 1024, 1024))
    result = run(provider(fake, "dall-e-3"), job(prompt="x", model="gpt-image-1.5", n=3, quality="high"))
    assert len(fake.requests) == 3
    assert {(b["n"], b["quality"], "style" in b) for b in map(sent_json, fake.requests)} == {(1, "hd", False)}
    assert len(result.images) == 3


def test_dalle2_upstream_generation(job):
    fake = FakeUpstream(images_response(2, 512, 512))
    result = run(provider(fake, "dall-e-2"), job(prompt="x", model="dall-e-2", size="512x512", n=2))
    assert sent_json(fake.request) == {
        "model": "dall-e-2",
        "prompt": "x",
        "size": "512x512",
        "n": 2,
        "response_format": "b64_json",
    }
    assert [opened(img) for img in result.images] == [("PNG", (512, 512))] * 2


def test_gpt_edit_sends_image_array_mask_and_fields_as_multipart(job):
    fake = FakeUpstream(images_response(1, 1024, 1024, usage=USAGE))
    first, second, mask = upload(), upload(fmt="JPEG", mode="RGB"), half_mask(64, 64)
    j = job(
        "edits",
        images=[first, second],
        mask=mask,
        prompt="add a hat",
        model="gpt-image-1.5",
        size="1024x1024",
        input_fidelity="high",
        background="opaque",
    )
    result = run(provider(fake, "gpt-image-1.5"), j)

    request = fake.request
    assert str(request.url) == "https://api.openai.com/v1/images/edits"
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    files = [(name, filename, ctype, data) for name, filename, ctype, data in form_parts(request) if filename]
    assert files == [
        ("image[]", "image_0.png", "image/png", first.data),
        ("image[]", "image_1.jpg", "image/jpeg", second.data),
        ("mask", "mask.png", "image/png", mask.data),
    ]
    assert form_fields(request) == {
        "model": "gpt-image-1.5",
        "prompt": "add a hat",
        "size": "1024x1024",
        "n": "1",
        "quality": "medium",
        "output_format": "png",
        "background": "opaque",
        "input_fidelity": "high",
    }
    assert [opened(img) for img in result.images] == [("PNG", (1024, 1024))]
    assert result.usage == USAGE


def test_mini_upstream_is_not_sent_input_fidelity(job):
    fake = FakeUpstream(images_response(1, 1024, 1024))
    j = job("edits", images=[upload()], prompt="x", model="gpt-image-1.5", input_fidelity="high")
    run(provider(fake, "gpt-image-1-mini"), j)
    assert "input_fidelity" not in form_fields(fake.request)


def test_dalle2_edit_without_mask_sends_the_images_alpha_as_the_mask(job):
    fake = FakeUpstream(images_response(1, 1024, 1024))
    image = upload(colour=(200, 40, 40, 0))
    result = run(
        provider(fake, "gpt-image-1-mini"), job("edits", images=[image], prompt="x", model="dall-e-2")
    )

    files = [
        (name, filename, ctype, data) for name, filename, ctype, data in form_parts(fake.request) if filename
    ]
    assert files == [
        ("image[]", "image_0.png", "image/png", image.data),
        ("mask", "mask.png", "image/png", image.data),
    ]
    fields = form_fields(fake.request)
    assert (fields["model"], fields["size"], fields["quality"]) == ("gpt-image-1-mini", "1024x1024", "low")
    assert [opened(img) for img in result.images] == [("PNG", (1024, 1024))]


def test_dalle2_upstream_edit_sends_one_image_part(job):
    fake = FakeUpstream(images_response(1, 256, 256))
    image, mask = upload(), half_mask(64, 64)
    j = job("edits", images=[image], mask=mask, prompt="x", model="dall-e-2", size="256x256")
    result = run(provider(fake, "dall-e-2"), j)

    files = [(name, filename, ctype) for name, filename, ctype, _ in form_parts(fake.request) if filename]
    assert files == [("image", "image.png", "image/png"), ("mask", "mask.png", "image/png")]
    assert form_fields(fake.request) == {
        "model": "dall-e-2",
        "prompt": "x",
        "size": "256x256",
        "n": "1",
        "response_format": "b64_json",
    }
    assert [opened(img) for img in result.images] == [("PNG", (256, 256))]


def test_dalle2_upstream_variation(job):
    fake = FakeUpstream(images_response(2, 512, 512))
    image = upload()
    result = run(provider(fake, "dall-e-2"), job("variations", images=[image], size="512x512", n=2))

    assert str(fake.request.url) == "https://api.openai.com/v1/images/variations"
    assert [(n, f, c, d) for n, f, c, d in form_parts(fake.request) if f] == [
        ("image", "image.png", "image/png", image.data)
    ]
    assert form_fields(fake.request) == {
        "model": "dall-e-2",
        "size": "512x512",
        "n": "2",
        "response_format": "b64_json",
    }
    assert [opened(img) for img in result.images] == [("PNG", (512, 512))] * 2


@pytest.mark.parametrize(
    ("model", "options", "expected"),
    [
        ("gpt-image-1.5", {}, {"generate": True, "edit": True, "vary": False}),
        ("gpt-image-1-mini", {}, {"generate": True, "edit": True, "vary": False}),
        ("dall-e-2", {}, {"generate": True, "edit": True, "vary": True}),
        ("dall-e-3", {}, {"generate": True, "edit": False, "vary": False}),
        ("legacy-sketcher", {"dialect": "dall-e"}, {"generate": True, "edit": True, "vary": True}),
        ("dall-e-2", {"dialect": "gpt-image"}, {"generate": True, "edit": True, "vary": False}),
    ],
)
def test_supports(model, options, expected):
    p = provider(FakeUpstream(httpx.Response(500)), model, options=options)
    assert {op: p.supports(op) for op in expected} == expected


def test_dialect_option_is_checked():
    with pytest.raises(ValueError, match="dialect"):
        provider(FakeUpstream(httpx.Response(500)), "x", options={"dialect": "dalle"})


def test_dialect_override_sends_dalle_fields_to_any_name(job):
    fake = FakeUpstream(images_response(1, 1024, 1024))
    run(provider(fake, "legacy-sketcher", options={"dialect": "dall-e"}), job(prompt="x", model="dall-e-2"))
    assert sent_json(fake.request)["response_format"] == "b64_json"


def test_base_url_is_used_and_no_key_means_no_authorization(job):
    fake = FakeUpstream(images_response(1, 1024, 1024))
    run(provider(fake, "gpt-image-1.5", key="", base_url="https://proxy.example/openai/v1/"), job(prompt="x"))
    assert str(fake.request.url) == "https://proxy.example/openai/v1/images/generations"
    assert "authorization" not in fake.request.headers


@pytest.mark.parametrize(
    ("answer", "status", "code", "retry", "fallover", "retry_after"),
    [
        (
            openai_error(429, "Rate limit", "rate_limit_exceeded", headers={"retry-after": "3"}),
            502,
            "upstream_rate_limited",
            True,
            True,
            3.0,
        ),
        (
            openai_error(500, "The server had an error", type="server_error"),
            502,
            "upstream_error",
            True,
            True,
            None,
        ),
        (httpx.ConnectTimeout("slow"), 504, "upstream_timeout", True, True, None),
        (
            openai_error(401, f"Incorrect API key provided: {SECRET}", "invalid_api_key"),
            502,
            "upstream_auth_failed",
            False,
            True,
            None,
        ),
        (
            openai_error(400, "Rejected by the safety system.", "moderation_blocked"),
            400,
            "content_policy_violation",
            False,
            False,
            None,
        ),
        (
            openai_error(404, "The model does not exist", "model_not_found"),
            502,
            "upstream_model_not_found",
            False,
            True,
            None,
        ),
    ],
)
def test_upstream_failures_map_to_provider_errors(job, answer, status, code, retry, fallover, retry_after):
    with pytest.raises(ProviderError) as info:
        run(provider(FakeUpstream(answer), "gpt-image-1.5"), job(prompt="x"))
    err = info.value
    assert (err.status, err.code, err.retry, err.fallover, err.retry_after) == (
        status,
        code,
        retry,
        fallover,
        retry_after,
    )
    assert SECRET not in str(err)


@pytest.mark.parametrize(
    "body",
    [
        {"data": []},
        {"data": ["x"]},
        {"data": [{"url": "https://x"}]},
        {"error": None},
        {"data": [{"b64_json": "not base64!"}]},
        {"data": [{"b64_json": "aGVsbG8="}]},  # base64 of "hello": not an image
    ],
)
def test_answers_without_image_data_are_bad_responses(job, body):
    with pytest.raises(ProviderError) as info:
        run(provider(FakeUpstream(httpx.Response(200, json=body)), "gpt-image-1.5"), job(prompt="x"))
    assert (info.value.code, info.value.retry, info.value.fallover) == ("upstream_bad_response", False, True)

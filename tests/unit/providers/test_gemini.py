"""The Gemini provider against the REST generateContent shapes in Google's API reference."""

import base64
import io
import json
import random

import httpx
import pytest
from PIL import Image

from imagegate.errors import ProviderError
from imagegate.inputs.images import inspect
from imagegate.providers import Upstream, run
from imagegate.providers.gemini import VARY_INSTRUCTION, aspect_ratio, create

from ..conftest import half_mask, upload
from .test_http import SECRET, FakeUpstream, opened, png_b64

MODEL = "gemini-3.1-flash-image"
URL = f"https://generativelanguage.googleapis.com/v1beta/models/{MODEL}:generateContent"
GREEN = (10, 200, 30)


def image_answer(width, height, key="inlineData", mime="mimeType", text=True):
    parts = [{"text": "Here is your image."}] if text else []
    parts.append({key: {mime: "image/png", "data": png_b64(width, height, GREEN)}})
    body = {"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}]}
    return httpx.Response(200, json=body)


def provider(fake, key=SECRET, **kw):
    return create(Upstream("gemini", model=MODEL, api_key=key, timeout_s=11, **kw), fake.deps())


def sent(request):
    return json.loads(request.content)


def test_generation_request_and_fitted_output(job):
    fake = FakeUpstream(image_answer(1248, 832))
    result = run(provider(fake), job(prompt="a red kite", model="gpt-image-1.5", size="1536x1024"))

    request = fake.request
    assert (request.method, str(request.url)) == ("POST", URL)
    assert request.headers["x-goog-api-key"] == SECRET
    assert "authorization" not in request.headers
    assert request.extensions["timeout"]["read"] == 11
    assert sent(request) == {
        "contents": [{"parts": [{"text": "a red kite"}]}],
        "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"aspectRatio": "3:2"}},
    }
    assert [opened(img) for img in result.images] == [("PNG", (1536, 1024))]
    assert (result.usage, result.revised_prompt) == (None, None)


def test_output_format_is_the_jobs(job):
    fake = FakeUpstream(image_answer(1024, 1024))
    result = run(provider(fake), job(prompt="x", model="gpt-image-1.5", output_format="jpeg"))
    assert [opened(img) for img in result.images] == [("JPEG", (1024, 1024))]


@pytest.mark.parametrize(
    ("size", "ratio"),
    [
        ((1024, 1024), "1:1"),
        ((1536, 1024), "3:2"),
        ((1024, 1536), "2:3"),
        ((1792, 1024), "16:9"),
        ((1024, 1792), "9:16"),
        ((2048, 1152), "16:9"),
        ((1280, 1024), "5:4"),
        ((1024, 1280), "4:5"),
        ((1200, 900), "4:3"),
        ((3840, 1280), "21:9"),
        ((256, 256), "1:1"),
    ],
)
def test_nearest_aspect_ratio(size, ratio):
    assert aspect_ratio(*size) == ratio


@pytest.mark.parametrize(
    ("size", "image_size"), [("1536x1024", None), ("2048x1152", "2K"), ("3840x2160", "4K")]
)
def test_large_sizes_ask_for_a_larger_render(job, size, image_size):
    fake = FakeUpstream(image_answer(64, 36))
    run(provider(fake), job(prompt="x", model="gpt-image-2", size=size))
    assert sent(fake.request)["generationConfig"]["imageConfig"].get("imageSize") == image_size


def test_snake_case_inline_data_and_a_keyless_proxy_are_accepted(job):
    fake = FakeUpstream(image_answer(1024, 1024, key="inline_data", mime="mime_type", text=False))
    result = run(provider(fake, key="", base_url="https://gemini-proxy.example/v1beta/"), job(prompt="x"))
    assert str(fake.request.url) == f"https://gemini-proxy.example/v1beta/models/{MODEL}:generateContent"
    assert "x-goog-api-key" not in fake.request.headers
    assert len(result.images) == 1


def test_draft_thought_images_are_skipped(job):
    parts = [
        {"inlineData": {"mimeType": "image/png", "data": png_b64(32, 32, (255, 0, 0))}, "thought": True},
        {"inlineData": {"mimeType": "image/png", "data": png_b64(32, 32, GREEN)}},
    ]
    fake = FakeUpstream(httpx.Response(200, json={"candidates": [{"content": {"parts": parts}}]}))
    result = run(provider(fake), job(prompt="x", model="gpt-image-1.5", size="1024x1024"))
    assert Image.open(io.BytesIO(result.images[0])).convert("RGB").getpixel((5, 5)) == GREEN


def test_n_images_are_n_parallel_calls(job):
    fake = FakeUpstream(image_answer(1024, 1024))
    result = run(provider(fake), job(prompt="x", model="gpt-image-1.5", n=3))
    assert len(fake.requests) == 3
    assert len({r.content for r in fake.requests}) == 1
    assert len(result.images) == 3


def test_partial_failure_returns_the_images_that_were_made(job):
    fake = FakeUpstream(
        httpx.Response(500, json={"error": {"code": 500, "status": "INTERNAL"}}), image_answer(64, 64)
    )
    result = run(provider(fake), job(prompt="x", model="gpt-image-1.5", n=3))
    assert len(fake.requests) == 3
    assert [opened(img) for img in result.images] == [("PNG", (1024, 1024))] * 2


def test_all_calls_failing_raises_the_error(job):
    body = {"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}}
    fake = FakeUpstream(httpx.Response(429, json=body, headers={"retry-after": "2"}))
    with pytest.raises(ProviderError) as info:
        run(provider(fake), job(prompt="x", model="gpt-image-1.5", n=2))
    assert (info.value.code, info.value.retry, info.value.retry_after) == ("upstream_rate_limited", True, 2.0)


def test_auth_failure_never_shows_the_key(job):
    body = {
        "error": {"code": 403, "message": f"Permission denied for {SECRET}", "status": "PERMISSION_DENIED"}
    }
    with pytest.raises(ProviderError) as info:
        run(provider(FakeUpstream(httpx.Response(403, json=body))), job(prompt="x"))
    assert (info.value.status, info.value.code, info.value.fallover) == (502, "upstream_auth_failed", True)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}},
        {"candidates": [{"finishReason": "IMAGE_SAFETY"}]},
        {"candidates": [{"content": {"parts": [{"text": "I can't make that."}]}, "finishReason": "SAFETY"}]},
        {"candidates": [{"finishReason": "IMAGE_RECITATION"}]},
    ],
)
def test_safety_blocks_are_content_policy(job, body):
    with pytest.raises(ProviderError) as info:
        run(provider(FakeUpstream(httpx.Response(200, json=body))), job(prompt="x"))
    err = info.value
    assert (err.status, err.code, err.retry, err.fallover) == (400, "content_policy_violation", False, False)
    assert "safety system" in str(err)


def test_a_text_only_answer_is_worth_a_retry(job):
    body = {
        "candidates": [{"content": {"parts": [{"text": "Sure! Here's a poem."}]}, "finishReason": "STOP"}]
    }
    with pytest.raises(ProviderError) as info:
        run(provider(FakeUpstream(httpx.Response(200, json=body))), job(prompt="x"))
    assert (info.value.status, info.value.code, info.value.retry) == (502, "upstream_no_image", True)
    assert "STOP" in str(info.value)


def test_edit_sends_every_image_inline_after_the_prompt(job):
    fake = FakeUpstream(image_answer(1024, 1024))
    first, second = upload(), upload(fmt="JPEG", mode="RGB")
    j = job("edits", images=[first, second], prompt="add a hat", model="gpt-image-1.5", size="1024x1536")
    result = run(provider(fake), j)

    assert sent(fake.request)["contents"] == [
        {
            "parts": [
                {"text": "add a hat"},
                {"inline_data": {"mime_type": "image/png", "data": base64.b64encode(first.data).decode()}},
                {"inline_data": {"mime_type": "image/jpeg", "data": base64.b64encode(second.data).decode()}},
            ]
        }
    ]
    assert sent(fake.request)["generationConfig"]["imageConfig"] == {"aspectRatio": "2:3"}
    assert [opened(img) for img in result.images] == [("PNG", (1024, 1536))]


def noise_png(size, alpha=None):
    rng = random.Random(7)
    img = Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
    if alpha is not None:
        img.putalpha(alpha)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return inspect(buf.getvalue(), "image")


def colours(img):
    return {colour for _, colour in img.getcolors(maxcolors=img.width * img.height)}


def halves(data):
    img = Image.open(io.BytesIO(data)).convert("RGBA")
    w, h = img.size
    return img.crop((0, 0, w // 2, h)), img.crop((w // 2, 0, w, h))


def test_mask_keeps_the_original_where_opaque_and_takes_gemini_where_transparent(job):
    fake = FakeUpstream(image_answer(1024, 1024))
    original = noise_png(256)
    j = job(
        "edits", images=[original], mask=half_mask(256, 256), prompt="x", model="dall-e-2", size="256x256"
    )
    result = run(provider(fake), j)

    # Gemini was not told about the mask: it has no such input.
    assert [p.keys() for p in sent(fake.request)["contents"][0]["parts"]] == [{"text"}, {"inline_data"}]
    assert opened(result.images[0]) == ("PNG", (256, 256))
    kept, edited = halves(result.images[0])
    assert kept.tobytes() == halves(original.data)[0].tobytes()
    assert colours(edited) == {(*GREEN, 255)}


def test_dalle2_edit_without_mask_uses_the_images_own_transparency(job):
    fake = FakeUpstream(image_answer(1024, 1024))
    alpha = Image.new("L", (256, 256), 255)
    alpha.paste(0, (128, 0, 256, 256))
    original = noise_png(256, alpha)
    result = run(
        provider(fake), job("edits", images=[original], prompt="x", model="dall-e-2", size="256x256")
    )

    kept, edited = halves(result.images[0])
    assert kept.tobytes() == halves(original.data)[0].tobytes()
    assert colours(edited) == {(*GREEN, 255)}


def test_gpt_edit_without_mask_is_geminis_image(job):
    fake = FakeUpstream(image_answer(1024, 1024))
    result = run(
        provider(fake),
        job("edits", images=[noise_png(64)], prompt="x", model="gpt-image-1.5", size="1024x1024"),
    )
    assert colours(Image.open(io.BytesIO(result.images[0])).convert("RGB")) == {GREEN}


def test_variation_sends_the_image_with_a_fixed_instruction(job):
    fake = FakeUpstream(image_answer(1024, 1024))
    image = upload()
    result = run(provider(fake), job("variations", images=[image], size="512x512", n=2))

    assert len(fake.requests) == 2
    assert sent(fake.requests[0])["contents"] == [
        {
            "parts": [
                {"text": VARY_INSTRUCTION},
                {"inline_data": {"mime_type": "image/png", "data": base64.b64encode(image.data).decode()}},
            ]
        }
    ]
    assert [opened(img) for img in result.images] == [("PNG", (512, 512))] * 2


def test_supports_every_operation():
    p = provider(FakeUpstream(httpx.Response(500)))
    assert all(p.supports(op) for op in ("generate", "edit", "vary"))


@pytest.mark.parametrize(
    "body",
    [
        {"candidates": "nope"},
        {"candidates": [{"content": {"parts": ["x"]}}]},
        {
            "candidates": [
                {"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "aGVsbG8="}}]}}
            ]
        },
    ],
)
def test_answers_of_an_odd_shape_are_bad_responses_that_fall_over(job, body):
    with pytest.raises(ProviderError) as info:
        run(provider(FakeUpstream(httpx.Response(200, json=body))), job(prompt="x"))
    assert (info.value.code, info.value.retry, info.value.fallover) == ("upstream_bad_response", False, True)


def test_a_truncated_image_is_a_bad_response_not_a_500(job):
    """A PNG whose header reads but whose pixels are cut off: found when it is fitted to the size."""
    data = base64.b64decode(png_b64(300, 200, GREEN))
    cut = base64.b64encode(data[: len(data) // 2]).decode()
    body = {"candidates": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": cut}}]}}]}
    with pytest.raises(ProviderError) as info:
        run(provider(FakeUpstream(httpx.Response(200, json=body))), job(prompt="x"))
    assert (info.value.code, info.value.fallover) == ("upstream_bad_response", True)

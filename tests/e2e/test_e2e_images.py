"""What a customer sees on success: the OpenAI SDK against imagegate over HTTP, images decoded, money counted.

Expected charges are OpenAI's published per-image prices (docs/money.md, "Prices"), written out in micro-USD.
"""

import base64
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from .helpers import SPEC_MISSING, SPEC_PATH, decode, encoded, png_bytes

DALLE2_512 = 18_000
DALLE2_256 = 16_000
DALLE3_HD_WIDE = 120_000
GPT_IMAGE_15_LOW_SQUARE = 9_000
GPT_IMAGE_15_LOW_WIDE = 13_000


def raw_json(raw):
    """Status 200, the local provider named, and the body as JSON."""
    assert raw.status_code == 200, raw.text
    assert raw.headers["x-imagegate-provider"] == "local"
    assert raw.headers["x-request-id"]
    return raw.http_response.json()


def fetch(http, url):
    """GET a presigned URL as a browser would, with no imagegate credentials."""
    response = http.get(url)
    assert response.status_code == 200, response.text
    return response


def test_dalle2_url_images_are_fetchable_pngs_for_an_hour_and_cost_two_images(user, validate_schema, http):
    before = user.balance()

    raw = user.client.images.with_raw_response.generate(
        model="dall-e-2", prompt="a lighthouse at dusk", n=2, size="512x512"
    )

    body = raw_json(raw)
    validate_schema(body)
    result = raw.parse()
    assert len(result.data) == 2
    urls = [item.url for item in result.data]
    assert all(urls) and not any(item.b64_json for item in result.data)
    contents = []
    for url in urls:
        assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["3600"]
        response = fetch(http, url)
        assert response.headers["content-type"] == "image/png"
        img = decode(response.content)
        assert (img.format, img.size) == ("PNG", (512, 512))
        contents.append(response.content)
    assert contents[0] != contents[1], "n=2 should give two different images"
    assert before - user.balance() == 2 * DALLE2_512

    keys = user.outputs()
    assert len(keys) == 2
    for key in keys:
        head = user.stack.aws.s3.head_object(Bucket=user.stack.settings.bucket, Key=key)
        assert head["ServerSideEncryption"] == "AES256"
        assert head["ContentType"] == "image/png"


def test_gpt_image_15_defaults_to_b64_json_and_echoes_its_settings(user, validate_schema):
    before = user.balance()

    raw = user.client.images.with_raw_response.generate(
        model="gpt-image-1.5", prompt="a paper boat", quality="low", size="1536x1024", output_format="jpeg"
    )

    body = raw_json(raw)
    validate_schema(body)
    assert (body["size"], body["quality"], body["output_format"]) == ("1536x1024", "low", "jpeg")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert "url" not in body["data"][0]
    img = decode(base64.b64decode(body["data"][0]["b64_json"]))
    assert (img.format, img.size) == ("JPEG", (1536, 1024))
    assert before - user.balance() == GPT_IMAGE_15_LOW_WIDE


def test_dalle3_hd_wide_returns_a_revised_prompt_and_costs_the_hd_wide_price(user, validate_schema, http):
    before = user.balance()

    raw = user.client.images.with_raw_response.generate(
        model="dall-e-3", prompt="a glass city under the sea", size="1792x1024", quality="hd"
    )

    body = raw_json(raw)
    validate_schema(body)
    result = raw.parse()
    assert len(result.data) == 1
    assert result.data[0].revised_prompt
    img = decode(fetch(http, result.data[0].url).content)
    assert img.size == (1792, 1024)
    assert before - user.balance() == DALLE3_HD_WIDE


def test_gpt_image_2_free_form_size_is_rendered_at_that_size(user, validate_schema):
    before = user.balance()

    raw = user.client.images.with_raw_response.generate(
        model="gpt-image-2", prompt="a wide mountain panorama", size="1536x864", quality="low"
    )

    body = raw_json(raw)
    # The spec's ImagesResponse.size enum lists only 1024x1024, 1024x1536 and 1536x1024, so it cannot
    # express gpt-image-2's free-form sizes (reference/SOURCE.txt): validate everything but `size`.
    validate_schema(body, drop=("size",))
    assert body["size"] == "1536x864"
    img = decode(base64.b64decode(body["data"][0]["b64_json"]))
    assert img.size == (1536, 864)
    # docs/money.md: sizes other than 1024x1024 are priced by area, rounded up to the micro-dollar:
    # 6000 * (1536 * 864) / (1024 * 1024) = 7593.75.
    assert before - user.balance() == 7_594


def test_dalle2_edit_changes_only_the_masks_transparent_area(user, validate_schema):
    original = (10, 200, 30, 255)
    source = png_bytes(256, 256, colour=original)
    mask = Image.new("RGBA", (256, 256), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 128, 256))  # left half transparent: edit there, keep the right half
    before = user.balance()

    raw = user.client.images.with_raw_response.edit(
        model="dall-e-2",
        image=("source.png", source, "image/png"),
        mask=("mask.png", encoded(mask, "PNG"), "image/png"),
        prompt="a red balloon",
        size="512x512",
        response_format="b64_json",
    )

    body = raw_json(raw)
    validate_schema(body)
    img = decode(base64.b64decode(body["data"][0]["b64_json"])).convert("RGBA")
    assert img.size == (512, 512)
    # Scaled 2x: the kept half is x >= 256; stay clear of the resampled boundary.
    kept = img.crop((272, 0, 512, 512))
    assert kept.getcolors() == [(kept.width * kept.height, original)]
    assert img.getpixel((384, 256)) == original
    edited = img.crop((0, 0, 240, 512))
    unchanged = sum(count for count, colour in edited.getcolors(maxcolors=512 * 512) if colour == original)
    assert unchanged < edited.width * edited.height // 10, "the transparent area was not redrawn"
    assert img.getpixel((64, 256)) != original
    assert before - user.balance() == DALLE2_512


def test_gpt_image_15_edit_takes_two_images_as_image_array_parts(user, validate_schema):
    first = png_bytes(64, 64, colour=(200, 40, 40, 255))
    second = encoded(Image.new("RGB", (96, 64), (40, 40, 200)), "JPEG")
    before = user.balance()

    # A list makes the SDK send repeated `image[]` parts.
    raw = user.client.images.with_raw_response.edit(
        model="gpt-image-1.5",
        image=[("first.png", first, "image/png"), ("second.jpg", second, "image/jpeg")],
        prompt="put them side by side",
        size="1024x1024",
        quality="low",
    )

    body = raw_json(raw)
    validate_schema(body)
    assert (body["size"], body["quality"], body["output_format"]) == ("1024x1024", "low", "png")
    assert body["usage"]["input_tokens_details"]["image_tokens"] > 0
    img = decode(base64.b64decode(body["data"][0]["b64_json"]))
    assert (img.format, img.size) == ("PNG", (1024, 1024))
    assert before - user.balance() == GPT_IMAGE_15_LOW_SQUARE


def test_gpt_image_15_edit_without_mask_does_not_return_the_input_unchanged(user):
    red = (200, 40, 40, 255)

    result = user.client.images.edit(
        model="gpt-image-1.5",
        image=("opaque.png", png_bytes(64, 64, colour=red), "image/png"),
        prompt="a blue whale",
        size="1024x1024",
        quality="low",
    )

    img = decode(base64.b64decode(result.data[0].b64_json)).convert("RGBA")
    unchanged = img.getcolors(maxcolors=1024 * 1024)
    assert unchanged != [(1024 * 1024, red)], "the edit returned the input, only scaled up"


def test_gpt_image_15_edit_takes_numbered_image_parts_as_curl_sends_them(user, validate_schema, http):
    """docs/models.md: `image`, `image[]` and `image[0]` part names are all accepted."""
    files = [
        ("image[0]", ("a.png", png_bytes(64, 64), "image/png")),
        ("image[1]", ("b.png", png_bytes(32, 32, colour=(0, 0, 255, 255)), "image/png")),
    ]
    before = user.balance()

    response = http.post(
        f"{user.stack.base_url}/v1/images/edits",
        headers={"Authorization": f"Bearer {user.key}"},
        data={"model": "gpt-image-1.5", "prompt": "a collage", "quality": "low", "size": "1024x1024"},
        files=files,
    )

    assert response.status_code == 200, response.text
    body = response.json()
    validate_schema(body)
    assert decode(base64.b64decode(body["data"][0]["b64_json"])).size == (1024, 1024)
    assert before - user.balance() == GPT_IMAGE_15_LOW_SQUARE


def test_dalle2_variations_return_two_pngs_of_the_requested_size(user, validate_schema, http):
    before = user.balance()

    raw = user.client.images.with_raw_response.create_variation(
        model="dall-e-2",
        image=("source.png", png_bytes(128, 128, colour=(250, 120, 0, 255)), "image/png"),
        n=2,
        size="256x256",
    )

    body = raw_json(raw)
    validate_schema(body)
    result = raw.parse()
    assert len(result.data) == 2
    for item in result.data:
        img = decode(fetch(http, item.url).content)
        assert (img.format, img.size) == ("PNG", (256, 256))
    assert before - user.balance() == 2 * DALLE2_256
    assert len(user.outputs()) == 2


def test_openapi_spec_is_present(validate_schema):
    """Every 200 body above is validated against the spec; say so loudly when it cannot be."""
    if validate_schema.spec is None:
        pytest.skip(SPEC_MISSING)
    assert "ImagesResponse" in validate_schema.spec["components"]["schemas"], SPEC_PATH


def test_multipart_content_type_is_matched_without_regard_to_case(user, http):
    # Media types are case-insensitive (RFC 9110); some clients and proxies send `Multipart/Form-Data`.
    request = http.build_request(
        "POST",
        f"{user.stack.base_url}/v1/images/variations",
        headers={"Authorization": f"Bearer {user.key}"},
        data={"size": "256x256", "response_format": "b64_json"},
        files=[("image", ("a.png", png_bytes(64, 64), "image/png"))],
    )
    request.headers["content-type"] = request.headers["content-type"].replace(
        "multipart/form-data", "Multipart/Form-Data"
    )

    response = http.send(request)

    assert response.status_code == 200, response.text
    assert decode(base64.b64decode(response.json()["data"][0]["b64_json"])).size == (256, 256)

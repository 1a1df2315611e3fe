"""Inputs past the request limit, as a customer uses them against the dev stack: the OpenAI SDK asks for an
upload, the bytes go to the emulated S3 by the presigned POST (no imagegate credentials), and the SDK edits
them through the JSON form of /v1/images/edits, with balances exact to the micro-dollar."""

import base64
import random
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from openai.types import ImagesResponse
from PIL import Image

from .helpers import decode, encoded, png_bytes

GPT_IMAGE_15_LOW_SQUARE = 9_000  # docs/money.md, "Prices"


def create_upload(user):
    """POST /v1/images/uploads through the SDK's raw request (it has no method for it)."""
    return user.client.post("/images/uploads", cast_to=object)


def send(http, upload, data, content_type="image/png"):
    """The presigned POST, as a browser form or curl sends it: the fields, the content type, the file last."""
    fields = {**upload["upload_fields"], "Content-Type": content_type}
    response = http.post(upload["upload_url"], data=fields, files={"file": ("input", data, content_type)})
    assert response.status_code in (200, 204), response.text
    return upload["id"]


def json_edit(user, images, **params):
    """The JSON form of an edit through the SDK's raw request, parsed as the SDK's ImagesResponse."""
    body = {"model": "gpt-image-1.5", "prompt": "a lighthouse", "quality": "low", "size": "1024x1024"}
    return user.client.post(
        "/images/edits", body={**body, "images": images, **params}, cast_to=ImagesResponse
    )


def noise_png(width, height, seed=11):
    """An incompressible PNG: its size is about its pixels' (3 bytes each)."""
    pixels = random.Random(seed).randbytes(width * height * 3)
    return encoded(Image.frombytes("RGB", (width, height), pixels), "PNG")


def test_an_upload_goes_to_the_emulated_s3_and_the_sdk_edits_it_by_file_id(user, http, validate_schema):
    before = user.balance()

    upload = create_upload(user)
    assert (upload["object"], upload["max_bytes"]) == ("upload", 50 * 1024 * 1024)
    # The URL reaches the emulator the stack uses, on 127.0.0.1, not AWS.
    assert urlsplit(upload["upload_url"]).netloc == urlsplit(user.stack.aws._endpoint_url).netloc
    file_id = send(http, upload, png_bytes(200, 100))
    assert user.stack.objects_under(f"uploads/{user.account_id}/") == [f"uploads/{user.account_id}/{file_id}"]

    result = json_edit(user, [{"file_id": file_id}])

    validate_schema(result.model_dump(exclude_none=True))
    img = decode(base64.b64decode(result.data[0].b64_json))
    assert (img.format, img.size) == ("PNG", (1024, 1024))
    assert before - user.balance() == GPT_IMAGE_15_LOW_SQUARE  # the upload itself cost nothing


def test_a_20_mb_input_is_uploaded_and_used(user, http):
    data = noise_png(2700, 2700)
    assert len(data) >= 20 * 1024 * 1024  # far past the 4.5 MB a request body may carry
    before = user.balance()

    file_id = send(http, create_upload(user), data)
    # The raw request: the SDK sends the body as JSON and hands back the HTTP response itself.
    response = user.client.post(
        "/images/edits",
        body={
            "model": "gpt-image-1.5",
            "prompt": "make it a mosaic",
            "quality": "low",
            "size": "auto",
            "images": [{"file_id": file_id}],
            "mask": None,
        },
        cast_to=httpx.Response,
    )

    assert response.request.headers["content-type"] == "application/json"
    assert response.headers["x-imagegate-provider"] == "local"
    result = ImagesResponse.model_validate(response.json())
    assert result.size == "1024x1024"  # auto: the standard size nearest the square input
    assert result.usage.input_tokens_details.image_tokens > 0
    assert before - user.balance() == GPT_IMAGE_15_LOW_SQUARE


def test_a_json_edit_mixes_file_ids_data_urls_and_a_mask(user, http):
    image = send(http, create_upload(user), png_bytes(64, 64, colour=(200, 40, 40, 255)))
    mask = send(http, create_upload(user), png_bytes(64, 64, colour=(0, 0, 0, 0)))
    second = (
        "data:image/jpeg;base64," + base64.b64encode(encoded(Image.new("RGB", (32, 32)), "JPEG")).decode()
    )
    before = user.balance()

    result = json_edit(user, [{"file_id": image}, {"image_url": second}], mask={"file_id": mask})

    assert len(result.data) == 1
    assert before - user.balance() == GPT_IMAGE_15_LOW_SQUARE


def test_another_accounts_file_id_is_a_400_naming_it_and_costs_nothing(user, new_user, http):
    theirs = send(http, create_upload(new_user(user.stack)), png_bytes(64, 64))
    before = user.balance()

    with pytest.raises(openai.BadRequestError) as exc:
        json_edit(
            user,
            [
                {"image_url": "data:image/png;base64," + base64.b64encode(png_bytes(8, 8)).decode()},
                {"file_id": theirs},
            ],
        )

    assert exc.value.body["param"] == "images[1].file_id"
    assert exc.value.body["code"] == "file_not_found"
    assert user.balance() == before


def test_an_uploaded_file_that_is_not_an_image_is_a_400_naming_it(user, http):
    file_id = send(http, create_upload(user), b"%PDF-1.7 not an image", "image/png")
    before = user.balance()

    with pytest.raises(openai.BadRequestError) as exc:
        json_edit(user, [{"file_id": file_id}])

    assert (exc.value.body["param"], exc.value.body["code"]) == ("images[0].file_id", "invalid_image_format")
    assert user.balance() == before

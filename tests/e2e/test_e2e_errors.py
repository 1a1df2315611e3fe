"""What a customer sees when a request fails: OpenAI-shaped errors, and neither money nor images taken."""

import json

import openai
import pytest
from PIL import Image

from .helpers import SMALL_BODY_LIMIT, encoded, png_bytes

ERROR_KEYS = {"message", "type", "param", "code"}

# The SDK marks create_variation deprecated (OpenAI retired it); imagegate still serves it.
pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")


def error_of(response, status, validate_schema):
    """The `error` object of an OpenAI-shaped error response with `status`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    validate_schema(body, "ErrorResponse")
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS
    assert body["error"]["message"]
    return body["error"]


def auth(key):
    return {"Authorization": f"Bearer {key}"}


# --- 401 ----------------------------------------------------------------------------------------------------


def test_unknown_key_is_refused_with_an_authentication_error(stack, validate_schema, sdk_http):
    client = openai.OpenAI(
        base_url=f"{stack.base_url}/v1", api_key="sk-ig-not-a-real-key", max_retries=0, http_client=sdk_http
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        client.images.generate(model="dall-e-2", prompt="a cat", size="256x256")
    error = error_of(caught.value.response, 401, validate_schema)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"
    assert "sk-ig-not-a-real-key" not in error["message"]


def test_missing_key_is_refused(stack, validate_schema, http):
    response = http.post(
        f"{stack.base_url}/v1/images/generations", json={"prompt": "a cat", "size": "256x256"}
    )
    error = error_of(response, 401, validate_schema)
    assert error["code"] == "missing_api_key"


def test_revoked_key_is_refused_and_not_charged(user, validate_schema):
    before = user.balance()
    key_id = next(
        k["key_id"] for k in user.stack.service.accounts.list_keys() if k["account_id"] == user.account_id
    )
    assert user.stack.service.accounts.revoke_key(key_id)

    with pytest.raises(openai.AuthenticationError) as caught:
        user.client.images.generate(model="dall-e-2", prompt="a cat", size="256x256")

    assert error_of(caught.value.response, 401, validate_schema)["code"] == "invalid_api_key"
    assert user.balance() == before
    assert user.outputs() == []


# --- 402 ----------------------------------------------------------------------------------------------------


PAYMENT_CASES = [
    # (balance, request, price as the message states it, balance as the message states it)
    (19_999, {"model": "dall-e-2", "size": "1024x1024"}, "$0.020000", "$0.019999"),
    (35_999, {"model": "dall-e-2", "size": "512x512", "n": 2}, "$0.036000", "$0.035999"),
    (0, {"model": "dall-e-3", "size": "1024x1024", "quality": "hd"}, "$0.080000", "$0.000000"),
]


@pytest.mark.parametrize(
    ("balance", "params", "price", "shown_balance"), PAYMENT_CASES, ids=["dall-e-2", "n-2", "empty-account"]
)
def test_balance_below_the_price_is_refused_with_402_stating_both(
    new_user, stack, validate_schema, balance, params, price, shown_balance
):
    poor = new_user(stack, balance=balance)

    with pytest.raises(openai.APIStatusError) as caught:
        poor.client.images.generate(prompt="a cat", **params)

    error = error_of(caught.value.response, 402, validate_schema)
    assert price in error["message"]
    assert shown_balance in error["message"]
    assert poor.balance() == balance
    assert poor.outputs() == []


def test_balance_equal_to_the_price_is_enough_and_spent_to_zero(new_user, stack):
    exact = new_user(stack, balance=2 * 16_000)

    result = exact.client.images.generate(model="dall-e-2", prompt="two cats", n=2, size="256x256")

    assert len(result.data) == 2
    assert exact.balance() == 0


# --- 400 ----------------------------------------------------------------------------------------------------


def rgba_png(size=64):
    return ("image.png", png_bytes(size, size), "image/png")


def half_transparent_mask(width, height):
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    return ("mask.png", encoded(mask, "PNG"), "image/png")


def jpeg_as_png():
    return ("image.png", encoded(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG"), "image/png")


def rgb_png():
    return ("image.png", png_bytes(64, 64, mode="RGB"), "image/png")


# (id, call on an openai.OpenAI client, the param the 400 must name)
SDK_CASES = [
    ("n-above-10", lambda c: c.images.generate(model="dall-e-2", prompt="x", n=11, size="256x256"), "n"),
    ("n-zero", lambda c: c.images.generate(model="dall-e-2", prompt="x", n=0, size="256x256"), "n"),
    ("dall-e-3-n-2", lambda c: c.images.generate(model="dall-e-3", prompt="x", n=2), "n"),
    (
        "dall-e-2-wide-size",
        lambda c: c.images.generate(model="dall-e-2", prompt="x", size="1792x1024"),
        "size",
    ),
    (
        "dall-e-3-small-size",
        lambda c: c.images.generate(model="dall-e-3", prompt="x", size="256x256"),
        "size",
    ),
    (
        "gpt-quality-standard",
        lambda c: c.images.generate(model="gpt-image-1.5", prompt="x", quality="standard"),
        "quality",
    ),
    (
        "dall-e-2-quality-hd",
        lambda c: c.images.generate(model="dall-e-2", prompt="x", quality="hd"),
        "quality",
    ),
    ("style-on-dall-e-2", lambda c: c.images.generate(model="dall-e-2", prompt="x", style="vivid"), "style"),
    ("dall-e-2-prompt-1001", lambda c: c.images.generate(model="dall-e-2", prompt="p" * 1001), "prompt"),
    ("dall-e-3-prompt-4001", lambda c: c.images.generate(model="dall-e-3", prompt="p" * 4001), "prompt"),
    ("empty-prompt", lambda c: c.images.generate(model="dall-e-2", prompt="   "), "prompt"),
    ("unknown-model", lambda c: c.images.generate(model="dall-e-9", prompt="x"), "model"),
    (
        "output-format-on-dall-e-2",
        lambda c: c.images.generate(model="dall-e-2", prompt="x", output_format="jpeg"),
        "output_format",
    ),
    (
        "gpt-image-2-size-not-multiple-of-16",
        lambda c: c.images.generate(model="gpt-image-2", prompt="x", size="1000x1000"),
        "size",
    ),
    (
        "gpt-image-2-aspect-above-3",
        lambda c: c.images.generate(model="gpt-image-2", prompt="x", size="2560x768"),
        "size",
    ),
    (
        "transparent-jpeg",
        lambda c: c.images.generate(
            model="gpt-image-1.5", prompt="x", background="transparent", output_format="jpeg"
        ),
        "background",
    ),
    (
        "unknown-parameter",
        lambda c: c.images.generate(model="dall-e-2", prompt="x", extra_body={"foo": 1}),
        "foo",
    ),
    (
        "edit-non-square-dall-e-2",
        lambda c: c.images.edit(
            model="dall-e-2", prompt="x", image=("wide.png", png_bytes(64, 32), "image/png")
        ),
        "image",
    ),
    (
        "edit-jpeg-declared-png-dall-e-2",
        lambda c: c.images.edit(model="dall-e-2", prompt="x", image=jpeg_as_png()),
        "image",
    ),
    (
        "edit-mask-size-differs",
        lambda c: c.images.edit(
            model="dall-e-2", prompt="x", image=rgba_png(64), mask=half_transparent_mask(32, 32)
        ),
        "mask",
    ),
    (
        "edit-rgb-without-mask-dall-e-2",
        lambda c: c.images.edit(model="dall-e-2", prompt="x", image=rgb_png()),
        "image",
    ),
    (
        "edit-two-images-dall-e-2",
        lambda c: c.images.edit(model="dall-e-2", prompt="x", image=[rgba_png(), rgba_png()]),
        "image",
    ),
    (
        "edit-not-an-image",
        lambda c: c.images.edit(
            model="gpt-image-1.5", prompt="x", image=("a.png", b"not a png", "image/png")
        ),
        "image",
    ),
    ("edit-on-dall-e-3", lambda c: c.images.edit(model="dall-e-3", prompt="x", image=rgba_png()), "model"),
    (
        "edit-unknown-form-field",
        lambda c: c.images.edit(model="dall-e-2", prompt="x", image=rgba_png(), extra_body={"foo": "1"}),
        "foo",
    ),
    ("variation-dall-e-3", lambda c: c.images.create_variation(model="dall-e-3", image=rgba_png()), "model"),
    (
        "variation-with-prompt",
        lambda c: c.images.create_variation(model="dall-e-2", image=rgba_png(), extra_body={"prompt": "x"}),
        "prompt",
    ),
    (
        "variation-size-1792",
        lambda c: c.images.create_variation(model="dall-e-2", image=rgba_png(), size="1792x1024"),
        "size",
    ),
]


@pytest.mark.parametrize(("call", "param"), [c[1:] for c in SDK_CASES], ids=[c[0] for c in SDK_CASES])
def test_invalid_request_is_a_400_naming_the_param_and_costs_nothing(user, validate_schema, call, param):
    before = user.balance()

    with pytest.raises(openai.BadRequestError) as caught:
        call(user.client)

    error = error_of(caught.value.response, 400, validate_schema)
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    assert caught.value.param == param  # what the SDK hands the caller
    assert user.balance() == before
    assert user.outputs() == []


RAW_CASES = [
    ("missing-prompt", {"json": {"model": "dall-e-2", "size": "256x256"}}, "prompt"),
    ("n-not-an-integer", {"json": {"prompt": "x", "n": "two"}}, "n"),
    ("prompt-not-a-string", {"json": {"prompt": ["x"]}}, "prompt"),
    (
        "malformed-json",
        {"content": b'{"prompt": "x", ', "headers": {"content-type": "application/json"}},
        None,
    ),
    ("body-not-an-object", {"json": ["prompt", "x"]}, None),
]


@pytest.mark.parametrize(("request_kw", "param"), [c[1:] for c in RAW_CASES], ids=[c[0] for c in RAW_CASES])
def test_request_the_sdk_cannot_send_is_a_400_too(user, validate_schema, request_kw, param, http):
    before = user.balance()
    request_kw = dict(request_kw)
    headers = {**auth(user.key), **request_kw.pop("headers", {})}

    response = http.post(f"{user.stack.base_url}/v1/images/generations", headers=headers, **request_kw)

    error = error_of(response, 400, validate_schema)
    assert error["param"] == param, error
    assert user.balance() == before
    assert user.outputs() == []


def test_empty_body_is_a_400_that_does_not_name_a_parameter_none(user, validate_schema, http):
    response = http.post(
        f"{user.stack.base_url}/v1/images/generations",
        headers={**auth(user.key), "content-type": "application/json"},
        content=b"",
    )

    error = error_of(response, 400, validate_schema)
    assert "'None'" not in error["message"], error


def test_mask_on_variations_is_refused_not_ignored(user, validate_schema, http):
    """The spec's variation request has no mask; one that were ignored would still be paid for."""
    before = user.balance()

    response = http.post(
        f"{user.stack.base_url}/v1/images/variations",
        headers=auth(user.key),
        data={"model": "dall-e-2", "size": "256x256"},
        files={"image": rgba_png(), "mask": half_transparent_mask(64, 64)},
    )

    error = error_of(response, 400, validate_schema)
    assert error["param"] == "mask", error
    assert user.balance() == before
    assert user.outputs() == []


def test_edit_that_is_not_multipart_is_a_400(user, validate_schema, http):
    response = http.post(
        f"{user.stack.base_url}/v1/images/edits",
        headers=auth(user.key),
        json={"prompt": "x", "model": "dall-e-2"},
    )
    error_of(response, 400, validate_schema)
    assert user.outputs() == []


# --- 413 ----------------------------------------------------------------------------------------------------


def oversized_png():
    """A PNG that does not compress below the small limit: noise."""
    noise = Image.effect_noise((256, 256), 100).convert("RGBA")
    data = encoded(noise, "PNG")
    assert len(data) > SMALL_BODY_LIMIT
    return data


def test_upload_over_the_body_limit_is_a_413(new_user, small_limit_stack, validate_schema, http):
    customer = new_user(small_limit_stack)
    before = customer.balance()

    response = http.post(
        f"{small_limit_stack.base_url}/v1/images/edits",
        headers=auth(customer.key),
        data={"model": "dall-e-2", "prompt": "x"},
        files={"image": ("big.png", oversized_png(), "image/png")},
    )

    error = error_of(response, 413, validate_schema)
    assert str(SMALL_BODY_LIMIT) in error["message"]
    assert customer.balance() == before
    assert customer.outputs() == []


def test_chunked_upload_over_the_body_limit_is_a_413(new_user, small_limit_stack, validate_schema, http):
    """No Content-Length to check up front: the limit holds while the body streams in."""
    customer = new_user(small_limit_stack)
    boundary = "e2e-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    payload = oversized_png()

    def chunks():
        yield head
        for start in range(0, len(payload), 8192):
            yield payload[start : start + 8192]
        yield f"\r\n--{boundary}--\r\n".encode()

    response = http.post(
        f"{small_limit_stack.base_url}/v1/images/variations",
        headers={**auth(customer.key), "content-type": f"multipart/form-data; boundary={boundary}"},
        content=chunks(),
    )

    assert "content-length" not in {k.lower() for k in response.request.headers}
    error_of(response, 413, validate_schema)
    assert customer.outputs() == []


def test_sdk_sees_413_as_an_api_status_error(new_user, small_limit_stack):
    customer = new_user(small_limit_stack)
    with pytest.raises(openai.APIStatusError) as caught:
        customer.client.images.create_variation(
            model="dall-e-2", image=("big.png", oversized_png(), "image/png")
        )
    assert caught.value.status_code == 413
    assert caught.value.code == "payload_too_large"


# --- 404 / 405 ----------------------------------------------------------------------------------------------


def test_unknown_route_is_a_404_with_an_openai_error_body(user, validate_schema, http):
    response = http.post(
        f"{user.stack.base_url}/v1/images/upscale", headers=auth(user.key), json={"prompt": "x"}
    )
    error = error_of(response, 404, validate_schema)
    assert "/v1/images/upscale" in error["message"]


@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/images/edits", "/v1/images/variations"])
def test_get_on_an_image_route_is_a_405_with_an_openai_error_body(user, validate_schema, path, http):
    response = http.get(f"{user.stack.base_url}{path}", headers=auth(user.key))
    error_of(response, 405, validate_schema)
    assert response.headers["allow"] == "POST"


def test_sdk_sees_404_as_not_found(user):
    with pytest.raises(openai.NotFoundError) as caught:
        user.client.post("/images/upscale", body={"prompt": "x"}, cast_to=object)
    assert json.loads(caught.value.response.text)["error"]["code"] == "not_found"

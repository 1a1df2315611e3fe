"""Issue 8, items 6-9: what the HTTP boundary accepts, in what order it checks, and what every answer carries.

Each test here failed on the code before its fix.
"""

import json
import re

import httpx
import openai
import pytest
from aws_lambda_powertools.logging import Logger
from fastapi.responses import JSONResponse
from PIL import ImageFile

from imagegate import errors
from imagegate.config import Settings
from imagegate.providers import Deps
from imagegate.providers.routing import Router, load_routes

from .conftest import mask, png

GEN, EDITS, VARIATIONS = "/v1/images/generations", "/v1/images/edits", "/v1/images/variations"
REQUEST_ID = re.compile(r"^req_[0-9a-f]{32}$")


def refused(gate, response, status, param, code):
    """Assert an OpenAI-shaped refusal that took no money and wrote nothing."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error
    assert REQUEST_ID.match(response.headers.get("x-request-id", "")), response.headers
    return error


def post_json(gate, text, key=None, path=GEN):
    headers = {"content-type": "application/json", **({} if key is False else gate.auth(key))}
    return gate.client.post(path, content=text.encode() if isinstance(text, str) else text, headers=headers)


# --- item 6: lone UTF-16 surrogates ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"prompt": "\\ud800"}', "prompt"),
        ('{"prompt": "a fox \\udfff in snow"}', "prompt"),
        ('{"prompt": "x", "model": "\\ud800"}', "model"),
        ('{"prompt": "x", "size": "\\udbff"}', "size"),
        ('{"prompt": "x", "quality": "\\ud800"}', "quality"),
        ('{"prompt": "x", "user": "\\ud800"}', "user"),
        ('{"prompt": "x", "model": "gpt-image-1.5", "image": ["\\ud800"]}', "image"),
        ('{"prompt": "x", "\\ud800": 1}', "\\ud800"),
    ],
)
def test_a_lone_surrogate_in_any_json_string_is_a_400_naming_it(gate, body, param):
    before = gate.balance()
    error = refused(gate, post_json(gate, body), 400, param, "invalid_unicode")
    assert gate.balance() == before and gate.outputs() == []
    assert "surrogate" in error["message"]


def test_utf8_encoded_surrogates_in_a_json_body_are_a_400_not_a_500(gate):
    # CESU-8 (ED A0 80) is not UTF-8; json.loads on bytes would have let it through as '\ud800'.
    refused(gate, post_json(gate, b'{"prompt": "\xed\xa0\x80"}'), 400, None, "invalid_json")


def test_a_multipart_field_that_is_not_utf8_is_a_400_naming_it(gate):
    files = {"image": ("a.png", png(), "image/png")}
    response = gate.client.post(
        EDITS, headers=gate.auth(), data={"model": "dall-e-2", "prompt": b"\xed\xa0\x80"}, files=files
    )
    refused(gate, response, 400, "prompt", "invalid_unicode")


def test_an_error_that_quotes_a_surrogate_still_renders():
    err = errors.invalid_choice("size", "\ud800", ["256x256"])
    response = JSONResponse(err.body(), status_code=err.status)
    assert "\\ud800" in json.loads(response.body)["error"]["message"]


# --- item 8: smaller contract breaks --------------------------------------------------------------------


def test_an_empty_mask_part_is_a_400_naming_mask(gate):
    before = gate.balance()
    files = [("image", ("a.png", png(), "image/png")), ("mask", ("m.png", b"", "image/png"))]
    response = gate.client.post(
        EDITS, headers=gate.auth(), data={"model": "dall-e-2", "prompt": "x"}, files=files
    )
    refused(gate, response, 400, "mask", "invalid_image")
    assert gate.balance() == before and gate.outputs() == []


@pytest.mark.parametrize(
    "field",
    [
        '"n": "2"',
        '"n": 2.0',
        '"n": true',
        '"output_compression": "50"',
        '"partial_images": "1"',
        '"stream": "false"',
    ],
)
def test_json_numbers_and_booleans_must_have_their_json_type(gate, field):
    param = field.split('"')[1]
    refused(
        gate,
        post_json(gate, '{"prompt": "x", "model": "gpt-image-1.5", ' + field + "}"),
        400,
        param,
        "invalid_type",
    )


@pytest.mark.parametrize("value", ["1.0", "1e0", " 1", "0x1", "one", "", "١", "+1"])
def test_a_multipart_integer_is_decimal_digits_only(gate, value):
    files = {"image": ("a.png", png(), "image/png")}
    response = gate.client.post(
        EDITS, headers=gate.auth(), data={"model": "dall-e-2", "prompt": "x", "n": value}, files=files
    )
    refused(gate, response, 400, "n", "invalid_type")


@pytest.mark.parametrize("path", [GEN, EDITS, VARIATIONS])
def test_a_bad_body_without_a_key_is_a_401(gate, path):
    refused(gate, post_json(gate, '{"prompt": ', key=False, path=path), 401, None, "missing_api_key")


def test_a_bad_json_body_with_a_key_is_a_400(gate):
    refused(gate, post_json(gate, '{"prompt": '), 400, None, "invalid_json")


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"])
def test_no_schema_or_docs_are_served(gate, path):
    refused(gate, gate.client.get(path), 404, None, "not_found")


# --- item 9: request ids and pacing ---------------------------------------------------------------------


def test_every_answer_carries_a_request_id(gate):
    ok = gate.client.post(
        GEN, headers=gate.auth(), json={"prompt": "x", "model": "imagegate-local", "size": "256x256"}
    )
    assert ok.status_code == 200 and REQUEST_ID.match(ok.headers["x-request-id"])
    assert len(ok.headers.get_list("x-request-id")) == 1
    answers = [
        gate.client.post(GEN, json={"prompt": "x"}),  # 401
        gate.client.post(GEN, headers=gate.auth(gate.broke_key), json={"prompt": "x"}),  # 402
        gate.client.get("/v1/nothing"),  # 404
        gate.client.get(GEN),  # 405
        gate.client.post(GEN, headers={**gate.auth(), "content-length": str(10**9)}, content=b"{}"),  # 413
        gate.client.post(GEN, headers=gate.auth(), content=b"x" * (gate.settings.max_body_bytes + 1)),  # 413
    ]
    assert [r.status_code for r in answers] == [401, 402, 404, 405, 413, 413]
    ids = [r.headers.get("x-request-id", "") for r in [ok, *answers]]
    assert all(REQUEST_ID.match(i) for i in ids), ids
    assert len(set(ids)) == len(ids)


def test_an_unexpected_failure_is_a_500_with_a_request_id(gate, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(gate.service, "handle", broken)
    response = gate.client.post(GEN, headers=gate.auth(), json={"prompt": "x"})
    refused(gate, response, 500, None, "internal_error")


def test_the_request_id_is_the_one_billing_records(gate):
    response = gate.client.post(
        GEN, headers=gate.auth(), json={"prompt": "x", "model": "imagegate-local", "size": "256x256"}
    )
    request_id = response.headers["x-request-id"]
    items = gate.service.aws.dynamodb.scan(TableName=gate.settings.table)["Items"]
    assert any(request_id in json.dumps(item) for item in items)


def test_the_sdk_reads_the_request_id_of_an_error(gate):
    client = openai.OpenAI(
        api_key=gate.key, base_url="http://testserver/v1", http_client=gate.client, max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="x", model="dall-e-2", size="1x1")
    assert REQUEST_ID.match(caught.value.request_id or ""), caught.value.request_id
    assert caught.value.request_id == caught.value.response.headers["x-request-id"]


def test_an_upstreams_retry_after_on_5xx_is_honoured_and_passed_on(gate, monkeypatch):
    calls = []

    def upstream(request):
        calls.append(request.url.path)
        return httpx.Response(
            503, json={"error": {"message": "busy", "type": "server_error"}}, headers={"retry-after": "3"}
        )

    sleeps = []
    settings = Settings(
        routes=json.dumps(
            {
                "routes": {
                    "gpt-image-1.5": [
                        {"provider": "openai", "model": "gpt-image-1.5", "credential": "OPENAI_API_KEY"}
                    ]
                }
            }
        )
    )
    routes = load_routes(settings, gate.service.catalog)
    deps = Deps(gate.service.aws, httpx.Client(transport=httpx.MockTransport(upstream)))
    router = Router(
        settings, routes, {"OPENAI_API_KEY": "sk-test"}, deps, Logger(level="CRITICAL"), sleep=sleeps.append
    )
    monkeypatch.setattr(gate.service, "router", router)
    before = gate.balance()

    response = gate.client.post(
        GEN, headers=gate.auth(), json={"prompt": "x", "model": "gpt-image-1.5", "quality": "low"}
    )

    refused(gate, response, 502, None, "upstream_error")
    assert sleeps == [3.0, 3.0] and len(calls) == 3
    assert response.headers["retry-after"] == "3"
    assert gate.balance() == before


# --- item 7: no decoding before the cheap checks, and none before money is reserved ---------------------


@pytest.fixture
def decodes(monkeypatch):
    """Counts full decodes (ImageFile.load) of uploaded images."""
    count = []
    real = ImageFile.ImageFile.load

    def load(self):
        count.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return count


def bombs(count, side=4096):
    bomb = png(side, side)
    return [("image[]", (f"b{i}.png", bomb, "image/png")) for i in range(count)]


@pytest.mark.parametrize(
    ("model", "count", "code"), [("dall-e-2", 17, "invalid_type"), ("gpt-image-1.5", 17, "too_many_images")]
)
def test_too_many_images_are_refused_before_any_is_opened(gate, decodes, monkeypatch, model, count, code):
    opened = []
    import PIL.Image

    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    response = gate.client.post(
        EDITS, headers=gate.auth(), data={"model": model, "prompt": "x"}, files=bombs(count, side=64)
    )
    refused(gate, response, 400, "image", code)
    assert opened == [] and decodes == []


def test_the_total_decoded_pixels_of_a_request_are_capped(gate, decodes):
    response = gate.client.post(
        EDITS, headers=gate.auth(), data={"model": "gpt-image-1.5", "prompt": "x"}, files=bombs(16)
    )
    error = refused(gate, response, 400, "image", "image_too_large")
    assert "pixels" in error["message"]
    assert decodes == []


def test_a_key_without_balance_is_refused_before_any_image_is_decoded(gate, decodes):
    files = [("image[]", (f"i{i}.png", png(512, 512), "image/png")) for i in range(4)]
    response = gate.client.post(
        EDITS, headers=gate.auth(gate.broke_key), data={"model": "gpt-image-1.5", "prompt": "x"}, files=files
    )
    assert response.status_code == 402, response.text
    assert decodes == []


def test_corrupt_pixel_data_is_a_400_from_the_renderer_and_refunded(gate):
    good = png(64, 64)
    start = good.index(b"IDAT") + 4
    corrupt = good[:start] + b"\x00" * 8 + good[start + 8 :]  # CRC now wrong too
    before = gate.balance()
    response = gate.client.post(
        EDITS,
        headers=gate.auth(),
        data={"model": "imagegate-local", "prompt": "x"},
        files={"image": ("a.png", corrupt, "image/png")},
    )
    refused(gate, response, 400, "image", "invalid_image_format")
    assert gate.balance() == before and gate.outputs() == []


def test_mask_of_the_right_size_is_still_accepted(gate):
    files = [("image", ("a.png", png(), "image/png")), ("mask", ("m.png", mask(), "image/png"))]
    response = gate.client.post(
        EDITS,
        headers=gate.auth(),
        data={"model": "imagegate-local", "prompt": "x", "response_format": "b64_json"},
        files=files,
    )
    assert response.status_code == 200, response.text


def test_an_idempotent_replay_answers_with_the_first_requests_id(gate):
    """The replay is the first response again, charged once: its id is the one the ledger knows."""
    body = {"prompt": "x", "model": "imagegate-local", "size": "256x256", "response_format": "b64_json"}
    headers = {**gate.auth(), "Idempotency-Key": "hostile-replay-1"}
    first = gate.client.post(GEN, headers=headers, json=body)
    again = gate.client.post(GEN, headers=headers, json=body)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers.get_list("x-request-id") == [first.headers["x-request-id"]]

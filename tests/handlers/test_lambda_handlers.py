"""The three Lambda functions, fed the committed API Gateway events through Mangum and Powertools.

Expected charges come from OpenAI's published prices (micro-USD per image), not from imagegate's pricing
code: dall-e-2 256x256 is $0.016, gpt-image-1.5 low 1024x1024 is $0.009.
"""

import base64
import io
import json
import logging
import re
from datetime import date
from urllib.parse import parse_qs, unquote, urlparse

import pytest
from PIL import Image, ImageChops
from shims import ByAccount, ScannedStream

from imagegate.money import ledger
from imagegate.money.billing import Billing

DALLE2_256 = 16_000
GPT_IMAGE_15_LOW_SQUARE = 9_000
BLUE = (30, 90, 200)  # events/build_events.py: the `image` upload's background
ORANGE = (200, 120, 20)  # ... and the second `image[]` upload's
KEY_PATTERN = r"outputs/{account}/\d{{4}}-\d{{2}}-\d{{2}}/(req_[0-9a-f]{{32}})/(\d+)\.png"


def multipart_body(event: dict) -> bytes:
    assert event["isBase64Encoded"] is True
    return base64.b64decode(event["body"])


def set_header(event: dict, name: str, value: str | None) -> dict:
    """Set (or, with None, remove) a request header in both of a REST API event's header maps."""
    for key, holder in (("headers", lambda v: v), ("multiValueHeaders", lambda v: [v])):
        event[key].pop(name, None)
        if value is not None:
            event[key][name] = holder(value)
    return event


def with_multipart_body(event: dict, body: bytes) -> dict:
    """Swap a multipart body, keeping content-length honest as API Gateway would."""
    event["body"] = base64.b64encode(body).decode()
    return set_header(event, "content-length", str(len(body)))


def part_span(body: bytes, name: str) -> tuple[int, int]:
    """Where the content of the multipart part `name` starts and ends (its headers excluded)."""
    head = re.search(rb'name="' + re.escape(name.encode()) + rb'"[^\r]*\r\n[^\r]*\r\n\r\n', body)
    return head.end(), body.index(b"\r\n--", head.end())


def uploaded_png(body: bytes, name: str) -> Image.Image:
    """The PNG sent in the multipart part `name`, decoded."""
    start, end = part_span(body, name)
    return decode_png(body[start:end])


def body_of(response: dict) -> dict:
    assert response["headers"]["content-type"] == "application/json"
    return json.loads(response["body"])


def assert_openai_error(response: dict, status: int, param=None, code=None) -> dict:
    assert response["statusCode"] == status, response["body"]
    error = body_of(response)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def decode_png(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG"
    img.load()
    return img


def assert_image_response(response: dict) -> dict:
    assert response["statusCode"] == 200, response["body"]
    assert response["headers"]["x-imagegate-provider"] == "local"
    assert response["headers"]["x-request-id"].startswith("req_")
    return body_of(response)


def stored_images(stack, body: dict, request_id: str) -> list[Image.Image]:
    """Follow every presigned URL in a url response to its S3 object and decode it."""
    images = []
    for i, item in enumerate(body["data"]):
        assert set(item) == {"url"}
        url = urlparse(item["url"])
        assert parse_qs(url.query)["X-Amz-Expires"] == ["3600"]
        # Virtual-hosted (bucket in the host) or path-style (bucket first in the path): both name the bucket.
        key = unquote(url.path).lstrip("/")
        if not url.netloc.startswith(f"{stack.bucket}."):
            assert key.startswith(f"{stack.bucket}/"), item["url"]
            key = key[len(stack.bucket) + 1 :]
        match = re.fullmatch(KEY_PATTERN.format(account=stack.account_id), key)
        assert match, key
        assert match.groups() == (request_id, str(i))
        obj = stack.s3.get_object(Bucket=stack.bucket, Key=key)
        assert obj["ContentType"] == "image/png"
        assert obj["ServerSideEncryption"] == "AES256"
        images.append(decode_png(obj["Body"].read()))
    return images


def test_generations_event_stores_two_pngs_and_charges_two_images(stack):
    response = stack.invoke("generations", stack.event("generations"))

    body = assert_image_response(response)
    assert len(body["data"]) == 2
    images = stored_images(stack, body, response["headers"]["x-request-id"])
    assert [img.size for img in images] == [(256, 256), (256, 256)]
    assert images[0].tobytes() != images[1].tobytes()  # n=2 means two different images
    assert len(stack.output_keys()) == 2
    assert stack.balance() == stack.start_balance - 2 * DALLE2_256


def test_edits_event_multipart_arrives_intact_and_only_the_masked_area_changes(stack):
    event = stack.event("edits")
    base = uploaded_png(multipart_body(event), "image").convert("RGBA").resize((256, 256))

    response = stack.invoke("edits", event)

    body = assert_image_response(response)
    assert len(body["data"]) == 1 and set(body["data"][0]) == {"b64_json"}
    out = decode_png(base64.b64decode(body["data"][0]["b64_json"])).convert("RGBA")
    assert out.size == (256, 256)
    # The mask is opaque except its centre square (16..47 of 64, so 64..191 here). Outside it the upload
    # survives pixel for pixel, which it could not if the base64 multipart had been mangled on the way.
    hole = (64, 64, 192, 192)
    outside = Image.new("L", (256, 256), 255)
    outside.paste(0, hole)
    assert out.getpixel((2, 2)) == (*BLUE, 255)
    assert Image.composite(base, out, outside).tobytes() == out.tobytes()
    # Inside it, the drawing replaced the upload: the mask part was read and applied.
    changed = ImageChops.difference(out.crop(hole), base.crop(hole)).convert("L").point(lambda v: v and 255)
    assert changed.histogram()[255] > 128 * 128 // 2
    assert stack.output_keys() == []  # b64_json: nothing is staged in S3
    assert stack.balance() == stack.start_balance - DALLE2_256


def test_edits_event_with_two_image_parts_is_a_gpt_image_edit(stack):
    event = stack.event("edits_two_images")
    assert multipart_body(event).count(b'name="image[]"') == 2

    response = stack.invoke("edits", event)

    body = assert_image_response(response)
    assert len(body["data"]) == 1 and set(body["data"][0]) == {"b64_json"}
    out = decode_png(base64.b64decode(body["data"][0]["b64_json"]))
    assert out.size == (1024, 1024)
    assert (body["size"], body["quality"], body["output_format"]) == ("1024x1024", "low", "png")
    # Both uploads were read: imagegate's usage estimate counts 170 tokens per input image up to 512x512.
    assert body["usage"]["input_tokens_details"]["image_tokens"] == 2 * 170
    assert stack.balance() == stack.start_balance - GPT_IMAGE_15_LOW_SQUARE


def test_gpt_edit_of_an_opaque_image_without_mask_shows_the_second_image(stack):
    response = stack.invoke("edits", stack.event("edits_two_images"))

    body = assert_image_response(response)
    out = decode_png(base64.b64decode(body["data"][0]["b64_json"])).convert("RGB")
    # With no mask a GPT edit reworks the whole first image, drawing over it; the local renderer pastes
    # extra inputs as thumbnails from (8, 8). So there the second upload's orange shows over the first's blue.
    pixel = out.getpixel((20, 20))
    assert pixel != BLUE
    assert _distance(pixel, ORANGE) < _distance(pixel, BLUE)


def _distance(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


def test_variations_event_stores_recoloured_copies_of_the_upload(stack):
    response = stack.invoke("variations", stack.event("variations"))

    body = assert_image_response(response)
    assert len(body["data"]) == 2
    images = stored_images(stack, body, response["headers"]["x-request-id"])
    assert [img.size for img in images] == [(256, 256), (256, 256)]
    assert images[0].tobytes() != images[1].tobytes()
    for img in images:
        rgba = img.convert("RGBA")
        # A variation permutes the upload's colour channels: its blue background and white disc are
        # still recognisable, which proves the image part decoded intact.
        assert sorted(rgba.getpixel((2, 2))[:3]) == sorted(BLUE)
        assert rgba.getpixel((128, 128)) == (255, 255, 255, 255)
    assert stack.balance() == stack.start_balance - 2 * DALLE2_256


def test_missing_authorization_is_401_and_costs_nothing(stack):
    event = stack.event("generations")
    set_header(event, "authorization", None)

    response = stack.invoke("generations", event)

    assert_openai_error(response, 401, code="missing_api_key")
    assert stack.balance() == stack.start_balance
    assert stack.output_keys() == []


def test_unknown_key_is_401(stack):
    event = stack.event("variations")
    set_header(event, "authorization", "Bearer sk-ig-not-a-key-we-issued")

    assert_openai_error(stack.invoke("variations", event), 401, code="invalid_api_key")
    assert stack.balance() == stack.start_balance


def with_method(event: dict, method: str) -> dict:
    """What API Gateway sends a route's function (its method is ANY) for another method, bodiless."""
    event.update(httpMethod=method, body=None, isBase64Encoded=False)
    event["requestContext"].update(httpMethod=method)
    for name in ("content-type", "content-length"):
        set_header(event, name, None)
    return event


def test_get_on_an_image_route_is_405_with_allow(stack):
    response = stack.invoke("generations", with_method(stack.event("generations"), "GET"))

    assert_openai_error(response, 405, code="method_not_allowed")
    assert response["headers"]["allow"] == "POST"


def test_post_on_the_balance_route_is_405_with_allow(stack):
    response = stack.invoke("balance", with_method(stack.event("balance"), "POST"))

    assert_openai_error(response, 405, code="method_not_allowed")
    assert response["headers"]["allow"] == "GET"


def test_demo_deployment_marks_every_response_and_charges_the_local_price(stack):
    env = {"AWS_LAMBDA_FUNCTION_NAME": "imagegate-generations", "IMAGEGATE_DEMO_MODE": "on"}
    response = stack.invoke(
        "generations", stack.event("generations"), IMAGEGATE_LOCAL_PRICE_USD="0.003", **env
    )

    assert_image_response(response)
    assert response["headers"]["x-imagegate-demo"] == "local renderer, not AI"
    assert stack.balance() == stack.start_balance - 2 * 3_000  # n=2 at the local price, not dall-e-2's
    error = stack.invoke("balance", set_header(stack.event("balance"), "authorization", None), **env)
    assert error["headers"]["x-imagegate-demo"] == "local renderer, not AI"


def test_deployed_stack_without_upstreams_never_sells_local_under_a_real_model_id(stack):
    response = stack.invoke(
        "generations", stack.event("generations"), AWS_LAMBDA_FUNCTION_NAME="imagegate-generations"
    )

    assert_openai_error(response, 400, param="model", code="model_not_available")
    assert "x-imagegate-demo" not in response["headers"]
    assert stack.balance() == stack.start_balance
    event = stack.event("generations")
    event["body"] = event["body"].replace('"dall-e-2"', '"imagegate-local"')
    set_header(event, "content-length", str(len(event["body"])))
    served = stack.invoke("generations", event)
    assert_image_response(served)
    assert stack.balance() == stack.start_balance - 2 * 2_000  # imagegate-local at LocalPriceUsd


def test_cors_preflight_and_exposed_headers_when_origins_are_set(stack):
    origin = "https://app.example.com"
    preflight = with_method(stack.event("generations"), "OPTIONS")
    set_header(preflight, "origin", origin)
    set_header(preflight, "access-control-request-method", "POST")
    set_header(preflight, "access-control-request-headers", "authorization,content-type")

    response = stack.invoke("generations", preflight, IMAGEGATE_CORS_ORIGINS=origin)

    assert response["statusCode"] == 200
    assert response["headers"]["access-control-allow-origin"] == origin
    served = stack.invoke(
        "generations",
        set_header(stack.event("generations"), "origin", origin),
        IMAGEGATE_CORS_ORIGINS=origin,
    )
    assert_image_response(served)
    assert "x-request-id" in served["headers"]["access-control-expose-headers"]
    # Without the parameter, no CORS headers at all.
    event = set_header(stack.event("generations"), "origin", origin)
    plain = stack.invoke("generations", event, IMAGEGATE_CORS_ORIGINS="")
    assert "access-control-allow-origin" not in plain["headers"]


@pytest.mark.parametrize(
    "corrupt",
    [lambda png: b"this is not an image, whatever the part says", lambda png: png[: len(png) // 2]],
    ids=["text", "truncated-png"],
)
def test_corrupted_image_part_is_400_naming_image_and_costs_nothing(stack, corrupt):
    event = stack.event("variations")
    body = multipart_body(event)
    start, end = part_span(body, "image")
    event = with_multipart_body(event, body[:start] + corrupt(body[start:end]) + body[end:])

    response = stack.invoke("variations", event)

    assert_openai_error(response, 400, param="image")
    assert stack.balance() == stack.start_balance
    assert stack.output_keys() == []


def test_body_over_the_limit_is_413_before_anything_is_charged(stack):
    event = stack.event("edits")
    size = len(multipart_body(event))

    response = stack.invoke("edits", event, IMAGEGATE_MAX_BODY_BYTES=str(size - 1))

    error = assert_openai_error(response, 413, code="payload_too_large")
    assert str(size - 1) in error["message"]
    assert stack.balance() == stack.start_balance


def test_body_limit_counts_the_bytes_not_the_declared_length(stack):
    event = stack.event("edits")
    size = len(multipart_body(event))
    set_header(event, "content-length", "100")  # a client may understate it; the decoded body decides

    response = stack.invoke("edits", event, IMAGEGATE_MAX_BODY_BYTES=str(size - 1))

    assert_openai_error(response, 413, code="payload_too_large")
    assert stack.balance() == stack.start_balance


def test_body_at_the_limit_is_served(stack):
    event = stack.event("edits")
    size = len(multipart_body(event))

    response = stack.invoke("edits", event, IMAGEGATE_MAX_BODY_BYTES=str(size))

    assert_image_response(response)
    assert stack.balance() == stack.start_balance - DALLE2_256


def test_logs_carry_neither_the_api_key_nor_url_signatures(stack, caplog):
    event = stack.event("generations")
    api_key = event["headers"]["authorization"].removeprefix("Bearer ")

    with caplog.at_level(logging.INFO):
        response = stack.invoke("generations", event)
    body = assert_image_response(response)

    # Render each record with Powertools' own JSON formatter: the exact lines CloudWatch receives. (Its stream
    # handler may be bound to another test's stdout, so capsys cannot be relied on under xdist.)
    formatter = logging.getLogger("imagegate").handlers[0].formatter
    lines = [json.loads(formatter.format(record)) for record in caplog.records if record.name == "imagegate"]
    request_log = next(line for line in lines if line["message"] == "image request")
    assert request_log["request_id"] == response["headers"]["x-request-id"]  # the log is about this request
    assert request_log["charged_micros"] == 2 * DALLE2_256
    logged = json.dumps(lines)
    signature = body["data"][0]["url"].split("X-Amz-Signature=")[1]
    for secret in (api_key, signature, "X-Amz-Signature"):
        assert secret not in logged


def test_b64_answer_over_the_response_ceiling_is_400_and_refunded(stack):
    # The template sets IMAGEGATE_MAX_RESPONSE_BYTES under Lambda's 6 MB response cap; a small ceiling here
    # stands in for a large image set.
    response = stack.invoke("edits", stack.event("edits"), IMAGEGATE_MAX_RESPONSE_BYTES="1000")

    error = assert_openai_error(response, 400, param="response_format")
    assert "response_format=url" in error["message"]
    assert stack.balance() == stack.start_balance
    assert stack.output_keys() == []


def test_balance_event_shows_the_balance_and_todays_usage(stack):
    assert stack.invoke("generations", stack.event("generations"))["statusCode"] == 200
    ScannedStream(stack.dynamodb, stack.table).drain()  # the usage function's part

    response = stack.invoke("balance", stack.event("balance"))

    assert response["statusCode"] == 200, response["body"]
    body = body_of(response)
    assert body["balance_micros"] == stack.balance() == stack.start_balance - 2 * DALLE2_256
    assert body["usage"]["days"] == 7
    [row] = body["usage"]["data"]
    assert (row["model"], row["requests"], row["images"], row["charged_micros"]) == (
        "dall-e-2",
        1,
        2,
        2 * DALLE2_256,
    )


def test_balance_event_without_a_key_is_401(stack):
    event = stack.event("balance")
    set_header(event, "authorization", None)
    assert_openai_error(stack.invoke("balance", event), 401, code="missing_api_key")


def test_a_request_is_one_log_line_carrying_its_emf_metrics(stack, capsys, monkeypatch):
    stack.invoke("generations", stack.event("generations"), IMAGEGATE_METRICS="on")
    # The function's log handler is the first one made in this process, writing where stdout was then.
    log = io.StringIO()
    for handler in logging.getLogger("imagegate").handlers:
        monkeypatch.setattr(handler, "stream", log)
    capsys.readouterr()
    stack.invoke("generations", stack.event("generations"), IMAGEGATE_METRICS="on")

    assert "_aws" not in capsys.readouterr().out  # no EMF line of its own
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    [emf] = [line for line in lines if "_aws" in line]
    # The request's log line is its metrics' line too, and a first-try success has no attempt line.
    assert [line["message"] for line in lines if "request_id" in line] == ["image request"]
    assert (emf["upstream_model"], emf["attempts"], emf["charged_micros"]) == (
        "imagegate-local",
        1,
        2 * DALLE2_256,
    )
    assert emf["service"] == "imagegate"
    [directive] = emf["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "imagegate"
    assert sorted(directive["Dimensions"][0]) == ["model", "provider", "service"]
    assert (emf["model"], emf["provider"]) == ("dall-e-2", "local")
    assert (emf["Requests"], emf["Images"], emf["RevenueMicroUSD"], emf["RefundMicroUSD"]) == (
        [1.0],
        [2.0],
        [2.0 * DALLE2_256],
        [0.0],
    )
    assert emf["Latency"][0] > 0


def test_sweep_event_refunds_a_stale_reservation_once_and_leaves_fresh_ones(stack):
    old = ByAccount(
        Billing(stack.dynamodb, stack.table, clock=lambda: 1_000)
    )  # reserved long ago, never settled
    fresh = ByAccount(Billing(stack.dynamodb, stack.table))
    details = {"model": "dall-e-2", "endpoint": "generations", "key_id": "key_x"}
    old.reserve(stack.account_id, "req_killed", DALLE2_256, details)
    fresh.reserve(stack.account_id, "req_running", DALLE2_256, details)

    result = stack.invoke("sweep", stack.event("sweep"))

    no_jobs = {k: 0 for k in result if k.startswith(("jobs_", "announcements_"))}  # Jobs.sweep's counts
    assert result == {"closed": 1, "charged_micros": 0, "refunded_micros": DALLE2_256, **no_jobs}
    assert stack.balance() == stack.start_balance - DALLE2_256  # the running one stays reserved
    assert stack.invoke("sweep", stack.event("sweep"))["closed"] == 0


def test_a_lone_surrogate_in_an_events_body_is_a_400_not_a_gateway_500(stack):
    """Mangum encoded a text body before the app ran: a lone surrogate raised there, outside our errors."""
    event = stack.event("generations")
    event["body"] = '{"prompt": "a fox \ud800", "model": "dall-e-2"}'
    event["isBase64Encoded"] = False
    result = stack.invoke("generations", event)
    assert result["statusCode"] == 400
    error = json.loads(result["body"])["error"]
    # The bytes it stands for are not UTF-8: the body cannot be read as JSON at all.
    assert error["code"] == "invalid_json"
    assert stack.balance() == stack.start_balance


def test_usage_event_counts_the_requests_it_closes_once_however_often_it_comes(stack):
    event = stack.event("usage")
    assert stack.invoke("usage", event) == {"batchItemFailures": []}
    assert stack.invoke("usage", stack.event("usage")) == {"batchItemFailures": []}  # delivered again
    [row] = ledger.usage(
        stack.dynamodb, stack.table, days=1, account_id="acct_0123456789abcdef", today=date(2025, 11, 21)
    )
    assert (row.key_id, row.model, row.requests, row.images, row.charged, row.refunded) == (
        "key_0123456789ab",
        "dall-e-2",
        2,
        1,
        16_000,
        16_000,
    )

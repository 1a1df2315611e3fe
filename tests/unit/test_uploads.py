"""Uploads past the request limit and the JSON form of edits, in this process on moto: what a client sees
(statuses, OpenAI error bodies naming the parameter, balances to the micro-dollar, S3 objects)."""

import base64
import io
import json
from dataclasses import replace

import pytest
from aws_lambda_powertools.logging import Logger
from PIL import Image
from starlette.testclient import TestClient

from imagegate.errors import APIError
from imagegate.http.api import create_app
from imagegate.inputs.references import MAX_REFERENCES_BYTES, Resolver, data_url, parse
from imagegate.inputs.uploads import MAX_UPLOAD_BYTES, UPLOAD_WINDOW_SECONDS, Uploads
from imagegate.service import Service

from .conftest import Clock, image_bytes

GPT_IMAGE_15_LOW_SQUARE = 9_000  # docs/money.md, "Prices": gpt-image-1.5, low, 1024x1024


@pytest.fixture
def svc(aws, settings):
    return Service(settings, aws, Logger(service="test", level="CRITICAL"), clock=Clock())


@pytest.fixture
def client(svc):
    with TestClient(create_app(svc), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def customer(svc):
    """(account id, Authorization headers) of a funded account."""
    account_id = svc.accounts.create_account(1_000_000)
    return account_id, {"Authorization": f"Bearer {svc.accounts.create_key(account_id)}"}


def stored(svc, account_id, data):
    """A file as the presigned POST leaves it: under the account's prefix, named by a new id."""
    upload = svc.uploads.create(account_id)
    svc.aws.s3.put_object(Bucket=svc.settings.bucket, Key=upload["upload_fields"]["key"], Body=data)
    return upload["id"]


def outputs(svc):
    listing = svc.aws.s3.list_objects_v2(Bucket=svc.settings.bucket, Prefix="outputs/")
    return listing.get("Contents", [])


JSON_EDIT = {"model": "gpt-image-1.5", "prompt": "a lighthouse", "quality": "low", "size": "1024x1024"}


def edit(client, headers, images, **params):
    return client.post("/v1/images/edits", headers=headers, json={**JSON_EDIT, "images": images, **params})


def encoded(img):
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def as_data_url(data, media="image/png"):
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


# --- POST /v1/images/uploads ----------------------------------------------------------------------------


def test_an_upload_is_a_presigned_post_capped_at_50_mb_for_images_under_the_accounts_prefix(
    client, svc, customer
):
    account_id, headers = customer

    response = client.post("/v1/images/uploads", headers=headers)

    assert response.status_code == 200, response.text
    upload = response.json()
    assert set(upload) == {"id", "object", "upload_url", "upload_fields", "expires_at", "max_bytes"}
    assert upload["object"] == "upload" and upload["id"].startswith("file-")
    assert upload["max_bytes"] == MAX_UPLOAD_BYTES == 52_428_800
    assert upload["expires_at"] == Clock().now + UPLOAD_WINDOW_SECONDS
    fields = upload["upload_fields"]
    assert fields["key"] == f"uploads/{account_id}/{upload['id']}"
    policy = json.loads(base64.b64decode(fields["policy"]))
    assert ["content-length-range", 1, MAX_UPLOAD_BYTES] in policy["conditions"]
    assert ["starts-with", "$Content-Type", "image/"] in policy["conditions"]
    assert {"key": fields["key"]} in policy["conditions"]
    assert svc.accounts.balance(account_id) == 1_000_000  # storing costs nothing


def test_an_upload_needs_a_key_and_counts_as_an_image_towards_its_rate(client, svc):
    account_id = svc.accounts.create_account(1_000_000)
    headers = {"Authorization": f"Bearer {svc.accounts.create_key(account_id, images_per_minute=1)}"}

    assert client.post("/v1/images/uploads").status_code == 401
    assert client.post("/v1/images/uploads", headers=headers).status_code == 200
    refused = client.post("/v1/images/uploads", headers=headers)

    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert svc.accounts.balance(account_id) == 1_000_000


def test_a_file_is_read_back_only_by_its_account(svc, customer):
    account_id, _ = customer
    file_id = stored(svc, account_id, b"bytes")

    assert svc.uploads.read(account_id, file_id, "images[0].file_id") == b"bytes"
    with pytest.raises(APIError) as other:
        svc.uploads.read("acct_someone_else", file_id, "images[0].file_id")
    with pytest.raises(APIError) as never:
        svc.uploads.read(account_id, "file-" + "0" * 32, "images[0].file_id")

    assert (other.value.status, other.value.param, other.value.code) == (
        400,
        "images[0].file_id",
        "file_not_found",
    )
    assert other.value.message.replace(file_id, "ID") == never.value.message.replace("file-" + "0" * 32, "ID")


@pytest.mark.parametrize(
    "file_id",
    ["file-abc", "../outputs/x", "file-" + "0" * 32 + "/../x", "", "file-" + "0" * 32 + "\n"],  # issue 20, 11
)
def test_a_malformed_file_id_is_refused_before_s3_is_asked(svc, file_id):
    with pytest.raises(APIError) as exc:
        svc.uploads.read("acct_1", file_id, "mask.file_id")
    assert (exc.value.param, exc.value.code) == ("mask.file_id", "invalid_file_id")


def test_a_file_over_the_cap_is_never_read(aws, settings):
    uploads = Uploads(aws.s3, settings.bucket, max_bytes=10)
    upload = uploads.create("acct_1")
    aws.s3.put_object(Bucket=settings.bucket, Key=upload["upload_fields"]["key"], Body=b"x" * 11)

    with pytest.raises(APIError) as exc:
        uploads.read("acct_1", upload["id"], "images[0].file_id")
    assert (exc.value.status, exc.value.code) == (400, "image_too_large")


# --- the JSON form of edits -----------------------------------------------------------------------------


def test_a_json_edit_of_an_uploaded_file_and_a_data_url_is_served_and_charged_once(client, svc, customer):
    account_id, headers = customer
    file_id = stored(svc, account_id, image_bytes(300, 200, mode="RGB", fmt="JPEG"))

    response = edit(client, headers, [{"file_id": file_id}, {"image_url": as_data_url(image_bytes(64, 64))}])

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["size"], body["quality"]) == ("1024x1024", "low")
    assert body["usage"]["input_tokens_details"]["image_tokens"] > 0
    assert svc.accounts.balance(account_id) == 1_000_000 - GPT_IMAGE_15_LOW_SQUARE


def test_a_json_edit_takes_a_mask_by_reference(client, svc, customer):
    account_id, headers = customer
    mask = stored(svc, account_id, image_bytes(64, 64, colour=(0, 0, 0, 0)))

    response = edit(
        client, headers, [{"image_url": as_data_url(image_bytes(64, 64))}], mask={"file_id": mask}
    )

    assert response.status_code == 200, response.text
    assert svc.accounts.balance(account_id) == 1_000_000 - GPT_IMAGE_15_LOW_SQUARE


PNG_URL = as_data_url(image_bytes(64, 64))


@pytest.mark.parametrize(
    ("images", "extra", "param", "code"),
    [
        (None, {}, "images", "missing_required_parameter"),
        ({"image_url": PNG_URL}, {}, "images", "invalid_type"),
        ([], {}, "images", "invalid_value"),
        ([{"image_url": PNG_URL}] * 17, {}, "images", "invalid_value"),
        (["a string"], {}, "images[0]", "invalid_type"),
        ([{"image_url": PNG_URL}, {}], {}, "images[1]", "invalid_type"),
        ([{"image_url": PNG_URL, "file_id": "file-x"}], {}, "images[0]", "invalid_type"),
        ([{"url": PNG_URL}], {}, "images[0]", "invalid_type"),
        ([{"image_url": 7}], {}, "images[0].image_url", "invalid_type"),
        ([{"image_url": "data:text/plain;base64,aGk="}], {}, "images[0].image_url", "invalid_image_url"),
        ([{"image_url": "data:image/png;base64,@@@"}], {}, "images[0].image_url", "invalid_base64"),
        (
            [{"image_url": "data:image/png;base64,aGVsbG8="}],
            {},
            "images[0].image_url",
            "invalid_image_format",
        ),
        ([{"image_url": "http://example.com/a.png"}], {}, "images[0].image_url", "url_scheme"),
        ([{"image_url": "ftp://example.com/a.png"}], {}, "images[0].image_url", "url_scheme"),
        ([{"file_id": "file-" + "a" * 32}], {}, "images[0].file_id", "file_not_found"),
        ([{"file_id": "file-nope"}], {}, "images[0].file_id", "invalid_file_id"),
        (
            [{"image_url": PNG_URL}],
            {"mask": {"file_id": "file-" + "b" * 32}},
            "mask.file_id",
            "file_not_found",
        ),
        ([{"image_url": PNG_URL}], {"mask": "x"}, "mask", "invalid_type"),
        ([{"image_url": PNG_URL}], {"model": "dall-e-2"}, "model", "unsupported_parameter"),
        ([{"image_url": PNG_URL}], {"model": "no-such-model"}, "model", "model_not_found"),
        ([{"image_url": PNG_URL}], {"image": PNG_URL}, "image", "unknown_parameter"),
        ([{"image_url": PNG_URL}], {"n": "2"}, "n", "invalid_type"),
    ],
)
def test_a_bad_json_edit_is_a_400_naming_the_parameter_and_costs_nothing(
    client, svc, customer, images, extra, param, code
):
    account_id, headers = customer
    body = {"model": "gpt-image-1.5", "prompt": "a lighthouse", **extra}
    if images is not None:
        body["images"] = images

    response = client.post("/v1/images/edits", headers=headers, json=body)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert svc.accounts.balance(account_id) == 1_000_000
    assert outputs(svc) == []


def test_another_accounts_file_id_is_not_found_and_not_read(client, svc, customer):
    _, headers = customer
    theirs = stored(svc, svc.accounts.create_account(0), image_bytes(64, 64))

    response = edit(client, headers, [{"file_id": theirs}])

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "images[0].file_id"
    assert response.json()["error"]["code"] == "file_not_found"


def test_references_are_fetched_only_after_the_cheap_checks(client, svc, customer):
    _, headers = customer
    fetched = []
    svc.references = lambda account: Resolver(svc.uploads, account.account_id, lambda *a: fetched.append(a))

    response = edit(client, headers, [{"image_url": "https://example.com/a.png"}], prompt="")

    assert response.json()["error"]["param"] == "prompt"
    assert fetched == []


def test_a_key_its_rate_limit_refuses_fetches_nothing(client, svc):
    account_id = svc.accounts.create_account(1_000_000)
    headers = {"Authorization": f"Bearer {svc.accounts.create_key(account_id, images_per_minute=1)}"}
    assert edit(client, headers, [{"image_url": PNG_URL}]).status_code == 200  # the minute's one image
    fetched = []
    svc.references = lambda account: Resolver(svc.uploads, account.account_id, lambda *a: fetched.append(a))

    response = edit(client, headers, [{"image_url": "https://example.com/a.png"}])

    assert response.status_code == 429
    assert fetched == []


def test_one_requests_references_are_capped_together(svc):
    big = b"x" * (MAX_REFERENCES_BYTES // 3 + 1)
    resolver = Resolver(svc.uploads, "acct_1", lambda url, param, timeout: big)
    refs, _ = parse({"images": [{"image_url": f"https://example.com/{i}.png"} for i in range(4)]})
    images, _ = resolver.inputs(refs, None)
    assert [len(image.data) for image in images[:2]] == [len(big)] * 2
    with pytest.raises(APIError) as refused:
        _ = images[2].data
    assert (refused.value.status, refused.value.param, refused.value.code) == (
        400,
        "images[2].image_url",
        "inputs_too_large",
    )


def test_a_json_edit_without_a_model_uses_the_specs_default_gpt_model(client, customer):
    _, headers = customer
    response = client.post(
        "/v1/images/edits", headers=headers, json={"prompt": "a fox", "images": [{"image_url": PNG_URL}]}
    )
    assert response.status_code == 200, response.text
    assert response.json()["output_format"] == "png"  # a GPT-only field: not dall-e-2, the API's default


def test_the_urls_of_one_request_share_one_time_budget(svc):
    clock = Clock(100.0)
    timeouts = []

    def fetch(url, param, timeout):
        timeouts.append((param, timeout))
        clock.now += 4
        return b"image"

    resolver = Resolver(svc.uploads, "acct_1", fetch, clock=clock, url_seconds=10)
    refs, _ = parse({"images": [{"image_url": f"https://example.com/{i}.png"} for i in range(3)]})
    images, _ = resolver.inputs(refs, None)

    assert timeouts == []  # nothing is fetched until validation reads it
    assert [image.data for image in images] == [b"image"] * 3
    assert timeouts == [("images[0].image_url", 10), ("images[1].image_url", 6), ("images[2].image_url", 2)]


def test_time_spent_fetching_inputs_comes_out_of_the_upstream_budget(svc, customer, catalog):
    from imagegate.inputs.validation import GenerationRequest, resolve

    account_id, headers = customer
    account = svc.accounts.authenticate(headers["Authorization"])
    job = resolve("generations", GenerationRequest(prompt="a fox", model="gpt-image-1.5"), svc.catalog)

    with pytest.raises(APIError) as exc:
        svc.handle(account, replace(job, input_seconds=svc.settings.upstream_budget_seconds))

    assert (exc.value.status, exc.value.code) == (504, "upstream_timeout")
    assert svc.accounts.balance(account_id) == 1_000_000  # refunded in full


def test_a_data_url_may_carry_parameters_before_base64():
    assert data_url("data:image/png;name=a.png;base64,aGk=", "p") == b"hi"


def test_a_json_edit_by_reference_runs_as_a_job_with_its_mask_kept_as_the_mask(aws, settings, customer):
    from imagegate.jobs.lifecycle import Jobs

    queue = aws.sqs.create_queue(QueueName=settings.table)["QueueUrl"]
    svc = Service(replace(settings, jobs_queue_url=queue), aws, Logger(service="test", level="CRITICAL"))
    jobs = Jobs(svc)
    account_id, headers = customer
    original = (10, 200, 30, 255)
    image = stored(svc, account_id, image_bytes(64, 64, colour=original))
    keep_right = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    keep_right.paste((0, 0, 0, 0), (0, 0, 32, 64))  # the left half is the area to edit
    mask = {"image_url": as_data_url(encoded(keep_right))}

    with TestClient(create_app(svc, jobs=jobs), raise_server_exceptions=False) as client:
        response = client.post(
            "/v1/images/edits",
            headers={**headers, "Prefer": "respond-async"},
            json={**JSON_EDIT, "images": [{"file_id": image}], "mask": mask},
        )
        assert response.status_code == 202, response.text
        # Reserved at submit: the quote's upper bound, settled to the price when the job runs.
        assert svc.accounts.balance(account_id) <= 1_000_000 - GPT_IMAGE_15_LOW_SQUARE

        done = jobs.run(account_id, response.json()["id"])

    assert done["status"] == "succeeded", done["error"]
    out = Image.open(io.BytesIO(base64.b64decode(done["result"]["data"][0]["b64_json"]))).convert("RGBA")
    assert out.getpixel((900, 512)) == original  # kept: the mask reached the worker as the mask
    assert out.getpixel((100, 512)) != original
    assert svc.accounts.balance(account_id) == 1_000_000 - GPT_IMAGE_15_LOW_SQUARE  # charged once, exactly


class NoListBucket:
    """S3 as a role without s3:ListBucket sees it (the functions' role): a missing key is 403 AccessDenied."""

    def __init__(self, s3):
        self._s3 = s3

    def get_object(self, **kwargs):
        from botocore.exceptions import ClientError

        try:
            return self._s3.get_object(**kwargs)
        except self._s3.exceptions.NoSuchKey:
            raise ClientError(
                {"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject"
            ) from None

    def __getattr__(self, name):
        return getattr(self._s3, name)


def test_an_unknown_file_id_is_the_documented_400_where_s3_answers_403(client, svc, customer):
    """Issue 20, item 11: on AWS a missing key under uploads/ is a 403 (no s3:ListBucket), which escaped
    as a 500 for every unknown, expired or other account's file id."""
    svc.uploads._s3 = NoListBucket(svc.aws.s3)
    response = edit(client, customer[1], [{"file_id": "file-" + "0" * 32}])
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("images[0].file_id", "file_not_found")
    assert svc.accounts.balance(customer[0]) == 1_000_000

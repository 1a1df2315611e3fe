"""Idempotency keys against moto's in-process DynamoDB, with an injected clock."""

import base64
import dataclasses
import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from imagegate.config import Deadlines
from imagegate.errors import APIError
from imagegate.money.idempotency import Idempotency, fingerprint

from .conftest import Clock, OneRequestAtATime, half_mask, image_bytes, upload

START = 1_700_000_000
ACCOUNT = "acct_a"
RID = "req_first"
LOCK = Deadlines().request_lock_s  # the default integration timeout's
RESPONSE = {"created": START, "data": [{"url": "outputs/acct_a/req_1/0.png"}], "size": "1024x1024"}


@pytest.fixture
def clock():
    return Clock(START)


@pytest.fixture
def idem(aws, settings, clock):
    return Idempotency(aws.dynamodb, settings.table, clock=clock)


def record(aws, settings, key, account_id=ACCOUNT):
    digest = hashlib.sha256(key.encode()).hexdigest()
    return aws.dynamodb.get_item(
        TableName=settings.table,
        Key={"pk": {"S": f"IDEMPOTENCY#{account_id}#{digest}"}, "sk": {"S": "IDEMPOTENCY"}},
        ConsistentRead=True,
    ).get("Item")


def error(call, *args):
    with pytest.raises(APIError) as info:
        call(*args)
    return info.value


# --- begin, complete, replay ----------------------------------------------------------------------------


def test_first_use_runs_and_a_completed_key_replays(aws, settings, idem, clock):
    assert idem.begin(ACCOUNT, "key-1", "fp", RID) is None
    item = record(aws, settings, "key-1")
    assert {
        name: item[name] for name in ("state", "fingerprint", "created_at", "locked_until", "expires_at")
    } == {
        "state": {"S": "in_progress"},
        "fingerprint": {"S": "fp"},
        "created_at": {"N": str(START)},
        "locked_until": {"N": str(START + LOCK)},
        "expires_at": {"N": str(START + 86400)},
    }

    clock.now += 5
    assert idem.complete(ACCOUNT, "key-1", RID, RESPONSE) is True
    item = record(aws, settings, "key-1")
    assert (item["state"]["S"], json.loads(item["response"]["S"])) == ("completed", RESPONSE)
    assert item["expires_at"] == {"N": str(START + 86400)}  # 24 h from the first request, not the last

    clock.now += 3600
    assert idem.begin(ACCOUNT, "key-1", "fp", RID) == RESPONSE
    assert idem.begin(ACCOUNT, "key-1", "fp", RID) == RESPONSE


def test_the_key_is_stored_only_hashed(aws, settings, idem):
    idem.begin(ACCOUNT, "my-secret-looking-key", "fp", RID)
    assert "my-secret-looking-key" not in json.dumps(aws.dynamodb.scan(TableName=settings.table)["Items"])


@pytest.mark.parametrize("completed", [False, True])
def test_same_key_for_a_different_request_is_400(idem, completed):
    idem.begin(ACCOUNT, "key-1", "fp", RID)
    if completed:
        idem.complete(ACCOUNT, "key-1", RID, RESPONSE)
    err = error(idem.begin, ACCOUNT, "key-1", "other-fp", "req_second")
    assert (err.status, err.type, err.code, err.param) == (
        400,
        "invalid_request_error",
        "idempotency_key_reused",
        "Idempotency-Key",  # issue 20, item 13: it was None
    )
    assert err.message == (
        "This Idempotency-Key was already used for a different request (other parameters or images). "
        "Use a new key for a new request."
    )


def test_a_retry_while_the_first_request_runs_is_409(idem, clock):
    idem.begin(ACCOUNT, "key-1", "fp", RID)
    clock.now += 2
    err = error(idem.begin, ACCOUNT, "key-1", "fp", "req_second")
    assert (err.status, err.type, err.code, err.param) == (
        409,
        "invalid_request_error",
        "idempotency_key_in_use",
        "Idempotency-Key",
    )
    assert "the original request is still running" in err.message
    assert err.headers == {"retry-after": "5"}
    clock.now = START + LOCK - 2.5  # the lock has 2.5 s to run
    assert error(idem.begin, ACCOUNT, "key-1", "fp", "req_second").headers == {"retry-after": "3"}


def test_an_expired_lock_lets_a_retry_take_over(aws, settings, idem, clock):
    idem.begin(ACCOUNT, "key-1", "fp", RID)  # this request's Lambda is killed: no complete, no release
    clock.now = START + LOCK - 1
    assert error(idem.begin, ACCOUNT, "key-1", "fp", "req_second").status == 409
    clock.now = START + LOCK
    assert idem.begin(ACCOUNT, "key-1", "fp", "req_second") is None
    item = record(aws, settings, "key-1")
    assert (item["created_at"], item["locked_until"]) == (
        {"N": str(START + LOCK)},
        {"N": str(START + 2 * LOCK)},
    )
    assert item["request_id"] == {"S": "req_second"}
    assert error(idem.begin, ACCOUNT, "key-1", "fp", "req_third").status == 409  # the new holder's lock
    # The dead request's completion can no longer land on the record it lost.
    assert idem.complete(ACCOUNT, "key-1", RID, {"stale": True}) is False
    assert idem.complete(ACCOUNT, "key-1", "req_second", RESPONSE) is True
    assert idem.begin(ACCOUNT, "key-1", "fp", "req_fourth") == RESPONSE


def test_an_abandoned_key_is_free_for_any_request(idem, clock):
    idem.begin(ACCOUNT, "key-1", "fp", RID)
    clock.now = START + LOCK
    assert idem.begin(ACCOUNT, "key-1", "other-fp", RID) is None


def test_after_24_hours_the_key_is_fresh(aws, settings, idem, clock):
    idem.begin(ACCOUNT, "key-1", "fp", RID)
    idem.complete(ACCOUNT, "key-1", RID, RESPONSE)
    clock.now = START + 86399
    assert idem.begin(ACCOUNT, "key-1", "fp", RID) == RESPONSE
    # DynamoDB's TTL deletes lazily; the record is still there, but counts as gone.
    clock.now = START + 86400
    assert idem.begin(ACCOUNT, "key-1", "other-fp", RID) is None
    assert record(aws, settings, "key-1")["state"]["S"] == "in_progress"


def test_ttl_is_configurable(aws, settings, clock):
    idem = Idempotency(aws.dynamodb, settings.table, clock=clock, ttl_seconds=3600)
    idem.begin(ACCOUNT, "key-1", "fp", RID)
    idem.complete(ACCOUNT, "key-1", RID, RESPONSE)
    assert record(aws, settings, "key-1")["expires_at"] == {"N": str(START + 3600)}
    clock.now = START + 3600
    assert idem.begin(ACCOUNT, "key-1", "fp", RID) is None


def test_release_after_a_failure_lets_the_retry_run(aws, settings, idem):
    idem.begin(ACCOUNT, "key-1", "fp", RID)
    assert idem.release(ACCOUNT, "key-1") is True
    assert record(aws, settings, "key-1") is None
    assert idem.release(ACCOUNT, "key-1") is False
    assert idem.begin(ACCOUNT, "key-1", "fp", RID) is None


def test_release_never_removes_a_completed_response(idem):
    idem.begin(ACCOUNT, "key-1", "fp", RID)
    idem.complete(ACCOUNT, "key-1", RID, RESPONSE)
    assert idem.release(ACCOUNT, "key-1") is False
    assert idem.begin(ACCOUNT, "key-1", "fp", RID) == RESPONSE


def test_complete_only_an_in_progress_claim(aws, settings, idem):
    assert idem.complete(ACCOUNT, "never-begun", RID, RESPONSE) is False
    assert record(aws, settings, "never-begun") is None
    idem.begin(ACCOUNT, "key-1", "fp", RID)
    idem.complete(ACCOUNT, "key-1", RID, RESPONSE)
    assert idem.complete(ACCOUNT, "key-1", RID, {"other": True}) is False
    assert idem.begin(ACCOUNT, "key-1", "fp", RID) == RESPONSE


def test_a_response_too_large_to_store_is_refused(aws, settings, idem):
    idem.begin(ACCOUNT, "key-1", "fp", RID)
    with pytest.raises(ValueError, match="never image bytes"):
        idem.complete(ACCOUNT, "key-1", RID, {"data": [{"b64_json": "A" * 300_000}]})
    assert record(aws, settings, "key-1")["state"]["S"] == "in_progress"


def test_keys_are_scoped_per_account(idem):
    assert idem.begin("acct_a", "shared", "fp-a", RID) is None
    assert idem.begin("acct_b", "shared", "fp-b", RID) is None
    idem.complete("acct_a", "shared", RID, RESPONSE)
    assert idem.begin("acct_a", "shared", "fp-a", RID) == RESPONSE
    assert error(idem.begin, "acct_b", "shared", "fp-b", "req_second").status == 409


def test_ten_concurrent_begins_admit_exactly_one(aws, settings, clock):
    idem = Idempotency(OneRequestAtATime(aws.dynamodb), settings.table, clock=clock)
    start = threading.Barrier(10)

    def begin(_):
        start.wait()
        try:
            return idem.begin(ACCOUNT, "key-1", "fp", RID)
        except APIError as exc:
            return exc.status

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(begin, range(10)))
    assert results.count(None) == 1
    assert results.count(409) == 9


# --- the header -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["", "k" * 256, "ключ", "tab\there", "new\nline", "del\x7f", "nul\x00", "emoji-🙂"],
    ids=["empty", "256-chars", "non-ascii", "tab", "newline", "del", "nul", "emoji"],
)
def test_invalid_header_values_are_400(aws, settings, idem, key):
    err = error(idem.begin, ACCOUNT, key, "fp", "req_second")
    assert (err.status, err.param, err.code) == (400, "Idempotency-Key", "invalid_value")
    assert err.message == "Invalid 'Idempotency-Key' header: it must be 1 to 255 printable ASCII characters."
    assert aws.dynamodb.scan(TableName=settings.table)["Items"] == []


@pytest.mark.parametrize("key", ["k", "k" * 255, "a b~!@#$%^&*()", "550e8400-e29b-41d4-a716-446655440000"])
def test_valid_header_values(idem, key):
    assert idem.begin(ACCOUNT, key, "fp", RID) is None


# --- fingerprints ---------------------------------------------------------------------------------------

GPT = {"prompt": "a red fox", "model": "gpt-image-1.5", "size": "1024x1536", "n": 2}


def test_identical_requests_have_the_same_fingerprint(job):
    assert fingerprint(job(**GPT)) == fingerprint(job(**GPT))
    edits = {"prompt": "hat", "model": "dall-e-2"}
    first = job("edits", images=[upload()], mask=half_mask(64, 64), **edits)
    again = job("edits", images=[upload()], mask=half_mask(64, 64), **edits)
    assert fingerprint(first, "user-1") == fingerprint(again, "user-1")
    assert len(fingerprint(first)) == 64


def test_resolved_defaults_fingerprint_like_explicit_values(job):
    assert fingerprint(job(**GPT)) == fingerprint(job(**GPT, quality="medium", output_format="png"))


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": "a red fox!"},
        {"model": "gpt-image-1"},
        {"n": 3},
        {"size": "1024x1024"},
        {"quality": "high"},
        {"response_format": "url"},
        {"output_format": "webp"},
        {"output_format": "jpeg", "output_compression": 80},
        {"background": "opaque"},
        {"moderation": "low"},
    ],
)
def test_any_changed_parameter_changes_the_fingerprint(job, change):
    assert fingerprint(job(**{**GPT, **change})) != fingerprint(job(**GPT))


def test_compression_style_user_and_endpoint_are_part_of_the_fingerprint(job):
    jpeg = {**GPT, "output_format": "jpeg"}
    assert fingerprint(job(**jpeg, output_compression=80)) != fingerprint(job(**jpeg, output_compression=81))
    dalle3 = {"prompt": "a red fox", "model": "dall-e-3"}
    assert fingerprint(job(**dalle3, style="vivid")) != fingerprint(job(**dalle3, style="natural"))
    assert fingerprint(job(**GPT), "user-1") != fingerprint(job(**GPT), "user-2")
    assert fingerprint(job(**GPT), "user-1") != fingerprint(job(**GPT))
    # The same image and parameters, sent to /edits as a file and to /generations as base64.
    as_edit = job("edits", images=[upload()], **GPT)
    as_generation = job("generations", image=base64.b64encode(image_bytes()).decode(), **GPT)
    assert as_edit.images[0].data == as_generation.images[0].data
    assert fingerprint(as_edit) != fingerprint(as_generation)


def test_input_images_and_masks_are_fingerprinted_by_their_bytes(job):
    edit = {"prompt": "hat", "model": "gpt-image-1.5"}
    red, blue = upload(colour=(200, 40, 40, 255)), upload(colour=(40, 40, 200, 255))
    base = fingerprint(job("edits", images=[red, blue], **edit))
    assert fingerprint(job("edits", images=[red, blue], **edit)) == base
    assert fingerprint(job("edits", images=[blue, red], **edit)) != base  # order matters
    assert fingerprint(job("edits", images=[red], **edit)) != base

    one_pixel = upload(colour=(200, 40, 41, 255))
    assert fingerprint(job("edits", images=[one_pixel, blue], **edit)) != base
    # A byte past the end, which no decoder reads, still makes it another upload.
    one_byte = dataclasses.replace(red, data=red.data + b"\0")
    assert fingerprint(job("edits", images=[one_byte, blue], **edit)) != base
    # The part's name (image vs image[]) is transport, not content.
    renamed = upload("image[]", colour=(200, 40, 40, 255))
    assert fingerprint(job("edits", images=[renamed, blue], **edit)) == base

    masked = fingerprint(job("edits", images=[red], mask=half_mask(64, 64), **edit))
    assert masked != fingerprint(job("edits", images=[red], **edit))
    clear = upload("mask", colour=(0, 0, 0, 0))
    assert masked != fingerprint(job("edits", images=[red], mask=clear, **edit))

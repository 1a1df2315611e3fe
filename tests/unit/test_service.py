"""One request through `Service` on moto's DynamoDB and S3 with the local provider: the money path's
calls, what a too-large answer costs, and what happens when the settle or the Lambda fails."""

import base64
import io
import json
import math
from dataclasses import replace

import pytest
from aws_lambda_powertools.logging import Logger
from botocore.exceptions import ClientError
from shims import charges

from imagegate.errors import APIError
from imagegate.inputs.validation import GenerationRequest, resolve
from imagegate.money import ledger
from imagegate.service import Service

from .conftest import Clock, Counting, Failing


class Clients:
    """The AWS clients, with DynamoDB swapped for a wrapper (counting or failing)."""

    def __init__(self, real, dynamodb):
        self._real = real
        self.dynamodb = dynamodb

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture
def funded(accounts):
    account_id = accounts.create_account(10_000_000)
    return account_id, accounts.create_key(account_id)


def service(aws, settings, dynamodb=None, clock=None, **overrides):
    clients = Clients(aws, dynamodb or aws.dynamodb)
    return Service(
        replace(settings, **overrides),
        clients,
        Logger(service="test", level="CRITICAL"),
        clock=clock or Clock(),
    )


def job(svc, **params):
    params = {"prompt": "a red fox", "model": "dall-e-2", "size": "256x256", **params}
    return resolve("generations", GenerationRequest(**params), svc.catalog)


def outputs(aws, settings):
    return [o["Key"] for o in aws.s3.list_objects_v2(Bucket=settings.bucket).get("Contents", [])]


def test_a_request_costs_three_dynamodb_calls(aws, settings, funded):
    """Issue 12, target 1: key lookup, reserve transaction, settle transaction."""
    counting = Counting(aws.dynamodb)
    svc = service(aws, settings, counting)
    svc.handle(svc.accounts.authenticate(f"Bearer {funded[1]}"), job(svc))  # warm: routes, prices, clients
    counting.calls.clear()
    svc.handle(svc.accounts.authenticate(f"Bearer {funded[1]}"), job(svc))
    assert counting.calls == {"get_item": 1, "transact_write_items": 2}


def test_an_idempotent_request_costs_four(aws, settings, funded):
    counting = Counting(aws.dynamodb)
    svc = service(aws, settings, counting)
    svc.handle(svc.accounts.authenticate(f"Bearer {funded[1]}"), job(svc), "warm-up")
    counting.calls.clear()
    svc.handle(svc.accounts.authenticate(f"Bearer {funded[1]}"), job(svc), "key-1")
    assert counting.calls == {"get_item": 1, "put_item": 1, "transact_write_items": 2}


# --- a b64_json answer too large to return (issue 8, item 1) -------------------------------------------


def test_an_answer_that_cannot_fit_is_refused_before_anything_is_made(aws, settings, accounts, funded):
    svc = service(aws, settings, max_response_bytes=6_000_000)
    account = accounts.authenticate(f"Bearer {funded[1]}")
    big = job(svc, model="dall-e-2", size="1024x1024", n=10, response_format="b64_json")
    with pytest.raises(APIError) as info:
        svc.handle(account, big)
    err = info.value
    assert (err.status, err.param, err.code) == (400, "response_format", "response_too_large")
    assert "response_format=url" in err.message and "smaller n" in err.message
    assert accounts.balance(funded[0]) == 10_000_000
    assert outputs(aws, settings) == []
    assert [e.kind for e in ledger.entries(aws.dynamodb, settings.table, funded[0])] == ["credit"]


def test_an_answer_larger_than_expected_is_delivered_as_urls_and_charged(aws, settings, accounts, funded):
    params = {"model": "gpt-image-1.5", "size": "1024x1024", "quality": "low", "output_format": "jpeg"}
    unbounded = service(aws, settings)
    account = accounts.authenticate(f"Bearer {funded[1]}")
    first = unbounded.handle(account, job(unbounded, **params))
    actual = len(first.body["data"][0]["b64_json"])
    ceiling = math.ceil(1024 * 1024 * 0.05 * 4 / 3)  # exactly the up-front estimate for one JPEG
    assert actual > ceiling  # the premise: this image is larger than the estimate let through
    balance = accounts.balance(funded[0])

    svc = service(aws, settings, max_response_bytes=ceiling)
    response = svc.handle(accounts.authenticate(f"Bearer {funded[1]}"), job(svc, **params))
    assert response.headers["x-imagegate-response-format"] == "url"
    [item] = response.body["data"]
    assert "b64_json" not in item and item["url"].startswith("https://")
    charged = balance - accounts.balance(funded[0])
    assert charged == first_charge(aws, settings, funded[0]) > 0  # charged like the first: delivered
    assert len(outputs(aws, settings)) == 1


def first_charge(aws, settings, account_id):
    return charges(aws.dynamodb, settings.table, account_id)[0]


# --- a settle that fails after images exist (issue 8, items 3 and 4) ------------------------------------


def test_a_settle_that_fails_answers_200_keeps_the_key_and_the_sweeper_charges(
    aws, settings, accounts, funded
):
    clock = Clock()
    failing = Failing(aws.dynamodb, "ThrottlingException", times=0)

    def now():
        return clock.now

    svc = service(aws, settings, failing, clock=now)
    svc.billing._sleep = lambda seconds: setattr(clock, "now", clock.now + seconds + 1)
    account = accounts.authenticate(f"Bearer {funded[1]}")
    price = svc.prices.quote(job(svc)).reserve

    original = svc.billing.settle

    def settle_throttled(*args, **kwargs):
        failing.times = 10_000  # DynamoDB throttles every settle attempt until the deadline
        try:
            return original(*args, **kwargs)
        finally:
            failing.times = 0

    svc.billing.settle = settle_throttled
    response = svc.handle(account, job(svc), "retry-me")
    assert response.body["data"]  # the client gets its images
    assert accounts.balance(funded[0]) == 10_000_000 - price  # reserved, not refunded

    # A retry with the same key replays the stored answer: never a second run or charge.
    svc.billing.settle = original
    replay = svc.handle(accounts.authenticate(f"Bearer {funded[1]}"), job(svc), "retry-me")
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.body["data"] == response.body["data"]

    clock.now += 3600
    closed = svc.billing.sweep(older_than_s=900)
    assert [charged for _, charged in closed] == [price]  # the intended charge, not a refund
    assert accounts.balance(funded[0]) == 10_000_000 - price
    assert ledger.reconcile(aws.dynamodb, settings.table, funded[0]).ok


def test_a_retry_after_the_lambda_died_past_settle_is_replayed_not_rerun(aws, settings, accounts, funded):
    """Item 4: the record is completed inside the settle transaction, so there is no window in which a
    charged request can be taken over and run again."""
    svc = service(aws, settings)
    account = accounts.authenticate(f"Bearer {funded[1]}")
    first = svc.handle(account, job(svc), "k")
    charged = 10_000_000 - accounts.balance(funded[0])
    item = aws.dynamodb.scan(
        TableName=settings.table,
        FilterExpression="begins_with(pk, :p)",
        ExpressionAttributeValues={":p": {"S": "IDEMPOTENCY#"}},
    )["Items"][0]
    assert item["state"]["S"] == "completed"
    assert item["request_id"]["S"] == first.headers["x-request-id"]
    again = svc.handle(accounts.authenticate(f"Bearer {funded[1]}"), job(svc), "k")
    assert again.headers["idempotent-replayed"] == "true"
    assert 10_000_000 - accounts.balance(funded[0]) == charged


def test_a_failure_before_any_image_releases_the_key(aws, settings, accounts, funded):
    svc = service(aws, settings)
    account = accounts.authenticate(f"Bearer {funded[1]}")

    def broken(*args, **kwargs):
        raise ClientError({"Error": {"Code": "InternalError"}}, "PutObject")

    svc.storage.put_images = broken
    with pytest.raises(ClientError):
        svc.handle(account, job(svc, response_format="url"), "k2")
    assert accounts.balance(funded[0]) == 10_000_000  # refunded
    del svc.storage.put_images
    response = svc.handle(accounts.authenticate(f"Bearer {funded[1]}"), job(svc, response_format="url"), "k2")
    assert "idempotent-replayed" not in response.headers  # it ran: the key was free again


# --- replays are metered (issue 8, item 10) --------------------------------------------------------------


def test_replays_count_against_the_keys_images_per_minute(aws, settings, accounts, funded):
    svc = service(aws, settings, images_per_minute=3)
    account = accounts.authenticate(f"Bearer {funded[1]}")
    svc.handle(account, job(svc, response_format="b64_json"), "same")
    for _ in range(2):
        svc.handle(accounts.authenticate(f"Bearer {funded[1]}"), job(svc, response_format="b64_json"), "same")
    with pytest.raises(APIError) as info:
        svc.handle(accounts.authenticate(f"Bearer {funded[1]}"), job(svc, response_format="b64_json"), "same")
    assert info.value.status == 429


def test_b64_replays_decode_to_the_same_image(aws, settings, accounts, funded):
    svc = service(aws, settings)
    first = svc.handle(
        accounts.authenticate(f"Bearer {funded[1]}"), job(svc, response_format="b64_json"), "b"
    )
    again = svc.handle(
        accounts.authenticate(f"Bearer {funded[1]}"), job(svc, response_format="b64_json"), "b"
    )
    assert base64.b64decode(again.body["data"][0]["b64_json"]) == base64.b64decode(
        first.body["data"][0]["b64_json"]
    )


# --- the request's log line and its metrics -----------------------------------------------------------


@pytest.mark.parametrize("level", ["INFO", "WARNING"])
def test_a_request_s_metrics_reach_cloudwatch_whatever_the_log_level(
    aws, settings, funded, capsys, request, level
):
    """At INFO the metrics ride in the request's log line; with LogLevel WARNING that line is not written,
    and the metrics get a line of their own: an operator quieting the logs keeps the dashboards."""
    stream = io.StringIO()
    logger = Logger(service=f"imagegate-{request.node.name}", level=level, stream=stream)
    svc = Service(replace(settings, metrics=True), aws, logger, clock=Clock())
    capsys.readouterr()
    svc.handle(svc.accounts.authenticate(f"Bearer {funded[1]}"), job(svc))

    lines = [
        json.loads(line) for line in stream.getvalue().splitlines() + capsys.readouterr().out.splitlines()
    ]
    [emf] = [line for line in lines if "_aws" in line]
    assert (emf["model"], emf["provider"], emf["Requests"], emf["RevenueMicroUSD"]) == (
        "dall-e-2",
        "local",
        [1.0],
        [16_000.0],
    )
    assert emf["service"] == logger.service
    assert (emf.get("message") == "image request") is (level == "INFO")


# --- routes near their shutdown date (issue 18, item 4) ---------------------------------------------------


def test_the_routes_of_models_that_served_traffic_are_warned_of_within_30_days_of_shutdown(
    aws, settings, funded, capsys, stream
):
    import io
    import json
    from datetime import date

    from imagegate.catalog.lifecycle import midnight

    logs = io.StringIO()
    svc = Service(
        replace(settings, metrics=True),
        aws,
        Logger(service="route-warnings", stream=logs),
        clock=Clock(midnight(date(2026, 11, 20)) + 3600),
    )
    key = svc.accounts.authenticate(f"Bearer {funded[1]}")
    assert svc.route_warnings(date(2026, 11, 20)) == {"routes_near_shutdown": 0}  # no traffic, no warning
    svc.handle(key, job(svc, model="gpt-image-1.5", size="1024x1024", quality="low"))
    svc.handle(key, job(svc, model="gpt-image-2", size="1024x1024", quality="low"))
    stream.drain()  # the usage says which models served traffic
    logs.seek(0)
    logs.truncate()
    capsys.readouterr()
    # gpt-image-1.5: OpenAI's route ends 2026-12-01 (11 days), Azure's 2026-12-16 (26); gpt-image-2 has none.
    assert svc.route_warnings(date(2026, 11, 20)) == {"routes_near_shutdown": 2}
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{")]
    warned = [
        (x["provider"], x["upstream_model"], x["days_left"])
        for x in lines
        if x.get("message") == "route near shutdown"
    ]
    assert sorted(warned) == [("azure_openai", "gpt-image-1.5", 26), ("openai", "gpt-image-1.5", 11)]
    assert all(x["model"] == "gpt-image-1.5" for x in lines if x.get("message") == "route near shutdown")
    metrics = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if "RoutesNearShutdown" in line
    ]
    assert len(metrics) == 2 and {m["model"] for m in metrics} == {"gpt-image-1.5"}
    # Five weeks before, nothing is near.
    assert svc.route_warnings(date(2026, 10, 15)) == {"routes_near_shutdown": 0}

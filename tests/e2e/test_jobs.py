"""Jobs over HTTP with the real OpenAI SDK (`extra_headers={"Prefer": "respond-async"}`, `with_raw_response`)
against the app on uvicorn, moto's S3, DynamoDB and SQS in their own process, and the worker polling the
queue in this one, as `make serve` runs it."""

import base64
import io
import time
import uuid
from dataclasses import replace

import httpx
import openai
import pytest
from aws_lambda_powertools.logging import Logger
from PIL import Image

from imagegate.aws import AWSClients
from imagegate.config import Settings
from imagegate.http.api import create_app
from imagegate.http.lambda_app import batch_handler, build_jobs
from imagegate.local.devserver import LocalWorker, provision, provision_jobs_queue
from imagegate.money import ledger
from imagegate.service import Service
from imagegate.table import job_key, legacy_job_key, update_job

from .conftest import DEFAULT_BALANCE, Stack, _serve

PRICE = 16_000  # dall-e-2 256x256
ASYNC = {"Prefer": "respond-async"}
PATIENCE_S = 60  # how long a test waits for the local worker before it calls the job lost


@pytest.fixture(scope="module")
def job_stack(aws_env, moto_endpoint, dynamodb_endpoints):
    """The app with the jobs routes, its queue and the local worker; `worker` can be stopped by a test."""
    suffix = uuid.uuid4().hex[:12]
    config = Settings(table=f"e2e-{suffix}", bucket=f"e2e-{suffix}", region="us-east-1")
    aws = AWSClients(config, moto_endpoint, dynamodb_endpoints)
    provision(aws, config)
    config = replace(config, jobs_queue_url=provision_jobs_queue(aws, config, f"e2e-{suffix}"))
    logger = Logger(service="imagegate-e2e", level="WARNING")
    service = Service(config, aws, logger)
    base_url, stop = _serve(create_app(service, jobs=build_jobs(service)))
    worker = LocalWorker(
        batch_handler(build_jobs(Service(config.for_worker(), aws, logger))), aws.sqs, config.jobs_queue_url
    )
    worker.start()
    yield Stack(config, aws, service, base_url), worker
    worker.stop()
    stop()


@pytest.fixture
def client(job_stack, sdk_http):
    stack, _ = job_stack
    account_id = stack.service.accounts.create_account(DEFAULT_BALANCE, label="e2e-jobs")
    key = stack.service.accounts.create_key(account_id, label="e2e-jobs")
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0, http_client=sdk_http)
    client.account_id = account_id  # type: ignore[attr-defined]
    return client


def balance(job_stack, client):
    return job_stack[0].service.accounts.balance(client.account_id)


def finished(client, job_id):
    deadline = time.monotonic() + PATIENCE_S
    while True:
        job = client.get(f"/images/jobs/{job_id}", cast_to=object)
        if job["status"] not in ("queued", "in_progress") or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


def test_the_sdk_submits_a_job_and_fetches_its_images(job_stack, client, http):
    raw = client.images.with_raw_response.generate(
        prompt="a lighthouse at dusk", model="dall-e-2", size="256x256", n=2, extra_headers=ASYNC
    )
    assert raw.http_response.status_code == 202
    job = raw.http_response.json()
    assert raw.headers["location"] == f"/v1/images/jobs/{job['id']}"
    assert raw.headers["preference-applied"] == "respond-async"
    assert (job["object"], job["status"], job["endpoint"], job["model"]) == (
        "image.job",
        "queued",
        "generations",
        "dall-e-2",
    )
    assert balance(job_stack, client) == DEFAULT_BALANCE - 2 * PRICE  # reserved at submit

    done = finished(client, job["id"])
    assert done["status"] == "succeeded" and done["error"] is None
    assert done["completed_at"] >= done["created_at"]
    urls = [d["url"] for d in done["result"]["data"]]
    assert len(urls) == 2
    for url in urls:
        assert Image.open(io.BytesIO(http.get(url).content)).size == (256, 256)
    assert balance(job_stack, client) == DEFAULT_BALANCE - 2 * PRICE  # charged once, nothing more
    stack = job_stack[0]
    assert ledger.reconcile(stack.aws.dynamodb, stack.settings.table, client.account_id).problems == []


def test_waiting_for_a_job_that_finishes_in_time_gives_the_ordinary_response(job_stack, client):
    raw = client.images.with_raw_response.generate(
        prompt="a red fox",
        model="dall-e-2",
        size="256x256",
        response_format="b64_json",
        extra_headers={"Prefer": "respond-async, wait=20"},
    )
    assert raw.http_response.status_code == 200
    assert raw.headers["preference-applied"] == "wait=20"
    images = raw.parse()
    assert Image.open(io.BytesIO(base64.b64decode(images.data[0].b64_json))).size == (256, 256)


def test_a_wait_longer_than_the_gateway_allows_is_capped(job_stack, client):
    raw = client.images.with_raw_response.generate(
        prompt="a red fox",
        model="dall-e-2",
        size="256x256",
        extra_headers={"Prefer": "respond-async, wait=3600"},
    )
    cap = int(job_stack[0].settings.upstream_budget_seconds)
    # The submit's own time comes off the cap (test_jobs.py pins the exact figure on an injected clock).
    applied = raw.headers["preference-applied"].rpartition("wait=")[2]
    assert 0 < int(applied) <= cap


def test_an_async_edit_through_the_sdk(job_stack, client, http):
    img = Image.new("RGBA", (64, 64), (30, 90, 200, 255))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    raw = client.images.with_raw_response.edit(
        image=("in.png", buf.getvalue(), "image/png"),
        prompt="a kite",
        model="dall-e-2",
        size="256x256",
        extra_headers=ASYNC,
    )
    assert raw.http_response.status_code == 202
    done = finished(client, raw.http_response.json()["id"])
    assert done["status"] == "succeeded" and done["endpoint"] == "edits"


def test_a_refused_async_request_is_refused_in_the_202s_place(job_stack, client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(prompt="x", model="dall-e-2", size="7x7", extra_headers=ASYNC)
    assert bad.value.body["param"] == "size"
    poor_id = job_stack[0].service.accounts.create_account(PRICE - 1)
    poor = client.with_options(api_key=job_stack[0].service.accounts.create_key(poor_id))
    with pytest.raises(openai.APIStatusError) as unpaid:
        poor.images.generate(prompt="x", model="dall-e-2", size="256x256", extra_headers=ASYNC)
    assert unpaid.value.status_code == 402
    assert poor.get("/images/jobs", cast_to=object)["data"] == []


def test_list_cancel_and_another_accounts_job(job_stack, client, sdk_http):
    stack, worker = job_stack
    worker.stop()  # nothing runs: the jobs stay queued
    try:
        ids = [
            client.images.with_raw_response.generate(
                prompt=f"fox {i}", model="dall-e-2", size="256x256", extra_headers=ASYNC
            ).http_response.json()["id"]
            for i in range(3)
        ]
        page = client.get("/images/jobs", cast_to=object, options={"params": {"limit": 2}})
        assert [j["id"] for j in page["data"]] == ids[::-1][:2] and page["has_more"] is True
        rest = client.get("/images/jobs", cast_to=object, options={"params": {"after": page["last_id"]}})
        assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False

        cancelled = client.post(f"/images/jobs/{ids[0]}/cancel", cast_to=object)
        assert cancelled["status"] == "cancelled"
        assert balance(job_stack, client) == DEFAULT_BALANCE - 2 * PRICE  # refunded once

        other_id = stack.service.accounts.create_account(DEFAULT_BALANCE)
        other = client.with_options(api_key=stack.service.accounts.create_key(other_id))
        for call in (
            lambda: other.get(f"/images/jobs/{ids[1]}", cast_to=object),
            lambda: other.post(f"/images/jobs/{ids[1]}/cancel", cast_to=object),
        ):
            with pytest.raises(openai.NotFoundError):
                call()
        with pytest.raises(openai.BadRequestError) as bad:
            client.get("/images/jobs", cast_to=object, options={"params": {"limit": 0}})
        assert bad.value.body["param"] == "limit"
    finally:
        # Start again, so the queued jobs (and other tests) run; all of it is checked below.
        worker.start()
    assert finished(client, ids[1])["status"] == "succeeded"
    assert finished(client, ids[2])["status"] == "succeeded"
    assert finished(client, ids[0])["status"] == "cancelled"
    assert balance(job_stack, client) == DEFAULT_BALANCE - 2 * PRICE
    assert ledger.reconcile(stack.aws.dynamodb, stack.settings.table, client.account_id).problems == []


def test_jobs_on_their_shards_and_one_left_on_the_account_partition(job_stack, client):
    """Jobs on partitions of their own (JOBS#<account>#<shard>), listed newest first across them through the
    `after` cursor, with a job the release before wrote on ACCOUNT#<id>: read, listed, run and reconciled
    where it is, and another account's key reaches none of them."""
    stack, worker = job_stack
    db, table = stack.aws.dynamodb, stack.settings.table
    worker.stop()
    try:
        ids = []
        for i in range(4):
            ids.append(
                client.images.with_raw_response.generate(
                    prompt=f"owl {i}", model="dall-e-2", size="256x256", extra_headers=ASYNC
                ).http_response.json()["id"]
            )
            time.sleep(0.002)  # ids sort by their millisecond first
        old = ids[1]
        item = db.get_item(TableName=table, Key=job_key(client.account_id, old), ConsistentRead=True)["Item"]
        db.delete_item(TableName=table, Key=job_key(client.account_id, old))
        db.put_item(TableName=table, Item={**item, **legacy_job_key(client.account_id, old)})

        seen, after = [], None
        while True:
            params = {"limit": 1, **({"after": after} if after else {})}
            page = client.get("/images/jobs", cast_to=object, options={"params": params})
            seen += [j["id"] for j in page["data"]]
            if not page["has_more"]:
                break
            after = page["last_id"]
        assert seen == ids[::-1]
        assert client.get(f"/images/jobs/{old}", cast_to=object)["status"] == "queued"

        other_id = stack.service.accounts.create_account(DEFAULT_BALANCE)
        other = client.with_options(api_key=stack.service.accounts.create_key(other_id))
        for job_id in (old, ids[2]):
            with pytest.raises(openai.NotFoundError):
                other.get(f"/images/jobs/{job_id}", cast_to=object)
            with pytest.raises(openai.NotFoundError):
                other.post(f"/images/jobs/{job_id}/cancel", cast_to=object)
        assert other.get("/images/jobs", cast_to=object)["data"] == []
        assert client.post(f"/images/jobs/{ids[0]}/cancel", cast_to=object)["status"] == "cancelled"
    finally:
        worker.start()
    assert [finished(client, job_id)["status"] for job_id in ids] == ["cancelled", *["succeeded"] * 3]
    assert "Item" not in db.get_item(TableName=table, Key=job_key(client.account_id, old))
    assert balance(job_stack, client) == DEFAULT_BALANCE - 3 * PRICE
    assert ledger.reconcile(db, table, client.account_id).problems == []


def test_an_update_goes_where_the_job_is_and_never_makes_one(job_stack):
    """table.update_job (webhook state) on the emulator `make serve` uses: a job on the account partition is
    updated there, a job on its shard only there, and a condition that fails on the shard's item fails."""
    stack, _ = job_stack
    db, table = stack.aws.dynamodb, stack.settings.table
    account, job_id = f"acct_{uuid.uuid4().hex[:12]}", f"imgjob_{uuid.uuid4().hex}"
    update = {
        "UpdateExpression": "SET n = :next",
        "ConditionExpression": "attribute_exists(pk) AND n = :one",
        "ExpressionAttributeValues": {":one": {"N": "1"}, ":next": {"N": "2"}},
    }
    db.put_item(TableName=table, Item={**legacy_job_key(account, job_id), "n": {"N": "1"}})
    assert update_job(db, table, account, job_id, **update) == legacy_job_key(account, job_id)
    assert "Item" not in db.get_item(TableName=table, Key=job_key(account, job_id))
    db.put_item(TableName=table, Item={**job_key(account, job_id), "n": {"N": "5"}})
    with pytest.raises(db.exceptions.ConditionalCheckFailedException):
        update_job(db, table, account, job_id, **update)
    with pytest.raises(db.exceptions.ConditionalCheckFailedException):
        update_job(db, table, "acct_other", job_id, **update)  # nowhere: nothing made
    assert "Item" not in db.get_item(TableName=table, Key=job_key("acct_other", job_id))
    assert "Item" not in db.get_item(TableName=table, Key=legacy_job_key("acct_other", job_id))


def test_without_a_key_the_jobs_routes_are_401(job_stack):
    response = httpx.get(f"{job_stack[0].base_url}/v1/images/jobs")
    assert response.status_code == 401

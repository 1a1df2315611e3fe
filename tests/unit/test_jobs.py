"""Image jobs on moto's DynamoDB, S3 and SQS with the local provider: the state machine, its money (one
charge, refunds exactly once), the sweeper's thresholds, listing and cancelling, and the notifications."""

import base64
import io
import json
from dataclasses import replace

import pytest
from aws_lambda_powertools.logging import Logger
from PIL import Image

from imagegate.errors import APIError, ProviderError
from imagegate.http.lambda_app import batch_handler
from imagegate.inputs.validation import GenerationRequest, ImageParams, resolve
from imagegate.jobs.lifecycle import Jobs
from imagegate.money import ledger
from imagegate.service import Service, new_request_id
from imagegate.table import JOB_SHARDS, account_pk, job_items, job_key, jobs_pk, legacy_job_key, query

from .conftest import Clock, half_mask, upload
from .test_service import Clients
from .test_write_units import capacity

PRICE = 16_000  # dall-e-2 256x256


@pytest.fixture
def queue(aws, settings):
    return aws.sqs.create_queue(QueueName=settings.table)["QueueUrl"]


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def finished():
    return []


@pytest.fixture
def svc(aws, settings, queue, clock):
    return Service(
        replace(settings, jobs_queue_url=queue), aws, Logger(service="test", level="CRITICAL"), clock=clock
    )


@pytest.fixture
def jobs(svc, finished):
    return Jobs(svc, {"test": finished.append}, sleep=lambda s: None)


@pytest.fixture
def funded(accounts):
    account_id = accounts.create_account(1_000_000)
    return accounts.authenticate(f"Bearer {accounts.create_key(account_id)}")


def gen(svc, **params):
    params = {"prompt": "a red fox", "model": "dall-e-2", "size": "256x256", **params}
    return resolve("generations", GenerationRequest(**params), svc.catalog)


def messages(aws, queue):
    got = aws.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in got]


def balance(svc, account):
    return svc.accounts.balance(account.account_id)


def reconciled(aws, settings, account):
    result = ledger.reconcile(aws.dynamodb, settings.table, account.account_id)
    assert result.problems == []
    return result


def test_a_job_is_queued_run_once_and_charged_once(aws, settings, svc, jobs, funded, queue, finished):
    job = jobs.submit(funded, gen(svc), request_id="req_a")
    assert job["status"] == "queued" and job["id"].startswith("imgjob_") and job["result"] is None
    assert job["webhook"] is None and job["error"] is None
    assert balance(svc, funded) == 1_000_000 - PRICE  # reserved at submit
    (message,) = messages(aws, queue)
    assert message == {"account_id": funded.account_id, "job_id": job["id"]}

    done = jobs.run(funded.account_id, job["id"])
    again = jobs.run(funded.account_id, job["id"])  # a redelivered message
    assert done["status"] == again["status"] == "succeeded"
    (image,) = done["result"]["data"]
    assert image["url"].startswith("http")
    assert balance(svc, funded) == 1_000_000 - PRICE
    assert reconciled(aws, settings, funded).in_flight == 0
    assert [f["status"] for f in finished] == ["succeeded"]
    (detail,) = finished
    assert detail["result"]["data"][0]["s3_key"].startswith(f"outputs/{funded.account_id}/")
    assert detail["account_id"] == funded.account_id and detail["source"] == "http"
    assert detail["request_id"] == "req_a"


def submitted(jobs, svc, account, **params):
    return jobs.submit(account, gen(svc, **params), request_id=new_request_id())


def failing_upstream(monkeypatch, svc, status=502, code="upstream_error"):
    def run(job, request_id):
        raise ProviderError("The upstream failed.", status=status, code=code, fallover=False)

    monkeypatch.setattr(svc.router, "run", run)


# --- money: one charge, one refund ----------------------------------------------------------------------


def test_a_failed_job_is_refunded_once_and_shows_the_error(
    aws, settings, svc, jobs, funded, monkeypatch, finished
):
    job = submitted(jobs, svc, funded)
    failing_upstream(monkeypatch, svc)
    done = jobs.run(funded.account_id, job["id"])
    jobs.run(funded.account_id, job["id"])  # redelivered
    assert done["status"] == "failed" and done["result"] is None
    assert done["error"] == {
        "message": "The upstream failed.",
        "type": "server_error",
        "param": None,
        "code": "upstream_error",
    }
    assert balance(svc, funded) == 1_000_000
    assert reconciled(aws, settings, funded).in_flight == 0
    assert [f["status"] for f in finished] == ["failed"]
    assert jobs.failure(funded.account_id, job["id"]).status == 502


def test_a_failing_notification_neither_fails_the_job_nor_repeats_it(svc, funded, queue):
    calls = []

    def broken(detail):
        calls.append(detail["id"])
        raise RuntimeError("EventBridge is down")

    jobs = Jobs(svc, {"broken": broken, "calls": calls.append})
    job = submitted(jobs, svc, funded)
    assert jobs.run(funded.account_id, job["id"])["status"] == "succeeded"
    jobs.run(funded.account_id, job["id"])
    assert calls[0] == job["id"] and calls[1]["id"] == job["id"] and len(calls) == 2
    assert balance(svc, funded) == 1_000_000 - PRICE


def test_a_refused_submit_writes_nothing(aws, settings, svc, jobs, accounts, queue):
    poor = accounts.authenticate(f"Bearer {accounts.create_key(accounts.create_account(PRICE - 1))}")
    with pytest.raises(APIError) as refused:
        submitted(jobs, svc, poor)
    assert refused.value.status == 402
    assert jobs.list(poor.account_id)["data"] == []
    assert messages(aws, queue) == []
    with pytest.raises(APIError) as bad:
        submitted(jobs, svc, poor, size="7x7")
    assert (bad.value.status, bad.value.param) == (400, "size")
    assert balance(svc, poor) == PRICE - 1
    reconciled(aws, settings, poor)


def test_a_submit_whose_message_cannot_be_sent_is_refunded_and_says_so(
    aws, settings, svc, jobs, funded, monkeypatch, finished
):
    class DownQueue:
        def send_message(self, **kwargs):
            raise ConnectionError("SQS unreachable")

    monkeypatch.setattr(type(svc.aws), "sqs", property(lambda self: DownQueue()))
    with pytest.raises(APIError) as refused:
        submitted(jobs, svc, funded)
    assert (refused.value.status, refused.value.code) == (503, "queue_unavailable")
    [job] = jobs.list(funded.account_id)["data"]
    assert job["status"] == "failed" and job["error"]["code"] == "queue_unavailable"
    assert finished == [] and owed(aws, settings, funded, job["id"]) == set()  # the submitter has the 503
    assert balance(svc, funded) == 1_000_000
    reconciled(aws, settings, funded)


def test_a_retry_with_the_key_after_the_queue_was_down_runs_anew(svc, jobs, funded, monkeypatch, queue):
    # The 503 tells the client to retry: with the same Idempotency-Key, that retry must queue a new job,
    # not replay the failed one forever.
    class DownQueue:
        def send_message(self, **kwargs):
            raise ConnectionError("SQS unreachable")

    with monkeypatch.context() as down:
        down.setattr(type(svc.aws), "sqs", property(lambda self: DownQueue()))
        with pytest.raises(APIError):
            jobs.submit(funded, gen(svc), request_id="req_1", idempotency_key="k-1")
    retried = jobs.submit(funded, gen(svc), request_id="req_2", idempotency_key="k-1")
    assert retried["status"] == "queued"
    assert balance(svc, funded) == 1_000_000 - PRICE


def test_an_idempotent_submit_retried_gets_the_same_job_and_one_reservation(svc, jobs, funded, aws, queue):
    first = jobs.submit(funded, gen(svc), request_id="req_1", idempotency_key="k-1")
    again = jobs.submit(funded, gen(svc), request_id="req_2", idempotency_key="k-1")
    assert again["id"] == first["id"]
    assert balance(svc, funded) == 1_000_000 - PRICE
    assert len(messages(aws, queue)) == 1
    with pytest.raises(APIError) as reused:  # the same key for another request
        jobs.submit(funded, gen(svc, prompt="a blue fox"), request_id="req_3", idempotency_key="k-1")
    assert reused.value.code == "idempotency_key_reused"


# --- inputs, formats -------------------------------------------------------------------------------------


def test_an_edit_job_keeps_its_inputs_in_s3_not_in_the_queue(aws, settings, svc, jobs, funded, queue):
    image, mask = upload(width=256, height=256), half_mask(256, 256)
    params = ImageParams(prompt="a kite", model="dall-e-2", size="256x256", response_format="b64_json")
    job = jobs.submit(
        funded, resolve("edits", params, svc.catalog, [image], mask), request_id=new_request_id()
    )
    keys = [o["Key"] for o in aws.s3.list_objects_v2(Bucket=settings.bucket)["Contents"]]
    assert keys == [f"inputs/{funded.account_id}/{job['id']}/0", f"inputs/{funded.account_id}/{job['id']}/1"]
    (message,) = messages(aws, queue)
    assert set(message) == {"account_id", "job_id"}

    done = jobs.run(funded.account_id, job["id"])
    (item,) = done["result"]["data"]
    out = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
    assert out.size == (256, 256)
    # The mask's opaque left half kept the input's colour.
    assert out.convert("RGBA").getpixel((10, 128))[:3] == (200, 40, 40)


# --- cancel ---------------------------------------------------------------------------------------------


def test_cancelling_a_queued_job_refunds_it_once_and_its_message_then_does_nothing(
    aws, settings, svc, jobs, funded, finished
):
    job = submitted(jobs, svc, funded)
    cancelled = jobs.cancel(funded.account_id, job["id"])
    assert cancelled["status"] == "cancelled" and cancelled["completed_at"] is not None
    assert jobs.cancel(funded.account_id, job["id"])["status"] == "cancelled"
    assert jobs.run(funded.account_id, job["id"])["status"] == "cancelled"
    assert balance(svc, funded) == 1_000_000
    assert [f["status"] for f in finished] == ["cancelled"]
    assert reconciled(aws, settings, funded).in_flight == 0


def test_a_running_or_finished_job_cannot_be_cancelled(svc, jobs, funded, monkeypatch):
    job = submitted(jobs, svc, funded)
    seen = {}

    def cancel_while_running(original):
        def run(job_, request_id):
            with pytest.raises(APIError) as refused:
                jobs.cancel(funded.account_id, job["id"])
            seen["status"] = refused.value.status, refused.value.code
            return original(job_, request_id)

        return run

    monkeypatch.setattr(svc.router, "run", cancel_while_running(svc.router.run))
    assert jobs.run(funded.account_id, job["id"])["status"] == "succeeded"
    assert seen["status"] == (409, "job_not_cancellable")
    with pytest.raises(APIError) as finished_already:
        jobs.cancel(funded.account_id, job["id"])
    assert finished_already.value.status == 409
    assert balance(svc, funded) == 1_000_000 - PRICE


def test_another_accounts_job_is_a_404_never_a_403(svc, jobs, funded, accounts):
    job = submitted(jobs, svc, funded)
    other = accounts.authenticate(f"Bearer {accounts.create_key(accounts.create_account(1_000_000))}")
    for call in (jobs.get, jobs.cancel):
        with pytest.raises(APIError) as missing:
            call(other.account_id, job["id"])
        assert (missing.value.status, missing.value.code) == (404, "not_found")
    with pytest.raises(APIError) as malformed:
        jobs.get(funded.account_id, "imgjob_../../x")
    assert malformed.value.status == 404
    assert jobs.get(funded.account_id, job["id"])["status"] == "queued"


# --- listing --------------------------------------------------------------------------------------------


def test_jobs_are_listed_newest_first_in_pages(svc, jobs, funded, clock):
    ids = []
    for _ in range(5):
        ids.append(submitted(jobs, svc, funded)["id"])
        clock.now += 1
    first = jobs.list(funded.account_id, limit=2)
    assert [j["id"] for j in first["data"]] == ids[::-1][:2]
    assert (first["object"], first["first_id"], first["last_id"], first["has_more"]) == (
        "list",
        ids[4],
        ids[3],
        True,
    )
    second = jobs.list(funded.account_id, limit=2, after=first["last_id"])
    assert [j["id"] for j in second["data"]] == [ids[2], ids[1]] and second["has_more"]
    last = jobs.list(funded.account_id, limit=2, after=second["last_id"])
    assert [j["id"] for j in last["data"]] == [ids[0]] and not last["has_more"]
    with pytest.raises(APIError) as bad:
        jobs.list(funded.account_id, after="nope")
    assert (bad.value.status, bad.value.param) == (400, "after")


def partition_items(aws, settings, pk):
    return list(
        query(
            aws.dynamodb,
            TableName=settings.table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": pk}},
            ConsistentRead=True,
        )
    )


def listed(jobs, account_id, limit):
    """Every job of an account, newest first, page by page through the `after` cursor."""
    ids, after = [], None
    while True:
        page = jobs.list(account_id, limit=limit, after=after)
        ids += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            return ids
        after = page["last_id"]


def to_account_partition(aws, settings, account_id, job_id):
    """Move a job's item to where the release before this one wrote it: ACCOUNT#<id> / JOB#<id>."""
    db = aws.dynamodb
    item = db.get_item(TableName=settings.table, Key=job_key(account_id, job_id), ConsistentRead=True)["Item"]
    db.delete_item(TableName=settings.table, Key=job_key(account_id, job_id))
    db.put_item(TableName=settings.table, Item={**item, **legacy_job_key(account_id, job_id)})


def test_jobs_live_on_shards_of_their_own_and_list_across_them_newest_first(
    aws, settings, svc, jobs, funded, clock
):
    ids = []
    for i in range(10):  # the key's concurrency: queued jobs hold their slots
        ids.append(submitted(jobs, svc, funded)["id"])
        clock.now += i % 2  # two jobs in each millisecond: between them, their ids' random part decides
    shards = {pk for pk in (jobs_pk(funded.account_id, n) for n in range(JOB_SHARDS))}
    on_shards = [i for pk in sorted(shards) for i in partition_items(aws, settings, pk)]
    assert sorted(i["sk"]["S"] for i in on_shards) == sorted(f"JOB#{j}" for j in ids)
    assert len({i["pk"]["S"] for i in on_shards}) > 1  # 10 jobs, 8 shards
    assert not [
        i for i in partition_items(aws, settings, account_pk(funded.account_id)) if "JOB#" in i["sk"]["S"]
    ]
    newest_first = sorted(ids, reverse=True)
    pairs = [set(ids[k : k + 2]) for k in range(0, 10, 2)]
    assert [set(newest_first[k : k + 2]) for k in range(0, 10, 2)] == pairs[::-1]  # time first
    for limit in (1, 4, 10, 100):
        assert listed(jobs, funded.account_id, limit) == newest_first
    page = jobs.list(funded.account_id, limit=4, after=newest_first[3])
    assert [j["id"] for j in page["data"]] == newest_first[4:8] and page["has_more"]

    assert jobs.get(funded.account_id, ids[3])["status"] == "queued"
    assert jobs.cancel(funded.account_id, ids[3])["status"] == "cancelled"
    assert balance(svc, funded) == 1_000_000 - 9 * PRICE
    assert jobs.run(funded.account_id, ids[4])["status"] == "succeeded"
    assert {i["sk"]["S"] for i in job_items(aws.dynamodb, settings.table, funded.account_id)} == {
        f"JOB#{j}" for j in ids
    }
    reconciled(aws, settings, funded)


class ShortPages:
    """The DynamoDB client, but a Query of a job partition returns at most `cap` items (as a 1 MB page of
    large items would), with a LastEvaluatedKey."""

    def __init__(self, client, cap):
        self._client = client
        self.cap = cap

    def query(self, **kwargs):
        kwargs["Limit"] = min(kwargs.get("Limit", self.cap), self.cap)
        return self._client.query(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_a_partition_cut_short_never_lets_an_older_job_jump_ahead(aws, settings, svc, jobs, funded, clock):
    ids = []
    for _ in range(10):
        ids.append(submitted(jobs, svc, funded)["id"])
        clock.now += 1
    to_account_partition(aws, settings, funded.account_id, ids[2])
    short = Service(svc.settings, Clients(aws, ShortPages(aws.dynamodb, 1)), svc.logger, clock=clock)
    assert listed(Jobs(short), funded.account_id, 4) == ids[::-1]


def test_a_job_left_on_the_account_partition_is_read_run_cancelled_and_reconciled(
    aws, settings, svc, jobs, funded, clock, finished, accounts
):
    """Jobs the release before this one wrote on ACCOUNT#<id> (queued, running or finished when it is
    replaced) live on until they expire: each is found, moved on and checked where it is."""
    older = []
    for _ in range(2):
        older.append(submitted(jobs, svc, funded)["id"])
        clock.now += 1
    newer = submitted(jobs, svc, funded)["id"]
    for job_id in older:
        to_account_partition(aws, settings, funded.account_id, job_id)
    assert listed(jobs, funded.account_id, 1) == [newer, *older[::-1]]
    assert jobs.get(funded.account_id, older[0])["status"] == "queued"

    other = accounts.authenticate(f"Bearer {accounts.create_key(accounts.create_account(1_000_000))}")
    for call in (jobs.get, jobs.cancel, jobs.run):
        with pytest.raises(APIError) as missing:
            call(other.account_id, older[0])
        assert missing.value.status == 404
    assert jobs.list(other.account_id)["data"] == []

    assert jobs.run(funded.account_id, older[0])["status"] == "succeeded"
    assert jobs.cancel(funded.account_id, older[1])["status"] == "cancelled"
    assert [f["status"] for f in finished] == ["succeeded", "cancelled"]
    for job_id in older:  # moved on where they were, announced and out of the outbox, nothing on a shard
        item = aws.dynamodb.get_item(
            TableName=settings.table, Key=legacy_job_key(funded.account_id, job_id), ConsistentRead=True
        )["Item"]
        assert "announce" not in item
        assert "Item" not in aws.dynamodb.get_item(
            TableName=settings.table, Key=job_key(funded.account_id, job_id)
        )
    assert balance(svc, funded) == 1_000_000 - 2 * PRICE
    reconciled(aws, settings, funded)

    # Reconcile reads them: a legacy job said to have succeeded, whose request was refunded, is reported.
    aws.dynamodb.update_item(
        TableName=settings.table,
        Key=legacy_job_key(funded.account_id, older[1]),
        UpdateExpression="SET #s = :succeeded",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":succeeded": {"S": "succeeded"}},
    )
    [problem] = ledger.reconcile(aws.dynamodb, settings.table, funded.account_id).problems
    assert problem.startswith(f"job {older[1]} succeeded, but its request is refunded")


def test_a_legacy_job_whose_worker_died_is_swept_where_it_is(aws, settings, svc, jobs, funded, clock):
    job = submitted(jobs, svc, funded)
    to_account_partition(aws, settings, funded.account_id, job["id"])
    clock.now += settings.deadlines.job_start_s + 1
    assert jobs.sweep()["jobs_expired"] == 1
    assert jobs.get(funded.account_id, job["id"])["error"]["code"] == "job_expired"
    assert balance(svc, funded) == 1_000_000
    reconciled(aws, settings, funded)


def test_a_list_signs_url_results_but_reads_no_b64_images_back(svc, jobs, funded, monkeypatch):
    # One b64 job's images may be megabytes: a page of 100 read back from S3 would not fit a response.
    as_url = jobs.run(funded.account_id, submitted(jobs, svc, funded)["id"])
    as_b64 = jobs.run(funded.account_id, submitted(jobs, svc, funded, response_format="b64_json")["id"])
    reads = []
    get = svc.storage.get
    monkeypatch.setattr(svc.storage, "get", lambda key: reads.append(key) or get(key))
    listed = {j["id"]: j for j in jobs.list(funded.account_id)["data"]}
    assert listed[as_url["id"]]["result"]["data"][0]["url"].startswith("http")
    assert listed[as_b64["id"]]["status"] == "succeeded" and listed[as_b64["id"]]["result"] is None
    assert reads == []
    (image,) = jobs.get(funded.account_id, as_b64["id"])["result"]["data"]
    assert Image.open(io.BytesIO(base64.b64decode(image["b64_json"]))).size == (256, 256)


# --- the sweeper ----------------------------------------------------------------------------------------


def test_a_queued_job_is_not_refunded_while_it_may_still_run(aws, settings, svc, jobs, funded, clock):
    job = submitted(jobs, svc, funded)
    clock.now += settings.deadlines.job_start_s - 1
    assert svc.sweep()["closed"] == 0  # the request sweeper leaves a job's reservation to the job
    assert jobs.sweep() == {
        "jobs_expired": 0,
        "jobs_lost": 0,
        "jobs_orphaned": 0,
        "announcements_retried": 0,
        "announcements_still_owed": 0,
    }
    assert jobs.run(funded.account_id, job["id"])["status"] == "succeeded"
    assert balance(svc, funded) == 1_000_000 - PRICE


def test_a_job_never_started_expires_and_is_refunded_once(aws, settings, svc, jobs, funded, clock, finished):
    job = submitted(jobs, svc, funded)
    clock.now += settings.deadlines.job_start_s + 1
    assert jobs.sweep()["jobs_expired"] == 1
    assert jobs.sweep()["jobs_expired"] == 0
    late = jobs.run(funded.account_id, job["id"])  # the message, out of the dead-letter queue by hand
    assert late["status"] == "failed" and late["error"]["code"] == "job_expired"
    assert balance(svc, funded) == 1_000_000
    assert [f["status"] for f in finished] == ["failed"]
    reconciled(aws, settings, funded)


def killed_mid_run(jobs, svc, account, monkeypatch):
    """A job whose worker died inside the upstream call: in_progress, its reservation open."""
    job = submitted(jobs, svc, account)

    def killed(job_, request_id):
        raise SystemExit("Lambda timed out")

    monkeypatch.setattr(svc, "execute", lambda *a, **k: killed(None, None))
    with pytest.raises(SystemExit):
        jobs.run(account.account_id, job["id"])
    monkeypatch.undo()
    return job


def test_a_job_whose_worker_died_is_failed_and_refunded_once_after_its_lease(
    aws, settings, svc, jobs, funded, clock, monkeypatch, finished
):
    job = killed_mid_run(jobs, svc, funded, monkeypatch)
    assert jobs.get(funded.account_id, job["id"])["status"] == "in_progress"
    clock.now += settings.deadlines.job_lease_s - 1
    assert jobs.sweep()["jobs_lost"] == 0
    assert jobs.run(funded.account_id, job["id"])["status"] == "in_progress"  # a duplicate delivery
    clock.now += 2
    assert jobs.sweep()["jobs_lost"] == 1
    assert jobs.sweep()["jobs_lost"] == 0
    dead = jobs.get(funded.account_id, job["id"])
    assert dead["status"] == "failed" and dead["error"]["code"] == "worker_lost"
    assert balance(svc, funded) == 1_000_000
    assert [f["status"] for f in finished] == ["failed"]
    reconciled(aws, settings, funded)


def test_a_redelivered_message_after_the_lease_fails_the_dead_run_once(
    aws, settings, svc, jobs, funded, clock, monkeypatch
):
    job = killed_mid_run(jobs, svc, funded, monkeypatch)
    clock.now += settings.deadlines.job_lease_s + 1
    assert jobs.run(funded.account_id, job["id"])["error"]["code"] == "worker_lost"
    assert jobs.sweep()["jobs_lost"] == 0
    assert balance(svc, funded) == 1_000_000
    reconciled(aws, settings, funded)


# --- the worker's handler --------------------------------------------------------------------------------


def sqs_event(*bodies):
    return {
        "Records": [
            {
                "messageId": f"m{i}",
                "receiptHandle": f"r{i}",
                "body": json.dumps(body),
                "attributes": {},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:jobs",
                "awsRegion": "us-east-1",
            }
            for i, body in enumerate(bodies)
        ]
    }


def test_the_worker_reports_only_what_a_redelivery_can_fix(svc, jobs, funded):
    job = submitted(jobs, svc, funded)
    handler = batch_handler(jobs)
    gone = {"account_id": funded.account_id, "job_id": "imgjob_" + "0" * 32}
    result = handler(sqs_event({"account_id": funded.account_id, "job_id": job["id"]}, gone, {"x": 1}), None)
    assert result == {"batchItemFailures": [{"itemIdentifier": "m2"}]}  # only the malformed one
    assert jobs.get(funded.account_id, job["id"])["status"] == "succeeded"


def test_the_worker_runs_with_the_worker_timeouts_budget(settings):
    worker = replace(settings, worker_timeout_seconds=900).for_worker()
    assert worker.upstream_budget_seconds == 895 > settings.upstream_budget_seconds


# --- the synchronous path says what to do -----------------------------------------------------------------


def test_a_sync_request_out_of_time_names_prefer_respond_async(svc, funded, monkeypatch):
    failing_upstream(monkeypatch, svc, status=504, code="upstream_timeout")
    with pytest.raises(APIError) as timed_out:
        svc.handle(funded, gen(svc))
    assert (timed_out.value.status, timed_out.value.code) == (504, "upstream_timeout")
    assert "Prefer: respond-async" in timed_out.value.message
    assert balance(svc, funded) == 1_000_000


def test_a_cancel_that_loses_the_race_to_a_run_refunds_nothing(aws, settings, svc, jobs, funded, monkeypatch):
    job = submitted(jobs, svc, funded)
    stale = jobs._read(funded.account_id, job["id"])  # what cancel read: queued
    killed_mid_run(jobs, svc, funded, monkeypatch)  # another job, to show the guard is per job
    started = jobs._read
    monkeypatch.setattr(svc, "execute", lambda *a, **k: None)
    jobs.run(funded.account_id, job["id"])  # ... and then a worker started it (its run still going)
    monkeypatch.undo()
    reads = iter([stale])
    monkeypatch.setattr(jobs, "_read", lambda *a: next(reads, None) or started(*a))
    with pytest.raises(APIError) as refused:
        jobs.cancel(funded.account_id, job["id"])
    assert refused.value.status == 409
    assert jobs.get(funded.account_id, job["id"])["status"] == "in_progress"
    assert balance(svc, funded) == 1_000_000 - 2 * PRICE  # both still reserved, nothing refunded
    reconciled(aws, settings, funded)


def test_a_job_whose_inputs_are_gone_fails_at_once_and_is_refunded(aws, settings, svc, jobs, funded):
    params = ImageParams(prompt="a kite", model="dall-e-2", size="256x256")
    image = upload(width=256, height=256)
    job = jobs.submit(funded, resolve("edits", params, svc.catalog, [image]), request_id=new_request_id())
    aws.s3.delete_object(Bucket=settings.bucket, Key=f"inputs/{funded.account_id}/{job['id']}/0")
    done = jobs.run(funded.account_id, job["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "internal_error"
    assert balance(svc, funded) == 1_000_000
    reconciled(aws, settings, funded)


def test_a_queued_job_holds_its_concurrency_slot_until_it_ends(svc, jobs, accounts, clock):
    # A job waits and runs far longer than a sync request may, and must keep counting against
    # max_concurrent all the while (a key could otherwise queue without bound).
    account_id = accounts.create_account(1_000_000)
    key = accounts.create_key(account_id, max_concurrent=1)
    first = jobs.submit(accounts.authenticate(f"Bearer {key}"), gen(svc), request_id=new_request_id())
    clock.now += 600
    with pytest.raises(APIError) as refused:
        submitted(jobs, svc, accounts.authenticate(f"Bearer {key}"))
    assert refused.value.status == 429
    assert jobs.run(account_id, first["id"])["status"] == "succeeded"
    assert submitted(jobs, svc, accounts.authenticate(f"Bearer {key}"))["status"] == "queued"


# --- Prefer over HTTP -----------------------------------------------------------------------------------


@pytest.fixture
def http(svc, accounts, clock, monkeypatch):
    from fastapi.testclient import TestClient

    from imagegate.http.api import create_app

    def sleep(seconds):
        clock.now += seconds

    jobs = Jobs(svc, sleep=sleep)
    submit = jobs.submit

    def slow_submit(*args, **kwargs):
        clock.now += 10  # inputs fetched and written to S3: time the gateway counts too
        return submit(*args, **kwargs)

    monkeypatch.setattr(jobs, "submit", slow_submit)
    client = TestClient(create_app(svc, ["generations"], jobs=jobs))
    key = accounts.create_key(accounts.create_account(1_000_000))
    client.headers["authorization"] = f"Bearer {key}"
    return client


BODY = {"prompt": "a red fox", "model": "dall-e-2", "size": "256x256"}


def test_a_wait_counts_the_time_the_submit_already_spent(http, svc):
    answer = http.post("/v1/images/generations", json=BODY, headers={"Prefer": "respond-async, wait=3600"})
    assert answer.status_code == 202  # nobody runs the queue here: the job is still queued when time is up
    left = int(svc.settings.upstream_budget_seconds) - 10
    assert answer.headers["preference-applied"] == f"respond-async, wait={left}"


# Header values travel as latin-1: '²' and '¹' are digits to str.isdigit, not to int().
@pytest.mark.parametrize("wait", ["²", "¹0", "-1", "abc", "99999999999", "1.5"])
def test_a_wait_that_is_not_a_plain_number_is_ignored_not_a_500(http, wait):
    prefer = f"respond-async, wait={wait}".encode("latin-1")
    answer = http.post("/v1/images/generations", json=BODY, headers={"Prefer": prefer})
    assert answer.status_code == 202
    assert answer.headers["preference-applied"] == "respond-async"


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("DELETE", "/v1/images/jobs/imgjob_x", "GET"), ("GET", "/v1/images/jobs/imgjob_x/cancel", "POST")],
)
def test_a_wrong_method_on_a_job_route_names_the_right_one(svc, accounts, method, path, allowed):
    from fastapi.testclient import TestClient

    from imagegate.http.api import create_app

    client = TestClient(create_app(svc, ["jobs"], jobs=Jobs(svc)))
    key = accounts.create_key(accounts.create_account(0))
    answer = client.request(method, path, headers={"authorization": f"Bearer {key}"})
    assert answer.status_code == 405 and answer.headers["allow"] == allowed
    assert answer.json()["error"]["message"].endswith(f"use {allowed}.")


def test_a_bad_after_is_a_400_with_a_code(svc, jobs, funded):
    with pytest.raises(APIError) as bad:
        jobs.list(funded.account_id, after="garbage")
    assert (bad.value.status, bad.value.param, bad.value.code) == (400, "after", "invalid_value")


def test_a_job_s_stored_state_reads_back_as_boto3_would_without_importing_it():
    from decimal import Decimal

    from boto3.dynamodb.types import TypeSerializer

    from imagegate.jobs.lifecycle import _plain

    state = {
        "state": "retrying",
        "attempts": 3,
        "last_status": None,
        "delivered": False,
        "ratio": Decimal("0.5"),
        "history": [{"status": 500, "at": 1_796_000_000}, "timeout"],
        "codes": {"a", "b"},
    }
    plain = _plain(TypeSerializer().serialize(state))
    assert sorted(plain.pop("codes")) == ["a", "b"]
    assert plain == {
        "state": "retrying",
        "attempts": 3,
        "last_status": None,
        "delivered": False,
        "ratio": 0.5,
        "history": [{"status": 500, "at": 1_796_000_000}, "timeout"],
    }


def expire_outputs(aws, settings):
    """What the outputs' lifecycle rule does after OutputRetentionDays."""
    listing = aws.s3.list_objects_v2(Bucket=settings.bucket, Prefix="outputs/").get("Contents", [])
    for obj in listing:
        aws.s3.delete_object(Bucket=settings.bucket, Key=obj["Key"])
    assert listing


def test_a_b64_job_whose_images_expired_is_410_output_expired(aws, settings, svc, jobs, funded):
    """Issue 20, item 12: GET /v1/images/jobs/{id} of a b64_json job answered 500 once its outputs expired."""
    job = jobs.submit(funded, gen(svc, response_format="b64_json"), request_id="req_b64")
    jobs.run(funded.account_id, job["id"])
    expire_outputs(aws, settings)
    with pytest.raises(APIError) as gone:
        jobs.get(funded.account_id, job["id"])
    assert (gone.value.status, gone.value.code) == (410, "output_expired")


def test_a_b64_replay_whose_images_expired_is_410_output_expired(aws, settings, svc, funded):
    """Issue 20, item 12: an Idempotency-Key replay of a b64_json answer answered 500 once its outputs
    expired."""
    svc.handle(funded, gen(svc, response_format="b64_json"), "b64-key")
    expire_outputs(aws, settings)
    with pytest.raises(APIError) as gone:
        svc.handle(funded, gen(svc, response_format="b64_json"), "b64-key")
    assert (gone.value.status, gone.value.code) == (410, "output_expired")


@pytest.mark.parametrize("limit", ["1_0", "10.0", "-1"])
def test_a_list_limit_that_is_not_digits_is_400_invalid_type(svc, jobs, funded, limit):
    """Issue 20, item 13: `limit=1_0` was accepted."""
    from starlette.testclient import TestClient

    from imagegate.http.api import create_app

    key = svc.accounts.create_key(funded.account_id)
    with TestClient(create_app(svc, jobs=jobs), raise_server_exceptions=False) as client:
        response = client.get(
            "/v1/images/jobs", params={"limit": limit}, headers={"Authorization": f"Bearer {key}"}
        )
    assert response.status_code == 400, response.text
    assert (response.json()["error"]["param"], response.json()["error"]["code"]) == ("limit", "invalid_type")


def test_async_answers_carry_the_rate_limit_and_replay_headers(svc, jobs, funded):
    """Issue 20, item 13: async answers lacked x-ratelimit-* and idempotent-replayed."""
    from starlette.testclient import TestClient

    from imagegate.http.api import create_app

    headers = {
        "Authorization": f"Bearer {svc.accounts.create_key(funded.account_id)}",
        "Prefer": "respond-async",
        "Idempotency-Key": "async-headers",
    }
    body = {"prompt": "a red fox", "model": "dall-e-2", "size": "256x256"}
    with TestClient(create_app(svc, jobs=jobs), raise_server_exceptions=False) as client:
        first = client.post("/v1/images/generations", headers=headers, json=body)
        again = client.post("/v1/images/generations", headers=headers, json=body)
    assert first.status_code == again.status_code == 202
    assert first.headers["x-ratelimit-limit-images"] == str(svc.settings.images_per_minute)
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    # Not run yet: the provider of the first route the router would try (here, the only one).
    assert first.headers["x-imagegate-provider"] == again.headers["x-imagegate-provider"] == "local"


def test_a_job_reports_one_expiry_and_says_when_its_outputs_are_gone(svc, jobs, funded, clock):
    """Issue 20, items 12 and 13: a webhook's delivery schedule kept the job item about 29 h and moved the
    `expires_at` it reported, while its outputs lived 24 h; past them a url job still listed dead URLs."""
    job = jobs.submit(funded, gen(svc), request_id="req_exp")
    done = jobs.run(funded.account_id, job["id"])
    svc.aws.dynamodb.update_item(  # what webhooks.job_finished does to keep the item for its deliveries
        TableName=svc.settings.table,
        Key=job_key(funded.account_id, job["id"]),
        UpdateExpression="SET expires_at = :keep",
        ExpressionAttributeValues={":keep": {"N": str(int(clock.now) + 29 * 3600)}},
    )
    assert jobs.get(funded.account_id, job["id"])["expires_at"] == job["expires_at"] == done["expires_at"]
    clock.now = job["expires_at"]
    with pytest.raises(APIError) as gone:
        jobs.get(funded.account_id, job["id"])
    assert (gone.value.status, gone.value.code) == (410, "output_expired")


def owed(aws, settings, account, job_id):
    item = aws.dynamodb.get_item(
        TableName=settings.table, Key=job_key(account.account_id, job_id), ConsistentRead=True
    )["Item"]
    return set(item.get("announce", {}).get("SS", ()))


def reconciled_at(aws, settings, account, now):
    return ledger.reconcile(aws.dynamodb, settings.table, account.account_id, clock=lambda: now).problems


class Killed(BaseException):
    """Lambda stopping the function (a timeout, out of memory): nothing after it runs."""


def test_a_failed_announcement_stays_owed_and_the_sweeper_sends_it(
    aws, settings, svc, funded, queue, clock, stream
):
    sent, tries = [], []

    def events(detail):  # EventBridge down for the first call
        tries.append(detail["id"])
        if len(tries) == 1:
            raise RuntimeError("EventBridge is down")
        sent.append(detail["id"])

    jobs = Jobs(svc, {"event": events, "answer": sent.append}, sleep=lambda s: None)
    job = submitted(jobs, svc, funded)
    finished_at = clock.now
    assert jobs.run(funded.account_id, job["id"])["status"] == "succeeded"
    assert owed(aws, settings, funded, job["id"]) == {"event"}  # the answer went out and is marked done
    stream.drain()  # its usage is counted
    deadlines = settings.deadlines
    # Owed, but within its deadline: reconcile is clean; past it, it is not.
    assert reconciled_at(aws, settings, funded, finished_at + deadlines.announce_by_s - 1) == []
    [problem] = reconciled_at(aws, settings, funded, finished_at + deadlines.announce_by_s + 1)
    assert f"job {job['id']} still owes its announcements (event)" in problem

    clock.now = finished_at + deadlines.announce_grace_s - 1  # its worker may still be sending it
    assert jobs.sweep()["announcements_retried"] == 0 and len(tries) == 1
    clock.now = finished_at + deadlines.announce_grace_s + 1
    swept = jobs.sweep()
    assert (swept["announcements_retried"], swept["announcements_still_owed"]) == (1, 0)
    assert len(tries) == 2 and len(sent) == 2  # the event once more; the answer (done) not again
    assert owed(aws, settings, funded, job["id"]) == set()
    assert jobs.sweep()["announcements_retried"] == 0  # out of the sweeper's index
    assert reconciled_at(aws, settings, funded, finished_at + deadlines.announce_by_s + 1) == []
    assert balance(svc, funded) == 1_000_000 - PRICE


def test_a_function_killed_after_the_commit_leaves_every_announcement_to_the_sweeper(
    aws, settings, svc, funded, queue, clock, stream
):
    """The state the code before the outbox left: the job succeeded and was charged, its callbacks never
    ran. Reconcile now sees it, and the sweeper (a new container) sends them."""
    told = []

    def killed(detail):
        raise Killed

    dying = Jobs(svc, {"answer": killed, "event": told.append}, sleep=lambda s: None)
    job = submitted(dying, svc, funded)
    finished_at = clock.now
    with pytest.raises(Killed):
        dying.run(funded.account_id, job["id"])
    assert told == [] and owed(aws, settings, funded, job["id"]) == {"answer", "event"}
    stream.drain()  # its usage is counted
    late = finished_at + settings.deadlines.announce_by_s + 1
    [problem] = reconciled_at(aws, settings, funded, late)
    assert "still owes its announcements (answer, event)" in problem

    clock.now = finished_at + settings.deadlines.announce_grace_s + 1
    sweeper = Jobs(svc, {"answer": told.append, "event": told.append}, sleep=lambda s: None)
    assert sweeper.sweep()["announcements_retried"] == 1
    assert [d["id"] for d in told] == [job["id"]] * 2 and told[0]["status"] == "succeeded"
    assert reconciled_at(aws, settings, funded, late) == []
    assert balance(svc, funded) == 1_000_000 - PRICE


def test_a_cancelled_job_is_announced_and_leaves_the_outbox(
    aws, settings, svc, jobs, funded, queue, finished
):
    job = submitted(jobs, svc, funded)
    assert jobs.cancel(funded.account_id, job["id"])["status"] == "cancelled"
    assert [f["status"] for f in finished] == ["cancelled"] and owed(
        aws, settings, funded, job["id"]
    ) == set()
    item = aws.dynamodb.get_item(TableName=settings.table, Key=job_key(funded.account_id, job["id"]))["Item"]
    assert not {"announce", "announce_by", "open_shard", "open_since"} & item.keys()
    reconciled(aws, settings, funded)


def test_a_32000_emoji_prompt_stays_off_the_account_partition_and_runs_in_full(
    aws, settings, svc, jobs, funded, monkeypatch
):
    prompt = "🦊" * 32_000
    seen = []
    execute = svc.execute

    def spy(account, job, *args, **kwargs):
        seen.append(job.prompt)
        return execute(account, job, *args, **kwargs)

    monkeypatch.setattr(svc, "execute", spy)
    job = jobs.submit(
        funded, gen(svc, prompt=prompt, model="gpt-image-1", size="1024x1024"), request_id="req_e"
    )
    item = aws.dynamodb.get_item(TableName=settings.table, Key=job_key(funded.account_id, job["id"]))["Item"]
    assert capacity.item_size(item) < 10_000 and "spec" not in item
    key = f"inputs/{funded.account_id}/{job['id']}/spec.json"
    assert item["spec_key"] == {"S": key}
    assert json.loads(aws.s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read())["prompt"] == prompt

    done = jobs.run(funded.account_id, job["id"])
    assert done["status"] == "succeeded" and seen == [prompt]
    item = aws.dynamodb.get_item(TableName=settings.table, Key=job_key(funded.account_id, job["id"]))["Item"]
    assert capacity.item_size(item) < 10_000
    reconciled(aws, settings, funded)


def test_a_short_prompt_keeps_its_spec_on_the_item(aws, settings, svc, jobs, funded):
    job = jobs.submit(funded, gen(svc), request_id="req_s")
    item = aws.dynamodb.get_item(TableName=settings.table, Key=job_key(funded.account_id, job["id"]))["Item"]
    assert json.loads(item["spec"]["S"])["prompt"] == "a red fox" and "spec_key" not in item
    assert "Contents" not in aws.s3.list_objects_v2(Bucket=settings.bucket)


def test_a_stored_spec_changed_after_the_submit_fails_the_job_and_refunds_it(
    aws, settings, svc, jobs, funded
):
    job = jobs.submit(
        funded, gen(svc, prompt="🦊" * 4000, model="gpt-image-1", size="1024x1024"), request_id="req_t"
    )
    key = f"inputs/{funded.account_id}/{job['id']}/spec.json"
    spec = json.loads(aws.s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read())
    # The account's own roles may write under inputs/<account_id>/ (manifests): a bigger order, same price.
    aws.s3.put_object(Bucket=settings.bucket, Key=key, Body=json.dumps({**spec, "n": 10}).encode())
    done = jobs.run(funded.account_id, job["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "internal_error"
    assert balance(svc, funded) == 1_000_000
    reconciled(aws, settings, funded)


def test_a_job_answer_names_the_provider_of_the_first_route_it_will_try(svc, jobs, funded, monkeypatch):
    """Issue 20, item 13: async answers lacked x-imagegate-provider (not run yet: the router's first)."""
    check = svc.check

    def routes(job):
        local = check(job)[0]
        return [replace(local, provider="openai"), local]

    monkeypatch.setattr(svc, "check", routes)
    answer = {}
    jobs.submit(funded, gen(svc), request_id="req_p", answer=answer)
    assert answer["x-imagegate-provider"] == "openai"

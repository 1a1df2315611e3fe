"""Jobs from AWS services (triggers.py) on moto's DynamoDB, S3 and SQS with the local provider: the one
request shape, IAM-authenticated accounts, S3 inputs, the requests queue's retry rules, direct invocation,
and the Step Functions answers (botocore Stubber: moto's SendTask* accept anything and record nothing)."""

import base64
import io
import json
import struct
import zlib
from dataclasses import replace

import pytest
from aws_lambda_powertools.logging import Logger
from botocore.stub import ANY, Stubber
from PIL import Image

from imagegate.errors import APIError
from imagegate.jobs.lifecycle import Jobs
from imagegate.jobs.triggers import Answers, Triggers, parse
from imagegate.money import ledger
from imagegate.money.billing import Billing
from imagegate.money.ratelimit import Limits
from imagegate.service import Service

from .conftest import Clock, image_bytes

PRICE = 16_000  # dall-e-2 at 256x256, the local price book
GENERATE = {"model": "dall-e-2", "prompt": "a lighthouse at dusk", "size": "256x256"}
TOKEN = "AQCEAAAAKgAAAAMAAAAAAAAAAY-task-token"


@pytest.fixture
def queue(aws, settings):
    return aws.sqs.create_queue(QueueName=settings.table)["QueueUrl"]


@pytest.fixture
def svc(aws, settings, queue):
    return Service(
        replace(settings, jobs_queue_url=queue), aws, Logger(service="test", level="CRITICAL"), clock=Clock()
    )


@pytest.fixture
def sfn(aws):
    """The Step Functions client Answers uses, stubbed: each test queues the answers it expects, and
    `sfn.sent` records the parameters of every call made."""
    client = aws.client("stepfunctions")
    with Stubber(client) as stub:
        stub.sent = []
        client.meta.events.register(
            "provide-client-params.sfn.*", lambda params, **_: stub.sent.append(params)
        )
        yield stub
        stub.assert_no_pending_responses()


@pytest.fixture
def answers(svc, sfn):
    return Answers(svc.aws, svc.settings, svc.logger)


@pytest.fixture
def jobs(svc, answers):
    return Jobs(svc, {"answer": answers}, sleep=lambda s: None)


@pytest.fixture
def triggers(svc, jobs, answers):
    return Triggers(svc, jobs, answers)


@pytest.fixture
def account_id(accounts):
    return accounts.create_account(1_000_000, label="aws")


def sqs_event(*bodies, ids=None):
    """A batch from the requests queue, as Lambda's SQS event source delivers it."""
    return {
        "Records": [
            {
                "messageId": (ids or [f"m-{i}" for i in range(len(bodies))])[i],
                "receiptHandle": f"r-{i}",
                "body": body if isinstance(body, str) else json.dumps(body),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:requests",
                "awsRegion": "us-east-1",
            }
            for i, body in enumerate(bodies)
        ]
    }


def request(account_id, endpoint="generations", **fields):
    return {"account_id": account_id, "endpoint": endpoint, "request": GENERATE, **fields}


def run_queued(aws, queue, jobs):
    """The worker's part: run every queued job to its end."""
    done = []
    while got := aws.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
        for message in got:
            body = json.loads(message["Body"])
            done.append(jobs.run(body["account_id"], body["job_id"]))
            aws.sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    return done


def undecodable_png(size=64):
    """A PNG whose structure is intact (chunks complete, CRCs right) and whose pixel data is not zlib: it
    passes the header checks at submit, and fails when the provider decodes it."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"\xff" * 64) + chunk(b"IEND", b"")


def put(aws, settings, key, data):
    aws.s3.put_object(Bucket=settings.bucket, Key=key, Body=data)


def reconciled(aws, settings, account_id):
    return ledger.reconcile(aws.dynamodb, settings.table, account_id).ok


# --- IAM-authenticated accounts -------------------------------------------------------------------------


def test_an_aws_service_names_an_account_that_must_exist_and_be_active(accounts, account_id):
    account = accounts.for_service(account_id)
    assert (account.account_id, account.key_id, account.key_pk) == (account_id, "", "")

    with pytest.raises(APIError) as missing:
        accounts.for_service("acct_nobody")
    assert (missing.value.status, missing.value.code, missing.value.param) == (
        404,
        "account_not_found",
        "account_id",
    )

    accounts.set_account_status(account_id, "suspended")
    with pytest.raises(APIError) as suspended:
        accounts.for_service(account_id)
    assert (suspended.value.status, suspended.value.code) == (403, "account_inactive")

    accounts.set_account_status(account_id, "active")
    assert accounts.for_service(account_id).account_id == account_id


def test_a_keyless_request_is_held_by_the_accounts_limits_only(aws, settings, accounts, account_id):
    # Key limits of one image a minute would refuse the second request: with no key, the account's two hold.
    billing = Billing(
        aws.dynamodb, settings.table, Clock(), key_limits=Limits(1, 1), account_limits=Limits(2, 0)
    )
    account = accounts.for_service(account_id)
    for rid in ("req_a", "req_b"):
        billing.reserve(account, rid, PRICE, {"model": "dall-e-2"})
    with pytest.raises(APIError) as refused:
        billing.reserve(account, "req_c", PRICE, {"model": "dall-e-2"})

    assert refused.value.status == 429 and f"account {account_id}" in refused.value.message
    assert accounts.balance(account_id) == 1_000_000 - 2 * PRICE
    assert reconciled(aws, settings, account_id)


# --- the request shape ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "param", "code"),
    [
        ([], None, "invalid_type"),
        ({"endpoint": "generations", "request": {}}, "account_id", "missing_required_parameter"),
        ({"account_id": "a", "endpoint": "images", "request": {}}, "endpoint", "invalid_value"),
        ({"account_id": "a", "endpoint": "edits", "request": {}, "extra": 1}, "extra", "unknown_parameter"),
        ({"account_id": "a", "endpoint": "edits", "request": "x"}, "request", "invalid_type"),
        ({"account_id": "a b", "endpoint": "edits", "request": {}}, "account_id", "invalid_value"),
        (
            {"account_id": "a", "endpoint": "edits", "request": {}, "inputs": [{"key": "k", "param": "x"}]},
            "inputs",
            "invalid_value",
        ),
    ],
)
def test_a_bad_shape_is_a_400_naming_the_field(document, param, code):
    with pytest.raises(APIError) as bad:
        parse(document)
    assert (bad.value.status, bad.value.param, bad.value.code) == (400, param, code)


# --- direct invocation ----------------------------------------------------------------------------------


def test_a_direct_invocation_runs_the_job_and_returns_it_finished(
    aws, settings, triggers, accounts, account_id
):
    job = triggers.invoke(request(account_id, client_reference_id="ref-1"), "inv-1")

    assert job["status"] == "succeeded" and job["object"] == "image.job"
    [image] = job["result"]["data"]
    assert f"/outputs/{account_id}/" in image["url"] and "Signature=" in image["url"]
    assert accounts.balance(account_id) == 1_000_000 - PRICE
    assert reconciled(aws, settings, account_id)


def test_a_direct_invocation_delivered_twice_is_one_job_and_one_charge(triggers, accounts, account_id):
    first = triggers.invoke(request(account_id), "inv-same")
    again = triggers.invoke(request(account_id), "inv-same")

    assert again["id"] == first["id"] and again["status"] == "succeeded"
    assert accounts.balance(account_id) == 1_000_000 - PRICE


def test_a_client_retry_with_its_reference_is_one_job_and_one_charge(triggers, accounts, account_id):
    # The AWS CLI and SDKs retry an invoke that outlives their read timeout: a new invocation id each time.
    first = triggers.invoke(request(account_id, client_reference_id="order-7"), "inv-a")
    again = triggers.invoke(request(account_id, client_reference_id="order-7"), "inv-b")
    other = triggers.invoke(request(account_id, client_reference_id="order-8"), "inv-c")

    assert again["id"] == first["id"] != other["id"]
    assert accounts.balance(account_id) == 1_000_000 - 2 * PRICE


def test_a_refused_invocation_returns_an_openai_error_and_costs_nothing(triggers, accounts, account_id):
    body = triggers.invoke(request(account_id, request={**GENERATE, "n": 11}), "inv-2")

    assert set(body) == {"error"} and body["error"]["type"] == "invalid_request_error"
    assert (body["error"]["param"], body["error"]["code"]) == ("n", "integer_out_of_range")
    assert triggers.invoke(request("acct_nobody"), "inv-3")["error"]["code"] == "account_not_found"
    assert accounts.balance(account_id) == 1_000_000


def test_a_job_that_fails_is_returned_failed_and_refunded_once(aws, settings, triggers, accounts, account_id):
    put(aws, settings, f"inputs/{account_id}/broken.png", undecodable_png())
    inputs = [{"key": f"inputs/{account_id}/broken.png"}]
    job = triggers.invoke(
        request(account_id, "variations", request={"size": "256x256"}, inputs=inputs), "inv-4"
    )

    assert job["status"] == "failed" and job["error"]["code"] == "invalid_image_format"
    assert accounts.balance(account_id) == 1_000_000
    assert reconciled(aws, settings, account_id)


# --- inputs from S3 -------------------------------------------------------------------------------------


def test_inputs_are_read_from_the_accounts_prefixes_and_checked_like_uploads(
    aws, settings, triggers, account_id
):
    put(aws, settings, f"inputs/{account_id}/kite.png", image_bytes(64, 64))
    put(aws, settings, f"requests/{account_id}/mask.png", image_bytes(64, 64, colour=(0, 0, 0, 0)))
    inputs = [
        {"key": f"inputs/{account_id}/kite.png"},
        {"key": f"requests/{account_id}/mask.png", "param": "mask"},
    ]
    edit = {**GENERATE, "prompt": "a kite", "response_format": "b64_json"}
    job = triggers.invoke(request(account_id, "edits", request=edit, inputs=inputs), "inv-5")

    assert job["status"] == "succeeded"
    with Image.open(io.BytesIO(base64.b64decode(job["result"]["data"][0]["b64_json"]))) as img:
        assert img.size == (256, 256)


@pytest.mark.parametrize(
    ("inputs", "code", "param"),
    [
        ([{"key": "inputs/acct_other/kite.png"}], "invalid_input_key", "inputs"),
        ([{"key": "outputs/{a}/x.png"}], "invalid_input_key", "inputs"),
        ([{"key": "inputs/{a}/absent.png"}], "input_not_found", "inputs"),
        ([{"key": "inputs/{a}/text.png"}], "invalid_image_format", "image"),
        ([{"key": "inputs/{a}/kite.png"}, {"key": "inputs/{a}/kite.png"}], "invalid_type", "image"),
    ],
)
def test_a_bad_input_is_a_400_that_charges_nothing(
    aws, settings, triggers, accounts, account_id, inputs, code, param
):
    put(aws, settings, f"inputs/{account_id}/kite.png", image_bytes(64, 64))
    put(aws, settings, f"inputs/{account_id}/text.png", b"not an image at all")
    inputs = [{"key": i["key"].format(a=account_id)} for i in inputs]
    body = triggers.invoke(
        request(account_id, "variations", request={"model": "dall-e-2"}, inputs=inputs), "inv"
    )

    assert (body["error"]["code"], body["error"]["param"]) == (code, param)
    assert accounts.balance(account_id) == 1_000_000


def test_generations_take_no_inputs(triggers, account_id):
    body = triggers.invoke(request(account_id, inputs=[{"key": f"inputs/{account_id}/x.png"}]), "inv")
    assert (body["error"]["param"], body["error"]["code"]) == ("inputs", "unsupported_parameter")


# --- the requests queue ---------------------------------------------------------------------------------


def test_only_messages_that_may_pass_later_are_retried(aws, queue, triggers, accounts, account_id):
    poor = accounts.create_account(1_000, label="poor")
    accounts.set_account_limits(account_id, images_per_minute=1)
    event = sqs_event(
        request(account_id),  # submitted
        "not json",  # never a request: dropped
        request(poor),  # 402: not until someone pays, which no retry waits for
        request(account_id, request={**GENERATE, "size": "7x7"}),  # 400
        request(account_id),  # 429: the account's one image a minute is taken; later it passes
        ids=["ok", "junk", "poor", "bad", "limited"],
    )

    assert triggers.batch(event, None) == {"batchItemFailures": [{"itemIdentifier": "limited"}]}
    [done] = run_queued(aws, queue, triggers.jobs)
    assert done["status"] == "succeeded"
    assert accounts.balance(account_id) == 1_000_000 - PRICE and accounts.balance(poor) == 1_000


def test_a_redelivered_message_is_one_job_and_one_charge(aws, queue, triggers, accounts, account_id):
    event = sqs_event(request(account_id), ids=["same"])
    assert triggers.batch(event, None) == {"batchItemFailures": []}
    assert triggers.batch(event, None) == {"batchItemFailures": []}

    assert len(run_queued(aws, queue, triggers.jobs)) == 1
    assert accounts.balance(account_id) == 1_000_000 - PRICE


def test_an_eventbridge_event_that_is_no_job_request_is_dropped(triggers):
    other = {"detail-type": "Image Job Succeeded", "source": "imagegate", "id": "e1", "detail": {}}
    assert triggers.batch(sqs_event(other), None) == {"batchItemFailures": []}


# --- S3 manifests ---------------------------------------------------------------------------------------


def object_created(bucket, key):
    return {
        "detail-type": "Object Created",
        "source": "aws.s3",
        "id": f"ev-{key}",
        "detail": {"bucket": {"name": bucket}, "object": {"key": key}},
    }


def read_json(aws, settings, key):
    return json.loads(aws.s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read())


def test_a_manifest_names_its_job_at_once_and_its_result_when_it_ends(
    aws, settings, queue, triggers, accounts, account_id
):
    manifest = f"requests/{account_id}/batch/one.json"
    put(aws, settings, manifest, json.dumps(request(account_id, client_reference_id="sku-9")).encode())

    triggers.batch(sqs_event(object_created(settings.bucket, manifest)), None)
    submitted = read_json(aws, settings, f"results/{account_id}/batch/one.json")
    assert submitted["job"]["status"] == "queued"
    assert submitted["result_key"] == f"results/{account_id}/jobs/{submitted['job']['id']}.json"

    run_queued(aws, queue, triggers.jobs)
    finished = read_json(aws, settings, submitted["result_key"])
    assert finished["status"] == "succeeded" and finished["client_reference_id"] == "sku-9"
    [image] = finished["result"]["data"]
    assert image["s3_key"].startswith(f"outputs/{account_id}/") and "url" not in image
    assert accounts.balance(account_id) == 1_000_000 - PRICE


def test_a_manifest_charges_only_the_account_of_its_prefix(aws, settings, triggers, accounts, account_id):
    other = accounts.create_account(1_000_000, label="other")
    manifest = f"requests/{account_id}/steal.json"
    put(aws, settings, manifest, json.dumps(request(other)).encode())

    assert triggers.batch(sqs_event(object_created(settings.bucket, manifest)), None) == {
        "batchItemFailures": []
    }

    refused = read_json(aws, settings, f"results/{account_id}/steal.json")
    assert (refused["error"]["code"], refused["error"]["param"]) == ("account_mismatch", "account_id")
    assert accounts.balance(other) == 1_000_000


# --- Step Functions -------------------------------------------------------------------------------------


def test_a_task_token_queues_the_job_and_its_end_answers_the_task(
    aws, queue, sfn, triggers, accounts, account_id
):
    queued = triggers.invoke(request(account_id, task_token=TOKEN), "inv-sfn")
    assert queued["status"] == "queued" and "task_token" not in queued

    sfn.add_response("send_task_success", {}, {"taskToken": TOKEN, "output": ANY})
    [done] = run_queued(aws, queue, triggers.jobs)

    [sent] = sfn.sent
    output = json.loads(sent["output"])
    assert (output["id"], output["status"]) == (done["id"], "succeeded") and "task_token" not in output
    assert output["result"]["data"][0]["s3_key"].startswith(f"outputs/{account_id}/")
    assert accounts.balance(account_id) == 1_000_000 - PRICE
    assert reconciled(aws, triggers.service.settings, account_id)


def test_a_job_that_fails_fails_its_task_with_the_openai_code(
    aws, settings, queue, sfn, triggers, accounts, account_id
):
    put(aws, settings, f"inputs/{account_id}/broken.png", undecodable_png())
    inputs = [{"key": f"inputs/{account_id}/broken.png"}]
    triggers.invoke(request(account_id, "variations", request={}, inputs=inputs, task_token=TOKEN), "inv-f")

    sfn.add_response(
        "send_task_failure", {}, {"taskToken": TOKEN, "error": "invalid_image_format", "cause": ANY}
    )
    run_queued(aws, queue, triggers.jobs)

    assert json.loads(sfn.sent[0]["cause"])["error"]["param"] == "image"
    assert accounts.balance(account_id) == 1_000_000


def test_a_refused_task_fails_at_once(sfn, triggers, accounts):
    poor = accounts.create_account(1_000, label="poor")
    sfn.add_response(
        "send_task_failure", {}, {"taskToken": TOKEN, "error": "insufficient_balance", "cause": ANY}
    )

    body = triggers.invoke(request(poor, task_token=TOKEN), "inv-poor")

    assert body["error"]["code"] == "insufficient_balance"
    assert json.loads(sfn.sent[0]["cause"]) == body


def test_a_task_that_is_gone_is_not_an_error(sfn, answers):
    sfn.add_client_error("send_task_success", "TaskTimedOut")
    answers.answer_task(TOKEN, {"status": "succeeded", "id": "imgjob_x"})  # logged, not raised


class DownQueue:
    def send_message(self, **kwargs):
        raise ConnectionError("SQS unreachable")


def test_a_queue_refusal_leaves_the_task_to_the_redelivery_one_job_one_answer(
    aws, svc, queue, sfn, triggers, accounts, account_id, monkeypatch
):
    """Issue 20, item 4: the refused send failed the task, SQS redelivered the message (503 is retryable),
    and a second job ran, was charged 16,000 µ$, and had its SendTaskSuccess refused."""
    event = sqs_event(request(account_id, task_token=TOKEN), ids=["m-1"])
    with monkeypatch.context() as down:
        down.setattr(type(svc.aws), "sqs", property(lambda self: DownQueue()))
        assert triggers.batch(event, None) == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}
    assert sfn.sent == []  # nobody told yet: the redelivery will be
    assert triggers.batch(event, None) == {"batchItemFailures": []}
    sfn.add_response("send_task_success", {}, {"taskToken": TOKEN, "output": ANY})
    [done] = run_queued(aws, queue, triggers.jobs)
    assert done["status"] == "succeeded"
    assert [list(sent) for sent in sfn.sent] == [["taskToken", "output"]]
    assert accounts.balance(account_id) == 1_000_000 - PRICE
    assert ledger.reconcile(aws.dynamodb, svc.settings.table, account_id).ok


def test_reconcile_reports_two_charged_jobs_for_one_task_without_its_token(
    aws, svc, queue, sfn, triggers, accounts, account_id
):
    """Issue 20, item 4: the state the old code left, one task answered by two succeeded, charged jobs
    (a redelivered trigger submitted it again); reconcile names them, never the token."""
    first = triggers.invoke(request(account_id, task_token=TOKEN), "inv-1")
    second = triggers.invoke(request(account_id, task_token=TOKEN), "inv-2")
    sfn.add_response("send_task_success", {}, {"taskToken": TOKEN, "output": ANY})
    sfn.add_client_error("send_task_success", "InvalidToken")  # the second answer AWS refuses
    assert [job["status"] for job in run_queued(aws, queue, triggers.jobs)] == ["succeeded"] * 2
    assert accounts.balance(account_id) == 1_000_000 - 2 * PRICE

    result = ledger.reconcile(aws.dynamodb, svc.settings.table, account_id)

    assert not result.ok
    [problem] = result.problems
    assert problem.startswith("2 charged jobs answer one Step Functions task")
    assert first["id"] in problem and second["id"] in problem
    assert TOKEN not in str(result) and "task-token" not in str(result)


def test_a_task_whose_job_cannot_be_queued_is_answered_once(
    svc, sfn, triggers, accounts, account_id, monkeypatch
):
    """Issue 20, item 4: a task-token invocation whose job could not be queued answered its task twice."""
    sfn.add_response(
        "send_task_failure", {}, {"taskToken": TOKEN, "error": "queue_unavailable", "cause": ANY}
    )
    monkeypatch.setattr(type(svc.aws), "sqs", property(lambda self: DownQueue()))
    body = triggers.invoke(request(account_id, task_token=TOKEN), "inv-down")
    assert body["error"]["code"] == "queue_unavailable"
    assert len(sfn.sent) == 1
    assert accounts.balance(account_id) == 1_000_000


def test_an_input_s3_refuses_with_403_is_the_documented_400(svc, triggers, accounts, account_id, monkeypatch):
    """Issue 20, item 11: a role without s3:ListBucket gets 403 for a missing key; the manifest and input
    reader let it escape as a 500."""
    from botocore.exceptions import ClientError

    real = svc.aws.s3

    class NoListBucket:
        def get_object(self, **kwargs):
            try:
                return real.get_object(**kwargs)
            except real.exceptions.NoSuchKey:
                raise ClientError({"Error": {"Code": "AccessDenied"}}, "GetObject") from None

        def __getattr__(self, name):
            return getattr(real, name)

    monkeypatch.setattr(type(svc.aws), "s3", property(lambda self: NoListBucket()))
    inputs = [{"key": f"inputs/{account_id}/never-uploaded.png"}]
    body = triggers.invoke(request(account_id, "variations", request={}, inputs=inputs), "inv-403")
    assert (body["error"]["code"], body["error"]["param"]) == ("input_not_found", "inputs")
    assert accounts.balance(account_id) == 1_000_000

"""The AWS entry points' real Lambda handlers (functions/requests, functions/invoke) fed their committed
events/ samples, with the worker (functions/worker) running what they queue; AWS emulated by moto."""

import io
import json

import pytest
from aws_lambda_powertools.logging import Logger
from PIL import Image

from imagegate.aws import AWSClients
from imagegate.jobs.lifecycle import Jobs
from imagegate.money import ledger
from imagegate.service import Service

from .conftest import ROOT, START_BALANCE, FakeLambdaContext

PRICE = 16_000  # dall-e-2 at 256x256, the local price book
SAMPLE_ACCOUNT = "acct_0123456789abcdef0123"  # events/build_events.py
SAMPLE_BUCKET = "imagegate-outputs"


@pytest.fixture
def jobs_env(stack):
    """The jobs queue the entry points submit to, as the template's environment names it."""
    aws = AWSClients(stack.settings)
    url = aws.sqs.create_queue(QueueName=f"{stack.table}-jobs")["QueueUrl"]
    stack.monkeypatch.setenv("IMAGEGATE_JOBS_QUEUE_URL", url)
    return aws, url


def sample(stack, name: str) -> dict:
    """events/<name>.json for this stack's account and bucket."""
    text = (ROOT / "events" / f"{name}.json").read_text()
    return json.loads(text.replace(SAMPLE_ACCOUNT, stack.account_id).replace(SAMPLE_BUCKET, stack.bucket))


def work(stack, aws, url) -> list[dict]:
    """Run the worker function on everything queued, as Lambda's SQS event source would."""
    worker = stack.handler("worker")
    done = []
    while got := aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
        for message in got:
            event = {"Records": [_record(message, url)]}
            assert worker(event, FakeLambdaContext()) == {"batchItemFailures": []}
            aws.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            done.append(json.loads(message["Body"]))
    return done


def _record(message: dict, url: str) -> dict:
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {"ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{url.rsplit('/', 1)[-1]}",
        "awsRegion": "us-east-1",
    }


def png(stack, key: str, alpha: int = 255) -> None:
    """A 64x64 RGBA PNG in the stack's bucket; alpha 0 makes a mask that edits everything."""
    buf = io.BytesIO()
    Image.new("RGBA", (64, 64), (30, 90, 200, alpha)).save(buf, "PNG")
    stack.s3.put_object(Bucket=stack.bucket, Key=key, Body=buf.getvalue())


def job_of(stack, account_id: str) -> dict:
    """The account's one job, as GET /v1/images/jobs lists it."""
    service = Service(stack.settings, AWSClients(stack.settings), Logger(service="test", level="CRITICAL"))
    [job] = Jobs(service).list(account_id)["data"]
    return job


def test_the_invoke_sample_returns_the_finished_job_and_charges_it_once(stack):
    job = stack.invoke("invoke", sample(stack, "job_request_invoke"))

    assert job["object"] == "image.job" and job["status"] == "succeeded"
    assert stack.balance() == START_BALANCE - PRICE
    assert len(stack.output_keys()) == 1
    assert ledger.reconcile(stack.dynamodb, stack.table, stack.account_id).ok


def test_the_step_functions_sample_queues_the_job(stack, jobs_env):
    aws, url = jobs_env
    queued = stack.invoke("invoke", sample(stack, "job_request_task_token"))

    assert queued["status"] == "queued" and "task_token" not in queued
    # moto's SendTaskSuccess accepts any token: the worker answers without an error, the job is charged.
    [message] = work(stack, aws, url)
    assert message["job_id"] == queued["id"]
    assert stack.balance() == START_BALANCE - PRICE


@pytest.mark.parametrize("name", ["job_request_sqs", "job_request_eventbridge", "job_request_s3"])
def test_each_requests_queue_sample_becomes_one_job_the_worker_finishes(stack, jobs_env, name):
    aws, url = jobs_env
    png(stack, f"inputs/{stack.account_id}/kite.png")
    png(stack, f"inputs/{stack.account_id}/kite-mask.png", alpha=0)
    png(stack, f"requests/{stack.account_id}/lighthouse.png")
    manifest = sample(stack, "job_request_manifest")
    stack.s3.put_object(
        Bucket=stack.bucket, Key=f"requests/{stack.account_id}/lighthouse.json", Body=json.dumps(manifest)
    )

    out = stack.invoke("requests", sample(stack, name))
    assert out == {"batchItemFailures": []}
    [message] = work(stack, aws, url)

    job = job_of(stack, stack.account_id)
    assert (job["id"], job["status"]) == (message["job_id"], "succeeded")
    assert stack.balance() == START_BALANCE - PRICE
    if name == "job_request_s3":
        result = stack.s3.get_object(
            Bucket=stack.bucket, Key=f"results/{stack.account_id}/jobs/{job['id']}.json"
        )
        assert json.loads(result["Body"].read())["client_reference_id"] == "catalog-item-7"


def test_a_sample_naming_an_unknown_account_is_answered_not_retried(stack, jobs_env):
    event = json.loads(
        (ROOT / "events" / "job_request_eventbridge.json").read_text()
    )  # its account is nobody's

    assert stack.invoke("requests", event) == {"batchItemFailures": []}
    assert jobs_env[0].sqs.receive_message(QueueUrl=jobs_env[1]).get("Messages", []) == []
    assert stack.balance() == START_BALANCE

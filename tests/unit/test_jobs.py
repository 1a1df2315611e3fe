"""Image jobs on moto's DynamoDB, S3 and SQS with the local provider: the state machine, its money (one
charge, refunds exactly once), the sweeper's thresholds, listing and cancelling, and the notifications."""

import json
from dataclasses import replace

import pytest
from aws_lambda_powertools.logging import Logger

from imagegate import ledger
from imagegate.jobs import Jobs
from imagegate.service import Service
from imagegate.validation import GenerationRequest, resolve

from .conftest import Clock

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
    return Jobs(svc, [finished.append], sleep=lambda s: None)


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

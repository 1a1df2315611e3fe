"""Every AWS entry point end to end on the emulated stack (moto's server, as `make serve` runs it), with the
template's own wiring: the requests queue with its redrive policy, the two EventBridge rules with
template.yaml's event patterns (a custom bus for `Image Job Requested`, the default bus for S3's events),
the bucket's EventBridge notifications, and the jobs queue. Each test starts from its events/ sample and
checks what the caller sees: the job, its image, the results S3 writes, the task answer, the balance to the
micro-dollar and a clean ledger."""

import json
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from imagegate.aws import AWSClients
from imagegate.config import Settings
from imagegate.http.lambda_app import batch_handler, build_jobs
from imagegate.jobs.triggers import Answers, Triggers
from imagegate.local.devserver import LocalWorker, provision_jobs_queue
from imagegate.money import ledger
from tests.deploy.cfn import ROOT, template

from .helpers import decode, png_bytes

PRICE = 16_000  # dall-e-2 at 256x256, the local price book
BALANCE = 1_000_000
SAMPLE_ACCOUNT = "acct_0123456789abcdef0123"  # events/build_events.py
SAMPLE_BUCKET = "imagegate-outputs"
TOKEN = "AQCEAAAAKgAAAAMAAAAAAAAAAY-e2e-task-token"


@dataclass
class Deployment:
    """One stack with the template's AWS wiring around it, and the functions that consume its queues."""

    stack: Any
    aws: AWSClients
    bus: str
    requests_queue: str
    jobs_queue: str
    triggers: Triggers
    sent: list  # parameters of every Step Functions call made

    def sample(self, name: str, account_id: str) -> Any:
        text = (ROOT / "events" / f"{name}.json").read_text()
        return json.loads(text.replace(SAMPLE_ACCOUNT, account_id).replace(SAMPLE_BUCKET, self.bucket))

    @property
    def bucket(self) -> str:
        return self.stack.settings.bucket

    def drain(self) -> tuple[int, int]:
        """RequestsFunction, then the worker, on everything queued, as Lambda's event sources would; how
        many messages each handled."""
        requests = LocalWorker(self.triggers.batch, self.aws.sqs, self.requests_queue)
        worker = LocalWorker(batch_handler(self.triggers.jobs), self.aws.sqs, self.jobs_queue)
        handled = (0, 0)
        while any(got := (requests.poll(), worker.poll())):
            handled = (handled[0] + got[0], handled[1] + got[1])
        return handled

    def only_job(self, account_id: str) -> dict:
        [job] = self.triggers.jobs.list(account_id)["data"]
        return job

    def put(self, key: str, body: bytes) -> None:
        self.aws.s3.put_object(Bucket=self.bucket, Key=key, Body=body)

    def read_json(self, key: str) -> Any:
        return json.loads(self.aws.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def settled(self, account_id: str) -> bool:
        return ledger.reconcile(self.aws.dynamodb, self.stack.settings.table, account_id).ok


def resource(name: str) -> dict:
    return template()["Resources"][name]["Properties"]


def pattern(rule: str, bucket: str) -> str:
    """A rule's event pattern from template.yaml, its reference to the bucket resolved."""
    text = json.dumps(resource(rule)["EventPattern"])
    return text.replace(json.dumps({"Ref": "OutputsBucket"}), json.dumps(bucket))


@pytest.fixture(scope="module")
def deployed(start_stack, moto_endpoint):
    suffix = uuid.uuid4().hex[:12]
    aws = AWSClients(Settings(region="us-east-1"), moto_endpoint)
    jobs_queue = provision_jobs_queue(aws, Settings(), name=f"e2e-jobs-{suffix}")
    stack = start_stack(jobs_queue_url=jobs_queue)
    aws = stack.aws
    sqs, events = aws.sqs, aws.client("events")

    queue = resource("RequestsQueue")
    dlq = sqs.create_queue(QueueName=f"e2e-requests-dlq-{suffix}")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = {
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": str(queue["RedrivePolicy"]["maxReceiveCount"]),
    }
    requests_queue = sqs.create_queue(
        QueueName=f"e2e-requests-{suffix}",
        Attributes={
            "VisibilityTimeout": str(queue["VisibilityTimeout"]),
            "RedrivePolicy": json.dumps(redrive),
        },
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=requests_queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    bus = f"e2e-bus-{suffix}"
    events.create_event_bus(Name=bus)
    for rule, on in (("JobRequestedRule", bus), ("ManifestRule", "default")):
        name = f"e2e-{rule}-{suffix}"
        events.put_rule(Name=name, EventBusName=on, EventPattern=pattern(rule, stack.settings.bucket))
        events.put_targets(Rule=name, EventBusName=on, Targets=[{"Id": "requests", "Arn": queue_arn}])
    # The bucket's NotificationConfiguration in template.yaml: every object event goes to EventBridge.
    assert resource("OutputsBucket")["NotificationConfiguration"] == {
        "EventBridgeConfiguration": {"EventBridgeEnabled": True}
    }
    aws.s3.put_bucket_notification_configuration(
        Bucket=stack.settings.bucket, NotificationConfiguration={"EventBridgeConfiguration": {}}
    )

    sent: list = []
    aws.client("stepfunctions").meta.events.register(
        "provide-client-params.sfn.*", lambda params, **_: sent.append(params)
    )
    service = stack.service
    triggers = Triggers(service, build_jobs(service), Answers(aws, service.settings, service.logger))
    return Deployment(stack, aws, bus, requests_queue, jobs_queue, triggers, sent)


@pytest.fixture
def account(deployed):
    return deployed.stack.service.accounts.create_account(BALANCE, label="aws-entry")


def test_an_image_job_requested_event_on_the_bus_runs_one_job(deployed, account):
    sample = deployed.sample("job_request_eventbridge", account)
    event = json.loads(sample["Records"][0]["body"])
    entry = {
        "Source": event["source"],
        "DetailType": event["detail-type"],
        "Detail": json.dumps(event["detail"]),
    }
    # Another detail-type on the same bus does not match the rule: nothing is queued for it.
    other = {**entry, "DetailType": "Image Job Succeeded"}
    events = deployed.aws.client("events")
    assert (
        events.put_events(Entries=[{**e, "EventBusName": deployed.bus} for e in (entry, other)])[
            "FailedEntryCount"
        ]
        == 0
    )

    assert deployed.drain() == (1, 1)  # the other detail-type was never queued

    job = deployed.only_job(account)
    assert job["status"] == "succeeded"
    image = decode(httpx.get(job["result"]["data"][0]["url"]).content)
    assert image.size == (256, 256)
    assert deployed.stack.service.accounts.balance(account) == BALANCE - PRICE
    assert deployed.settled(account)


def test_an_sqs_message_with_s3_inputs_runs_one_edit(deployed, account):
    sample = deployed.sample("job_request_sqs", account)
    deployed.put(f"inputs/{account}/kite.png", png_bytes(64, 64))
    deployed.put(f"inputs/{account}/kite-mask.png", png_bytes(64, 64, colour=(0, 0, 0, 0)))
    body = sample["Records"][0]["body"]
    deployed.aws.sqs.send_message(QueueUrl=deployed.requests_queue, MessageBody=body)
    deployed.aws.sqs.send_message(QueueUrl=deployed.requests_queue, MessageBody=body)  # a duplicate send

    deployed.drain()

    jobs = deployed.triggers.jobs.list(account)["data"]
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"]  # two messages: two jobs, each charged
    assert deployed.stack.service.accounts.balance(account) == BALANCE - 2 * PRICE
    assert deployed.settled(account)


def test_a_manifest_written_under_requests_starts_a_job_whose_result_lands_under_results(deployed, account):
    manifest = deployed.sample("job_request_manifest", account)
    deployed.put(f"requests/{account}/lighthouse.png", png_bytes(64, 64))
    deployed.put(f"requests/{account}/lighthouse.json", json.dumps(manifest).encode())

    assert deployed.drain() == (1, 1)  # the manifest; its input image matched no rule

    submitted = deployed.read_json(f"results/{account}/lighthouse.json")
    finished = deployed.read_json(submitted["result_key"])
    assert finished["id"] == submitted["job"]["id"] and finished["status"] == "succeeded"
    assert finished["client_reference_id"] == "catalog-item-7" and finished["source"] == "s3"
    [image] = finished["result"]["data"]
    obj = deployed.aws.s3.get_object(Bucket=deployed.bucket, Key=image["s3_key"])
    assert decode(obj["Body"].read()).size == (256, 256)
    assert deployed.stack.service.accounts.balance(account) == BALANCE - PRICE
    assert deployed.settled(account)


def test_a_direct_invocation_returns_the_finished_job(deployed, account):
    job = deployed.triggers.invoke(deployed.sample("job_request_invoke", account), str(uuid.uuid4()))

    assert job["status"] == "succeeded"
    assert decode(httpx.get(job["result"]["data"][0]["url"]).content).size == (256, 256)
    assert deployed.stack.service.accounts.balance(account) == BALANCE - PRICE
    assert deployed.settled(account)


def test_a_step_functions_task_is_answered_when_its_job_ends(deployed, account):
    sample = {**deployed.sample("job_request_task_token", account), "task_token": TOKEN}
    queued = deployed.triggers.invoke(sample, str(uuid.uuid4()))
    assert queued["status"] == "queued"

    deployed.drain()

    [answer] = [p for p in deployed.sent if p.get("taskToken") == TOKEN]
    output = json.loads(answer["output"])
    assert (output["id"], output["status"], output["client_reference_id"]) == (
        queued["id"],
        "succeeded",
        "order-1234",
    )
    assert deployed.stack.service.accounts.balance(account) == BALANCE - PRICE
    assert deployed.settled(account)


def test_an_event_for_an_unknown_account_is_dropped_not_retried_and_costs_nothing(deployed, account):
    detail = deployed.sample("job_request_eventbridge", "acct_nobody")["Records"][0]["body"]
    event = json.loads(detail)
    deployed.aws.client("events").put_events(
        Entries=[
            {
                "Source": event["source"],
                "DetailType": event["detail-type"],
                "Detail": json.dumps(event["detail"]),
                "EventBusName": deployed.bus,
            }
        ]
    )

    assert deployed.drain() == (1, 0)  # read once, refused for good: nothing for the worker, no retry

    attributes = deployed.aws.sqs.get_queue_attributes(
        QueueUrl=deployed.requests_queue,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attributes == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}
    assert deployed.stack.service.accounts.balance(account) == BALANCE

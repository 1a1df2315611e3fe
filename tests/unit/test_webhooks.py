"""Webhooks and job events on moto's DynamoDB, SQS and EventBridge, delivering to real servers on 127.0.0.1:
signatures the Standard Webhooks library verifies, the retry schedule on an injected clock, the final
failed state, the SSRF check at every attempt, and the EventBridge event a rule receives."""

import base64
import json
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
from aws_lambda_powertools.logging import Logger
from botocore.exceptions import ClientError
from localservers import local_outbound, serve
from standardwebhooks import Webhook

from imagegate.inputs.outbound import OutboundError
from imagegate.inputs.validation import GenerationRequest, resolve
from imagegate.jobs.lifecycle import Jobs
from imagegate.jobs.notifications import JobEvents
from imagegate.jobs.webhooks import DELAYS_S, MAX_ATTEMPTS, NoEndpoint, NoKey, RetryLater, Webhooks
from imagegate.service import Service
from imagegate.table import job_key, legacy_job_key

from .conftest import Clock

ACCOUNT = "acct_hooks"
JOB = "imgjob_0000000000000123456789abcdef0123"


@pytest.fixture
def queue(aws, settings):
    return aws.sqs.create_queue(QueueName=f"{settings.table}-webhooks")["QueueUrl"]


@pytest.fixture
def clock():
    return Clock(float(int(time.time())))  # real seconds, so the library's 5-minute tolerance holds


@pytest.fixture
def key(aws):
    return aws.client("kms").create_key()["KeyMetadata"]["Arn"]


@pytest.fixture
def hooks(aws, settings, queue, clock, key):
    outbound = local_outbound({"hooks.example.com": "93.184.215.14"})
    return Webhooks(aws, settings.table, queue_url=queue, key_id=key, outbound=outbound, clock=clock)


def job_item(aws, settings, status="succeeded"):
    aws.dynamodb.put_item(
        TableName=settings.table,
        Item={**job_key(ACCOUNT, JOB), "status": {"S": status}},
    )


def detail(status="succeeded", **extra):
    return {
        "id": JOB,
        "object": "image.job",
        "status": status,
        "endpoint": "generations",
        "model": "gpt-image-1",
        "created_at": 1_800_000_000,
        "completed_at": 1_800_000_060,
        "expires_at": 1_800_086_400,
        "error": None,
        "webhook": None,
        "result": {"created": 1_800_000_060, "data": [{"s3_key": f"outputs/{ACCOUNT}/x.png"}]},
        "bucket": "imagegate-outputs",
        "account_id": ACCOUNT,
        "request_id": "req_1",
        "source": "http",
        "client_reference_id": "order-42",
        "task_token": "AQCEAAAAKgAAAA-secret-token",
        **extra,
    }


def state(aws, settings):
    item = aws.dynamodb.get_item(TableName=settings.table, Key=job_key(ACCOUNT, JOB), ConsistentRead=True)
    raw = item["Item"].get("webhook")
    if raw is None:
        return None
    return {k: next(iter(v.values())) if "NULL" not in v else None for k, v in raw["M"].items()}


def fields(aws, settings, *names):
    return [state(aws, settings)[name] for name in names]


def queued(aws, queue):
    got = aws.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in got]


def answering(*statuses):
    """A respond function answering each POST with the next status (the last one repeated)."""
    left = list(statuses)
    return lambda seen: (left.pop(0) if len(left) > 1 else left[0], {}, b"")


# --- endpoints ------------------------------------------------------------------------------------------


def test_set_stores_a_new_whsec_secret_each_time_and_get_show_it_to_the_signer_only(hooks):
    first = hooks.set(ACCOUNT, "https://hooks.example.com/imagegate")
    second = hooks.set(ACCOUNT, "https://hooks.example.com/v2")
    assert first.startswith("whsec_") and second.startswith("whsec_") and first != second
    Webhook(second)  # the library accepts it as a signing secret
    endpoint = hooks.get(ACCOUNT)
    assert endpoint.url == "https://hooks.example.com/v2" and endpoint.is_sealed
    assert second not in repr(endpoint)
    assert hooks.remove(ACCOUNT) is True
    assert hooks.get(ACCOUNT) is None
    assert hooks.remove(ACCOUNT) is False


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/",
        "https://127.0.0.1/",
        "https://2130706433/",
        "https://0x7f.1/",
        "https://[::ffff:169.254.169.254]/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00:ec2::254]/",
        "https://10.0.0.8/",
    ],
)
def test_set_refuses_urls_that_are_not_https_to_a_public_address(aws, settings, url):
    hooks = Webhooks(aws, settings.table)  # production's check
    with pytest.raises(OutboundError) as err:
        hooks.set(ACCOUNT, url)
    assert err.value.code in ("url_scheme", "address_forbidden")
    assert hooks.get(ACCOUNT) is None


def test_the_test_event_is_signed_so_that_the_library_verifies_it(hooks):
    with serve(answering(204)) as server:
        secret = hooks.set(ACCOUNT, server.url("/hook"))
        assert hooks.test(ACCOUNT) == 204
    (seen,) = server.requests
    payload = Webhook(secret).verify(seen.body, seen.headers)
    assert payload["type"] == "webhook.test" and payload["data"] == {"account_id": ACCOUNT}
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(hooks.set(ACCOUNT, server.url("/hook"))).verify(seen.body, seen.headers)  # another secret


def endpoint_item(aws, settings, account_id=ACCOUNT):
    return aws.dynamodb.get_item(
        TableName=settings.table, Key={"pk": {"S": f"ACCOUNT#{account_id}"}, "sk": {"S": "WEBHOOK"}}
    )["Item"]


def test_the_stored_endpoint_holds_no_plaintext_secret_and_deliveries_still_verify(aws, settings, hooks):
    job_item(aws, settings)
    with serve(answering(200)) as server:
        secret = hooks.set(ACCOUNT, server.url("/hook"))
        item = endpoint_item(aws, settings)
        assert "secret" not in item and set(item) == {"pk", "sk", "url", "sealed_secret", "created_at"}
        raw = json.dumps(item, default=lambda b: base64.b64encode(b).decode())
        assert secret not in raw and secret.removeprefix("whsec_") not in raw
        hooks.job_finished(detail())
        (message,) = queued(aws, hooks.queue_url)
        assert hooks.deliver(message) is None
    (seen,) = server.requests
    assert Webhook(secret).verify(seen.body, seen.headers)["type"] == "image.job.succeeded"


def test_a_sealed_secret_opens_only_for_its_own_account(aws, settings, hooks):
    hooks.set(ACCOUNT, "https://hooks.example.com/")
    # A ciphertext copied onto another account's endpoint does not decrypt: the context names the account.
    aws.dynamodb.put_item(
        TableName=settings.table,
        Item={**endpoint_item(aws, settings), "pk": {"S": "ACCOUNT#acct_other"}},
    )
    with pytest.raises(ClientError) as refused:
        hooks.test("acct_other")
    assert refused.value.response["Error"]["Code"] == "InvalidCiphertextException"


def test_without_a_key_no_secret_is_stored(aws, settings):
    hooks = Webhooks(aws, settings.table, outbound=local_outbound({"hooks.example.com": "93.184.215.14"}))
    with pytest.raises(NoKey):
        hooks.set(ACCOUNT, "https://hooks.example.com/")
    assert hooks.get(ACCOUNT) is None


def test_a_plaintext_secret_of_an_earlier_version_still_signs_and_seal_encrypts_it_unchanged(
    aws, settings, hooks
):
    legacy = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    with serve(answering(204)) as server:
        aws.dynamodb.put_item(
            TableName=settings.table,
            Item={
                "pk": {"S": f"ACCOUNT#{ACCOUNT}"},
                "sk": {"S": "WEBHOOK"},
                "url": {"S": server.url("/hook")},
                "secret": {"S": legacy},
                "created_at": {"N": "1763700000"},
            },
        )
        assert hooks.get(ACCOUNT).is_sealed is False
        assert hooks.test(ACCOUNT) == 204
        assert hooks.seal(ACCOUNT) is True
        assert hooks.seal(ACCOUNT) is False  # nothing left in plaintext
        item = endpoint_item(aws, settings)
        assert "secret" not in item and "sealed_secret" in item
        assert hooks.test(ACCOUNT) == 204
    first, second = server.requests
    for seen in (first, second):
        assert Webhook(legacy).verify(seen.body, seen.headers)["type"] == "webhook.test"


def test_test_without_an_endpoint(hooks):
    with pytest.raises(NoEndpoint):
        hooks.test(ACCOUNT)


# --- deliveries -----------------------------------------------------------------------------------------


def test_a_finished_job_without_an_endpoint_queues_nothing(aws, settings, hooks, queue):
    job_item(aws, settings)
    hooks.job_finished(detail())
    assert queued(aws, queue) == []
    assert state(aws, settings) is None


def test_a_finished_job_is_delivered_signed_once_with_the_job_but_no_result_or_token(
    aws, settings, hooks, queue, clock
):
    job_item(aws, settings)
    with serve(answering(200)) as server:
        secret = hooks.set(ACCOUNT, server.url("/hook"))
        hooks.job_finished(detail())
        hooks.job_finished(detail())  # told twice: still one delivery
        assert state(aws, settings)["state"] == "pending"
        (message,) = queued(aws, queue)
        assert hooks.deliver(message) is None
        assert hooks.deliver(message) is None  # a duplicate message finds the delivery over
    (seen,) = server.requests
    assert seen.headers["webhook-id"] == f"msg_{JOB}"
    assert seen.headers["webhook-timestamp"] == str(int(clock.now))
    payload = Webhook(secret).verify(seen.body, seen.headers)
    assert payload["type"] == "image.job.succeeded"
    assert payload["data"] == {
        "id": JOB,
        "object": "image.job",
        "status": "succeeded",
        "endpoint": "generations",
        "model": "gpt-image-1",
        "created_at": 1_800_000_000,
        "completed_at": 1_800_000_060,
        "expires_at": 1_800_086_400,
        "error": None,
        "request_id": "req_1",
        "client_reference_id": "order-42",
    }
    assert state(aws, settings) == {
        "state": "delivered",
        "attempts": "1",
        "last_status": "200",
        "last_error": None,
        "last_attempt_at": str(int(clock.now)),
        "next_attempt_at": None,
    }


def test_a_job_on_the_account_partition_is_delivered_with_its_state_kept_there(
    aws, settings, hooks, queue, clock
):
    """A job written before jobs had partitions of their own (ACCOUNT#<id> / JOB#<id>) finishing after the
    upgrade: its delivery's state goes where the job is, and nothing is written on its shard."""
    aws.dynamodb.put_item(
        TableName=settings.table, Item={**legacy_job_key(ACCOUNT, JOB), "status": {"S": "succeeded"}}
    )
    with serve(answering(503, 200)) as server:
        hooks.set(ACCOUNT, server.url("/hook"))
        hooks.job_finished(detail())
        hooks.job_finished(detail())  # told twice: still one delivery
        (message,) = queued(aws, queue)
        assert hooks.deliver(message) == DELAYS_S[0]
        clock.now += DELAYS_S[0]
        assert hooks.deliver(message) is None
    assert len(server.requests) == 2
    item = aws.dynamodb.get_item(TableName=settings.table, Key=legacy_job_key(ACCOUNT, JOB))["Item"]
    assert item["webhook"]["M"]["state"] == {"S": "delivered"} and item["webhook"]["M"]["attempts"] == {
        "N": "2"
    }
    assert "Item" not in aws.dynamodb.get_item(TableName=settings.table, Key=job_key(ACCOUNT, JOB))


def test_a_finished_job_that_is_nowhere_queues_nothing_and_writes_nothing(aws, settings, hooks, queue):
    hooks.set(ACCOUNT, "https://hooks.example.com/")
    hooks.job_finished(detail())
    assert queued(aws, queue) == []
    for key in (job_key(ACCOUNT, JOB), legacy_job_key(ACCOUNT, JOB)):
        assert "Item" not in aws.dynamodb.get_item(TableName=settings.table, Key=key)


def test_failed_attempts_follow_the_schedule_then_the_delivery_fails(aws, settings, hooks, queue, clock):
    job_item(aws, settings, status="failed")
    start = clock.now
    with serve(answering(500)) as server:
        hooks.set(ACCOUNT, server.url("/hook"))
        hooks.job_finished(detail("failed", expires_at=int(start) + 86_400))  # a day's retention
        (message,) = queued(aws, queue)
        delays = []
        while (delay := hooks.deliver(message)) is not None:
            delays.append(delay)
            assert state(aws, settings)["next_attempt_at"] == str(int(clock.now + delay))
            clock.now += delay - 1
            assert hooks.deliver(message) == 1  # a second early: no attempt, only the wait left
            clock.now += 1
    assert delays == list(DELAYS_S)
    assert len(server.requests) == MAX_ATTEMPTS == 8
    assert {r.headers["webhook-id"] for r in server.requests} == {f"msg_{JOB}"}
    assert 24 * 3600 <= clock.now - start <= 30 * 3600  # about a day
    # The job item, which holds the delivery's state, outlives the schedule even when its own retention
    # (a day) is shorter: its TTL was moved past the last attempt.
    item = aws.dynamodb.get_item(TableName=settings.table, Key=job_key(ACCOUNT, JOB))["Item"]
    assert int(item["expires_at"]["N"]) > clock.now > start + 86_400
    assert state(aws, settings) == {
        "state": "failed",
        "attempts": "8",
        "last_status": "500",
        "last_error": "http_status",
        "last_attempt_at": str(int(clock.now)),
        "next_attempt_at": None,
    }


def test_a_delivery_that_recovers_is_delivered(aws, settings, hooks, queue, clock):
    job_item(aws, settings)
    with serve(answering(503, 404, 201)) as server:
        hooks.set(ACCOUNT, server.url("/hook"))
        hooks.job_finished(detail())
        (message,) = queued(aws, queue)
        while (delay := hooks.deliver(message)) is not None:
            clock.now += delay
    assert fields(aws, settings, "state", "attempts", "last_status") == ["delivered", "3", "201"]


def test_the_url_is_checked_again_at_every_attempt_and_a_refusal_is_retried(aws, settings, queue, clock, key):
    job_item(aws, settings)
    with serve(answering(200)) as server:
        url = server.url("/hook", scheme="https")  # loopback: allowed by the test policy only
        Webhooks(aws, settings.table, key_id=key, outbound=local_outbound()).set(ACCOUNT, url)
        strict = Webhooks(aws, settings.table, queue_url=queue, key_id=key, clock=clock)  # production's
        strict.job_finished(detail())
        (message,) = queued(aws, queue)
        assert strict.deliver(message) == DELAYS_S[0]
    assert server.requests == []  # never connected
    assert state(aws, settings)["last_error"] == "address_forbidden"


def test_a_removed_endpoint_fails_the_delivery(aws, settings, hooks, queue):
    job_item(aws, settings, status="cancelled")
    hooks.set(ACCOUNT, "https://hooks.example.com/")
    hooks.job_finished(detail("cancelled"))
    (message,) = queued(aws, queue)
    assert message["type"] == "image.job.cancelled"
    hooks.remove(ACCOUNT)
    assert hooks.deliver(message) is None
    assert fields(aws, settings, "state", "attempts", "last_error") == ["failed", "1", "no_endpoint"]


def test_the_record_handler_hides_the_message_until_the_next_attempt(aws, settings, hooks, queue):
    job_item(aws, settings)
    with serve(answering(500)) as server:
        hooks.set(ACCOUNT, server.url("/hook"))
        hooks.job_finished(detail())
        (received,) = aws.sqs.receive_message(QueueUrl=queue, VisibilityTimeout=0)["Messages"]
        record = SimpleNamespace(body=received["Body"], receipt_handle=received["ReceiptHandle"])
        with pytest.raises(RetryLater):
            hooks.record_handler()(record)
    assert aws.sqs.receive_message(QueueUrl=queue).get("Messages", []) == []  # hidden for DELAYS_S[0]
    attributes = aws.sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "1"


# --- EventBridge ----------------------------------------------------------------------------------------


def event_rule(aws, settings, bus="default"):
    """A rule for imagegate's job events that sends them to a queue, as a customer's rule would."""
    sqs, events = aws.sqs, aws.client("events")
    target = sqs.create_queue(QueueName=f"{settings.table}-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=target, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    if bus != "default":
        events.create_event_bus(Name=bus)
    rule = f"{settings.table}-jobs"
    pattern = {"source": ["imagegate"], "detail-type": [{"prefix": "Image Job "}]}
    events.put_rule(Name=rule, EventBusName=bus, EventPattern=json.dumps(pattern))
    events.put_targets(Rule=rule, EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    return target


@pytest.mark.parametrize(
    ("status", "detail_type"),
    [
        ("succeeded", "Image Job Succeeded"),
        ("failed", "Image Job Failed"),
        ("cancelled", "Image Job Cancelled"),
    ],
)
def test_each_finished_job_is_one_event_on_the_bus_without_the_task_token(aws, settings, status, detail_type):
    bus = f"{settings.table}-bus"
    target = event_rule(aws, settings, bus)
    JobEvents(aws, bus)(detail(status))
    (message,) = aws.sqs.receive_message(QueueUrl=target, MaxNumberOfMessages=10)["Messages"]
    event = json.loads(message["Body"])
    assert (event["source"], event["detail-type"]) == ("imagegate", detail_type)
    assert event["time"] == "2027-01-15T08:01:00Z"  # completed_at
    expected = {k: v for k, v in detail(status).items() if k != "task_token"}
    assert event["detail"] == expected


# --- with the job system --------------------------------------------------------------------------------


def test_a_real_job_reports_its_webhook_delivery_and_publishes_its_event(aws, settings, queue, clock, key):
    target = event_rule(aws, settings)
    jobs_queue = aws.sqs.create_queue(QueueName=f"{settings.table}-jobs")["QueueUrl"]
    logger = Logger(service="test", level="CRITICAL")
    svc = Service(replace(settings, jobs_queue_url=jobs_queue), aws, logger, clock=clock)
    hooks = Webhooks(aws, settings.table, queue_url=queue, key_id=key, outbound=local_outbound(), clock=clock)
    jobs = Jobs(
        svc, {"webhook": hooks.job_finished, "event": JobEvents(aws, "default")}, sleep=lambda s: None
    )
    account_id = svc.accounts.create_account(1_000_000)
    account = svc.accounts.authenticate(f"Bearer {svc.accounts.create_key(account_id)}")
    request = GenerationRequest(prompt="a red fox", model="dall-e-2", size="256x256")
    with serve(answering(200)) as server:
        secret = hooks.set(account_id, server.url("/hook"))
        job = jobs.submit(account, resolve("generations", request, svc.catalog), request_id="req_w")
        jobs.run(account_id, job["id"])
        assert jobs.get(account_id, job["id"])["webhook"]["state"] == "pending"
        (message,) = queued(aws, queue)
        hooks.deliver(message)
    shown = jobs.get(account_id, job["id"])["webhook"]
    assert (shown["state"], shown["attempts"], shown["last_status"]) == ("delivered", 1, 200)
    (seen,) = server.requests
    assert Webhook(secret).verify(seen.body, seen.headers)["data"]["id"] == job["id"]
    (event,) = aws.sqs.receive_message(QueueUrl=target, MaxNumberOfMessages=10)["Messages"]
    body = json.loads(event["Body"])
    assert body["detail-type"] == "Image Job Succeeded" and body["detail"]["id"] == job["id"]
    assert body["detail"]["result"]["data"][0]["s3_key"].startswith(f"outputs/{account_id}/")


def test_make_serve_delivers_from_its_local_queue_through_the_functions_handler(aws, settings, clock):
    from imagegate.http.lambda_app import sqs_batch
    from imagegate.local.devserver import LocalWorker, provision_webhook_key, provision_webhook_queue

    queue = provision_webhook_queue(aws, f"{settings.table}-deliveries")
    key = provision_webhook_key(aws, f"alias/{settings.table}")
    assert provision_webhook_key(aws, f"alias/{settings.table}") == key  # one key across restarts
    hooks = Webhooks(aws, settings.table, queue_url=queue, key_id=key, outbound=local_outbound(), clock=clock)
    job_item(aws, settings)
    with serve(answering(500, 200)) as server:
        hooks.set(ACCOUNT, server.url("/hook"))
        hooks.job_finished(detail())
        worker = LocalWorker(sqs_batch(hooks.record_handler()), aws.sqs, queue)
        assert worker.poll() == 1  # HTTP 500: kept, hidden until the next attempt
        assert worker.poll() == 0
        counts = aws.sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
        assert (counts["ApproximateNumberOfMessages"], counts["ApproximateNumberOfMessagesNotVisible"]) == (
            "0",
            "1",
        )
        assert state(aws, settings)["attempts"] == "1"


def test_a_delivery_the_queue_refused_is_queued_when_the_job_outbox_retries_it(
    aws, settings, hooks, queue, clock
):
    job_item(aws, settings)
    hooks.set(ACCOUNT, "https://hooks.example.com/")
    refused = Webhooks(aws, settings.table, queue_url=f"{queue}-gone", clock=clock)
    with pytest.raises(ClientError):  # the queue is not there
        refused.job_finished(detail())
    assert fields(aws, settings, "state", "last_error") == ["failed", "queue_unavailable"]
    hooks.job_finished(detail())  # the sweeper's retry (jobs/lifecycle.py)
    (message,) = queued(aws, queue)
    assert message["job_id"] == JOB and fields(aws, settings, "state", "attempts") == ["pending", "0"]
    hooks.job_finished(detail())  # once queued, never twice
    counts = aws.sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["All"])["Attributes"]
    assert (
        int(counts["ApproximateNumberOfMessages"]) + int(counts["ApproximateNumberOfMessagesNotVisible"]) == 1
    )


def finished_now(aws, settings, clock):
    """A job item whose final move is now (Jobs._move writes completed_at)."""
    item = {**job_key(ACCOUNT, JOB), "status": {"S": "succeeded"}, "completed_at": {"N": str(int(clock()))}}
    aws.dynamodb.put_item(TableName=settings.table, Item=item)


class Killed(BaseException):
    """Lambda stopping the function: no `except Exception` runs."""


class KilledAtSend:
    def send_message(self, **kwargs):
        raise Killed


def test_a_delivery_left_pending_by_a_function_killed_before_its_send_is_queued_past_the_grace(
    aws, settings, hooks, queue, clock
):
    """Issue 20: a function killed between the pending write and its send left `pending` with nothing
    queued, and the outbox's retry took `pending` for done."""
    grace = settings.deadlines.announce_grace_s
    finished_now(aws, settings, clock)
    hooks.set(ACCOUNT, "https://hooks.example.com/")
    killed = Webhooks(
        SimpleNamespace(dynamodb=aws.dynamodb, sqs=KilledAtSend()),
        settings.table,
        queue_url=queue,
        clock=clock,
        requeue_after_s=grace,
    )
    with pytest.raises(Killed):
        killed.job_finished(detail())
    assert fields(aws, settings, "state", "attempts") == ["pending", "0"] and queued(aws, queue) == []

    clock.now += grace  # the committing function may still be running: it sends, not the retry
    hooks.job_finished(detail())
    assert queued(aws, queue) == []

    clock.now += 1  # past the grace: the outbox's retry queues it
    hooks.job_finished(detail())
    (message,) = queued(aws, queue)
    assert message["job_id"] == JOB and fields(aws, settings, "state", "attempts") == ["pending", "0"]


def test_a_second_call_right_after_the_first_queues_one_delivery(aws, settings, hooks, queue, clock):
    finished_now(aws, settings, clock)
    hooks.set(ACCOUNT, "https://hooks.example.com/")
    hooks.job_finished(detail())
    clock.now += 5
    hooks.job_finished(detail())
    assert len(queued(aws, queue)) == 1

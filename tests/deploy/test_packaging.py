"""The packaging test: the Lambda layer built as `sam build` builds it (layers/imagegate/Makefile, here for
this machine's architecture and Python), every function copied from its CodeUri, and each one run from those
built directories in a clean interpreter (`python -I -S`: no site-packages, nothing from the venv; only the
function and the layer on sys.path) against emulated AWS, with the events/ samples and the environment the
template gives it.

This catches a dependency missing from the layer, a handler that only works inside the venv, and an AWS call
that the function's IAM policy in template.yaml does not allow (each call is recorded and checked).
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from imagegate.aws import AWSClients
from imagegate.config import Settings
from imagegate.http.pretraffic import probe
from imagegate.local.devserver import provision, provision_jobs_queue
from imagegate.money.accounts import Accounts
from imagegate.money.billing import Billing

from .cfn import ROOT, Stack, actions

EVENT_KEY = "sk-ig-events-0123456789abcdef0123456789abcdef"
START_BALANCE = 5_000_000
REGION = "us-east-1"
RUN_TIMEOUT_S = 120

# The emulator `make serve` runs, on a free port, in its own process.
MOTO_CHILD = """
import sys
from imagegate.local.devserver import start_aws_emulator
print(start_aws_emulator(0).server_address[1], flush=True)
sys.stdin.read()
"""

# Runs in the clean interpreter: imports the function as Lambda's bootstrap would, records every AWS API call
# (service, operation, transaction item kinds), invokes the handler with each event and prints the results.
BOOTSTRAP = r"""
import json, sys
function_dir, layer_dir, events_path = sys.argv[1:4]
sys.path[:0] = [function_dir, layer_dir]
HEAVY = ("boto3", "pydantic.v1")

import botocore.client

calls = []
_make_api_call = botocore.client.BaseClient._make_api_call


def recorded(self, operation, params):
    service = self.meta.service_model.endpoint_prefix
    kinds = [next(iter(item)) for item in params.get("TransactItems", [])]
    calls.append([service, operation, kinds])
    return _make_api_call(self, operation, params)


botocore.client.BaseClient._make_api_call = recorded


class Context:
    function_name = "imagegate-packaging"
    function_version = "$LATEST"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:imagegate-packaging"

    def __init__(self, n):
        self.aws_request_id = f"00000000-0000-4000-8000-{n:012x}"  # each invocation its own, as Lambda's

    def get_remaining_time_in_millis(self):
        return 29_000


import app

results = [app.handler(event, Context(n)) for n, event in enumerate(json.load(open(events_path)))]
roots = (function_dir, layer_dir, sys.base_prefix, sys.base_exec_prefix)
files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
foreign = sorted(f for f in files if f and not f.startswith(roots))
heavy = [name for name in HEAVY if name in sys.modules]
print("\n" + json.dumps({"results": results, "calls": calls, "foreign": foreign, "heavy": heavy}))
"""

EVENTS = {
    "generations": ["generations"],
    "edits": ["edits", "edits_two_images", "edits_json"],
    "variations": ["variations"],
    "balance": ["balance"],
    "models": ["models"],
    "uploads": ["uploads"],
    "sweep": ["sweep", "sweep_routes"],
    "webhooks": ["webhook_delivery"],
    "account": ["account"],
}
# Functions whose events are made by the test (a job's own ids): built, but not in the loop above.
JOB_FUNCTIONS = ("worker", "jobs", "requests", "invoke", "stripe_webhook")
LOGICAL_IDS = {name: f"{name.capitalize()}Function" for name in (*EVENTS, *JOB_FUNCTIONS)} | {
    "stripe_webhook": "StripeWebhookFunction"
}
STRIPE_WEBHOOK_SECRET = "whsec_packaging_0123456789abcdef"
# CodeDeploy's hook (PreTrafficCheck): its calls go to CodeDeploy (tests/unit/test_pretraffic.py).
HOOK = "pretraffic"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """build/: the layer (python/) and one directory per function, as `sam build` lays them out."""
    out = tmp_path_factory.mktemp("sam-build")
    layer = out / "ImagegateLayer"
    version = "{}.{}".format(*sys.version_info[:2])
    subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(ROOT / "layers/imagegate"),
            "build-ImagegateLayer",
            f"ARTIFACTS_DIR={layer}",
            f"ARCH={platform.machine()}",
            f"PYTHON_VERSION={version}",
            f"RUNTIME_PYTHON={sys.executable}",
            f"UV={ROOT / '.venv/bin/uv'}",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    for name in (*EVENTS, *JOB_FUNCTIONS, HOOK):
        shutil.copytree(ROOT / "functions" / name, out / name, ignore=shutil.ignore_patterns("__pycache__"))
    return out


@pytest.fixture(scope="module")
def aws_endpoint():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION=REGION)
    with subprocess.Popen(
        [sys.executable, "-c", MOTO_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    ) as proc:
        port = proc.stdout.readline().strip()
        assert port.isdigit(), f"moto server did not start (exit code {proc.poll()})"
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.stdin.close()
            proc.wait(timeout=10)


@pytest.fixture
def deployment(aws_endpoint, monkeypatch):
    """A fresh table and bucket with a funded account for the events' key; the template's environment."""

    def make(**parameters: str) -> tuple[dict[str, str], Callable[[], int], Callable[[], None]]:
        suffix = uuid.uuid4().hex[:12]
        env = Stack(**parameters).environment()
        env.update(
            IMAGEGATE_TABLE=f"ig-pkg-{suffix}",
            IMAGEGATE_BUCKET=f"ig-pkg-{suffix}",
            AWS_ENDPOINT_URL=aws_endpoint,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_REGION=REGION,
            AWS_DEFAULT_REGION=REGION,
            AWS_LAMBDA_FUNCTION_NAME="imagegate-packaging",
            LANG="C.UTF-8",
        )
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
            monkeypatch.delenv(name, raising=False)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"):
            monkeypatch.setenv(name, env[name])
        settings = Settings.from_env(env)
        aws = AWSClients(settings, aws_endpoint)
        provision(aws, settings)
        env["IMAGEGATE_JOBS_QUEUE_URL"] = provision_jobs_queue(aws, settings, f"ig-pkg-{suffix}")
        accounts = Accounts(aws.dynamodb, settings.table)
        account_id = accounts.create_account(START_BALANCE, label="packaging")
        accounts.create_key(account_id, label="events", api_key=EVENT_KEY)

        def killed_request() -> None:
            """A reservation made long ago and never settled, as a killed function leaves it."""
            account = accounts.authenticate(f"Bearer {EVENT_KEY}")
            details = {"model": "dall-e-2", "endpoint": "generations"}
            Billing(aws.dynamodb, settings.table, clock=lambda: 1_000).reserve(
                account, "req_killed", 16_000, details
            )

        return env, lambda: accounts.balance(account_id), killed_request

    return make


def retried(event: dict) -> list[dict]:
    """The event sent twice with one Idempotency-Key: the second answer is a replay read back from S3."""
    for headers, value in ((event["headers"], "pkg-retry-1"), (event["multiValueHeaders"], ["pkg-retry-1"])):
        headers["idempotency-key"] = value
    return [event, event]


def sample(name: str) -> dict:
    return json.loads((ROOT / "events" / f"{name}.json").read_text())


def run(built: Path, function: str, env: dict, tmp_path: Path, events: list[dict] | None = None) -> dict:
    if events is None:
        events = [sample(name) for name in EVENTS[function]]
        if function == "edits":  # b64_json: a replay reads the stored images (s3:GetObject)
            events += retried(sample("edits"))
    events_path = tmp_path / f"{function}-events.json"
    events_path.write_text(json.dumps(events))
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            BOOTSTRAP,
            str(built / function),
            str(built / "ImagegateLayer/python"),
            str(events_path),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.rstrip().splitlines()[-1])


def iam_actions(calls: list) -> set[str]:
    """The IAM actions behind the recorded API calls (a transaction is authorised item by item)."""
    needed = set()
    for service, operation, kinds in calls:
        if operation == "TransactWriteItems":
            needed |= {f"{service}:{kind}Item" for kind in kinds}
        elif operation == "TransactGetItems":
            needed.add(f"{service}:GetItem")
        else:
            needed.add(f"{service}:{operation}")
    return needed


@pytest.mark.parametrize("function", list(EVENTS))
def test_each_built_function_serves_its_events_in_a_clean_interpreter(built, deployment, function, tmp_path):
    env, balance, killed_request = deployment(DemoMode="true")  # no upstream: a demo draws under real ids
    if function == "sweep":
        killed_request()
    before = balance()
    out = run(built, function, env, tmp_path)

    assert out["foreign"] == []  # nothing imported from outside the function, the layer and the stdlib
    if function in ("generations", "edits", "variations"):
        # Cold start: the image functions never import boto3 (s3transfer, resources) or pydantic.v1.
        assert out["heavy"] == []
    for result in out["results"]:
        if (
            "routes_near_shutdown" in result
        ):  # the daily run (its own tests: test_service.py, test_ratelimit.py)
            assert set(result) == {"routes_near_shutdown", "limiters_pruned"}
            assert isinstance(result["routes_near_shutdown"], int) and isinstance(
                result["limiters_pruned"], int
            )
            continue
        if function == "sweep":
            no_jobs = {k: 0 for k in result if k.startswith(("jobs_", "announcements_"))}
            assert result == {"closed": 1, "charged_micros": 0, "refunded_micros": 16_000, **no_jobs}
            assert balance() == START_BALANCE
            continue
        if function == "webhooks":  # a delivery for a job this table never had: dropped, not kept
            assert result == {"batchItemFailures": []}
            continue
        assert result["statusCode"] == 200, result["body"][:500]
        body = json.loads(result["body"])
        if function == "balance":
            assert body["balance_micros"] == START_BALANCE
        elif function == "account":
            assert body["object"] == "billing_subscription"
            assert body["hard_limit_usd"] == START_BALANCE / 1_000_000
        elif function == "models":
            # A demo serves every model (drawn locally); the 2.5 family among them. Listing is free.
            assert body["object"] == "list"
            assert {"gpt-image-2.5-flare", "gpt-image-2.5-sunburst"} <= {m["id"] for m in body["data"]}
            assert balance() == START_BALANCE
        elif function == "uploads":
            assert body["object"] == "upload"
            assert body["upload_fields"]["key"].startswith("uploads/")
            assert balance() == START_BALANCE  # storing costs nothing
        else:
            assert result["headers"]["x-imagegate-provider"] == "local"
            assert result["headers"]["x-imagegate-demo"] == "local renderer, not AI"
            assert body["data"]
    if function in ("generations", "edits", "variations"):
        assert balance() < before
    if function == "edits":
        first, replay = out["results"][-2:]
        assert replay["headers"]["idempotent-replayed"] == "true"
        assert json.loads(replay["body"]) == json.loads(first["body"])
        assert ["s3", "GetObject", []] in out["calls"]
    # Every AWS call the function made is allowed by its own policy in template.yaml, and no more is needed.
    assert iam_actions(out["calls"]) <= actions(LOGICAL_IDS[function], Stack(DemoMode="true"))


def test_a_job_goes_through_the_built_functions_each_within_its_policy(built, deployment, tmp_path):
    """An edit submitted with Prefer: respond-async (inputs to S3, a message to SQS), the worker run on the
    message SQS delivers, the job listed by the jobs function: each call allowed by its own function's
    policy."""
    env, balance, _ = deployment(DemoMode="true")
    submitted = run(built, "edits", env, tmp_path, [sample("edits_async")])
    [accepted] = submitted["results"]
    assert accepted["statusCode"] == 202, accepted["body"][:500]
    job = json.loads(accepted["body"])
    assert accepted["headers"]["location"] == f"/api/v1/images/jobs/{job['id']}"  # under the stage
    charged = START_BALANCE - balance()
    assert charged > 0  # reserved at submit

    aws = AWSClients(Settings(region=REGION), env["AWS_ENDPOINT_URL"])
    [message] = aws.sqs.receive_message(QueueUrl=env["IMAGEGATE_JOBS_QUEUE_URL"])["Messages"]
    record = sample("worker")["Records"][0] | {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
    }
    worked = run(built, "worker", env, tmp_path, [{"Records": [record]}])
    assert worked["results"] == [{"batchItemFailures": []}]
    listed = run(built, "jobs", env, tmp_path, [sample("jobs")])
    [page] = listed["results"]
    assert page["statusCode"] == 200, page["body"][:500]
    [done] = json.loads(page["body"])["data"]
    assert (done["id"], done["status"]) == (job["id"], "succeeded")
    assert done["result"]["data"][0]["url"].startswith("http")
    assert START_BALANCE - balance() == charged  # charged once, what was reserved

    for function, out in (("edits", submitted), ("worker", worked), ("jobs", listed)):
        assert out["foreign"] == []
        assert iam_actions(out["calls"]) <= actions(LOGICAL_IDS[function], Stack(DemoMode="true")), function


def test_jobs_from_aws_services_go_through_the_built_functions_each_within_its_policy(
    built, deployment, tmp_path
):
    """The requests queue's samples (SQS, EventBridge, an S3 manifest, and a refused request whose task
    fails), the worker on what they queued, and the invoke samples: each call allowed by its own function's
    policy, and each job charged once."""
    env, balance, _ = deployment(DemoMode="true")
    aws = AWSClients(Settings(region=REGION), env["AWS_ENDPOINT_URL"])
    account_id = Accounts(aws.dynamodb, env["IMAGEGATE_TABLE"]).authenticate(f"Bearer {EVENT_KEY}").account_id

    def aws_sample(name: str) -> dict:
        text = (ROOT / "events" / f"{name}.json").read_text()
        return json.loads(
            text.replace("acct_0123456789abcdef0123", account_id).replace(
                "imagegate-outputs", env["IMAGEGATE_BUCKET"]
            )
        )

    from tests.e2e.helpers import png_bytes

    for key, body in (
        (f"inputs/{account_id}/kite.png", png_bytes(64, 64)),
        (f"inputs/{account_id}/kite-mask.png", png_bytes(64, 64, colour=(0, 0, 0, 0))),
        (f"requests/{account_id}/lighthouse.png", png_bytes(64, 64)),
        (f"requests/{account_id}/lighthouse.json", json.dumps(aws_sample("job_request_manifest")).encode()),
    ):
        aws.s3.put_object(Bucket=env["IMAGEGATE_BUCKET"], Key=key, Body=body)
    refused = aws_sample("job_request_task_token") | {"account_id": "acct_nobody"}
    batches = [aws_sample(n) for n in ("job_request_sqs", "job_request_eventbridge", "job_request_s3")]
    batches.append(
        sample("worker") | {"Records": [sample("worker")["Records"][0] | {"body": json.dumps(refused)}]}
    )
    requested = run(built, "requests", env, tmp_path, batches)
    assert requested["results"] == [{"batchItemFailures": []}] * 4

    def work() -> dict:
        queue = env["IMAGEGATE_JOBS_QUEUE_URL"]
        messages = aws.sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
        record = sample("worker")["Records"][0]
        events = [{"Records": [record | {"messageId": m["MessageId"], "body": m["Body"]}]} for m in messages]
        for m in messages:
            aws.sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
        return run(built, "worker", env, tmp_path, events)

    worked = work()
    assert worked["results"] == [{"batchItemFailures": []}] * 3
    invoked = run(
        built,
        "invoke",
        env,
        tmp_path,
        [aws_sample("job_request_invoke"), aws_sample("job_request_task_token")],
    )
    finished, queued = invoked["results"]
    assert (finished["status"], queued["status"]) == ("succeeded", "queued")
    answered = work()
    assert answered["results"] == [{"batchItemFailures": []}]
    # Five jobs of one image each, charged once each at the demo stack's price (LocalPriceUsd, $0.002).
    assert START_BALANCE - balance() == 5 * 2_000

    for function, out in (
        ("requests", requested),
        ("worker", worked),
        ("invoke", invoked),
        ("worker", answered),
    ):
        assert out["foreign"] == []
        assert iam_actions(out["calls"]) <= actions(LOGICAL_IDS[function], Stack(DemoMode="true")), function
    assert ["states", "SendTaskFailure", []] in requested["calls"]
    assert ["states", "SendTaskSuccess", []] in answered["calls"]


def test_a_default_stack_without_upstreams_refuses_real_model_ids_from_the_built_function(
    built, deployment, tmp_path
):
    env, balance, _ = deployment()
    [result] = run(built, "generations", env, tmp_path)["results"]

    assert result["statusCode"] == 400
    assert json.loads(result["body"])["error"]["code"] == "model_not_available"
    assert balance() == START_BALANCE


def test_the_layer_holds_bytecode_for_its_python(built):
    layer = built / "ImagegateLayer/python"
    tag = sys.implementation.cache_tag
    assert (layer / "imagegate" / "http" / "__pycache__" / f"api.{tag}.pyc").exists()
    assert (layer / "pydantic" / "__pycache__" / f"main.{tag}.pyc").exists()
    assert {p.name.split(".")[-2] for p in layer.glob("**/*.pyc")} == {tag}  # none for another Python


@pytest.mark.parametrize("function", [*EVENTS, *JOB_FUNCTIONS])
def test_each_built_function_passes_the_pre_traffic_check_for_free(built, deployment, function, tmp_path):
    """The hook's request for the function's kind (the template names each function's kind by its folder)
    through the built function: the hook's check passes, nothing is charged, and every AWS call is the
    function's own policy's."""
    env, balance, _ = deployment()
    request, check = probe(function)
    out = run(built, function, env, tmp_path, [request])
    [answer] = out["results"]
    assert check(answer) is None
    assert balance() == START_BALANCE
    assert out["foreign"] == []
    assert iam_actions(out["calls"]) <= actions(LOGICAL_IDS[function], Stack())


def test_the_built_hook_imports_from_its_layer_alone(built, deployment, tmp_path):
    env, _, _ = deployment(PreTrafficCheck="true")
    out = run(built, HOOK, env, tmp_path, [])
    assert out["foreign"] == [] and out["calls"] == []


def test_the_built_stripe_webhook_credits_a_signed_event_once_within_its_policy(built, deployment, tmp_path):
    """The sample delivery, signed again now with this deployment's secret (the sample's own signature is past
    Stripe's 300 s tolerance), for this deployment's account; then delivered again, and once forged."""
    import stripe

    env, balance, _ = deployment()
    env["IMAGEGATE_STRIPE_WEBHOOK_SECRET"] = STRIPE_WEBHOOK_SECRET
    aws = AWSClients(Settings(region=REGION), env["AWS_ENDPOINT_URL"])
    account_id = Accounts(aws.dynamodb, env["IMAGEGATE_TABLE"]).authenticate(f"Bearer {EVENT_KEY}").account_id
    event = sample("stripe_webhook")
    body = event["body"].replace("acct_0123456789abcdef0123", account_id)
    signature = stripe.WebhookSignature.generate_signature_header(body, STRIPE_WEBHOOK_SECRET)
    signed = event | {"body": body}
    signed["headers"] = event["headers"] | {"stripe-signature": signature}
    signed["multiValueHeaders"] = event["multiValueHeaders"] | {"stripe-signature": [signature]}
    forged = signed | {"body": body.replace('"amount_total": 2000', '"amount_total": 200000')}

    out = run(built, "stripe_webhook", env, tmp_path, [signed, signed, forged])

    first, replay, refused = out["results"]
    assert (first["statusCode"], json.loads(first["body"])["outcome"]) == (200, "credit")
    assert (replay["statusCode"], json.loads(replay["body"])["outcome"]) == (200, "duplicate")
    assert refused["statusCode"] == 400
    assert balance() == START_BALANCE + 20_000_000
    assert out["foreign"] == []
    assert iam_actions(out["calls"]) <= actions("StripeWebhookFunction", Stack())

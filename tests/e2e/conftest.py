"""The dev stack as `make serve` runs it: moto's server for S3, SQS and EventBridge, DynamoDB from Dynoxide
where `make install` put it (else moto's too), the app on uvicorn, real HTTP.

moto's server runs in a child process rather than in this one: other suites use `mock_aws`,
which resets moto's process-wide backends whenever it starts and stops, and would wipe this session's
table and bucket if both ran in the same pytest worker.
"""

import functools
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from aws_lambda_powertools.logging import Logger

from imagegate.aws import AWSClients
from imagegate.config import Settings
from imagegate.http.api import create_app
from imagegate.http.lambda_app import stream_batch
from imagegate.local.devserver import dynoxide_binary, provision, start_dynoxide
from imagegate.local.fake_stripe import FakeStripe
from imagegate.local.streams import LocalStream
from imagegate.money import ledger
from imagegate.money.accounts import Accounts
from imagegate.providers import Deps
from imagegate.service import Service

from .helpers import SMALL_BODY_LIMIT, SpecValidator, load_spec

DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
# Settings that would point boto3 at a developer's real account or another emulator.
FOREIGN_AWS_ENV = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE")

# The same emulator `make serve` starts.
_MOTO_CHILD = """
import sys
from imagegate.local.devserver import start_aws_emulator
print(start_aws_emulator(0).server_address[1], flush=True)
sys.stdin.read()  # serve until the parent closes our stdin
"""

STARTUP_TIMEOUT_S = 30
STRIPE_SECRET_KEY = "sk_test_imagegate_e2e"
STRIPE_WEBHOOK_SECRET = "whsec_imagegate_e2e_0123456789abcdef"
DEFAULT_BALANCE = 10_000_000  # $10 in micro-USD: far above what any one test spends


@pytest.fixture(scope="session")
def moto_endpoint():
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_AWS_ENV}
    with subprocess.Popen(
        [sys.executable, "-c", _MOTO_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**env, **DUMMY_AWS_ENV},
    ) as proc:
        try:
            port = proc.stdout.readline().strip()
            if not port.isdigit():
                pytest.fail(f"moto server did not start (exit code {proc.poll()})")
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.stdin.close()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def dynamodb_endpoints():
    """DynamoDB as `make serve` picks it: Dynoxide where `make install` put it ({} means moto's)."""
    binary = dynoxide_binary(os.environ)
    if binary is None:
        yield {}
        return
    dynoxide = start_dynoxide(binary, 0)
    try:
        yield {"dynamodb": dynoxide.endpoint}
    finally:
        dynoxide.stop()


@pytest.fixture(scope="session")
def aws_env():
    with pytest.MonkeyPatch.context() as mp:
        for name in FOREIGN_AWS_ENV:
            mp.delenv(name, raising=False)
        for name, value in DUMMY_AWS_ENV.items():
            mp.setenv(name, value)
        yield


@dataclass
class Stack:
    settings: Settings
    aws: AWSClients
    service: Service
    base_url: str  # http://127.0.0.1:<port>, without /v1

    @functools.cached_property
    def usage(self) -> LocalStream:
        """The table's stream, as the usage function reads it."""
        return LocalStream(
            stream_batch(self.aws, self.settings.table, self.service.logger),
            self.aws.dynamodb,
            self.aws.client("dynamodbstreams"),
            self.settings.table,
        )

    def drain(self) -> int:
        """Count the usage of every request closed so far, as the usage function will have shortly after:
        call it before reading usage (the counters follow the table's stream, money/usage.py)."""
        return self.usage.drain()

    def objects_under(self, prefix: str) -> list[str]:
        out = self.aws.s3.list_objects_v2(Bucket=self.settings.bucket, Prefix=prefix)
        return [obj["Key"] for obj in out.get("Contents", [])]


def _serve(app: Any):
    """Run uvicorn on a free port in a daemon thread; returns (base_url, stop)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            pytest.fail("uvicorn did not start")
        thread.join(timeout=0.01)

    def stop():
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return f"http://127.0.0.1:{port}", stop


@pytest.fixture(scope="session")
def start_stack(aws_env, moto_endpoint, dynamodb_endpoints):
    """Build and serve apps on the shared moto server, each with its own table and bucket."""
    stops = []

    def start(upstream: Any = None, clock: Any = time.time, **settings: Any) -> Stack:
        """`upstream`: an httpx handler standing in for every HTTP upstream (routes come from `settings`)."""
        suffix = uuid.uuid4().hex[:12]
        config = Settings(table=f"e2e-{suffix}", bucket=f"e2e-{suffix}", region="us-east-1", **settings)
        aws = AWSClients(config, moto_endpoint, dynamodb_endpoints)
        provision(aws, config)
        deps = Deps(aws, httpx.Client(transport=httpx.MockTransport(upstream))) if upstream else None
        service = Service(config, aws, Logger(service="imagegate-e2e", level="WARNING"), deps, clock)
        base_url, stop = _serve(create_app(service))
        stops.append(stop)
        stacks.append(Stack(config, aws, service, base_url))
        return stacks[-1]

    stacks: list[Stack] = []
    yield start
    for stop in stops:
        stop()
    for stack in stacks:
        stack.drain()
    # `imagegate reconcile --all` on every stack the session used (issue 20): after every end-to-end run,
    # each account's balance, requests, jobs, Idempotency-Keys and usage agree.
    problems = {
        account.account_id: result.problems
        for stack in stacks
        for account in Accounts(stack.aws.dynamodb, stack.settings.table).list_accounts()
        if not (result := ledger.reconcile(stack.aws.dynamodb, stack.settings.table, account.account_id)).ok
    }
    assert problems == {}


@pytest.fixture(scope="session")
def stack(start_stack):
    """The app with all three routes and default settings, as `make serve` builds it."""
    return start_stack()


@pytest.fixture(scope="session")
def small_limit_stack(start_stack):
    """The same app with IMAGEGATE_MAX_BODY_BYTES set low, so a 413 needs only a small upload."""
    return start_stack(max_body_bytes=SMALL_BODY_LIMIT)


@pytest.fixture(scope="session")
def http():
    """A plain HTTP client for the session, in curl's role; each new client costs ~50 ms of TLS setup."""
    with httpx.Client(timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def sdk_http():
    """The transport every test's OpenAI client shares, for the same reason."""
    with openai.DefaultHttpxClient(timeout=30) as client:
        yield client


@dataclass
class User:
    """A funded customer: an account, one key for it, and the OpenAI SDK pointed at imagegate."""

    stack: Stack
    account_id: str
    key: str
    client: openai.OpenAI

    def balance(self) -> int:
        return self.stack.service.accounts.balance(self.account_id)

    def outputs(self) -> list[str]:
        """S3 keys of every image stored for this account."""
        return self.stack.objects_under(f"{self.stack.settings.output_prefix}/{self.account_id}/")


@pytest.fixture
def new_user(sdk_http):
    """Make a funded user on a stack: `new_user(stack, balance=...)`."""

    def make(on: Stack, balance: int = DEFAULT_BALANCE, **limits: int) -> User:
        account_id = on.service.accounts.create_account(balance, label="e2e")
        key = on.service.accounts.create_key(account_id, label="e2e", **limits)
        client = openai.OpenAI(base_url=f"{on.base_url}/v1", api_key=key, max_retries=0, http_client=sdk_http)
        return User(on, account_id, key, client)

    return make


@pytest.fixture
def user(new_user, stack):
    return new_user(stack)


@pytest.fixture(scope="session")
def validate_schema():
    """`validate_schema(body, schema_name="ImagesResponse", drop=())`; a no-op when the spec is absent."""
    return SpecValidator(load_spec())


@pytest.fixture(scope="session")
def fake_stripe():
    """The fake Stripe make serve runs (local/fake_stripe.py), on its own port."""
    fake = FakeStripe(STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET)
    fake.base_url, stop = _serve(fake.app)
    yield fake
    stop()


@pytest.fixture(scope="session")
def stripe_stack(start_stack, fake_stripe):
    """A stack selling top-ups through the fake Stripe, whose events reach its webhook; the Stripe keys come
    from the environment, as under make serve."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMAGEGATE_STRIPE_SECRET_KEY", STRIPE_SECRET_KEY)
        mp.setenv("IMAGEGATE_STRIPE_WEBHOOK_SECRET", STRIPE_WEBHOOK_SECRET)
        stack = start_stack(stripe_api_base=fake_stripe.base_url)
        fake_stripe.webhook_url = f"{stack.base_url}/v1/billing/stripe/webhook"
        yield stack

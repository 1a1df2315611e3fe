"""Fixtures for driving the real Lambda handlers with the committed API Gateway events, AWS emulated by moto.

Each test gets its own table and bucket and a fresh import of the function module, made inside `mock_aws`,
because the handler reads its settings at import and its boto3 clients must be born under the mock.
"""

import importlib.util
import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from moto import mock_aws

from imagegate.aws import AWSClients
from imagegate.config import Settings
from imagegate.local.devserver import provision
from imagegate.money.accounts import Accounts

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
EVENT_KEY = "sk-ig-events-0123456789abcdef0123456789abcdef"
START_BALANCE = 5_000_000  # $5.00 in micro-USD
REGION = "us-east-1"


@dataclass
class FakeLambdaContext:
    """A real context's attributes; Powertools' inject_lambda_context logs name, memory, ARN, request id."""

    function_name: str = "imagegate-test"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:imagegate-test"
    aws_request_id: str = "00000000-0000-4000-8000-000000000000"
    log_group_name: str = "/aws/lambda/imagegate-test"
    log_stream_name: str = "2025/11/21/[$LATEST]0123456789abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


class Stack:
    """One isolated deployment: table, bucket, a funded account for EVENT_KEY, and handler loading."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.settings = Settings.from_env()
        self.table, self.bucket = self.settings.table, self.settings.bucket
        aws = AWSClients(self.settings)
        provision(aws, self.settings)
        self.dynamodb, self.s3 = aws.dynamodb, aws.s3
        self.accounts = Accounts(self.dynamodb, self.table)
        self.start_balance = START_BALANCE
        self.account_id = self.accounts.create_account(START_BALANCE, label="handler-tests")
        self.accounts.create_key(self.account_id, label="events", api_key=EVENT_KEY)

    @staticmethod
    def event(name: str) -> dict:
        """events/<name>.json, parsed afresh so that a test may edit it."""
        return json.loads((EVENTS / f"{name}.json").read_text())

    def handler(self, route: str, **env: str):
        """Import functions/<route>/app.py afresh (own module name), after applying `env` overrides."""
        for name, value in env.items():
            self.monkeypatch.setenv(name, value)
        path = ROOT / "functions" / route / "app.py"
        spec = importlib.util.spec_from_file_location(f"lambda_{route}_{uuid.uuid4().hex}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.handler

    def invoke(self, route: str, event: dict, **env: str) -> dict:
        return self.handler(route, **env)(event, FakeLambdaContext())

    def balance(self) -> int:
        return self.accounts.balance(self.account_id)

    def output_keys(self) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=self.bucket, Prefix="outputs/")
        return [obj["Key"] for obj in listing.get("Contents", [])]


@pytest.fixture
def stack(monkeypatch):
    suffix = uuid.uuid4().hex[:12]
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "IMAGEGATE_TABLE": f"ig-handlers-{suffix}",
        "IMAGEGATE_BUCKET": f"ig-handlers-{suffix}",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Anything that could point boto3 at a real endpoint, a real profile or non-default limits goes.
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_PROFILE",
        "IMAGEGATE_MAX_BODY_BYTES",
        "IMAGEGATE_LOCAL_PRICE_USD",
        "IMAGEGATE_URL_TTL",
        "IMAGEGATE_UPSTREAM_SECRET_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    with mock_aws():
        yield Stack(monkeypatch)

"""Shared fixtures for the unit suite: the catalog, in-code test images, and AWS emulated by moto."""

import io
import threading
import uuid

import pytest
from botocore.exceptions import ClientError
from PIL import Image
from shims import ScannedStream, mocked_aws

from imagegate.aws import AWSClients
from imagegate.catalog.loader import load_catalog
from imagegate.config import Settings
from imagegate.inputs.images import inspect
from imagegate.inputs.validation import ImageParams, resolve
from imagegate.local.devserver import provision
from imagegate.money.accounts import Accounts
from imagegate.money.billing import Billing

# IMAGEGATE_LOCAL_PRICE_USD's documented default, 0.002 USD.
LOCAL_PRICE = 2000


@pytest.fixture(scope="session")
def catalog():
    return load_catalog(Settings(local_price_micros=LOCAL_PRICE)).contracts


def image_bytes(width=64, height=64, mode="RGBA", fmt="PNG", colour=(200, 40, 40, 255), **save):
    img = Image.new(mode, (width, height), colour[: len(mode)] if mode != "L" else colour[0])
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def upload(param="image", **kw):
    """An uploaded image as the API layer hands it to validation."""
    return inspect(image_bytes(**kw), param)


def half_mask(width, height):
    """Opaque left half (keep), fully transparent right half (edit)."""
    img = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    img.paste((0, 0, 0, 0), (width // 2, 0, width, height))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return inspect(buf.getvalue(), "mask")


@pytest.fixture
def job(catalog):
    """Build an ImageJob the way the API does: wire params through validation.resolve."""

    def make(endpoint="generations", images=(), mask=None, **params):
        return resolve(endpoint, ImageParams(**params), catalog, list(images), mask)

    return make


@pytest.fixture
def settings():
    suffix = uuid.uuid4().hex[:12]
    return Settings(table=f"unit-{suffix}", bucket=f"unit-{suffix}", region="us-east-1")


@pytest.fixture(scope="module")
def aws_clients():
    """moto's in-process AWS for one test module; building boto3 clients per test would triple the run time.

    Tests stay independent through uniquely named tables and buckets (the `settings` fixture).
    """
    with mocked_aws():
        yield AWSClients(Settings(region="us-east-1"))


@pytest.fixture
def aws(aws_clients, settings):
    """AWS with this test's own table and bucket, provisioned as the dev stack does."""
    provision(aws_clients, settings)
    return aws_clients


@pytest.fixture
def accounts(aws, settings):
    return Accounts(aws.dynamodb, settings.table)


@pytest.fixture
def stream(aws, settings):
    """The table's stream as the usage function sees it: `stream.drain()` counts what closed since."""
    return ScannedStream(aws.dynamodb, settings.table)


@pytest.fixture
def billing(aws, settings):
    return Billing(aws.dynamodb, settings.table)


class Clock:
    """A clock that stands still until a test moves it (`clock.now += 60`)."""

    def __init__(self, now=1_700_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


class OneRequestAtATime:
    """The DynamoDB client, with each API call made atomic.

    Real DynamoDB applies every request (a transaction included) atomically; moto's in-process backend does
    not, and overdraws under threads whatever the caller does. Serialising single calls restores DynamoDB's
    guarantee and nothing more, so a reserve that read the balance and wrote it back in two calls would
    still overdraw here.
    """

    def __init__(self, client):
        self._client = client
        self._lock = threading.Lock()

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if name == "exceptions" or not callable(attr):
            return attr

        def call(*args, **kwargs):
            with self._lock:
                return attr(*args, **kwargs)

        return call


class ConflictsFirst:
    """The DynamoDB client, but the next `conflicts` transactions are cancelled as real DynamoDB cancels
    one that races another transaction on the same item."""

    def __init__(self, client, conflicts):
        self._client = client
        self.conflicts = conflicts
        self.exceptions = client.exceptions

    def transact_write_items(self, **kwargs):
        if self.conflicts:
            self.conflicts -= 1
            reasons = [{"Code": "None"}] * (len(kwargs["TransactItems"]) - 1) + [
                {"Code": "TransactionConflict"}
            ]
            raise self._client.exceptions.TransactionCanceledException(
                {
                    "Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
                    "CancellationReasons": reasons,
                },
                "TransactWriteItems",
            )
        return self._client.transact_write_items(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


class Counting:
    """The DynamoDB client, counting calls by API name and the items reads return."""

    def __init__(self, client):
        self._client = client
        self.exceptions = client.exceptions
        self.calls = {}
        self.items_read = 0

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            out = attr(*args, **kwargs)
            if isinstance(out, dict):
                self.items_read += len(out.get("Items", [])) + ("Item" in out)
            return out

        return call


class Failing:
    """The DynamoDB client, failing the next `times` calls of `only` with a ClientError of `code`, as
    DynamoDB does when it throttles."""

    def __init__(self, client, code, times, only="transact_write_items"):
        self._client = client
        self.exceptions = client.exceptions
        self.code = code
        self.times = times
        self.only = only

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if name != self.only:
            return attr

        def call(*args, **kwargs):
            if self.times:
                self.times -= 1
                raise ClientError({"Error": {"Code": self.code, "Message": "injected"}}, name)
            return attr(*args, **kwargs)

        return call

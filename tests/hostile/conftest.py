"""The app in this process with AWS emulated by moto's in-process backend, for hostile requests.

One table, bucket and app per test module (building them per test would dominate the run time); each test
reads the balance before and after, and the bucket must stay empty: every request here is one that must be
refused before any image is made or money moves.
"""

import io
import uuid
from dataclasses import dataclass

import pytest
from aws_lambda_powertools.logging import Logger
from PIL import Image
from shims import mocked_aws
from starlette.testclient import TestClient

from imagegate.aws import AWSClients
from imagegate.config import Settings
from imagegate.http.api import create_app
from imagegate.local.devserver import provision
from imagegate.money.accounts import Accounts
from imagegate.service import Service

BALANCE = 10_000_000  # $10 in micro-USD
BODY_LIMIT = 2 * 1024 * 1024  # small, so a 413 needs only a small upload
WRITES = {
    "dynamodb": frozenset(
        {"put_item", "update_item", "delete_item", "transact_write_items", "batch_write_item"}
    ),
    "s3": frozenset(
        {"put_object", "upload_fileobj", "upload_file", "copy_object", "create_multipart_upload"}
    ),
}


class Recorder:
    """A boto3 client that logs every write call that succeeded (a refused conditional write raises and
    is not logged): reading the balance and listing the bucket after every case would cost more than the
    cases themselves, and a request that wrote nothing cannot have moved money or stored an image."""

    def __init__(self, client, service, log):
        self._client, self._service, self._log = client, service, log

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if name not in WRITES[self._service]:
            return attr

        def call(*args, **kwargs):
            result = attr(*args, **kwargs)
            self._log.append((self._service, name))
            return result

        return call


@dataclass
class Gate:
    client: TestClient
    service: Service
    accounts: Accounts
    settings: Settings
    account_id: str
    key: str  # funded
    broke_key: str  # a $0 account
    revoked_key: str
    writes: list  # (service, operation) of every successful write since the last clear

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def balance(self) -> int:
        return self.accounts.balance(self.account_id)

    def outputs(self) -> list[str]:
        listing = self.service.aws.s3.list_objects_v2(Bucket=self.settings.bucket)
        return [obj["Key"] for obj in listing.get("Contents", [])]


@pytest.fixture(scope="module")
def gate():
    with mocked_aws():
        suffix = uuid.uuid4().hex[:12]
        settings = Settings(
            table=f"hostile-{suffix}",
            bucket=f"hostile-{suffix}",
            region="us-east-1",
            max_body_bytes=BODY_LIMIT,
            images_per_minute=100_000,
            max_concurrent=100,
        )
        aws = AWSClients(settings)
        provision(aws, settings)
        accounts = Accounts(aws.dynamodb, settings.table)
        account_id = accounts.create_account(BALANCE, label="hostile")
        key = accounts.create_key(account_id, label="funded", api_key="sk-ig-hostile-" + uuid.uuid4().hex)
        broke = accounts.create_account(0, label="broke")
        broke_key = accounts.create_key(broke, label="broke", api_key="sk-ig-broke-" + uuid.uuid4().hex)
        revoked_key = accounts.create_key(
            account_id, label="revoked", api_key="sk-ig-rev-" + uuid.uuid4().hex
        )
        accounts.revoke_key(accounts.authenticate(f"Bearer {revoked_key}").key_id)
        writes: list = []
        for name in ("dynamodb", "s3"):
            client = aws.client(name)
            slot = next(k for k, v in aws._clients.items() if v is client)
            aws._clients[slot] = Recorder(client, name, writes)
        service = Service(settings, aws, Logger(service="imagegate-hostile", level="CRITICAL"))
        with TestClient(create_app(service), raise_server_exceptions=False) as client:
            yield Gate(client, service, accounts, settings, account_id, key, broke_key, revoked_key, writes)


def png(width=64, height=64, mode="RGBA", fmt="PNG", colour=(200, 40, 40, 255)) -> bytes:
    img = Image.new(mode, (width, height), colour[: len(mode)] if mode not in ("L", "P") else colour[0])
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def mask(width=64, height=64) -> bytes:
    """Opaque left half, fully transparent right half."""
    img = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    img.paste((0, 0, 0, 0), (width // 2, 0, width, height))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()

"""Test-only adapters shared by the suites (on sys.path through pytest's `pythonpath`)."""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from moto import mock_aws

from imagegate.money.accounts import Account


@contextmanager
def mocked_aws() -> Iterator[None]:
    """moto's in-process AWS with fake credentials in us-east-1; a configured endpoint or profile would
    send boto3 past moto's interception, so both are cleared while it runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        with mock_aws():
            yield


class ByAccount:
    """Billing driven by account id and request id, as tests of the ledger and the CLI think of it: the key
    named in `details` is used as it is (no key item is needed while no rate limit is in force)."""

    def __init__(self, billing):
        self.billing = billing
        self.reservations = {}

    def reserve(self, account_id, request, amount, details):
        key_id = details.get("key_id", "key_test")
        account = Account(account_id, key_id, f"KEY#{key_id}")
        fields = {"model": details["model"], "endpoint": details.get("endpoint", "generations")}
        fields |= {"job": details["job"]} if "job" in details else {}
        self.reservations[request] = self.billing.reserve(account, request, amount, fields)

    def settle(self, account_id, request, charged, images=0):
        return self.billing.settle(self.reservations[request], charged, images=images)

    def sweep(self, account_id, older_than_s):
        return [r for r, _ in self.billing.sweep(older_than_s=older_than_s, account_id=account_id)]

    def __getattr__(self, name):
        return getattr(self.billing, name)

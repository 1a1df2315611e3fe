"""Test-only adapters shared by the suites (on sys.path through pytest's `pythonpath`)."""

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from botocore.client import BaseClient
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
        mp.setattr(BaseClient, "_make_api_call", _checked_api_call)
        with mock_aws():
            yield


# --- DynamoDB's expression rules, which moto does not all enforce -------------------------------------------
# https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Expressions.ExpressionAttributeNames.html
# and ...ExpressionAttributeValues.html: a placeholder is # or : followed by one or more alphanumeric
# characters or underscores; every name and value given must be used by an expression of the call, and
# every placeholder used must be given; an attribute name is never empty (ValidationException: "empty
# attribute name"); a number is never empty.
_EXPRESSIONS = (
    "KeyConditionExpression",
    "FilterExpression",
    "UpdateExpression",
    "ConditionExpression",
    "ProjectionExpression",
)
_PLACEHOLDER = re.compile(r"([#:][A-Za-z0-9_]+)")
_original_api_call = BaseClient._make_api_call


def expression_problems(params: dict[str, Any]) -> list[str]:
    """What DynamoDB would refuse in one request's (or one transaction action's) expressions."""
    names = params.get("ExpressionAttributeNames") or {}
    values = params.get("ExpressionAttributeValues") or {}
    used = {p for e in _EXPRESSIONS for p in _PLACEHOLDER.findall(params.get(e) or "")}
    problems = []
    for placeholder, name in names.items():
        if not re.fullmatch(r"#[A-Za-z0-9_]+", placeholder):
            problems.append(f"malformed name placeholder {placeholder!r}")
        if not isinstance(name, str) or not name:
            problems.append(f"empty attribute name for {placeholder}")
    for placeholder, value in values.items():
        if not re.fullmatch(r":[A-Za-z0-9_]+", placeholder):
            problems.append(f"malformed value placeholder {placeholder!r}")
        if "N" in value and not str(value["N"]).strip():
            problems.append(f"empty number for {placeholder}")
    problems += [f"unused {p}" for p in sorted((names.keys() | values.keys()) - used)]
    problems += [f"undefined {p}" for p in sorted(used - names.keys() - values.keys())]
    if "ExpressionAttributeNames" in params and not names:
        problems.append("empty ExpressionAttributeNames")
    if "ExpressionAttributeValues" in params and not values:
        problems.append("empty ExpressionAttributeValues")
    return problems


def _checked_api_call(self: BaseClient, operation: str, params: dict[str, Any]) -> Any:
    if self.meta.service_model.service_name == "dynamodb":
        requests = [params]
        if operation == "TransactWriteItems":
            requests = [next(iter(a.values())) for a in params.get("TransactItems", [])]
        for request in requests:
            problems = expression_problems(request)
            assert not problems, f"DynamoDB would refuse {operation}: {problems} in {request}"
    return _original_api_call(self, operation, params)


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


def charges(dynamodb, table: str, account_id: str) -> list[int]:
    """What an account's closed requests were charged, oldest first: each request is its own ledger record
    (billing.py), so this is what the ledger says was paid for."""
    from imagegate.money import ledger

    return [
        int(item["charged"]["N"])
        for item in ledger.request_items(dynamodb, table, account_id)
        if item["state"]["S"] != "reserved"
    ]


def legacy_reserve(
    dynamodb, table: str, account_id: str, key_id: str, request: str, amount: int, at: float = 1
):
    """A reservation as billing made it before issue 22: the request item on the account's partition, a
    `reserve` ledger entry, in one transaction; and its Reservation, as a job item would have kept it."""
    from imagegate.money import ledger
    from imagegate.money.billing import Reservation

    account_key = {"pk": {"S": f"ACCOUNT#{account_id}"}}
    dynamodb.transact_write_items(
        TransactItems=[
            {
                "Update": {
                    "TableName": table,
                    "Key": {**account_key, "sk": {"S": "ACCOUNT"}},
                    "UpdateExpression": "SET balance = balance - :a",
                    "ExpressionAttributeValues": {":a": {"N": str(amount)}},
                }
            },
            {
                "Put": {
                    "TableName": table,
                    "Item": {
                        **account_key,
                        "sk": {"S": f"REQUEST#{request}"},
                        "state": {"S": "reserved"},
                        "reserved": {"N": str(amount)},
                        "created_at": {"N": str(int(at))},
                        "key_id": {"S": key_id},
                        "slots": {"S": "ka"},
                    },
                }
            },
            ledger.entry(account_id, "reserve", -amount, lambda: at, table=table, request_id=request),
        ]
    )
    return Reservation(account_id, request, amount, key_id, f"KEY#{key_id}", "m", int(at), "ka")


class ScannedStream:
    """What the table's stream hands the usage function (money/usage.py), for a table moto serves in
    process, which does not answer the DynamoDB Streams API: every request closed since the last `drain`,
    once each, in the order they closed, with rising sequence numbers."""

    def __init__(self, dynamodb, table: str):
        self._db, self._table = dynamodb, table
        self._seen: set[tuple[str, str]] = set()
        self._sequence = 0

    def drain(self) -> None:
        from imagegate.money.usage import UsageCounters

        pages = self._db.get_paginator("scan").paginate(
            TableName=self._table,
            FilterExpression="begins_with(sk, :r) AND attribute_exists(account_id) AND #s IN (:s, :f)",
            ExpressionAttributeNames={"#s": "state"},
            ExpressionAttributeValues={
                ":r": {"S": "REQUEST#"},
                ":s": {"S": "settled"},
                ":f": {"S": "refunded"},
            },
            ConsistentRead=True,
        )
        closed = sorted(
            (i for page in pages for i in page["Items"]),
            key=lambda i: (int(i["settled_at"]["N"]), i["sk"]["S"]),
        )
        records = []
        for item in closed:
            if (item["pk"]["S"], item["sk"]["S"]) in self._seen:
                continue
            self._seen.add((item["pk"]["S"], item["sk"]["S"]))
            self._sequence += 1
            old = {**item, "state": {"S": "reserved"}}
            records.append(
                {
                    "eventName": "MODIFY",
                    "dynamodb": {"OldImage": old, "NewImage": item, "SequenceNumber": str(self._sequence)},
                }
            )
        if records:
            assert UsageCounters(self._db, self._table).apply(records).retry_from is None

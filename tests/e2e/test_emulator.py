"""The dev stack's emulator over HTTP, as `make serve` runs it: concurrent transactions never overdraw, and
every one is all or nothing (emulator.py: one request at a time, item snapshots for rollback)."""

import threading
import uuid

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from imagegate.aws import AWSClients
from imagegate.config import Settings
from imagegate.local.devserver import provision

THREADS = 8
ATTEMPTS = 8  # each: 64 in all
BALANCE = 25


@pytest.fixture
def table(aws_env, moto_endpoint):
    suffix = uuid.uuid4().hex[:12]
    settings = Settings(table=f"emu-{suffix}", bucket=f"emu-{suffix}", region="us-east-1")
    provision(AWSClients(settings, moto_endpoint), settings)
    return settings.table


def test_concurrent_transactions_never_overdraw_and_apply_whole(table, moto_endpoint):
    config = Config(max_pool_connections=THREADS, retries={"max_attempts": 1})
    db = boto3.client("dynamodb", endpoint_url=moto_endpoint, region_name="us-east-1", config=config)
    account = {"pk": {"S": "ACCOUNT#a"}, "sk": {"S": "ACCOUNT"}}
    counter = {"pk": {"S": "USAGE#a"}, "sk": {"S": "COUNT"}}
    db.put_item(TableName=table, Item={**account, "balance": {"N": str(BALANCE)}})
    outcomes: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        for i in range(ATTEMPTS):
            try:
                db.transact_write_items(
                    TransactItems=[
                        {
                            "Update": {
                                "TableName": table,
                                "Key": account,
                                "UpdateExpression": "SET balance = balance - :one",
                                "ConditionExpression": "balance >= :one",
                                "ExpressionAttributeValues": {":one": {"N": "1"}},
                            }
                        },
                        {
                            "Put": {
                                "TableName": table,
                                "Item": {"pk": {"S": "ACCOUNT#a"}, "sk": {"S": f"LEDGER#{n}-{i}"}},
                                "ConditionExpression": "attribute_not_exists(pk)",
                            }
                        },
                        {
                            "Update": {
                                "TableName": table,
                                "Key": counter,
                                "UpdateExpression": "ADD spent :one",
                                "ExpressionAttributeValues": {":one": {"N": "1"}},
                            }
                        },
                    ]
                )
                outcome = "ok"
            except ClientError as exc:
                outcome = exc.response["Error"]["Code"]
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert outcomes.count("ok") == BALANCE
    assert set(outcomes) == {"ok", "TransactionCanceledException"}
    get = lambda key: db.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]  # noqa: E731
    assert get(account)["balance"] == {"N": "0"}
    assert get(counter)["spent"] == {"N": str(BALANCE)}
    ledger = db.query(
        TableName=table,
        KeyConditionExpression="pk = :pk AND begins_with(sk, :ledger)",
        ExpressionAttributeValues={":pk": {"S": "ACCOUNT#a"}, ":ledger": {"S": "LEDGER#"}},
    )["Items"]
    assert len(ledger) == BALANCE

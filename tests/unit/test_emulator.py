"""The dev stack's emulator (emulator.py): transactions that snapshot only the items they name are still all
or nothing, and outputs are deleted by age and by a memory cap.

These run moto in this process with the patches installed for one test at a time (monkeypatch puts moto's
own methods back), and forbid the whole-table copy the patch exists to avoid.
"""

import pytest
from botocore.exceptions import ClientError
from moto.dynamodb.comparisons import ConditionExpressionParser
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.table import Table
from moto.s3.models import S3Backend

from imagegate.local.emulator import OutputLifecycle, install_expression_caches, install_transaction_snapshots


@pytest.fixture
def snapshots(monkeypatch):
    monkeypatch.setattr(DynamoDBBackend, "transact_write_items", DynamoDBBackend.transact_write_items)
    install_transaction_snapshots()

    def no_whole_table_copies(self, memo):
        raise AssertionError("a transaction copied a whole table")

    monkeypatch.setattr(Table, "__deepcopy__", no_whole_table_copies, raising=False)


def key(pk, sk):
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def update(table, k, expression, condition=None, **values):
    op = {
        "TableName": table,
        "Key": k,
        "UpdateExpression": expression,
        "ExpressionAttributeValues": {f":{n}": v for n, v in values.items()},
    }
    if condition:
        op["ConditionExpression"] = condition
    return {"Update": op}


def put(table, k, **attrs):
    item = {**k, **attrs}
    return {"Put": {"TableName": table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}}


def everything(db, table):
    return sorted(
        (sorted((n, repr(v)) for n, v in item.items()) for item in db.scan(TableName=table)["Items"]),
        key=repr,
    )


@pytest.fixture
def seeded(aws, settings):
    db, table = aws.dynamodb, settings.table
    db.put_item(TableName=table, Item={**key("ACCOUNT#a", "ACCOUNT"), "balance": {"N": "100"}})
    db.put_item(TableName=table, Item={**key("KEY#k", "KEY"), "used": {"N": "1"}})
    return db, table


def spend(table, amount):
    return update(
        table,
        key("ACCOUNT#a", "ACCOUNT"),
        "SET balance = balance - :amount",
        "balance >= :amount",
        amount={"N": str(amount)},
    )


def test_a_transaction_that_succeeds_applies_every_action(snapshots, seeded):
    db, table = seeded
    db.transact_write_items(
        TransactItems=[
            spend(table, 30),
            put(table, key("ACCOUNT#a", "REQUEST#1"), state={"S": "reserved"}),
            update(table, key("KEY#k", "KEY"), "ADD used :one", one={"N": "1"}),
        ]
    )
    get = lambda k: db.get_item(TableName=table, Key=k).get("Item")  # noqa: E731
    assert get(key("ACCOUNT#a", "ACCOUNT"))["balance"] == {"N": "70"}
    assert get(key("ACCOUNT#a", "REQUEST#1"))["state"] == {"S": "reserved"}
    assert get(key("KEY#k", "KEY"))["used"] == {"N": "2"}


def test_a_cancelled_transaction_changes_nothing_and_says_which_condition_failed(snapshots, seeded, aws):
    db, table = seeded
    before = everything(db, table)
    with pytest.raises(ClientError) as caught:
        db.transact_write_items(
            TransactItems=[
                spend(table, 30),  # passes, and moto applies it before it meets the failing action
                put(table, key("ACCOUNT#a", "REQUEST#1"), state={"S": "reserved"}),
                put(table, key("LEDGER#new", "1"), amount={"N": "-30"}),  # a new partition
                update(table, key("KEY#k", "KEY"), "ADD used :one", one={"N": "1"}),
                {
                    "ConditionCheck": {
                        "TableName": table,
                        "Key": key("ACCOUNT#a", "SLOT"),
                        "ConditionExpression": "attribute_exists(pk)",
                    }
                },
            ]
        )
    assert caught.value.response["Error"]["Code"] == "TransactionCanceledException"
    reasons = [r["Code"] for r in caught.value.response["CancellationReasons"]]
    assert reasons == ["None", "None", "None", "None", "ConditionalCheckFailed"]
    assert everything(db, table) == before
    # Nothing left behind where no scan looks either: no empty partition for the new item's key.
    backend_table = _backend_table(table)
    assert {h.value for h in backend_table.items} == {"ACCOUNT#a", "KEY#k"}


def test_an_invalid_transaction_applied_halfway_by_moto_is_rolled_back(snapshots, seeded):
    db, table = seeded
    before = everything(db, table)
    with pytest.raises(ClientError) as caught:
        db.transact_write_items(TransactItems=[spend(table, 30), spend(table, 30)])  # the same item twice
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert everything(db, table) == before


def test_a_condition_that_fails_leaves_the_balance_and_a_later_transaction_sees_it(snapshots, seeded):
    db, table = seeded
    for amount, ok in ((60, True), (60, False), (40, True), (1, False)):
        try:
            db.transact_write_items(TransactItems=[spend(table, amount)])
            assert ok
        except ClientError as exc:
            assert not ok, exc
    item = db.get_item(TableName=table, Key=key("ACCOUNT#a", "ACCOUNT"))["Item"]
    assert item["balance"] == {"N": "0"}


def test_a_transaction_rolled_back_leaves_nothing_in_the_tables_stream(snapshots, seeded):
    """The usage counters follow the stream (money/usage.py): a record of a change that was rolled back
    would count a request that never closed."""
    db, table = seeded
    stream = _backend_table(table).stream_shard
    before = len(stream.items)
    with pytest.raises(ClientError):
        db.transact_write_items(TransactItems=[spend(table, 30), spend(table, 30)])  # applied halfway
    assert len(stream.items) == before
    db.transact_write_items(TransactItems=[spend(table, 30)])
    assert len(stream.items) == before + 1


def _backend_table(name):
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends["123456789012"]["us-east-1"].tables[name]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def lifecycle(monkeypatch):
    monkeypatch.setattr(S3Backend, "put_object", S3Backend.put_object)
    clock = Clock()
    watcher = OutputLifecycle(max_age_s=3600, max_bytes=25, clock=clock)
    watcher.install()
    return watcher, clock


def keys_in(s3, bucket):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_outputs_past_the_memory_cap_go_oldest_first_and_nothing_else_is_touched(lifecycle, aws, settings):
    watcher, clock = lifecycle
    s3, bucket = aws.s3, settings.bucket
    s3.put_object(Bucket=bucket, Key="config/keep", Body=b"x" * 100)  # not an output: never deleted
    for i in range(3):
        clock.now += 1
        s3.put_object(Bucket=bucket, Key=f"outputs/a/{i}.png", Body=b"x" * 10)
    assert keys_in(s3, bucket) == ["config/keep", "outputs/a/1.png", "outputs/a/2.png"]
    assert (watcher.kept, watcher.deleted) == (20, 1)


def test_outputs_older_than_their_urls_are_deleted(lifecycle, aws, settings):
    _, clock = lifecycle
    s3, bucket = aws.s3, settings.bucket
    s3.put_object(Bucket=bucket, Key="outputs/a/old.png", Body=b"x")
    clock.now += 3600
    s3.put_object(Bucket=bucket, Key="outputs/a/hour.png", Body=b"x")
    assert keys_in(s3, bucket) == ["outputs/a/hour.png", "outputs/a/old.png"]  # exactly an hour: kept
    clock.now += 1
    s3.put_object(Bucket=bucket, Key="outputs/a/new.png", Body=b"x")
    assert keys_in(s3, bucket) == ["outputs/a/hour.png", "outputs/a/new.png"]


@pytest.fixture
def expression_caches(monkeypatch):
    monkeypatch.setattr(
        ConditionExpressionParser,
        "_lex_condition_expression",
        ConditionExpressionParser._lex_condition_expression,
    )
    install_expression_caches()


def test_a_cached_condition_is_judged_by_each_requests_own_values(expression_caches, snapshots, seeded):
    """The tokens of `balance >= :amount` are kept; its value is the request's, every time."""
    db, table = seeded
    db.transact_write_items(TransactItems=[spend(table, 60)])
    with pytest.raises(ClientError, match="ConditionalCheckFailed"):
        db.transact_write_items(TransactItems=[spend(table, 60)])  # the same text: 40 left, not 60
    db.transact_write_items(TransactItems=[spend(table, 40)])
    item = db.get_item(TableName=table, Key=key("ACCOUNT#a", "ACCOUNT"))["Item"]
    assert item["balance"] == {"N": "0"}

"""Issue 22: usage counters leave the request path. The usage function folds the table's stream into the
counters (money/usage.py), one UpdateItem per counter per batch, exactly once under Lambda's at-least-once
delivery: on moto and on Dynoxide (the `make serve` DynamoDB), wherever `make install` put it."""

import itertools
import os
from datetime import UTC, date, datetime

import pytest
from aws_lambda_powertools.logging import Logger
from botocore.exceptions import ClientError
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from imagegate.aws import AWSClients
from imagegate.config import Settings
from imagegate.http.lambda_app import stream_batch
from imagegate.local.devserver import dynoxide_binary, provision_table, start_dynoxide
from imagegate.local.streams import LocalStream
from imagegate.money import ledger
from imagegate.money.usage import Counter, UsageCounters, by_counter, closing, fold, watermark_name

from .conftest import Counting

DAY = date(2026, 3, 14)
NOON = datetime(2026, 3, 14, 12, tzinfo=UTC).timestamp()


def record(
    seq,
    *,
    account="acct_a",
    source=None,
    request=None,
    key="key_a",
    model="dall-e-2",
    state="settled",
    old="reserved",
    images=1,
    charged=16_000,
    refunded=4_000,
    settled_at=NOON,
    event="MODIFY",
    account_id=True,
):
    """A stream record of a REQUEST item's move, as Lambda hands it over (the lead's layout by default)."""
    new = {
        "pk": {"S": source or f"REQUESTS#{account}#0"},
        "sk": {"S": f"REQUEST#{request or f'req_{seq}'}"},
        "key_id": {"S": key},
        "model": {"S": model},
        "state": {"S": state},
        "images": {"N": str(images)},
        "charged": {"N": str(charged)},
        "refunded": {"N": str(refunded)},
        "settled_at": {"N": str(int(settled_at))},
    }
    if account_id:
        new["account_id"] = {"S": account}
    return {
        "eventName": event,
        "eventSource": "aws:dynamodb",
        "dynamodb": {
            "SequenceNumber": str(seq),
            "Keys": {"pk": new["pk"], "sk": new["sk"]},
            "NewImage": new,
            "OldImage": {**new, "state": {"S": old}},
        },
    }


@pytest.fixture(scope="module")
def dynoxide_endpoint():
    binary = dynoxide_binary(os.environ)
    if binary is None:
        pytest.skip("Dynoxide is not installed here (make install says why)")
    server = start_dynoxide(binary, 0)
    yield server.endpoint
    server.stop()


@pytest.fixture(params=["moto", "dynoxide"])
def emulated(request, aws_clients, settings):
    """AWS clients on moto (in process) or on Dynoxide (over HTTP), with this test's table."""
    if request.param == "moto":
        clients = aws_clients
    else:
        endpoint = request.getfixturevalue("dynoxide_endpoint")
        clients = AWSClients(Settings(region="us-east-1"), endpoints={"dynamodb": endpoint})
    provision_table(clients.dynamodb, settings.table)
    return clients


@pytest.fixture
def db(emulated):
    return emulated.dynamodb


def counts(db, table, account="acct_a", day=DAY, key="key_a", model="dall-e-2"):
    item = db.get_item(TableName=table, Key=ledger.usage_key(account, day, key, model), ConsistentRead=True)
    item = item.get("Item", {})
    return tuple(int(item[n]["N"]) if n in item else 0 for n in ledger.USAGE_COUNTS)


# --- the fold ------------------------------------------------------------------------------------------


def test_only_a_request_leaving_reserved_that_carries_its_account_counts():
    assert closing(record(1)) is not None
    assert closing(record(1, event="INSERT")) is None
    assert closing(record(1, old="settled", state="refunded")) is None  # not a move from reserved
    assert closing(record(1, state="reserved")) is None
    # Before REQUEST items moved off the account partition they carried no account_id, and their settle
    # still counts its usage itself: counting them here too would count them twice.
    assert closing(record(1, source="ACCOUNT#acct_a", account_id=False)) is None
    job = record(1)
    job["dynamodb"]["NewImage"]["sk"] = {"S": "JOB#job_1"}
    assert closing(job) is None


def test_a_closing_is_counted_on_its_settles_utc_day_under_its_key_and_model():
    late = datetime(2026, 3, 14, 23, 59, 59, tzinfo=UTC).timestamp()
    c = closing(record(7, settled_at=late + 1, key="", model="", state="refunded", charged=0, refunded=5))
    assert c.counter == Counter("acct_a", date(2026, 3, 15), "-", "-")
    assert (c.source, c.sequence, c.images, c.charged, c.refunded) == ("REQUESTS#acct_a#0", "7", 1, 0, 5)


def test_the_fold_adds_only_what_is_above_each_partitions_watermark():
    closings = [closing(record(s, source=f"REQUESTS#acct_a#{s % 2}")) for s in (1, 2, 3, 4, 5)]
    delta = fold(closings, {"REQUESTS#acct_a#1": 3})  # 1 and 3 counted from partition 1
    assert (delta.requests, delta.images, delta.charged, delta.refunded) == (3, 3, 48_000, 12_000)
    assert delta.watermarks == {"REQUESTS#acct_a#0": (2, 4), "REQUESTS#acct_a#1": (5, 5)}
    assert fold(closings, {"REQUESTS#acct_a#0": 4, "REQUESTS#acct_a#1": 5}) is None


def test_records_group_by_counter_in_stream_order():
    groups = by_counter(closing(r) for r in [record(3, model="gpt-image-1"), record(2), record(1)])
    assert [[c.sequence for c in g] for g in groups.values()] == [["1", "2"], ["3"]]


# --- the writes ----------------------------------------------------------------------------------------


def test_a_batch_writes_each_counter_once_in_the_ledgers_shape(db, settings):
    counting = Counting(db)
    batch = [record(s, images=2) for s in range(1, 101)] + [record(101, model="gpt-image-1")]
    applied = UsageCounters(counting, settings.table).apply(batch)
    assert (applied.counted, applied.writes, applied.retry_from) == (101, 2, None)
    assert counting.calls == {"update_item": 2}  # one UpdateItem per counter, not per request; no read
    assert counts(db, settings.table) == (100, 200, 1_600_000, 400_000)
    # ledger.usage reads them as it reads what a settle wrote: same item, same TTL.
    rows = ledger.usage(db, settings.table, days=1, account_id="acct_a", today=DAY)
    assert {(r.day, r.key_id, r.model): r.requests for r in rows} == {
        ("2026-03-14", "key_a", "dall-e-2"): 100,
        ("2026-03-14", "key_a", "gpt-image-1"): 1,
    }
    item = db.get_item(TableName=settings.table, Key=ledger.usage_key("acct_a", DAY, "key_a", "dall-e-2"))
    assert int(item["Item"]["expires_at"]["N"]) == int(datetime(2027, 4, 18, tzinfo=UTC).timestamp())


def test_a_batch_delivered_again_counts_nothing_twice_even_when_longer(db, settings):
    counters = UsageCounters(db, settings.table)
    first = [record(s, source=f"REQUESTS#acct_a#{s % 3}") for s in range(1, 11)]
    assert counters.apply(first).counted == 10
    counting = Counting(db)
    again = UsageCounters(counting, settings.table).apply([*first, record(11), record(12)])
    assert (again.counted, again.retry_from) == (2, None)
    # The duplicate costs one refused write and one consistent read, then the write of what is new.
    assert counting.calls == {"update_item": 2, "get_item": 1}
    assert UsageCounters(db, settings.table).apply(first).counted == 0
    assert counts(db, settings.table) == (12, 12, 12 * 16_000, 12 * 4_000)


class Throttled:
    """The table's client, refusing the UpdateItems of one model's counter as DynamoDB throttles."""

    def __init__(self, client, model):
        self._client, self.model, self.exceptions = client, model, client.exceptions

    def update_item(self, **kwargs):
        if kwargs["Key"]["sk"]["S"].endswith(f"#{self.model}"):
            error = {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}
            raise ClientError(error, "UpdateItem")
        return self._client.update_item(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_a_counter_that_cannot_be_written_brings_the_batch_back_from_its_first_record(db, settings):
    batch = [record(1), record(2, model="gpt-image-1"), record(3), record(4, model="gpt-image-1")]
    applied = UsageCounters(Throttled(db, "gpt-image-1"), settings.table).apply(batch)
    assert (applied.counted, applied.retry_from) == (2, "2")
    assert "ThrottlingException" in applied.errors[0]
    # Lambda delivers the batch again from sequence 2: the dall-e-2 counter skips what it has.
    assert UsageCounters(db, settings.table).apply(batch[1:]).counted == 2
    assert counts(db, settings.table) == (2, 2, 32_000, 8_000)
    assert counts(db, settings.table, model="gpt-image-1") == (2, 2, 32_000, 8_000)


def test_watermarks_are_strings_that_order_as_numbers(db, settings):
    counters = UsageCounters(db, settings.table)
    big = 10**39 + 5  # longer than a DynamoDB number holds
    assert counters.apply([record(9), record(big)]).counted == 2
    assert counters.apply([record(10), record(big)]).counted == 0  # 10 < 10**39 + 5, though "10" > "1..."
    item = db.get_item(TableName=settings.table, Key=ledger.usage_key("acct_a", DAY, "key_a", "dall-e-2"))
    assert item["Item"][watermark_name("REQUESTS#acct_a#0")] == {"S": str(big).zfill(40)}


# --- the local stream (make serve) ----------------------------------------------------------------------


def settle_through_the_table(db, table, request_id, *, account_id=True, charged=16_000):
    """A REQUEST item reserved, then closed by a conditional update, as billing's settle moves it."""
    pk = "REQUESTS#acct_a#3" if account_id else "ACCOUNT#acct_a"
    item = {
        "pk": {"S": pk},
        "sk": {"S": f"REQUEST#{request_id}"},
        "key_id": {"S": "key_a"},
        "model": {"S": "dall-e-2"},
        "state": {"S": "reserved"},
        **({"account_id": {"S": "acct_a"}} if account_id else {}),
    }
    db.put_item(TableName=table, Item=item)
    db.update_item(
        TableName=table,
        Key={"pk": item["pk"], "sk": item["sk"]},
        UpdateExpression="SET #s = :closed, images = :one, charged = :c, refunded = :r, settled_at = :at",
        ConditionExpression="#s = :reserved",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={
            ":closed": {"S": "settled"},
            ":reserved": {"S": "reserved"},
            ":one": {"N": "1"},
            ":c": {"N": str(charged)},
            ":r": {"N": "4000"},
            ":at": {"N": str(int(NOON))},
        },
    )


def local_stream(emulated, table, handler=None):
    if emulated.dynamodb.meta.endpoint_url.endswith("amazonaws.com"):
        # moto 5.2.5 in process answers DescribeStream with a 404; its server (the e2e stack's, without
        # Dynoxide) answers it, and tests/e2e drains through it.
        pytest.skip("moto's in-process DynamoDB Streams cannot describe a stream")
    handler = handler or stream_batch(emulated, table, Logger(service="imagegate-test", level="ERROR"))
    return LocalStream(handler, emulated.dynamodb, emulated.client("dynamodbstreams"), table)


def test_a_drain_counts_what_the_stream_carries_once_and_only_new_items(emulated, db, settings):
    stream = local_stream(emulated, settings.table)
    settle_through_the_table(db, settings.table, "req_1")
    settle_through_the_table(db, settings.table, "req_old", account_id=False)  # its settle counts it itself
    # Two puts, two closes and the counter's own write (a record too, which the drain reads to the end).
    assert stream.drain() == 5
    assert counts(db, settings.table) == (1, 1, 16_000, 4_000)
    assert stream.drain() == 0
    settle_through_the_table(db, settings.table, "req_2", charged=2)
    assert stream.drain() == 3
    assert counts(db, settings.table) == (2, 2, 16_002, 8_000)


def test_a_failed_batch_is_read_again_from_its_failed_record_by_the_next_drain(emulated, db, settings):
    real = stream_batch(emulated, settings.table, Logger(service="imagegate-test", level="ERROR"))
    throttled = stream_batch(
        Throttling(emulated), settings.table, Logger(service="imagegate-test", level="CRITICAL")
    )
    handlers = [throttled, real]
    stream = local_stream(emulated, settings.table, lambda event, ctx: handlers[0](event, ctx))
    settle_through_the_table(db, settings.table, "req_1")
    assert stream.drain() == 1  # the put; the close's counter was throttled
    assert counts(db, settings.table) == (0, 0, 0, 0)
    handlers.pop(0)
    assert stream.drain() == 2  # the close, and the counter's write
    assert counts(db, settings.table) == (1, 1, 16_000, 4_000)


class Throttling:
    """AWS clients whose DynamoDB throttles every counter write."""

    def __init__(self, clients):
        self.dynamodb = Throttled(clients.dynamodb, "dall-e-2")


# --- exactly once, whatever the delivery ------------------------------------------------------------------

TABLES = itertools.count()
SOURCES = [f"REQUESTS#acct_{a}#{n}" for a in "ab" for n in range(3)]


@st.composite
def streams(draw):
    """Closed requests of two accounts over six partitions, on two shards, with records that are not
    closings in between: each shard's records in SequenceNumber order."""
    base = draw(st.sampled_from([1, 10**20, 10**39]))
    shards = {0: [], 1: []}
    for seq in range(base, base + draw(st.integers(1, 30))):
        source = draw(st.sampled_from(SOURCES))
        account = source.split("#")[1]
        rec = record(
            seq,
            account=account,
            source=source,
            model=draw(st.sampled_from(["dall-e-2", "gpt-image-1"])),
            settled_at=NOON + draw(st.sampled_from([0, 86_400])),
            images=draw(st.integers(0, 4)),
            charged=draw(st.integers(0, 50_000)),
            refunded=draw(st.integers(0, 50_000)),
            state=draw(st.sampled_from(["settled", "refunded"])),
            event=draw(st.sampled_from(["MODIFY"] * 5 + ["INSERT"])),
        )
        shards[SOURCES.index(source) % 2].append(rec)
    return shards


class Interleaving:
    """The table's client, where a concurrent invocation may write between a counter's read and its write:
    `before_write()` is called before each UpdateItem."""

    def __init__(self, client, before_write):
        self._client, self.before_write, self.exceptions = client, before_write, client.exceptions

    def update_item(self, **kwargs):
        self.before_write()
        return self._client.update_item(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


@hsettings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(shards=streams(), data=st.data())
def test_counters_equal_the_sum_of_distinct_closings_under_any_delivery(db, settings, shards, data):
    table = f"{settings.table}-{next(TABLES)}"
    provision_table(db, table)
    checkpoints = dict.fromkeys(shards, 0)
    nested = False

    def invoke(shard, size, *, fail=None, crash=False, client=None):
        """One Lambda invocation on `shard` from its checkpoint: `fail` throttles one model's counter,
        `crash` dies after writing (the same records come again); else the checkpoint moves as Lambda's."""
        batch = shards[shard][checkpoints[shard] : checkpoints[shard] + size]
        target = client or db
        applied = UsageCounters(Throttled(target, fail) if fail else target, table).apply(batch)
        if crash:
            return
        if applied.retry_from is None:
            checkpoints[shard] += len(batch)
        else:
            sequences = [r["dynamodb"]["SequenceNumber"] for r in shards[shard]]
            checkpoints[shard] = sequences.index(applied.retry_from)

    def concurrently():
        """Before a write: maybe a zombie of the same batches, or another shard's invocation, runs."""
        nonlocal nested
        if nested:
            return
        nested = True
        shard = data.draw(st.sampled_from([None, *shards]), label="concurrent")
        if shard is not None:
            invoke(shard, data.draw(st.integers(1, 8), label="size"), crash=True)
        nested = False

    interleaved = Interleaving(db, concurrently)
    for _ in range(data.draw(st.integers(0, 12), label="steps")):
        shard = data.draw(st.sampled_from(list(shards)), label="shard")
        invoke(
            shard,
            data.draw(st.integers(1, 8), label="size"),
            fail=data.draw(st.sampled_from([None, None, "dall-e-2", "gpt-image-1"]), label="fail"),
            crash=data.draw(st.booleans(), label="crash"),
            client=interleaved,
        )
    for shard in shards:  # then the stream is read to its end, with no failure left to retry
        invoke(shard, 100)
        assert checkpoints[shard] == len(shards[shard])

    expected: dict[Counter, list[int]] = {}
    for rec in (r for records in shards.values() for r in records):
        if (c := closing(rec)) is not None:
            sums = expected.setdefault(c.counter, [0, 0, 0, 0])
            for i, value in enumerate((1, c.images, c.charged, c.refunded)):
                sums[i] += value
    got = {
        counter: list(counts(db, table, counter.account_id, counter.day, counter.key_id, counter.model))
        for counter in expected
    }
    assert got == expected
    rows = [
        row
        for account in ("acct_a", "acct_b")
        for row in ledger.usage(db, table, days=2, account_id=account, today=date(2026, 3, 15))
    ]
    assert sum(r.requests for r in rows) == sum(v[0] for v in expected.values())


# --- reconcile's usage check ------------------------------------------------------------------------------

LAG = 690
KEPT_S = 35 * 86_400


def closed_request(seq, settled_at, state="settled"):
    """A closed REQUEST item as reconcile reads it, and the stream record of its close."""
    rec = record(seq, settled_at=settled_at, state=state, charged=16_000 if state == "settled" else 0)
    item = {**rec["dynamodb"]["NewImage"], "expires_at": {"N": str(int(settled_at) + KEPT_S)}}
    return item, rec


def usage_problems(aws, settings, items, now):
    requests = {i["sk"]["S"].removeprefix("REQUEST#"): i for i in items}
    return ledger._usage_problems(aws.dynamodb, settings.table, "acct_a", requests, now, LAG)


def test_counters_may_lag_a_recent_settle_but_not_one_older_than_the_lag(aws, settings):
    now = NOON + 3600
    old, old_record = closed_request(1, now - LAG - 1)
    recent, _ = closed_request(2, now - LAG + 60, state="refunded")
    counters = UsageCounters(aws.dynamodb, settings.table)
    assert usage_problems(aws, settings, [old, recent], now) == [
        "usage of 2026-03-14 counts 0 requests, 0 images, charged $0.000000, refunded $0.000000: less than "
        "the requests closed more than 690 s ago (1 requests, 1 images, charged $0.016000, refunded "
        "$0.004000)"
    ]
    counters.apply([old_record])
    assert usage_problems(aws, settings, [old, recent], now) == []  # the recent one may still come


def test_counters_never_count_more_than_the_requests_closed_that_day(aws, settings):
    now = NOON + 3600
    item, rec = closed_request(1, now - 10)
    UsageCounters(aws.dynamodb, settings.table).apply([rec])
    assert usage_problems(aws, settings, [item], now) == []
    # The same settle counted a second time (as a settle writing its usage itself would, next to the stream).
    UsageCounters(aws.dynamodb, settings.table).apply([record(2, request="req_1")])
    assert usage_problems(aws, settings, [item], now) == [
        "usage of 2026-03-14 counts 2 requests, 2 images, charged $0.032000, refunded $0.008000: more than "
        "every request closed that day (1 requests, 1 images, charged $0.016000, refunded $0.004000)"
    ]


def test_days_whose_requests_expired_are_held_only_to_what_is_left(aws, settings):
    long_ago, _ = closed_request(1, NOON)
    _, expired = closed_request(2, NOON)
    UsageCounters(aws.dynamodb, settings.table).apply([record(1), expired])
    later = NOON + KEPT_S + 86_400  # request 2 expired and was deleted; its day is still counted
    assert usage_problems(aws, settings, [long_ago], later) == []
    assert usage_problems(aws, settings, [long_ago], NOON + 3600) != []  # the same counters, while kept


def test_a_record_that_cannot_be_counted_is_skipped_not_the_batch(aws, settings):
    """Review: one malformed record (an `images` of "1.5", a close without `settled_at`) failed the whole
    batch, stalling the shard for the stream's retries, and then every record in it went uncounted."""
    bad_images, good, no_day = record(1, request="req_x"), record(2), record(3, request="req_y")
    bad_images["dynamodb"]["NewImage"]["images"] = {"N": "1.5"}
    del no_day["dynamodb"]["NewImage"]["settled_at"]
    applied = UsageCounters(aws.dynamodb, settings.table).apply([bad_images, good, no_day])
    assert (applied.counted, applied.retry_from, len(applied.errors)) == (1, None, 2)

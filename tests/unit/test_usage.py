"""Usage counters: how many DynamoDB calls a usage window costs, and where the counters live."""

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import pytest
from aws_lambda_powertools.logging import Logger
from shims import ByAccount

from imagegate.money import accounts as accounts_module
from imagegate.money import ledger
from imagegate.money.accounts import Account
from imagegate.money.billing import Billing
from imagegate.service import Service

from .conftest import Clock

TODAY = date(2026, 3, 14)
NOON = datetime(2026, 3, 14, 12, tzinfo=UTC).timestamp()


class Counting:
    """The DynamoDB client, counting the calls made through it by operation name."""

    def __init__(self, client):
        self._client = client
        self.calls = Counter()

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr) or name.startswith("_") or name in ("meta", "exceptions"):
            return attr

        def call(*args, **kwargs):
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return call


def settle_daily(aws, settings, account_id, days, models=("dall-e-2",), key_id="key_a", today=TODAY):
    """Counters of one settled request per model on each of the `days` UTC days ending TODAY: the items
    billing's settle makes with `ledger.usage_update`, written 25 at a time (a settle takes ~0.3 s in
    moto)."""
    puts = []
    for back in range(days):
        for model in models:
            update = ledger.usage_update(
                settings.table,
                today - timedelta(days=back),
                account_id,
                key_id,
                model,
                images=1,
                charged=20_000,
                refunded=0,
            )["Update"]
            values = update["ExpressionAttributeValues"]
            item = {
                name: values[f":{name}"] for name in ("images", "charged", "refunded", "model", "expires")
            }
            item |= {"requests": values[":requests"], "account_id": values[":account"]}
            item["key_id"] = values[":key"]
            item["expires_at"] = item.pop("expires")
            puts.append({"PutRequest": {"Item": {**update["Key"], **item}}})
    for start in range(0, len(puts), 25):
        aws.dynamodb.batch_write_item(RequestItems={settings.table: puts[start : start + 25]})


def test_one_accounts_usage_over_90_days_is_one_query(aws, settings, accounts):
    account_id = accounts.create_account(10_000_000)
    other = accounts.create_account(10_000_000)
    settle_daily(aws, settings, account_id, 90, models=("dall-e-2", "gpt-image-1"))
    settle_daily(aws, settings, other, 3)
    db = Counting(aws.dynamodb)
    rows = ledger.usage(db, settings.table, days=90, account_id=account_id, today=TODAY)
    assert db.calls == {"query": 1}
    assert len(rows) == 180 and {r.account_id for r in rows} == {account_id}
    days = [r.day for r in rows]
    assert days == sorted(days, reverse=True)  # newest first
    assert days[0] == "2026-03-14" and days[-1] == (TODAY - timedelta(days=89)).isoformat()


def test_the_balance_endpoints_90_days_are_one_get_and_one_query(aws, settings, accounts):
    account_id = accounts.create_account(10_000_000)
    # The endpoint's window ends today by the wall clock: counters from 100 days back to tomorrow, so that
    # any 90-day window ending today (or a day either side, past midnight) holds 90 days of them.
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    settle_daily(aws, settings, account_id, 102, models=("dall-e-2", "gpt-image-1"), today=tomorrow)
    db = Counting(aws.dynamodb)
    service = Service(settings, SimpleNamespace(dynamodb=db), logger=Logger(service="imagegate-test"))
    body = service.balance(Account(account_id, "key_a"), days=90)
    assert db.calls == {"get_item": 1, "query": 1}
    assert body["balance_micros"] == 10_000_000
    assert len(body["usage"]["data"]) == 90 * 2  # one row per day and model


def test_the_window_is_exact_at_both_ends(aws, settings, accounts):
    account_id = accounts.create_account(10_000_000)
    settle_daily(aws, settings, account_id, 5)
    rows = ledger.usage(aws.dynamodb, settings.table, days=3, account_id=account_id, today=TODAY)
    assert [r.day for r in rows] == ["2026-03-14", "2026-03-13", "2026-03-12"]
    yesterday = TODAY - timedelta(days=1)
    rows = ledger.usage(aws.dynamodb, settings.table, days=1, account_id=account_id, today=yesterday)
    assert [r.day for r in rows] == ["2026-03-13"]


def test_every_accounts_usage_costs_one_query_per_account_whatever_the_window(aws, settings, accounts):
    ids = [accounts.create_account(10_000_000) for _ in range(3)]
    for account_id in ids:
        settle_daily(aws, settings, account_id, 4)
    for days in (1, 90, 366):
        db = Counting(aws.dynamodb)
        rows = ledger.usage(db, settings.table, days=days, today=TODAY)
        # the accounts index, then one Query per account: the cost follows the accounts, not the days
        assert db.calls == {"query": 1 + len(ids)}
        assert Counter(r.account_id for r in rows) == dict.fromkeys(ids, min(days, 4))


def test_a_closed_request_counts_in_the_accounts_usage_partition_with_a_ttl(aws, settings, accounts, stream):
    """Through the table's stream (money/usage.py), not by the settle."""
    account_id = accounts.create_account(10_000_000)
    billing = ByAccount(Billing(aws.dynamodb, settings.table, clock=Clock(NOON)))
    billing.reserve(
        account_id, "req_1", 30_000, {"model": "dall-e-2", "endpoint": "edits", "key_id": "key_a"}
    )
    billing.settle(account_id, "req_1", 20_000, images=1)
    stream.drain()
    item = aws.dynamodb.get_item(
        TableName=settings.table,
        Key={"pk": {"S": f"USAGE#{account_id}"}, "sk": {"S": "2026-03-14#key_a#dall-e-2"}},
    )["Item"]
    counts = [item[n]["N"] for n in ("requests", "images", "charged", "refunded")]
    assert counts == ["1", "1", "20000", "10000"]
    assert int(item["expires_at"]["N"]) == int(datetime(2027, 4, 18, tzinfo=UTC).timestamp())


def test_the_ledger_reads_the_same_accounts_index_accounts_writes():
    assert ledger.ACCOUNT_INDEX == accounts_module.ACCOUNT_INDEX


@pytest.mark.parametrize("days", [0, -1, 367, 99_999])
def test_a_window_outside_one_to_366_days_is_refused(aws, settings, days):
    with pytest.raises(ValueError, match="days"):
        ledger.usage(aws.dynamodb, settings.table, days=days)

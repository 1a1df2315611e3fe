"""Accounts, keys, reserve/settle/credit and their ledger entries against moto's in-process DynamoDB."""

import hashlib
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError
from shims import legacy_reserve

from imagegate.errors import APIError
from imagegate.money import ledger
from imagegate.money.accounts import Account, NotFound
from imagegate.money.billing import Billing, Reservation
from imagegate.table import item_key, request_pk

from .conftest import Clock, ConflictsFirst, Counting, Failing, OneRequestAtATime

DETAILS = {"model": "dall-e-2", "endpoint": "generations"}


def holder(accounts, balance):
    """A funded account with one key, as `authenticate` returns it for a request."""
    account_id = accounts.create_account(balance)
    api_key = accounts.create_key(account_id)
    account = accounts.authenticate(f"Bearer {api_key}")
    object.__setattr__(account, "api_key", api_key)
    return account


def reservation_of(account, rid, amount):
    return Reservation(account.account_id, rid, amount, account.key_id, account.key_pk, "dall-e-2", 0)


def request_id():
    return "req_" + uuid.uuid4().hex


def request_item(aws, settings, account_id, rid):
    return aws.dynamodb.get_item(
        TableName=settings.table,
        Key=item_key(request_pk(account_id, rid), f"REQUEST#{rid}"),
        ConsistentRead=True,
    ).get("Item")


@pytest.fixture
def funded(accounts):
    """An account with $0.10 and one active key."""
    account_id = accounts.create_account(100_000, label="unit")
    return account_id, accounts.create_key(account_id, label="unit")


# --- authentication -------------------------------------------------------------------------------------


def test_authenticate_a_valid_key(accounts, funded):
    account_id, key = funded
    account = accounts.authenticate(f"Bearer {key}")
    assert account.account_id == account_id
    assert account.key_id.startswith("key_")


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "sk-ig-abc", "Token x"]
)
def test_missing_or_non_bearer_key_is_401(accounts, header):
    with pytest.raises(APIError) as info:
        accounts.authenticate(header)
    assert (info.value.status, info.value.code) == (401, "missing_api_key")


def test_unknown_key_is_401(accounts, funded):
    with pytest.raises(APIError) as info:
        accounts.authenticate("Bearer sk-ig-this-key-was-never-issued")
    assert (info.value.status, info.value.code) == (401, "invalid_api_key")
    assert "sk-ig-this-key" not in info.value.message


def test_revoked_key_is_401(accounts, funded):
    account_id, key = funded
    other = accounts.create_key(account_id, label="second")
    key_id = accounts.authenticate(f"Bearer {key}").key_id
    assert accounts.revoke_key(key_id) is True
    with pytest.raises(APIError) as info:
        accounts.authenticate(f"Bearer {key}")
    assert (info.value.status, info.value.code) == (401, "invalid_api_key")
    # Revoking one key leaves the account's other keys working.
    assert accounts.authenticate(f"Bearer {other}").account_id == account_id


def test_revoke_unknown_key_id(accounts, funded):
    assert accounts.revoke_key("key_0000000000000000") is False


# --- keys -----------------------------------------------------------------------------------------------


def test_create_key_with_a_chosen_key(accounts):
    account_id = accounts.create_account(0)
    assert accounts.create_key(account_id, api_key="dev-key-1") == "dev-key-1"
    assert accounts.authenticate("Bearer dev-key-1").account_id == account_id


def test_list_keys_never_shows_the_key_or_its_hash(aws, settings, accounts):
    account_id = accounts.create_account(0)
    keys = [accounts.create_key(account_id, label=f"k{i}") for i in range(3)]
    listing = sorted(accounts.list_keys(), key=lambda row: row["label"])
    assert [row["label"] for row in listing] == ["k0", "k1", "k2"]
    assert all(row["status"] == "active" and row["account_id"] == account_id for row in listing)
    assert all(row["prefix"] == key[:10] + "…" for row, key in zip(listing, keys, strict=True))
    text = json.dumps(listing)
    for key in keys:
        assert key.startswith("sk-ig-") and len(key) >= 32
        assert key not in text
        assert key[10:] not in text
        assert hashlib.sha256(key.encode()).hexdigest() not in text


def test_keys_are_stored_only_as_sha256(aws, settings, accounts):
    account_id = accounts.create_account(0)
    key = accounts.create_key(account_id)
    stored = json.dumps(aws.dynamodb.scan(TableName=settings.table)["Items"])
    assert key not in stored
    assert f"KEY#{hashlib.sha256(key.encode()).hexdigest()}" in stored


def test_listing_shows_revocation(accounts):
    account_id = accounts.create_account(0)
    accounts.create_key(account_id, label="a")
    [row] = accounts.list_keys()
    accounts.revoke_key(row["key_id"])
    assert accounts.list_keys()[0]["status"] == "revoked"


def test_short_key_prefix_is_hidden(accounts):
    accounts.create_key(accounts.create_account(0), api_key="short-dev-key")
    [row] = accounts.list_keys()
    assert row["prefix"] == "(short key)"
    assert "short-dev" not in json.dumps(row)


# --- balances and credit --------------------------------------------------------------------------------


def ledger_of(aws, settings, account_id):
    return ledger.entries(aws.dynamodb, settings.table, account_id)


def assert_reconciled(aws, settings, account_id, balance):
    result = ledger.reconcile(aws.dynamodb, settings.table, account_id)
    assert (result.problems, result.balance, result.expected) == ([], balance, balance)


def test_credit_adds_and_returns_the_new_balance(aws, settings, accounts, billing):
    account_id = accounts.create_account(1_500)
    assert billing.credit(account_id, 2_500_000, reason="top-up", actor="ops@example.com") == 2_501_500
    assert accounts.balance(account_id) == 2_501_500
    credit = ledger_of(aws, settings, account_id)[-1]
    assert (credit.kind, credit.amount, credit.reason, credit.actor) == (
        "credit",
        2_500_000,
        "top-up",
        "ops@example.com",
    )


def test_credit_to_an_unknown_account_fails_and_writes_nothing(aws, settings, accounts, billing):
    with pytest.raises(NotFound, match="acct_missing"):
        billing.credit("acct_missing", 1_000, reason="top-up")
    assert accounts.balance("acct_missing") is None
    assert ledger_of(aws, settings, "acct_missing") == []


@pytest.mark.parametrize(
    ("amount", "kwargs", "message"),
    [
        (0, {"reason": "x"}, "must be positive"),
        (-5, {"reason": "x"}, "must be positive"),
        (5, {"reason": "  "}, "reason is required"),
        (0, {"reason": "x", "kind": "adjust"}, "changes nothing"),
        (5, {"reason": "x", "kind": "gift"}, "credit or an adjust"),
    ],
)
def test_refused_credits_change_nothing(aws, settings, accounts, billing, amount, kwargs, message):
    account_id = accounts.create_account(10_000)
    with pytest.raises(ValueError, match=message):
        billing.credit(account_id, amount, **kwargs)
    assert accounts.balance(account_id) == 10_000
    assert len(ledger_of(aws, settings, account_id)) == 1  # the opening credit


def test_adjust_takes_money_off_but_never_below_zero(aws, settings, accounts, billing):
    account_id = accounts.create_account(10_000)
    with pytest.raises(ValueError, match=r"-\$0\.010001 would take its balance of \$0\.010000 below zero"):
        billing.credit(account_id, -10_001, reason="refund outside imagegate", kind="adjust")
    assert accounts.balance(account_id) == 10_000
    assert billing.credit(account_id, -10_000, reason="refund outside imagegate", kind="adjust") == 0
    assert billing.credit(account_id, 2_000, reason="goodwill", kind="adjust", actor="cli") == 2_000
    kinds = [(e.kind, e.amount, e.reason) for e in ledger_of(aws, settings, account_id)]
    assert kinds == [
        ("credit", 10_000, "opening balance"),
        ("adjust", -10_000, "refund outside imagegate"),
        ("adjust", 2_000, "goodwill"),
    ]


def test_adjust_cannot_take_reserved_money(aws, settings, accounts, billing):
    account = holder(accounts, 10_000)
    billing.reserve(account, request_id(), 6_000, DETAILS)
    with pytest.raises(ValueError, match="below zero"):
        billing.credit(account.account_id, -5_000, reason="correction", kind="adjust")
    assert accounts.balance(account.account_id) == 4_000


# --- reserve and settle ---------------------------------------------------------------------------------


def test_reserve_debits_exactly(aws, settings, accounts, billing):
    account = holder(accounts, 100_000)
    rid = request_id()
    reservation = billing.reserve(account, rid, 54_000, DETAILS)
    assert (reservation.amount, reservation.request_id, reservation.model) == (54_000, rid, "dall-e-2")
    assert accounts.balance(account.account_id) == 46_000
    item = request_item(aws, settings, account.account_id, rid)
    assert (item["state"]["S"], item["reserved"]["N"], item["model"]["S"], item["key_id"]["S"]) == (
        "reserved",
        "54000",
        "dall-e-2",
        account.key_id,
    )
    # The request item is the hold: no ledger entry, and the ledger (entries and requests) adds up.
    assert item["account_id"]["S"] == account.account_id
    assert [e.kind for e in ledger_of(aws, settings, account.account_id)] == ["credit"]
    assert_reconciled(aws, settings, account.account_id, 46_000)


def test_reserve_the_whole_balance(accounts, billing):
    account = holder(accounts, 20_000)
    billing.reserve(account, request_id(), 20_000, DETAILS)
    assert accounts.balance(account.account_id) == 0


def test_insufficient_balance_is_402_and_changes_nothing(aws, settings, accounts, billing):
    account = holder(accounts, 15_000)
    rid = request_id()
    with pytest.raises(APIError) as info:
        billing.reserve(account, rid, 20_000, DETAILS)
    err = info.value
    assert (err.status, err.type, err.code) == (402, "insufficient_quota", "insufficient_balance")
    assert "$0.020000" in err.message
    assert "$0.015000" in err.message
    assert accounts.balance(account.account_id) == 15_000
    assert request_item(aws, settings, account.account_id, rid) is None
    assert billing.settle(reservation_of(account, rid, 20_000), 0) is False
    assert accounts.balance(account.account_id) == 15_000
    assert [e.kind for e in ledger_of(aws, settings, account.account_id)] == ["credit"]


def test_a_token_priced_402_says_the_amount_is_a_reservation(accounts, billing):
    account = holder(accounts, 15_000)
    with pytest.raises(APIError) as info:
        billing.reserve(account, request_id(), 133_325, DETAILS, upper_bound=True)
    assert info.value.status == 402
    assert "reserves up to $0.133325" in info.value.message
    assert "$0.015000" in info.value.message


def test_a_negative_reservation_is_refused(accounts, billing):
    account = holder(accounts, 15_000)
    with pytest.raises(ValueError, match="negative"):
        billing.reserve(account, request_id(), -1, DETAILS)
    assert accounts.balance(account.account_id) == 15_000


def test_reserve_for_a_vanished_account_is_refused_and_writes_nothing(aws, settings, billing):
    ghost = Account("acct_missing", "key_0000000000000000", "KEY#missing")
    with pytest.raises(NotFound):
        billing.reserve(ghost, request_id(), 1, DETAILS)
    assert aws.dynamodb.scan(TableName=settings.table)["Items"] == []


def test_settle_full_charge(aws, settings, accounts, billing):
    account = holder(accounts, 100_000)
    rid = request_id()
    reservation = billing.reserve(account, rid, 60_000, DETAILS)
    assert billing.settle(reservation, 60_000) is True
    assert accounts.balance(account.account_id) == 40_000
    item = request_item(aws, settings, account.account_id, rid)
    assert (item["state"]["S"], item["charged"]["N"], item["refunded"]["N"]) == ("settled", "60000", "0")


def test_partial_charge_refunds_the_difference(aws, settings, accounts, billing):
    account = holder(accounts, 100_000)
    rid = request_id()
    reservation = billing.reserve(account, rid, 60_000, DETAILS)  # n=3 at 20_000
    assert billing.settle(reservation, 20_000, images=1, provider="openai") is True  # one image came back
    assert accounts.balance(account.account_id) == 80_000
    item = request_item(aws, settings, account.account_id, rid)
    assert (item["state"]["S"], item["charged"]["N"], item["refunded"]["N"]) == ("settled", "20000", "40000")
    assert (item["images"]["N"], item["provider"]["S"]) == ("1", "openai")
    assert_reconciled(aws, settings, account.account_id, 80_000)


def test_a_request_is_its_own_ledger_record(aws, settings, accounts, billing):
    """Issue 22: no reserve or settle entries; the balance is the entries' sum less what requests charged."""
    account = holder(accounts, 100_000)
    reservation = billing.reserve(account, request_id(), 60_000, DETAILS)
    billing.settle(reservation, 60_000, images=3)
    entries = [(e.kind, e.amount) for e in ledger_of(aws, settings, account.account_id)]
    assert entries == [("credit", 100_000)]
    assert_reconciled(aws, settings, account.account_id, 40_000)


def test_a_request_reserved_before_issue_22_settles_with_ledger_entries(aws, settings, accounts, billing):
    """A job's reservation may outlive the upgrade: its item on the account partition, a `reserve` entry."""
    account = holder(accounts, 100_000)
    rid = request_id()
    legacy = legacy_reserve(aws.dynamodb, settings.table, account.account_id, account.key_id, rid, 60_000)
    assert_reconciled(aws, settings, account.account_id, 40_000)
    assert billing.settle(legacy, 20_000, images=1) is True
    assert [
        (e.kind, e.amount) for e in ledger_of(aws, settings, account.account_id) if e.kind != "credit"
    ] == [
        ("reserve", -60_000),
        ("settle", 40_000),
    ]
    item = aws.dynamodb.get_item(
        TableName=settings.table, Key=item_key(f"ACCOUNT#{account.account_id}", f"REQUEST#{rid}")
    )["Item"]
    assert item["state"]["S"] == "settled" and "expires_at" in item
    assert_reconciled(aws, settings, account.account_id, 80_000)  # and no slot was given back twice


def test_failed_request_is_refunded_in_full(aws, settings, accounts, billing):
    account = holder(accounts, 100_000)
    rid = request_id()
    reservation = billing.reserve(account, rid, 60_000, DETAILS)
    assert billing.settle(reservation, 0) is True
    assert accounts.balance(account.account_id) == 100_000
    assert request_item(aws, settings, account.account_id, rid)["state"]["S"] == "refunded"


def test_charge_above_the_reservation_is_capped(accounts, billing):
    account = holder(accounts, 100_000)
    reservation = billing.reserve(account, request_id(), 20_000, DETAILS)
    assert billing.settle(reservation, 999_999) is True
    assert accounts.balance(account.account_id) == 80_000


def test_settle_twice_refunds_once(aws, settings, accounts, billing):
    account = holder(accounts, 100_000)
    reservation = billing.reserve(account, request_id(), 60_000, DETAILS)
    assert billing.settle(reservation, 0) is True
    assert billing.settle(reservation, 0) is False
    assert billing.settle(reservation, 20_000) is False
    assert accounts.balance(account.account_id) == 100_000
    assert [e.kind for e in ledger_of(aws, settings, account.account_id)] == ["credit"]
    assert_reconciled(aws, settings, account.account_id, 100_000)


def test_settle_unknown_request(accounts, billing):
    account = holder(accounts, 100_000)
    assert billing.settle(reservation_of(account, request_id(), 50_000), 0) is False
    assert accounts.balance(account.account_id) == 100_000


def test_reusing_a_request_id_is_refused_without_a_debit(accounts, billing):
    account = holder(accounts, 100_000)
    rid = request_id()
    billing.reserve(account, rid, 10_000, DETAILS)
    with pytest.raises(RuntimeError, match="collided"):
        billing.reserve(accounts.authenticate(f"Bearer {account.api_key}"), rid, 10_000, DETAILS)
    assert accounts.balance(account.account_id) == 90_000


def test_closed_requests_are_kept_and_leave_the_open_index(aws, settings, accounts):
    """A request item is its ledger record now: kept for good (one written before issue 22 expires)."""
    clock = Clock()
    billing = Billing(aws.dynamodb, settings.table, clock)
    account = holder(accounts, 100_000)
    rid = request_id()
    reservation = billing.reserve(account, rid, 20_000, DETAILS)
    item = request_item(aws, settings, account.account_id, rid)
    assert "expires_at" not in item and item["open_shard"]["S"].startswith("OPEN#")
    billing.settle(reservation, 20_000, images=1)
    item = request_item(aws, settings, account.account_id, rid)
    assert "expires_at" not in item
    assert "open_shard" not in item and "open_since" not in item


def test_concurrent_reservations_never_overdraw(aws, settings, accounts):
    account = holder(accounts, 7 * 20_000)
    billing = Billing(OneRequestAtATime(aws.dynamodb), settings.table)
    start = threading.Barrier(20)

    def attempt(_):
        start.wait()
        try:
            billing.reserve(account, request_id(), 20_000, DETAILS)
        except APIError as exc:
            return exc.status
        return 200

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(attempt, range(20)))
    assert statuses.count(200) == 7
    assert statuses.count(402) == 13
    assert accounts.balance(account.account_id) == 0


def test_concurrent_settles_refund_once(aws, settings, accounts):
    account = holder(accounts, 100_000)
    billing = Billing(OneRequestAtATime(aws.dynamodb), settings.table)
    reservation = billing.reserve(account, request_id(), 60_000, DETAILS)
    start = threading.Barrier(10)

    def settle(_):
        start.wait()
        return billing.settle(reservation, 20_000)

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(settle, range(10)))
    assert results.count(True) == 1
    assert accounts.balance(account.account_id) == 80_000
    assert_reconciled(aws, settings, account.account_id, 80_000)
    assert ledger.reconcile(aws.dynamodb, settings.table, account.account_id).ok


def test_reserve_and_refund_go_through_transaction_conflicts(aws, settings, accounts):
    account = holder(accounts, 100_000)
    client = ConflictsFirst(aws.dynamodb, conflicts=2)
    billing = Billing(client, settings.table, sleep=lambda seconds: None)
    rid = request_id()

    reservation = billing.reserve(account, rid, 60_000, DETAILS)
    assert client.conflicts == 0 and accounts.balance(account.account_id) == 40_000  # debited once

    client.conflicts = 3
    assert billing.settle(reservation, 0) is True  # a lost refund would leave the 60_000 debited
    assert accounts.balance(account.account_id) == 100_000
    assert request_item(aws, settings, account.account_id, rid)["state"]["S"] == "refunded"


def test_endless_contention_is_a_429_and_changes_nothing(aws, settings, accounts):
    """Issue 8, item 11: DynamoDB contention during reserve was a 500; it is the limiter's 429."""
    account = holder(accounts, 100_000)
    billing = Billing(ConflictsFirst(aws.dynamodb, conflicts=100), settings.table, sleep=lambda seconds: None)
    with pytest.raises(APIError) as info:
        billing.reserve(account, request_id(), 60_000, DETAILS)
    assert (info.value.status, info.value.code) == (429, "rate_limit_exceeded")
    assert info.value.headers["retry-after"] == "1"
    assert accounts.balance(account.account_id) == 100_000


@pytest.mark.parametrize("code", ["ThrottlingException", "ProvisionedThroughputExceededException"])
def test_throttling_during_reserve_is_a_429(aws, settings, accounts, code):
    account = holder(accounts, 100_000)
    billing = Billing(Failing(aws.dynamodb, code, times=1), settings.table)
    with pytest.raises(APIError) as info:
        billing.reserve(account, request_id(), 60_000, DETAILS)
    assert info.value.status == 429
    assert accounts.balance(account.account_id) == 100_000


# --- settle under failure (issue 8, item 3) -------------------------------------------------------------


def test_settle_retries_throttling_within_its_deadline(aws, settings, accounts):
    account = holder(accounts, 100_000)
    client = Failing(aws.dynamodb, "ThrottlingException", times=0)
    billing = Billing(client, settings.table, sleep=lambda seconds: None)
    reservation = billing.reserve(account, request_id(), 60_000, DETAILS)
    client.times = 3
    assert billing.settle(reservation, 20_000, images=1) is True
    assert accounts.balance(account.account_id) == 80_000
    assert ledger.reconcile(aws.dynamodb, settings.table, account.account_id).ok


def test_a_settle_that_never_lands_leaves_its_charge_for_the_sweeper(aws, settings, accounts):
    clock = Clock()
    account = holder(accounts, 100_000)
    client = Failing(aws.dynamodb, "ThrottlingException", times=0, only="transact_write_items")

    def sleep(seconds):
        clock.now += seconds + 1

    billing = Billing(client, settings.table, clock, sleep)
    reservation = billing.reserve(account, request_id(), 60_000, DETAILS)
    client.times = 10_000
    with pytest.raises(ClientError):
        billing.settle(reservation, 20_000, images=1, provider="local")
    assert accounts.balance(account.account_id) == 40_000  # nothing refunded yet: the charge stands
    client.times = 0
    clock.now += 3600
    closed = billing.sweep(older_than_s=900)
    assert [(r.request_id, charged) for r, charged in closed] == [(reservation.request_id, 20_000)]
    assert accounts.balance(account.account_id) == 80_000  # charged what was delivered, not refunded
    assert ledger.reconcile(aws.dynamodb, settings.table, account.account_id).ok


# --- the sweeper (issue 8, item 5) ----------------------------------------------------------------------


def test_sweep_reads_only_open_reservations(aws, settings, accounts):
    clock = Clock()
    counting = Counting(aws.dynamodb)
    billing = Billing(counting, settings.table, clock)
    account = holder(accounts, 10_000_000)
    for _ in range(30):  # history: closed requests the sweeper must not read
        billing.settle(billing.reserve(account, request_id(), 1_000, DETAILS), 1_000, images=1)
    stale = billing.reserve(account, request_id(), 5_000, DETAILS)
    clock.now += 3600
    fresh = billing.reserve(account, request_id(), 7_000, DETAILS)
    counting.items_read = 0
    closed = billing.sweep(older_than_s=900)
    assert [(r.request_id, charged) for r, charged in closed] == [(stale.request_id, 0)]
    assert counting.items_read == 1  # the one stale reservation, from the sparse index
    assert [r.request_id for r in billing.open_reservations(older_than_s=-1)] == [fresh.request_id]
    assert ledger.reconcile(aws.dynamodb, settings.table, account.account_id).ok


def test_one_failing_reservation_does_not_stop_the_sweep(aws, settings, accounts):
    clock = Clock()
    first, second = holder(accounts, 100_000), holder(accounts, 100_000)

    class BrokenForFirst:
        """DynamoDB refusing every transaction that touches the first account (an item edited by hand)."""

        def __init__(self, client):
            self._client = client
            self.exceptions = client.exceptions

        def transact_write_items(self, TransactItems, **kwargs):
            if f"ACCOUNT#{first.account_id}" in repr(TransactItems) and broken:
                raise ClientError({"Error": {"Code": "ValidationException"}}, "TransactWriteItems")
            return self._client.transact_write_items(TransactItems=TransactItems, **kwargs)

        def __getattr__(self, name):
            return getattr(self._client, name)

    broken = False
    billing = Billing(BrokenForFirst(aws.dynamodb), settings.table, clock)
    stuck = billing.reserve(first, request_id(), 5_000, DETAILS)
    healthy = billing.reserve(second, request_id(), 6_000, DETAILS)
    clock.now += 3600
    broken = True
    errors = []

    class Log:
        def exception(self, message, extra):
            errors.append(extra["request_id"])

    closed = billing.sweep(older_than_s=900, log=Log())
    assert [r.request_id for r, _ in closed] == [healthy.request_id]
    assert errors == [stuck.request_id]
    assert accounts.balance(second.account_id) == 100_000
    assert accounts.balance(first.account_id) == 95_000  # left for the next sweep


# --- key budgets ----------------------------------------------------------------------------------------


def test_a_keys_budget_bounds_what_its_requests_reserve_and_settling_gives_back_the_unused_part(
    aws, settings, accounts, billing
):
    account_id = accounts.create_account(1_000_000)
    key = accounts.create_key(account_id, budget=50_000)
    account = accounts.authenticate(f"Bearer {key}")
    assert account.budget == 50_000

    first = billing.reserve(account, request_id(), 30_000, {"model": "dall-e-2"})
    assert first.budgeted
    with pytest.raises(APIError) as refused:  # 30,000 + 30,000 > 50,000: the balance would allow it
        billing.reserve(account, request_id(), 30_000, {"model": "dall-e-2"})
    assert (refused.value.status, refused.value.code) == (402, "key_budget_exceeded")
    assert "$0.020000 left of its budget" in refused.value.message
    assert billing.settle(first, 20_000)  # 10,000 of the reservation unused: back within the budget
    assert accounts.get_key(account.key_id)["spent"] == 20_000
    second = billing.reserve(account, request_id(), 30_000, {"model": "dall-e-2"})
    assert billing.settle(second, 30_000)
    assert accounts.get_key(account.key_id)["spent"] == 50_000
    with pytest.raises(APIError) as spent:
        billing.reserve(account, request_id(), 1, {"model": "dall-e-2"})
    assert spent.value.code == "key_budget_exceeded"
    assert accounts.balance(account_id) == 1_000_000 - 50_000
    assert ledger.reconcile(aws.dynamodb, settings.table, account_id).ok
    # Another key of the account is not bound by it.
    other = accounts.authenticate(f"Bearer {accounts.create_key(account_id)}")
    billing.reserve(other, request_id(), 30_000, {"model": "dall-e-2"})


def test_a_request_over_the_whole_budget_is_refused_before_any_write(accounts, billing):
    account_id = accounts.create_account(1_000_000)
    account = accounts.authenticate(f"Bearer {accounts.create_key(account_id, budget=10_000)}")
    with pytest.raises(APIError) as refused:
        billing.reserve(account, request_id(), 10_001, {"model": "dall-e-2"})
    assert refused.value.code == "key_budget_exceeded"
    assert accounts.get_key(account.key_id)["spent"] == 0


def test_rotating_a_budgeted_key_keeps_what_is_left_of_the_budget(accounts, billing):
    from imagegate.money.accounts import key_id_for

    account_id = accounts.create_account(1_000_000)
    key = accounts.create_key(account_id, budget=50_000)
    account = accounts.authenticate(f"Bearer {key}")
    billing.settle(billing.reserve(account, request_id(), 30_000, {"model": "dall-e-2"}), 30_000)
    rotated = accounts.rotate_key(key_id_for(key))
    assert accounts.authenticate(f"Bearer {rotated}").budget == 20_000


class LostResponses:
    """The DynamoDB client, losing the response of the next `times` TransactWriteItems after they commit,
    and keeping DynamoDB's documented ClientRequestToken rule: the same token with the same parameters
    within 10 minutes answers success without writing again (another parameter set is refused)."""

    def __init__(self, client, times):
        self._client = client
        self.exceptions = client.exceptions
        self.times = times
        self.committed = {}

    def transact_write_items(self, **kwargs):
        from botocore.exceptions import EndpointConnectionError

        token = kwargs.get("ClientRequestToken")
        if token is not None and token in self.committed:
            assert self.committed[token] == kwargs, "IdempotentParameterMismatchException"
            return {}
        answer = self._client.transact_write_items(**kwargs)
        if token is not None:
            self.committed[token] = kwargs
        if self.times:
            self.times -= 1
            raise EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com")
        return answer

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_a_settle_committed_behind_a_lost_response_is_found_settled(aws, settings, accounts):
    """Issue 20, item 8: with no ClientRequestToken, the retry of a settle that committed behind a lost
    response failed its condition and reported "not settled": charged, but never announced."""
    account = holder(accounts, 100_000)
    lossy = LostResponses(aws.dynamodb, times=0)
    billing = Billing(lossy, settings.table, sleep=lambda s: None)
    reservation = billing.reserve(account, request_id(), 40_000, {"model": "dall-e-2"})
    lossy.times = 1
    assert billing.settle(reservation, 30_000, images=1) is True
    assert accounts.balance(account.account_id) == 100_000 - 30_000
    assert ledger.reconcile(aws.dynamodb, settings.table, account.account_id).ok


def test_a_second_settle_of_a_settled_request_is_refused_not_an_idempotency_mismatch(aws, settings, accounts):
    """Two settles of one request (a worker's charge, then a cancel or a sweep) within DynamoDB's 10-minute
    token window: a token derived from the request alone came back with other actions, which DynamoDB
    refuses with IdempotentParameterMismatch (an error, not "already settled")."""
    account = holder(accounts, 100_000)
    strict = LostResponses(aws.dynamodb, times=0)
    billing = Billing(strict, settings.table, sleep=lambda s: None)
    reservation = billing.reserve(account, request_id(), 40_000, {"model": "dall-e-2"})
    assert billing.settle(reservation, 30_000, images=1) is True
    assert billing.settle(reservation, 0) is False
    assert accounts.balance(account.account_id) == 100_000 - 30_000
    assert ledger.reconcile(aws.dynamodb, settings.table, account.account_id).ok


def topup_events(account_id):
    session = {
        "id": "cs_lost",
        "mode": "payment",
        "payment_status": "paid",
        "amount_total": 1059,
        "currency": "usd",
        "client_reference_id": account_id,
        "metadata": {"imagegate": "1", "credit_cents": "1000", "fee_cents": "59"},  # a session we created
        "payment_intent": "pi_lost",
    }
    paid = {"id": "evt_paid", "type": "checkout.session.completed", "data": {"object": session}}

    def refunded(event_id, cents):  # Stripe's amount_refunded: the payment's refunds so far, in cents
        charge = {"amount_refunded": cents, "payment_intent": "pi_lost"}
        return {"id": event_id, "type": "charge.refunded", "data": {"object": charge}}

    return paid, refunded


def test_a_topup_credit_committed_behind_a_lost_response_is_found_credited(aws, settings, accounts):
    """Issue 20, item 8: top-ups sent their transactions under a new token each time; one that committed
    behind a lost response was refused as a duplicate of itself."""
    from imagegate.money.topups import Topups, load_config

    account_id = accounts.create_account(0)
    lossy = LostResponses(aws.dynamodb, times=1)
    topups = Topups(lossy, settings.table, load_config(""), dict, sleep=lambda s: None)
    paid, _ = topup_events(account_id)
    effect = topups.apply(paid)
    assert (effect.outcome, effect.amount) == ("credit", 10_000_000)
    assert accounts.balance(account_id) == 10_000_000
    assert topups.apply(paid).outcome == "duplicate"  # Stripe's redelivery credits nothing more
    assert ledger.reconcile(aws.dynamodb, settings.table, account_id).ok


def test_a_reversal_rebuilt_after_a_race_is_sent_under_its_own_token(aws, settings, accounts):
    """The reversal loop re-reads the payment and builds other actions when another event moved it: those
    go under another token (DynamoDB refuses a token reused with other parameters), and a lost response of
    the rebuilt one is found committed."""
    from imagegate.money.topups import Topups, load_config

    account_id = accounts.create_account(0)
    paid, refunded = topup_events(account_id)
    direct = Topups(aws.dynamodb, settings.table, load_config(""), dict)
    direct.apply(paid)

    class Raced(LostResponses):
        def __init__(self, client, times):
            super().__init__(client, times)
            self.sent = []

        def transact_write_items(self, **kwargs):
            if not self.sent:  # another refund of the payment lands between the read and this write
                direct.apply(refunded("evt_first", 100))
            self.sent.append(kwargs["ClientRequestToken"])
            return super().transact_write_items(**kwargs)

    lossy = Raced(aws.dynamodb, times=1)  # the rebuilt reversal commits, and its response is lost
    topups = Topups(lossy, settings.table, load_config(""), dict, sleep=lambda s: None)
    effect = topups.apply(refunded("evt_second", 300))
    assert (effect.outcome, effect.amount) == ("reversal", -2_000_000)  # the new part only
    raced, rebuilt, retried = lossy.sent
    assert raced != rebuilt == retried  # two parameter sets, two tokens; the retry resends its own
    assert accounts.balance(account_id) == 10_000_000 - 3_000_000
    assert ledger.reconcile(aws.dynamodb, settings.table, account_id).ok


class HotAccountPartition:
    """The DynamoDB client, throttling every write to an account's partition (ACCOUNT#...), as DynamoDB
    does when one tenant's items are too hot; other partitions take writes."""

    def __init__(self, client):
        self._client = client
        self.exceptions = client.exceptions
        self.hot = False

    def _throttle(self, name, kwargs):
        if self.hot and '"ACCOUNT#' in json.dumps(kwargs):
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "hot"}}, name)

    def transact_write_items(self, **kwargs):
        self._throttle("TransactWriteItems", kwargs)
        return self._client.transact_write_items(**kwargs)

    def update_item(self, **kwargs):
        self._throttle("UpdateItem", kwargs)
        return self._client.update_item(**kwargs)

    def put_item(self, **kwargs):
        self._throttle("PutItem", kwargs)
        return self._client.put_item(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_an_intended_charge_survives_the_heat_that_failed_its_settle(aws, settings, accounts):
    """Issue 20, item 6: the intended charge was written to the same hot partition; failing too, the
    sweeper refunded a request that had answered 200 with its images."""
    clock = Clock()
    account = holder(accounts, 100_000)
    hot = HotAccountPartition(aws.dynamodb)
    billing = Billing(hot, settings.table, clock, sleep=lambda s: setattr(clock, "now", clock.now + s + 1))
    reservation = billing.reserve(account, request_id(), 40_000, {"model": "dall-e-2"})
    hot.hot = True
    with pytest.raises(ClientError):
        billing.settle(reservation, 30_000, images=2, provider="openai")
    hot.hot = False
    clock.now += 3600
    [(swept, charged)] = billing.sweep(older_than_s=900)
    assert (swept.request_id, charged) == (reservation.request_id, 30_000)
    assert accounts.balance(account.account_id) == 100_000 - 30_000
    assert ledger.reconcile(aws.dynamodb, settings.table, account.account_id, clock=clock).ok


def test_a_reserve_leaves_the_earlier_releases_slot_map_for_its_settles(aws, settings, accounts, billing):
    """A function of the earlier release, still finishing a request during a rollout, gives its slot back
    with `REMOVE slots.#id`; DynamoDB refuses that once the map itself is gone, so reserve keeps it."""
    account = holder(accounts, 100_000)
    key = item_key(f"ACCOUNT#{account.account_id}", "ACCOUNT")
    aws.dynamodb.update_item(
        TableName=settings.table,
        Key=key,
        UpdateExpression="SET slots = :m",
        ExpressionAttributeValues={":m": {"M": {"req_old": {"N": "1"}}}},
    )
    billing.reserve(account, request_id(), 10_000, DETAILS)
    aws.dynamodb.update_item(  # the earlier release's settle of its request
        TableName=settings.table,
        Key=key,
        UpdateExpression="REMOVE slots.#a_done",
        ExpressionAttributeNames={"#a_done": "req_old"},
    )
    assert aws.dynamodb.get_item(TableName=settings.table, Key=key)["Item"]["slots"] == {"M": {}}


def test_the_sweeper_waits_for_the_settle_window_the_reservation_was_made_under(aws, settings, accounts):
    """Review: a deploy that lowers IntegrationTimeoutSeconds from 300 s to 29 s makes the sweeper's threshold
    89 s, while a function of the old version, with its 300 s timeout, may still be running its request."""
    clock = Clock()
    billing = Billing(aws.dynamodb, settings.table, clock)
    account = holder(accounts, 100_000)
    long_running = billing.reserve(account, request_id(), 20_000, DETAILS, settle_within_s=330)
    clock.now += 120
    assert billing.sweep(older_than_s=89) == []  # still inside its own window
    assert billing.settle(long_running, 20_000, images=1) is True  # and it settles, charged
    stopped = billing.reserve(account, request_id(), 20_000, DETAILS, settle_within_s=330)
    clock.now += 330 + 30
    assert [r.request_id for r, _ in billing.sweep(older_than_s=89)] == [stopped.request_id]
    assert accounts.balance(account.account_id) == 80_000

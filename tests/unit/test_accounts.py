"""Accounts and keys as admins manage them: accounts with opening balances, key limits, rotation."""

import json

import pytest

from imagegate.errors import APIError
from imagegate.money import ledger
from imagegate.money.accounts import Account, AccountInfo, Accounts, NotFound, hash_key, key_id_for

from .conftest import ConflictsFirst

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z


def get(aws, settings, pk, sk):
    return aws.dynamodb.get_item(
        TableName=settings.table, Key={"pk": {"S": pk}, "sk": {"S": sk}}, ConsistentRead=True
    ).get("Item")


def partition(aws, settings, pk):
    return aws.dynamodb.query(
        TableName=settings.table,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": pk}},
        ConsistentRead=True,
    )["Items"]


@pytest.fixture
def clocked(aws, settings):
    """Accounts whose clock the test moves, one second per call: creation order is listing order."""
    ticks = iter(range(NOW, NOW + 10_000))
    return Accounts(aws.dynamodb, settings.table, clock=lambda: next(ticks))


def unauthorised(accounts, key):
    with pytest.raises(APIError) as info:
        accounts.authenticate(f"Bearer {key}")
    return info.value.status, info.value.code


# --- accounts -------------------------------------------------------------------------------------------


def limits_of(accounts, api_key):
    account = accounts.authenticate(f"Bearer {api_key}")
    return account.account_id, account.key_id, account.limiter.overrides


def test_create_account_writes_the_account_and_its_index_entry(aws, settings, clocked):
    account_id = clocked.create_account(2_500_000, label="alice")
    assert account_id.startswith("acct_") and len(account_id) == 25
    item = get(aws, settings, f"ACCOUNT#{account_id}", "ACCOUNT")
    assert item["balance"] == {"N": "2500000"}
    assert item["label"] == {"S": "alice"}
    assert item["created_at"] == {"N": str(NOW)}
    assert get(aws, settings, "ACCOUNTS", account_id) == {
        "pk": {"S": "ACCOUNTS"},
        "sk": {"S": account_id},
        "label": {"S": "alice"},
        "created_at": {"N": str(NOW)},
    }


def test_the_opening_balance_is_a_ledger_entry_and_reconciles(aws, settings, clocked):
    account_id = clocked.create_account(2_500_000, label="alice", actor="cli:ops")
    [entry] = ledger.entries(aws.dynamodb, settings.table, account_id)
    assert (entry.kind, entry.amount, entry.reason, entry.actor, entry.at_ms) == (
        "credit",
        2_500_000,
        "opening balance",
        "cli:ops",
        NOW * 1000,
    )
    result = ledger.reconcile(aws.dynamodb, settings.table, account_id)
    assert (result.ok, result.balance, result.expected, result.problems) == (True, 2_500_000, 2_500_000, [])


def test_an_empty_account_has_an_empty_ledger(aws, settings, accounts):
    account_id = accounts.create_account(0)
    assert ledger.entries(aws.dynamodb, settings.table, account_id) == []
    assert ledger.reconcile(aws.dynamodb, settings.table, account_id).ok


def test_a_negative_opening_balance_is_refused_and_writes_nothing(aws, settings, accounts):
    with pytest.raises(ValueError, match="opening balance cannot be negative"):
        accounts.create_account(-1)
    assert aws.dynamodb.scan(TableName=settings.table)["Items"] == []


def test_show_account(clocked):
    account_id = clocked.create_account(1_234_567, label="bob")
    assert clocked.show_account(account_id) == AccountInfo(account_id, "bob", 1_234_567, NOW)


def test_show_an_unknown_account(accounts):
    with pytest.raises(NotFound, match=r"^no account acct_missing$"):
        accounts.show_account("acct_missing")


def test_list_accounts_oldest_first_with_current_balances(clocked, billing):
    ids = [clocked.create_account(1_000 * i, label=f"a{i}") for i in range(3)]
    billing.reserve(
        Account(ids[2], "k", "KEY#k"), "req_1", 500, {"model": "dall-e-2", "endpoint": "generations"}
    )
    listing = clocked.list_accounts()
    assert [(a.account_id, a.label, a.balance) for a in listing] == [
        (ids[0], "a0", 0),
        (ids[1], "a1", 1_000),
        (ids[2], "a2", 1_500),
    ]
    assert [a.created_at for a in listing] == [NOW, NOW + 1, NOW + 2]


def test_list_accounts_past_one_batch_read(clocked):
    ids = [clocked.create_account(i) for i in range(103)]  # BatchGetItem reads at most 100 items per call
    listing = clocked.list_accounts()
    assert [a.account_id for a in listing] == ids
    assert [a.balance for a in listing] == list(range(103))


def test_no_accounts(accounts):
    assert accounts.list_accounts() == []


# --- keys and their limits ------------------------------------------------------------------------------


def test_authenticate_returns_the_keys_limits(accounts):
    account_id = accounts.create_account(0)
    limited = accounts.create_key(account_id, images_per_minute=20, max_concurrent=2)
    default = accounts.create_key(account_id)
    assert limits_of(accounts, limited) == (account_id, key_id_for(limited), (20, 2))
    assert limits_of(accounts, default) == (account_id, key_id_for(default), (None, None))


def test_key_items_carry_the_limits_and_the_index_points_at_the_key(aws, settings, clocked):
    account_id = clocked.create_account(0)
    key = clocked.create_key(account_id, label="ci", images_per_minute=5)
    key_id = key_id_for(key)
    item = get(aws, settings, f"KEY#{hash_key(key)}", "KEY")
    entry = get(aws, settings, "KEYS", key_id)
    assert entry.pop("key_pk") == {"S": f"KEY#{hash_key(key)}"}
    expected = {
        "account_id": {"S": account_id},
        "key_id": {"S": key_id},
        "prefix": {"S": key[:10] + "…"},
        "label": {"S": "ci"},
        "status": {"S": "active"},
        "created_at": {"N": str(NOW + 1)},
        "images_per_minute": {"N": "5"},
    }
    # The key item holds its limits; its limiter's state is on the ACCOUNT item (ratelimit.py).
    assert {k: v for k, v in item.items() if k not in ("pk", "sk")} == expected
    assert {k: v for k, v in entry.items() if k not in ("pk", "sk")} == expected


def test_create_key_for_an_unknown_account_writes_nothing(aws, settings, accounts):
    with pytest.raises(NotFound, match=r"^no account acct_missing$"):
        accounts.create_key("acct_missing", label="x")
    assert aws.dynamodb.scan(TableName=settings.table)["Items"] == []


def test_a_key_cannot_be_issued_twice(accounts):
    first = accounts.create_account(0)
    accounts.create_key(first, api_key="dev-key-1")
    with pytest.raises(ValueError, match="issued before"):
        accounts.create_key(accounts.create_account(0), api_key="dev-key-1")
    assert accounts.authenticate("Bearer dev-key-1").account_id == first


@pytest.mark.parametrize("value", [0, -3, True, 2.5, "5"])
def test_limits_must_be_positive_whole_numbers(accounts, value):
    account_id = accounts.create_account(0)
    with pytest.raises(ValueError, match="images_per_minute must be a whole number of at least 1"):
        accounts.create_key(account_id, images_per_minute=value)
    key = accounts.create_key(account_id)
    with pytest.raises(ValueError, match="max_concurrent must be a whole number of at least 1"):
        accounts.set_limits(key_id_for(key), max_concurrent=value)
    assert [row["max_concurrent"] for row in accounts.list_keys()] == [None]


def test_set_limits_sets_and_clears_both_items(aws, settings, accounts):
    account_id = accounts.create_account(0)
    key = accounts.create_key(account_id, label="l")
    key_id = key_id_for(key)
    updated = accounts.set_limits(key_id, images_per_minute=30, max_concurrent=3)
    assert (updated["key_id"], updated["images_per_minute"], updated["max_concurrent"]) == (key_id, 30, 3)
    assert limits_of(accounts, key) == (account_id, key_id, (30, 3))
    assert accounts.get_key(key_id) == updated

    cleared = accounts.set_limits(key_id, max_concurrent=4)
    assert (cleared["images_per_minute"], cleared["max_concurrent"]) == (None, 4)
    assert limits_of(accounts, key) == (account_id, key_id, (None, 4))
    for item in (get(aws, settings, f"KEY#{hash_key(key)}", "KEY"), get(aws, settings, "KEYS", key_id)):
        assert "images_per_minute" not in item and item["max_concurrent"] == {"N": "4"}

    accounts.set_limits(key_id)
    assert limits_of(accounts, key) == (account_id, key_id, (None, None))


def test_set_limits_of_an_unknown_key(aws, settings, accounts):
    with pytest.raises(NotFound, match=r"^no key with id key_0000000000000000$"):
        accounts.set_limits("key_0000000000000000", images_per_minute=1)
    assert aws.dynamodb.scan(TableName=settings.table)["Items"] == []


def test_list_keys_of_one_account(accounts):
    mine, theirs = accounts.create_account(0), accounts.create_account(0)
    accounts.create_key(mine, label="m1")
    accounts.create_key(theirs, label="t1")
    accounts.create_key(mine, label="m2")
    assert sorted(row["label"] for row in accounts.list_keys(mine)) == ["m1", "m2"]
    assert [row["label"] for row in accounts.list_keys(theirs)] == ["t1"]
    assert accounts.list_keys("acct_nobody") == []
    assert len(accounts.list_keys()) == 3


def test_revoking_twice_is_harmless(accounts):
    key = accounts.create_key(accounts.create_account(0))
    assert accounts.revoke_key(key_id_for(key)) is True
    assert accounts.revoke_key(key_id_for(key)) is True
    assert accounts.get_key(key_id_for(key))["status"] == "revoked"
    assert unauthorised(accounts, key) == (401, "invalid_api_key")


# --- rotation -------------------------------------------------------------------------------------------


def test_rotate_replaces_the_key_on_the_same_account_label_and_limits(accounts):
    account_id = accounts.create_account(0)
    old = accounts.create_key(account_id, label="prod", images_per_minute=12, max_concurrent=2)
    new = accounts.rotate_key(key_id_for(old))
    assert new != old and new.startswith("sk-ig-")
    assert unauthorised(accounts, old) == (401, "invalid_api_key")
    assert limits_of(accounts, new) == (account_id, key_id_for(new), (12, 2))
    rows = {row["key_id"]: row for row in accounts.list_keys()}
    assert rows[key_id_for(old)]["status"] == "revoked"
    assert {
        k: v for k, v in rows[key_id_for(new)].items() if k not in ("key_id", "prefix", "created_at")
    } == {
        "account_id": account_id,
        "label": "prod",
        "status": "active",
        "images_per_minute": 12,
        "max_concurrent": 2,
        "admin": False,
        "budget": None,
        "spent": 0,
    }
    assert old not in json.dumps(rows) and new not in json.dumps(rows)


def test_an_admin_key_says_so_and_stays_admin_when_rotated(accounts):
    account_id = accounts.create_account(0)
    admin = accounts.create_key(account_id, admin=True)
    plain = accounts.create_key(account_id)
    assert accounts.authenticate(f"Bearer {admin}").admin
    assert not accounts.authenticate(f"Bearer {plain}").admin
    rotated = accounts.rotate_key(key_id_for(admin))
    assert accounts.authenticate(f"Bearer {rotated}").admin
    assert accounts.get_key(key_id_for(rotated))["admin"] is True


def test_a_revoked_key_cannot_be_rotated_back_to_life(accounts):
    old = accounts.create_key(accounts.create_account(0))
    accounts.revoke_key(key_id_for(old))
    with pytest.raises(ValueError, match=f"key {key_id_for(old)} is revoked; only an active key"):
        accounts.rotate_key(key_id_for(old))
    assert len(accounts.list_keys()) == 1


def test_rotate_an_unknown_key(accounts):
    with pytest.raises(NotFound, match=r"^no key with id key_nope$"):
        accounts.rotate_key("key_nope")


class RevokedJustBefore:
    """The DynamoDB client, but someone revokes `key_id` just before the next transaction runs."""

    def __init__(self, accounts, client, key_id):
        self._accounts, self._client, self._key_id = accounts, client, key_id
        self.exceptions = client.exceptions

    def transact_write_items(self, **kwargs):
        if self._key_id:
            self._accounts.revoke_key(self._key_id)
            self._key_id = None
        return self._client.transact_write_items(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_rotation_is_all_or_nothing(aws, settings, accounts):
    old = accounts.create_key(accounts.create_account(0), label="race")
    racing = Accounts(RevokedJustBefore(accounts, aws.dynamodb, key_id_for(old)), settings.table)
    with pytest.raises(ValueError, match="revoked or rotated meanwhile; nothing changed"):
        racing.rotate_key(key_id_for(old))
    # No replacement key was issued: the old key is the only one, in both the index and the key items.
    assert [row["key_id"] for row in accounts.list_keys()] == [key_id_for(old)]
    stored = aws.dynamodb.scan(TableName=settings.table)["Items"]
    assert [item["pk"]["S"] for item in stored if item["sk"]["S"] == "KEY"] == [f"KEY#{hash_key(old)}"]


def test_key_creation_goes_through_conflicts_on_a_busy_account(aws, settings, accounts):
    account_id = accounts.create_account(0)
    client = ConflictsFirst(aws.dynamodb, conflicts=2)
    sleeps = []
    key = Accounts(client, settings.table, sleep=sleeps.append).create_key(account_id)
    assert client.conflicts == 0 and len(sleeps) == 2
    assert accounts.authenticate(f"Bearer {key}").account_id == account_id

"""The operator CLI against moto's in-process DynamoDB: what an operator types and reads, and what it leaves
in the table."""

import csv
import io
import itertools
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from moto import mock_aws
from shims import ByAccount, ScannedStream

from imagegate.aws import AWSClients
from imagegate.cli import main
from imagegate.config import Settings
from imagegate.errors import APIError
from imagegate.local.devserver import provision
from imagegate.money import ledger
from imagegate.money.accounts import Accounts, key_id_for
from imagegate.money.billing import Billing
from imagegate.table import new_request_id, request_pk

ACTOR = "cli:operator"


@dataclass
class Table:
    db: Any
    name: str

    @property
    def accounts(self):
        return Accounts(self.db, self.name)

    def billing(self, clock=time.time):
        return ByAccount(Billing(self.db, self.name, clock=clock))

    def entries(self, account_id):
        return [(e.kind, e.amount, e.reason, e.actor) for e in ledger.entries(self.db, self.name, account_id)]

    def balance(self, account_id):
        return self.accounts.balance(account_id)

    def request_state(self, account_id, request_id):
        item = self.db.get_item(
            TableName=self.name,
            Key={"pk": {"S": request_pk(account_id, request_id)}, "sk": {"S": f"REQUEST#{request_id}"}},
            ConsistentRead=True,
        )["Item"]
        return item["state"]["S"]


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("IMAGEGATE_TABLE", "cli-table")
    monkeypatch.setenv("LOGNAME", "operator")  # the ledger's actor: cli:<login name>
    with mock_aws():
        key = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["Arn"]
        monkeypatch.setenv("IMAGEGATE_WEBHOOK_KEY_ID", key)
        settings = Settings.from_env()
        provision(AWSClients(settings), settings)
        yield Table(boto3.client("dynamodb", region_name="us-east-1"), "cli-table")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def usage_error(capsys, *argv):
    """A command line argparse refuses: exit status 2 and one line on stderr."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    assert (exc.value.code, out) == (2, "")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def new_key(capsys, *argv):
    code, out, err = run(capsys, "keys", "create", *argv)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[-2] == "key (shown once, store it now):"
    return lines[-1], out


def cells(line):
    """(start, end, text) of each cell of a table line: cells are separated by two or more spaces."""
    return [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", line)]


def rows(text):
    """A table as dicts by header, checking that every cell lines up with its header (left or right)."""
    lines = [line for line in text.splitlines() if line and not set(line) <= {"-", " "}]
    header = cells(lines[0])
    parsed = []
    for line in lines[1:]:
        row = cells(line)
        assert len(row) == len(header), line
        for (start, end, _), (h_start, h_end, name) in zip(row, header, strict=True):
            assert start == h_start or end == h_end, f"{name} misaligned in {line!r}"
        parsed.append({name: value for (_, _, value), (_, _, name) in zip(row, header, strict=True)})
    return parsed


# --- accounts -------------------------------------------------------------------------------------------


def test_accounts_create_prints_the_id_last_and_records_the_opening_credit(table, capsys):
    code, out, err = run(capsys, "accounts", "create", "--balance", "10", "--label", "bob")
    assert (code, err) == (0, "")
    first, account_id = out.splitlines()
    assert first == "created account with balance $10.000000, label bob"
    account = table.accounts.show_account(account_id)
    assert (account.label, account.balance) == ("bob", 10_000_000)
    assert table.entries(account_id) == [("credit", 10_000_000, "opening balance", ACTOR)]


def test_accounts_create_without_a_balance(table, capsys):
    code, out, _ = run(capsys, "--actor", "ops-bot", "accounts", "create")
    assert code == 0 and out.splitlines()[0] == "created account with balance $0.000000"
    account_id = out.splitlines()[-1]
    assert table.balance(account_id) == 0
    assert table.entries(account_id) == []


def test_accounts_show_balance_keys_and_ledger(table, capsys):
    account_id = table.accounts.create_account(5_000_000, label="carol", actor="cli:setup")
    kept = table.accounts.create_key(account_id, label="prod", images_per_minute=7)
    gone = table.accounts.create_key(account_id, label="old")
    table.accounts.revoke_key(key_id_for(gone))
    ticks = itertools.count(int(time.time()) + 1)  # after the opening credit: reserve, then settle
    billing = table.billing(clock=lambda: next(ticks))
    request = new_request_id()
    billing.reserve(account_id, request, 40_000, {"model": "dall-e-2", "key_id": key_id_for(kept)})
    billing.settle(account_id, request, 20_000, images=1)

    code, out, _ = run(capsys, "accounts", "show", account_id)
    assert code == 0
    fields, keys, entries, requests = out.split("\n\n")
    assert fields.splitlines()[0] == f"account  {account_id}"
    assert fields.splitlines()[1:2] == ["label    carol"]
    assert "balance  $4.980000  (4980000 micro-USD)" in fields
    assert "keys     1 active, 1 revoked" in fields
    assert sorted(
        (r["LABEL"], r["KEY_ID"], r["STATUS"], r["IMAGES/MIN"], r["CONCURRENT"]) for r in rows(keys)
    ) == [
        ("old", key_id_for(gone), "revoked", "default", "default"),
        ("prod", key_id_for(kept), "active", "7", "default"),
    ]
    assert kept not in out and gone not in out
    ledger_rows = entries.splitlines()
    assert ledger_rows[0] == "latest ledger entries:"
    assert ledger_rows[1].split() == ["WHEN", "(UTC)", "KIND", "AMOUNT", "REQUEST", "OR", "REASON", "ACTOR"]
    assert [line.split()[2:] for line in ledger_rows[2:]] == [
        ["credit", "$5.000000", "opening", "balance", "cli:setup"],
    ]
    request_rows = requests.splitlines()
    assert request_rows[0] == "latest requests:"
    assert [line.split()[2:] for line in request_rows[2:]] == [
        [request, "succeeded", "-$0.020000", "dall-e-2"]
    ]

    code, out, _ = run(capsys, "accounts", "show", account_id, "--entries", "1")
    assert out.splitlines()[-1].split()[2:] == [request, "succeeded", "-$0.020000", "dall-e-2"]


def test_accounts_show_an_unknown_account(table, capsys):
    assert run(capsys, "accounts", "show", "acct_missing") == (1, "", "imagegate: no account acct_missing\n")


def test_accounts_list(table, capsys):
    assert run(capsys, "accounts", "list") == (0, "no accounts\n", "")
    rich = table.accounts.create_account(12_345_678, label="rich")
    poor = table.accounts.create_account(1, label="poor")
    for label in ("a", "b"):
        table.accounts.create_key(rich, label=label)
    table.accounts.revoke_key(key_id_for(table.accounts.create_key(poor)))

    code, out, _ = run(capsys, "accounts", "list")
    assert code == 0
    listing = {row["ACCOUNT_ID"]: row for row in rows(out)}
    assert {k: (v["LABEL"], v["BALANCE"], v["ACTIVE KEYS"]) for k, v in listing.items()} == {
        rich: ("rich", "$12.345678", "2"),
        poor: ("poor", "$0.000001", "0"),
    }


# --- keys -----------------------------------------------------------------------------------------------


def test_keys_create_prints_a_working_key_last_and_funds_the_account(table, capsys):
    key, out = new_key(capsys, "--balance", "2.5", "--label", "alice")
    account = table.accounts.authenticate(f"Bearer {key}")
    assert out.splitlines()[0] == f"account {account.account_id}  balance $2.500000"
    assert out.splitlines()[1] == (
        f"key {account.key_id}  images per minute: default  concurrent requests: default"
    )
    assert table.balance(account.account_id) == 2_500_000
    assert table.accounts.show_account(account.account_id).label == "alice"
    assert table.accounts.get_key(account.key_id)["label"] == "alice"
    assert table.entries(account.account_id) == [("credit", 2_500_000, "opening balance", ACTOR)]
    assert out.count(key) == 1


def test_keys_create_for_an_existing_account_with_limits(table, capsys):
    account_id = table.accounts.create_account(1_000_000)
    key, out = new_key(
        capsys, "--account", account_id, "--label", "ci", "--images-per-minute", "20", "--max-concurrent", "2"
    )
    account = table.accounts.authenticate(f"Bearer {key}")
    assert (account.account_id, account.limiter.overrides) == (account_id, (20, 2))
    assert "images per minute: 20  concurrent requests: 2" in out
    assert table.balance(account_id) == 1_000_000
    assert table.entries(account_id) == [("credit", 1_000_000, "opening balance", "")]

    # --balance with --account credits it, as it always did; the ledger says so.
    new_key(capsys, "--account", account_id, "--balance", "0.5")
    assert table.balance(account_id) == 1_500_000
    assert table.entries(account_id)[-1] == ("credit", 500_000, "manual credit", ACTOR)


def test_keys_create_errors(table, capsys):
    code, _, err = run(capsys, "keys", "create")
    assert code == 1
    assert err == "imagegate: give --account ID for an existing account, or --balance USD to open a new one\n"
    for extra in ([], ["--balance", "1"]):
        assert run(capsys, "keys", "create", "--account", "acct_missing", *extra) == (
            1,
            "",
            "imagegate: no account acct_missing\n",
        )
    assert table.accounts.list_keys() == []
    err = usage_error(capsys, "keys", "create", "--balance", "1", "--max-concurrent", "0")
    assert "argument --max-concurrent: expected a whole number of at least 1, got '0'" in err


def test_keys_list_shows_ids_and_prefixes_never_keys(table, capsys):
    assert run(capsys, "keys", "list") == (0, "no keys\n", "")
    key, _ = new_key(capsys, "--balance", "1", "--label", "bob")
    other = table.accounts.create_account(0)
    table.accounts.create_key(other, label="other", max_concurrent=4)
    code, listing, _ = run(capsys, "keys", "list")
    assert code == 0
    assert key not in listing and key[10:20] not in listing
    account_id = table.accounts.authenticate(f"Bearer {key}").account_id
    parsed = sorted(rows(listing), key=lambda r: r["LABEL"])
    assert [(r["PREFIX"], r["ACCOUNT_ID"], r["STATUS"], r["LABEL"], r["CONCURRENT"]) for r in parsed] == [
        (key[:10] + "…", account_id, "active", "bob", "default"),
        (parsed[1]["PREFIX"], other, "active", "other", "4"),
    ]

    code, mine, _ = run(capsys, "keys", "list", "--account", account_id)
    assert [r["LABEL"] for r in rows(mine)] == ["bob"] and "ACCOUNT_ID" not in mine
    assert run(capsys, "keys", "list", "--account", "acct_x") == (0, "no keys for account acct_x\n", "")


def test_keys_rotate(table, capsys):
    old, _ = new_key(capsys, "--balance", "1", "--label", "prod", "--images-per-minute", "9")
    before = table.accounts.authenticate(f"Bearer {old}")
    new, out = new_key(capsys, "--account", before.account_id)  # a second key, untouched by the rotation
    code, out, err = run(capsys, "keys", "rotate", before.key_id)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    rotated = lines[-1]
    assert lines[0] == f"revoked {before.key_id}; its replacement has the same account, label and limits"
    assert lines[1] == f"key {key_id_for(rotated)}  images per minute: 9  concurrent requests: default"
    assert out.count("sk-ig-") == 1

    with pytest.raises(APIError) as info:
        table.accounts.authenticate(f"Bearer {old}")
    assert info.value.status == 401
    after = table.accounts.authenticate(f"Bearer {rotated}")
    assert (after.account_id, after.limiter.overrides) == (before.account_id, (9, None))
    assert table.accounts.get_key(after.key_id)["label"] == "prod"
    assert table.accounts.authenticate(f"Bearer {new}").account_id == before.account_id
    statuses = {k["key_id"]: k["status"] for k in table.accounts.list_keys()}
    assert statuses == {before.key_id: "revoked", key_id_for(new): "active", after.key_id: "active"}

    code, _, err = run(capsys, "keys", "rotate", before.key_id)
    assert (code, err) == (
        1,
        f"imagegate: key {before.key_id} is revoked; only an active key can be rotated\n",
    )
    assert run(capsys, "keys", "rotate", "key_nope") == (1, "", "imagegate: no key with id key_nope\n")
    assert len(table.accounts.list_keys()) == 3


def test_revoked_key_is_refused(table, capsys):
    key, _ = new_key(capsys, "--balance", "1")
    key_id = table.accounts.list_keys()[0]["key_id"]
    assert run(capsys, "keys", "revoke", key_id) == (0, f"revoked {key_id}\n", "")
    with pytest.raises(APIError) as exc:
        table.accounts.authenticate(f"Bearer {key}")
    assert exc.value.status == 401
    code, _, err = run(capsys, "keys", "revoke", "key_doesnotexist")
    assert code == 1 and err == "imagegate: no key with id key_doesnotexist (see `imagegate keys list`)\n"


def test_keys_limits_show_set_and_restore_defaults(table, capsys):
    key, _ = new_key(capsys, "--balance", "1")
    key_id = key_id_for(key)
    assert run(capsys, "keys", "limits", key_id) == (
        0,
        f"{key_id}  images per minute: default  concurrent requests: default\n",
        "",
    )
    _, out, _ = run(capsys, "keys", "limits", key_id, "--images-per-minute", "30", "--max-concurrent", "3")
    assert out == f"{key_id}  images per minute: 30  concurrent requests: 3\n"
    assert table.accounts.authenticate(f"Bearer {key}").limiter.overrides[0] == 30

    # An option left out keeps its limit; `default` hands it back to the deployment.
    _, out, _ = run(capsys, "keys", "limits", key_id, "--images-per-minute", "default")
    assert out == f"{key_id}  images per minute: default  concurrent requests: 3\n"
    account = table.accounts.authenticate(f"Bearer {key}")
    assert account.limiter.overrides == (None, 3)

    assert run(capsys, "keys", "limits", "key_nope", "--max-concurrent", "1") == (
        1,
        "",
        "imagegate: no key with id key_nope\n",
    )
    err = usage_error(capsys, "keys", "limits", key_id, "--max-concurrent", "lots")
    assert err == (
        "imagegate keys limits: argument --max-concurrent: expected a whole number of at least 1, got 'lots' "
        "(see `imagegate keys limits --help`)\n"
    )


# --- balances -------------------------------------------------------------------------------------------


def test_balance_credit_and_show_are_exact_to_the_micro_dollar(table, capsys):
    account_id = table.accounts.create_account(1_000_000)
    code, out, _ = run(capsys, "balance", "credit", account_id, "0.000001")
    assert (code, out) == (0, f"{account_id}  $1.000001  (1000001 micro-USD)\n")
    assert run(capsys, "balance", "show", account_id) == (
        0,
        f"{account_id}  $1.000001  (1000001 micro-USD)\n",
        "",
    )
    assert table.balance(account_id) == 1_000_001
    assert table.entries(account_id)[-1] == ("credit", 1, "manual credit", ACTOR)


def test_balance_credit_with_a_reason_and_an_actor(table, capsys):
    account_id = table.accounts.create_account(0)
    code, out, _ = run(
        capsys,
        "--actor",
        "billing-job",
        "balance",
        "credit",
        account_id,
        "25",
        "--reason",
        "invoice 2026-001",
    )
    assert code == 0 and "$25.000000" in out
    assert table.entries(account_id) == [("credit", 25_000_000, "invoice 2026-001", "billing-job")]


def test_balance_credit_errors(table, capsys):
    account_id = table.accounts.create_account(0)
    for amount in ("0", "-1"):
        err = usage_error(capsys, "balance", "credit", account_id, amount)
        assert "amount must be more than zero" in err
    assert run(capsys, "balance", "credit", "acct_missing", "1") == (
        1,
        "",
        "imagegate: no account acct_missing\n",
    )
    code, _, err = run(capsys, "balance", "credit", account_id, "1", "--reason", "  ")
    assert code == 1 and "reason is required" in err
    assert table.entries(account_id) == [] and table.balance(account_id) == 0


def test_balance_adjust_both_ways_with_a_reason(table, capsys):
    account_id = table.accounts.create_account(2_000_000)
    code, out, _ = run(
        capsys, "balance", "adjust", account_id, "-0.5", "--reason", "double credit on 2026-01-02"
    )
    assert (code, out) == (0, f"{account_id}  $1.500000  (1500000 micro-USD)\n")
    code, out, _ = run(capsys, "balance", "adjust", account_id, "+0.25", "--reason", "outage goodwill")
    assert (code, out) == (0, f"{account_id}  $1.750000  (1750000 micro-USD)\n")
    assert table.entries(account_id)[1:] == [
        ("adjust", -500_000, "double credit on 2026-01-02", ACTOR),
        ("adjust", 250_000, "outage goodwill", ACTOR),
    ]
    assert ledger.reconcile(table.db, table.name, account_id).ok


def test_balance_adjust_errors(table, capsys):
    account_id = table.accounts.create_account(1_000_000)
    assert "the following arguments are required: --reason" in usage_error(
        capsys, "balance", "adjust", account_id, "-1"
    )
    assert "an adjustment of zero changes nothing" in usage_error(
        capsys, "balance", "adjust", account_id, "0", "--reason", "x"
    )
    code, _, err = run(capsys, "balance", "adjust", account_id, "-1.000001", "--reason", "too much")
    assert (code, err) == (
        1,
        f"imagegate: adjusting {account_id} by -$1.000001 would take its balance of $1.000000 below zero; "
        "nothing changed\n",
    )
    assert table.balance(account_id) == 1_000_000 and len(table.entries(account_id)) == 1


@pytest.mark.parametrize("amount", ["Infinity", "NaN", "-inf", "ten", "0.0000001"])
def test_amounts_that_are_not_dollars_are_usage_errors(table, capsys, amount):
    err = usage_error(capsys, "keys", "create", f"--balance={amount}")
    assert "not a USD amount" in err or "finer than one micro-dollar" in err
    assert err.startswith("imagegate keys create: argument --balance: ")
    assert table.accounts.list_keys() == []


# --- usage ----------------------------------------------------------------------------------------------


@pytest.fixture
def traffic(table):
    """Settled requests on two days: yesterday (four, two accounts) and the day before (one)."""
    yesterday = time.time() - 86_400
    days = [datetime.fromtimestamp(t, UTC).date().isoformat() for t in (yesterday, yesterday - 86_400)]
    a, b = table.accounts.create_account(10_000_000), table.accounts.create_account(10_000_000)
    ka1, ka2, kb = (key_id_for(table.accounts.create_key(acct)) for acct in (a, a, b))
    requests = [  # account, key, model, reserved, charged, images, when
        (a, ka1, "dall-e-2", 40_000, 40_000, 2, yesterday),
        (a, ka2, "gpt-image-1", 100_000, 60_000, 1, yesterday),
        (a, ka1, "dall-e-2", 20_000, 0, 0, yesterday),  # failed upstream: refunded in full
        (b, kb, "dall-e-2", 20_000, 20_000, 1, yesterday),
        (b, kb, "dall-e-3", 80_000, 80_000, 1, yesterday - 86_400),
    ]
    for n, (account, key_id, model, reserved, charged, images, when) in enumerate(requests):
        billing = table.billing(clock=lambda when=when: when)
        billing.reserve(
            account, f"req_{n}", reserved, {"model": model, "endpoint": "generations", "key_id": key_id}
        )
        billing.settle(account, f"req_{n}", charged, images=images)
    ScannedStream(table.db, table.name).drain()  # the usage function counts them from the table's stream
    return {"a": a, "b": b, "ka1": ka1, "ka2": ka2, "kb": kb, "days": days}


def test_usage_by_day_as_a_table_with_totals(traffic, capsys):
    code, out, _ = run(capsys, "usage", "--days", "7")
    assert code == 0
    lines = out.splitlines()
    assert set(lines[-2]) == {"-", " "}
    assert rows(out) == [
        {
            "DAY": traffic["days"][1],
            "REQUESTS": "1",
            "IMAGES": "1",
            "CHARGED": "$0.080000",
            "REFUNDED": "$0.000000",
        },
        {
            "DAY": traffic["days"][0],
            "REQUESTS": "4",
            "IMAGES": "4",
            "CHARGED": "$0.120000",
            "REFUNDED": "$0.060000",
        },
        {"DAY": "total", "REQUESTS": "5", "IMAGES": "5", "CHARGED": "$0.200000", "REFUNDED": "$0.060000"},
    ]


def test_usage_by_model_as_csv(traffic, capsys):
    code, out, _ = run(capsys, "usage", "--by", "model", "--format", "csv")
    assert code == 0
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert parsed == [
        {
            "model": "dall-e-2",
            "requests": "3",
            "images": "3",
            "charged": "60000",
            "charged_usd": "0.060000",
            "refunded": "20000",
            "refunded_usd": "0.020000",
        },
        {
            "model": "dall-e-3",
            "requests": "1",
            "images": "1",
            "charged": "80000",
            "charged_usd": "0.080000",
            "refunded": "0",
            "refunded_usd": "0.000000",
        },
        {
            "model": "gpt-image-1",
            "requests": "1",
            "images": "1",
            "charged": "60000",
            "charged_usd": "0.060000",
            "refunded": "40000",
            "refunded_usd": "0.040000",
        },
    ]
    assert sum(int(r["charged"]) for r in parsed) == 200_000


def test_usage_by_key_for_one_account_as_json(traffic, capsys):
    code, out, _ = run(capsys, "usage", "--by", "key", "--account", traffic["a"], "--format", "json")
    assert code == 0
    parsed = json.loads(out)
    assert parsed == sorted(
        [
            {
                "account_id": traffic["a"],
                "key_id": traffic["ka1"],
                "requests": 2,
                "images": 2,
                "charged": 40_000,
                "charged_usd": "0.040000",
                "refunded": 20_000,
                "refunded_usd": "0.020000",
            },
            {
                "account_id": traffic["a"],
                "key_id": traffic["ka2"],
                "requests": 1,
                "images": 1,
                "charged": 60_000,
                "charged_usd": "0.060000",
                "refunded": 40_000,
                "refunded_usd": "0.040000",
            },
        ],
        key=lambda r: r["key_id"],
    )


def test_usage_window_and_empty_reports(traffic, capsys):
    assert run(capsys, "usage", "--days", "1") == (0, "no usage today\n", "")
    assert run(capsys, "usage", "--days", "1", "--format", "json") == (0, "[]\n", "")
    _, out, _ = run(capsys, "usage", "--days", "1", "--by", "key", "--format", "csv")
    assert out == "account_id,key_id,requests,images,charged,charged_usd,refunded,refunded_usd\n"
    _, out, _ = run(capsys, "usage", "--days", "2", "--by", "key")
    assert out.splitlines()[-1].split() == ["total", "4", "4", "$0.120000", "$0.060000"]
    listed = [(r["ACCOUNT_ID"], r["KEY_ID"]) for r in rows("\n".join(out.splitlines()[:-2]))]
    assert listed == sorted(
        [(traffic["a"], traffic["ka1"]), (traffic["a"], traffic["ka2"]), (traffic["b"], traffic["kb"])]
    )
    assert "no usage in the last 3 days" in run(capsys, "usage", "--days", "3", "--account", "acct_x")[1]
    assert "expected a whole number of at least 1, got '0'" in usage_error(capsys, "usage", "--days", "0")


# --- reconcile and sweep --------------------------------------------------------------------------------


def tamper(table, account_id, micros):
    """Change a balance behind the ledger's back, as a bug or a hand edit would."""
    table.db.update_item(
        TableName=table.name,
        Key={"pk": {"S": f"ACCOUNT#{account_id}"}, "sk": {"S": "ACCOUNT"}},
        UpdateExpression="ADD balance :x",
        ExpressionAttributeValues={":x": {"N": str(micros)}},
    )


def test_reconcile_one_account(table, capsys):
    account_id = table.accounts.create_account(1_000_000)
    table.billing().reserve(account_id, "req_live", 30_000, {"model": "dall-e-2", "key_id": "key_x"})
    assert run(capsys, "reconcile", account_id) == (
        0,
        f"{account_id}  ok  balance $0.970000  ledger $0.970000  in flight 1 ($0.030000)\n",
        "",
    )
    tamper(table, account_id, 1)
    code, out, _ = run(capsys, "reconcile", account_id)
    assert code == 1
    assert out.splitlines() == [
        f"{account_id}  MISMATCH  balance $0.970001  ledger $0.970000  in flight 1 ($0.030000)",
        "  - balance $0.970001 differs from the ledger's sum $0.970000 by $0.000001",
    ]


def test_reconcile_all_accounts(table, capsys):
    good, bad = table.accounts.create_account(5), table.accounts.create_account(7)
    code, out, _ = run(capsys, "reconcile", "--all")
    assert code == 0 and out.splitlines()[-1] == "accounts checked: 2, with problems: 0, busy (no verdict): 0"
    tamper(table, bad, -7)
    code, out, _ = run(capsys, "reconcile", "--all")
    assert code == 1
    assert f"{good}  ok  " in out and f"{bad}  MISMATCH  balance $0.000000  ledger $0.000007" in out
    assert out.splitlines()[-1] == "accounts checked: 2, with problems: 1, busy (no verdict): 0"


def test_reconcile_errors(table, capsys):
    assert run(capsys, "reconcile", "acct_missing") == (1, "", "imagegate: no account acct_missing\n")
    assert "one of the arguments account_id --all is required" in usage_error(capsys, "reconcile")
    assert "not allowed with argument" in usage_error(capsys, "reconcile", "acct_x", "--all")


def test_sweep_refunds_abandoned_reservations_once(table, capsys):
    account_id = table.accounts.create_account(1_000_000)
    abandoned_at = time.time() - 3_600
    table.billing(clock=lambda: abandoned_at).reserve(
        account_id, "req_dead", 50_000, {"model": "dall-e-3", "key_id": "key_x"}
    )
    table.billing().reserve(account_id, "req_live", 20_000, {"model": "dall-e-2", "key_id": "key_x"})
    code, out, _ = run(capsys, "reconcile", account_id)
    assert "abandoned reservations: 1 (`imagegate sweep` refunds them)" in out

    code, out, _ = run(capsys, "sweep", "--older-than", "600")
    assert code == 0
    [row] = rows("\n".join(out.splitlines()[:-1]))
    assert (row["REQUEST_ID"], row["ACCOUNT_ID"], row["MODEL"], row["REFUNDED"]) == (
        "req_dead",
        account_id,
        "dall-e-3",
        "$0.050000",
    )
    assert row["RESERVED (UTC)"] == datetime.fromtimestamp(int(abandoned_at), UTC).strftime(
        "%Y-%m-%d %H:%M:%S"
    )
    assert out.splitlines()[-1] == "stale reservations closed: 1 (refunded $0.050000)"
    assert table.balance(account_id) == 980_000
    assert (table.request_state(account_id, "req_dead"), table.request_state(account_id, "req_live")) == (
        "refunded",
        "reserved",
    )
    assert run(capsys, "sweep", "--account", account_id) == (
        0,
        "stale reservations closed: 0 (refunded $0.000000)\n",
        "",
    )
    assert table.balance(account_id) == 980_000
    assert ledger.reconcile(table.db, table.name, account_id).ok
    assert run(capsys, "sweep", "--account", "acct_missing") == (
        1,
        "",
        "imagegate: no account acct_missing\n",
    )


# --- every command: help, and AWS errors ----------------------------------------------------------------

COMMANDS = [
    (),
    ("accounts",),
    ("accounts", "create"),
    ("accounts", "show"),
    ("accounts", "list"),
    ("keys",),
    ("keys", "create"),
    ("keys", "list"),
    ("keys", "rotate"),
    ("keys", "revoke"),
    ("keys", "limits"),
    ("balance",),
    ("balance", "show"),
    ("balance", "credit"),
    ("balance", "adjust"),
    ("usage",),
    ("reconcile",),
    ("sweep",),
    ("billing",),
    ("billing", "packs"),
    ("billing", "events"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "imagegate")
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert out.startswith(f"usage: {' '.join(('imagegate', *command))}")
    assert len(out.splitlines()) >= 3  # a description besides the usage line


def test_a_group_without_a_command_is_a_usage_error(capsys):
    assert usage_error(capsys, "keys").startswith(
        "imagegate keys: the following arguments are required: COMMAND"
    )


def test_missing_table_is_a_one_line_error_not_a_traceback(table, capsys):
    code, _, err = run(capsys, "--table", "no-such-table", "balance", "show", "acct_x")
    assert code == 1
    assert err.startswith("imagegate: ResourceNotFoundException")
    assert len(err.splitlines()) == 1


def test_region_comes_from_the_aws_profile_when_not_set(table, monkeypatch, tmp_path):
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    clients = AWSClients(Settings.from_env())
    assert clients.dynamodb.meta.region_name == "eu-west-1"


def test_dates_are_utc(table, capsys):
    account_id = table.accounts.create_account(0)
    created = table.accounts.show_account(account_id).created_at
    code, out, _ = run(capsys, "accounts", "show", account_id)
    assert code == 0 and f"created  {datetime.fromtimestamp(created, UTC):%Y-%m-%d %H:%M:%S}" in out


def test_sweep_refuses_an_age_that_could_catch_running_requests(table, capsys):
    assert "must be at least 330 seconds" in usage_error(capsys, "sweep", "--older-than", "30")


# --- bounds on what an operator types (issue 8, item 13) ---------------------------------------------------


@pytest.mark.parametrize("days", ["367", "99999", "9" * 400])
def test_a_usage_window_beyond_366_days_is_a_usage_error(table, capsys, days):
    err = usage_error(capsys, "usage", "--days", days)
    assert "argument --days: must be from 1 to 366 days" in err


def test_a_usage_window_of_366_days_is_reported(traffic, capsys):
    code, out, _ = run(capsys, "usage", "--days", "366", "--by", "model", "--format", "json")
    assert code == 0 and sum(r["requests"] for r in json.loads(out)) == 5


HUGE_AMOUNTS = [
    ("accounts", "create", "--balance", "1e40"),
    ("accounts", "create", "--balance", "1000000000.000001"),
    ("keys", "create", "--balance", "1e35"),
    ("balance", "credit", "ACCOUNT", "1e35"),
    ("balance", "credit", "ACCOUNT", "1E+999999"),  # overflows decimal's default context
    ("balance", "adjust", "ACCOUNT", "--reason", "x", "--", "-1e35"),
]


def test_amounts_above_one_billion_dollars_are_refused(table, capsys):
    account_id = table.accounts.create_account(5_000_000)
    for argv in HUGE_AMOUNTS:
        err = usage_error(capsys, *(account_id if a == "ACCOUNT" else a for a in argv))
        assert "above the ceiling of $1,000,000,000 for one amount" in err, argv
    assert table.balance(account_id) == 5_000_000 and len(table.accounts.list_accounts()) == 1


def test_an_amount_of_exactly_one_billion_dollars_is_accepted(table, capsys):
    code, out, err = run(capsys, "accounts", "create", "--balance", "1000000000")
    assert (code, err) == (0, "") and "$1000000000.000000" in out


CONTROL_LABELS = [
    "two\nlines",
    "carriage\rreturn",
    "\x1b[31mred\x1b[0m",
    "tab\there",
    "nul\x00",
    "del\x7f",
    "c1\x9b2J",
    "bidi\u202eevil",
    "line\u2028separator",
]


@pytest.mark.parametrize(
    "command",
    [
        ("accounts", "create", "--label"),
        ("keys", "create", "--balance", "1", "--label"),
        ("balance", "credit", "ACCOUNT", "1", "--reason"),
        ("balance", "adjust", "ACCOUNT", "1", "--reason"),
        ("--actor",),
    ],
)
def test_control_characters_in_labels_reasons_and_actors_are_refused(table, capsys, command):
    account_id = table.accounts.create_account(0)
    for label in CONTROL_LABELS:
        argv = [account_id if a == "ACCOUNT" else a for a in (*command, label)]
        if argv == ["--actor", label]:
            argv += ["balance", "credit", account_id, "1"]
        err = usage_error(capsys, *argv)
        assert "control characters" in err, label
        assert "\x1b" not in err and "\u202e" not in err  # the message itself stays one clean line
    assert len(table.accounts.list_accounts()) == 1 and table.accounts.list_keys() == []
    assert table.entries(account_id) == []


def test_a_label_longer_than_200_characters_is_refused(table, capsys):
    assert "at most 200 characters" in usage_error(capsys, "accounts", "create", "--label", "x" * 201)
    code, _, _ = run(capsys, "accounts", "create", "--label", "é☕" * 100)
    assert code == 0 and table.accounts.list_accounts()[0].label == "é☕" * 100


HOSTILE = "evil\n\x1b[2Jlabel\t\u202e"
ESCAPED = "evil\\n\\x1b[2Jlabel\\t\\u202e"


def assert_clean(out):
    assert not {c for c in out if c != "\n" and (ord(c) < 32 or 0x7F <= ord(c) < 0xA0)}
    assert "\u202e" not in out


def test_labels_already_stored_with_control_characters_are_shown_escaped(table, capsys):
    """Labels written before the check (or by another tool) cannot break a table or a terminal."""
    account_id = table.accounts.create_account(1_000_000, label=HOSTILE)
    table.accounts.create_key(account_id, label=HOSTILE)
    for argv in (("accounts", "list"), ("keys", "list"), ("accounts", "show", account_id)):
        code, out, _ = run(capsys, *argv)
        assert code == 0
        assert_clean(out)
        assert ESCAPED in out
    _, out, _ = run(capsys, "accounts", "list")
    [row] = rows(out)
    assert row["LABEL"] == ESCAPED


def test_usage_csv_and_table_escape_stored_control_characters(table, capsys):
    account_id = table.accounts.create_account(1_000_000)
    day = datetime.now(UTC).date()
    update = ledger.usage_update(
        table.name, day, account_id, "key\x1b[1m", "model\nx", images=1, charged=5, refunded=0
    )
    table.db.update_item(**update["Update"])
    _, out, _ = run(capsys, "usage", "--by", "model", "--format", "csv")
    assert_clean(out)
    [row] = csv.DictReader(io.StringIO(out))
    assert row["model"] == "model\\nx"
    _, out, _ = run(capsys, "usage", "--by", "key")
    assert_clean(out)
    assert rows("\n".join(out.splitlines()[:-2]))[0]["KEY_ID"] == "key\\x1b[1m"
    _, out, _ = run(capsys, "usage", "--by", "key", "--format", "json")  # JSON escapes them itself
    assert_clean(out)
    assert json.loads(out)[0]["key_id"] == "key\x1b[1m"


def test_a_label_with_bytes_that_are_not_utf8_is_refused(table, capsys):
    """A shell passes undecodable argv bytes through as lone surrogates, which DynamoDB cannot store."""
    for argv in (("accounts", "create", "--label", "caf\udce9"), ("--actor", "\udcff", "accounts", "create")):
        err = usage_error(capsys, *argv)
        assert "control characters" in err and "\udce9" not in err and "\udcff" not in err
    assert table.accounts.list_accounts() == []


class Recording:
    """The DynamoDB client, recording the Query calls made through it and how many items each read."""

    def __init__(self, client):
        self._client = client
        self.queries = []

    def __getattr__(self, name):
        return getattr(self._client, name)

    def query(self, **kwargs):
        page = self._client.query(**kwargs)
        self.queries.append((kwargs, page["ScannedCount"]))
        return page


def test_accounts_show_reads_only_the_entries_it_shows(table, capsys):
    """The ledger grows with every request; showing the last N must not read all of it."""
    account_id = table.accounts.create_account(0)
    ticks = itertools.count(int(time.time()) + 1)
    billing = table.billing(clock=lambda: next(ticks))
    for n in range(1, 31):
        billing.credit(account_id, n, reason=f"credit {n}", kind="credit", actor=ACTOR)
    db = Recording(table.db)
    latest = ledger.latest_entries(db, table.name, account_id, 3)
    assert [e.reason for e in latest] == ["credit 28", "credit 29", "credit 30"]  # oldest first
    assert [read for _, read in db.queries] == [3]
    _, out, _ = run(capsys, "accounts", "show", account_id, "--entries", "2")
    assert [line.split()[-3:-1] for line in out.splitlines()[-2:]] == [["credit", "29"], ["credit", "30"]]
    assert "must be from 1 to 1000" in usage_error(
        capsys, "accounts", "show", account_id, "--entries", "1001"
    )


def test_accounts_limits_show_set_and_restore_defaults(table, capsys):
    account_id = table.accounts.create_account(1_000_000)
    assert run(capsys, "accounts", "limits", account_id) == (
        0,
        f"{account_id}  images per minute: default  concurrent requests: default\n",
        "",
    )
    _, out, _ = run(capsys, "accounts", "limits", account_id, "--images-per-minute", "1200")
    assert out == f"{account_id}  images per minute: 1200  concurrent requests: default\n"
    assert table.accounts.show_account(account_id).images_per_minute == 1200
    _, out, _ = run(capsys, "accounts", "limits", account_id, "--max-concurrent", "5")
    assert out == f"{account_id}  images per minute: 1200  concurrent requests: 5\n"
    _, out, _ = run(capsys, "accounts", "limits", account_id, "--images-per-minute", "default")
    assert out == f"{account_id}  images per minute: default  concurrent requests: 5\n"
    assert run(capsys, "accounts", "limits", "acct_missing") == (
        1,
        "",
        "imagegate: no account acct_missing\n",
    )


def test_accounts_suspend_and_resume_turn_aws_service_jobs_off_and_on(table, capsys):
    account_id = table.accounts.create_account(1_000_000)
    assert run(capsys, "accounts", "suspend", account_id) == (0, f"{account_id} is suspended\n", "")
    with pytest.raises(APIError) as refused:
        table.accounts.for_service(account_id)
    assert refused.value.code == "account_inactive"
    assert run(capsys, "accounts", "resume", account_id) == (0, f"{account_id} is active\n", "")
    assert table.accounts.for_service(account_id).account_id == account_id
    assert run(capsys, "accounts", "suspend", "acct_missing") == (
        1,
        "",
        "imagegate: no account acct_missing\n",
    )


# --- webhooks -------------------------------------------------------------------------------------------


def test_webhooks_set_show_test_remove(table, capsys):
    from localservers import local_outbound, serve
    from standardwebhooks import Webhook

    account_id = table.accounts.create_account(0)
    outbound = local_outbound({"hooks.example.com": "127.0.0.1"})
    with serve(lambda seen: (204, {}, b"")) as server:
        url = server.url("/imagegate", host="hooks.example.com")
        code = main(["webhooks", "set", account_id, url], outbound=outbound)
        out, _ = capsys.readouterr()
        assert code == 0
        secret = out.splitlines()[-1]
        assert secret.startswith("whsec_") and "shown once" in out

        code, out, _ = run(capsys, "webhooks", "show", account_id)
        assert code == 0 and url in out and secret not in out and "encrypted (KMS)" in out
        assert run(capsys, "webhooks", "seal", account_id)[1].endswith("was already encrypted\n")

        code = main(["webhooks", "test", account_id], outbound=outbound)
        out, _ = capsys.readouterr()
        assert code == 0 and "HTTP 204 (delivered)" in out
    (seen,) = server.requests
    assert Webhook(secret).verify(seen.body, seen.headers)["type"] == "webhook.test"

    code, out, _ = run(capsys, "webhooks", "remove", account_id)
    assert code == 0 and "removed" in out
    code, _, err = run(capsys, "webhooks", "show", account_id)
    assert code == 1 and "has no webhook endpoint" in err


@pytest.mark.parametrize(
    "url", ["http://hooks.example.com/", "https://127.0.0.1/", "https://2852039166/", "https://[::1]/"]
)
def test_webhooks_set_refuses_what_is_not_https_to_a_public_address_and_stores_nothing(table, capsys, url):
    account_id = table.accounts.create_account(0)
    code, out, err = run(capsys, "webhooks", "set", account_id, url)
    assert code == 1 and "webhook URL refused" in err and "whsec_" not in out + err
    assert run(capsys, "webhooks", "show", account_id)[0] == 1


def test_webhooks_commands_on_unknown_accounts_and_failing_endpoints(table, capsys):
    from localservers import local_outbound, serve

    assert run(capsys, "webhooks", "set", "acct_missing", "https://hooks.example.com/")[0] == 1
    assert run(capsys, "webhooks", "remove", "acct_missing")[0] == 1
    assert run(capsys, "webhooks", "test", "acct_missing")[0] == 1
    account_id = table.accounts.create_account(0)
    with serve(lambda seen: (500, {}, b"")) as server:
        assert main(["webhooks", "set", account_id, server.url()], outbound=local_outbound()) == 0
        code = main(["webhooks", "test", account_id], outbound=local_outbound())
    out, _ = capsys.readouterr()
    assert code == 1 and "HTTP 500 (not delivered)" in out
    code, out, err = run(capsys, "webhooks", "test", account_id)  # production's check: https only
    assert code == 1 and "(url_scheme)" in err


# --- billing (Stripe top-ups) ----------------------------------------------------------------------------


def test_billing_packs_lists_the_operators_packs_with_fees(capsys, table, monkeypatch):
    document = {"packs": [{"id": "small", "credit_usd": "10"}], "fee_percent": "2.9", "fee_fixed_usd": "0.30"}
    monkeypatch.setenv("IMAGEGATE_TOPUPS", json.dumps(document))
    code, out, _ = run(capsys, "billing", "packs")
    assert code == 0
    assert out.splitlines()[1].split() == ["small", "$10.00", "of", "credit", "10.00", "10.59"]
    assert "custom amounts: 5.00 to 1000.00 USD; fee 2.9% + 0.30" in out


def test_billing_events_shows_what_each_event_did_per_account(capsys, table):
    from imagegate.money.topups import Topups, load_config

    topups = Topups(table.db, table.name, load_config(""), dict)
    account_id = table.accounts.create_account(0)
    session = {
        "id": "cs_1",
        "mode": "payment",
        "payment_status": "paid",
        "amount_total": 500,
        "currency": "usd",
        "client_reference_id": account_id,
        "metadata": {"imagegate": "1", "credit_cents": "500", "fee_cents": "0"},
        "payment_intent": "pi_1",
    }
    topups.apply({"id": "evt_1", "type": "checkout.session.completed", "data": {"object": session}})
    topups.apply({"id": "evt_2", "type": "customer.created", "data": {"object": {"id": "cus_1"}}})

    code, out, _ = run(capsys, "billing", "events")
    assert code == 0
    assert [line.split()[2:5] for line in out.splitlines()[1:]] == [  # newest first
        ["evt_2", "customer.created", "ignored"],
        ["evt_1", "checkout.session.completed", "credit"],
    ]
    assert "$5.000000" in out
    code, out, _ = run(capsys, "billing", "events", "--account", account_id)
    assert [line.split()[2] for line in out.splitlines()[1:]] == ["evt_1"]
    assert table.balance(account_id) == 5_000_000
    assert run(capsys, "reconcile", account_id)[0] == 0


def test_keys_create_admin_makes_a_key_that_may_manage_its_account(capsys, table):
    code, out, _ = run(capsys, "keys", "create", "--balance", "1", "--admin", "--budget", "0.25")
    assert code == 0
    key = table.accounts.authenticate(f"Bearer {out.splitlines()[-1]}")
    assert (key.admin, key.budget) == (True, 250_000)


# --- the catalog (issue 18) --------------------------------------------------------------------------------


def test_catalog_validate_says_what_a_document_adds_or_what_is_wrong(table, capsys, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"aliases": {"imagen-3": "gemini-3.1-flash-image"}}))
    code, out, _ = run(capsys, "catalog", "validate", str(good))
    assert code == 0 and out.startswith(f"{good}: valid (") and "1 aliases" in out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"models": {"gpt-image-2": {"n_max": 11}}}))
    code, out, err = run(capsys, "catalog", "validate", str(bad))
    assert (code, out) == (1, "") and "gpt-image-2" in err and "n_max" in err
    route = {"provider": "bfl", "model": "flux-2-pro", "credential": "BFL_API_KEY"}
    route["options"] = {"region": "zz"}
    bad.write_text(json.dumps({"models": {"flux-2-pro": {"routes": [route]}}}))
    code, out, err = run(capsys, "catalog", "validate", str(bad))
    assert (code, out) == (1, "") and "flux-2-pro" in err and "options.region" in err


def test_catalog_push_validates_then_uploads_to_s3_or_ssm(table, capsys, tmp_path, monkeypatch):
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="ops")
    document = tmp_path / "catalog.json"
    document.write_text(json.dumps({"aliases": {"imagen-3": "gemini-3.1-flash-image"}}))
    monkeypatch.setenv("IMAGEGATE_CATALOG", "s3://ops/imagegate/catalog.json")
    code, out, _ = run(capsys, "catalog", "push", str(document))
    assert code == 0 and "pushed to s3://ops/imagegate/catalog.json" in out
    stored = boto3.client("s3", region_name="us-east-1").get_object(
        Bucket="ops", Key="imagegate/catalog.json"
    )
    assert stored["Body"].read() == document.read_bytes()
    code, _, _ = run(capsys, "catalog", "push", str(document), "--to", "ssm:/imagegate/catalog")
    parameter = boto3.client("ssm", region_name="us-east-1").get_parameter(Name="/imagegate/catalog")
    assert code == 0 and parameter["Parameter"]["Value"] == document.read_text()
    # `imagegate models` reads the pushed override as the functions do.
    code, out, _ = run(capsys, "models", "--json")
    assert {"id": "imagen-3"}.items() <= next(m for m in json.loads(out) if m["id"] == "imagen-3").items()
    # A document that fails validation is never uploaded.
    document.write_text(json.dumps({"aliases": {"imagen-3": "nothing"}}))
    code, _, err = run(capsys, "catalog", "push", str(document), "--to", "ssm:/imagegate/catalog")
    assert code == 1 and "names no model" in err
    parameter = boto3.client("ssm", region_name="us-east-1").get_parameter(Name="/imagegate/catalog")
    assert "nothing" not in parameter["Parameter"]["Value"]


def test_models_shows_status_routes_and_days_to_shutdown(table, capsys):
    code, out, _ = run(capsys, "models", "--date", "2026-12-06")
    assert code == 0
    rows = {
        line.split()[0]: line.split() for line in out.splitlines()[1:] if line and not line.startswith(" ")
    }
    assert rows["gpt-image-1.5"][1:] == ["deprecated", "azure_openai", "gpt-image-1.5", "2026-12-16", "10"]
    assert rows["dall-e-3"][1:4] == ["deprecated", "openai", "gpt-image-2"]
    assert rows["gpt-image-2.5-flare"][1] == "active"
    code, out, _ = run(capsys, "models", "--json", "--date", "2026-11-30")
    listed = {m["id"]: m for m in json.loads(out)}
    # Before OpenAI's date, gpt-image-1.5 went to OpenAI first, with the day it would stop.
    assert listed["gpt-image-1.5"]["routes"][0] == {
        "provider": "openai",
        "model": "gpt-image-1.5",
        "shutdown_at": "2026-12-01",
    }

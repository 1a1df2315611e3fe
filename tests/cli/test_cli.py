"""The operator CLI against moto's in-process DynamoDB: what an operator types and reads."""

import boto3
import pytest
from moto import mock_aws

from imagegate.accounts import Accounts
from imagegate.aws import AWSClients
from imagegate.cli import main
from imagegate.config import Settings
from imagegate.devserver import provision


@pytest.fixture
def table(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("IMAGEGATE_TABLE", "cli-table")
    with mock_aws():
        settings = Settings.from_env()
        provision(AWSClients(settings), settings)
        yield Accounts(boto3.client("dynamodb", region_name="us-east-1"), "cli-table")


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_create_prints_a_working_key_last_and_funds_the_account(table, capsys):
    code, out, _ = run(capsys, "keys", "create", "--balance", "2.5", "--label", "alice")
    assert code == 0
    key = out.strip().splitlines()[-1]
    account = table.authenticate(f"Bearer {key}")
    assert table.balance(account.account_id) == 2_500_000


def test_keys_list_shows_ids_and_prefixes_never_keys(table, capsys):
    _, out, _ = run(capsys, "keys", "create", "--balance", "1", "--label", "bob")
    key = out.strip().splitlines()[-1]
    code, listing, _ = run(capsys, "keys", "list")
    assert code == 0
    assert "bob" in listing and "active" in listing
    assert key not in listing
    assert key[:10] + "…" in listing


def test_revoked_key_is_refused(table, capsys):
    _, out, _ = run(capsys, "keys", "create", "--balance", "1")
    key = out.strip().splitlines()[-1]
    key_id = table.list_keys()[0]["key_id"]
    code, out, _ = run(capsys, "keys", "revoke", key_id)
    assert code == 0 and key_id in out
    with pytest.raises(Exception) as exc:
        table.authenticate(f"Bearer {key}")
    assert getattr(exc.value, "status", None) == 401
    code, _, err = run(capsys, "keys", "revoke", "key_doesnotexist")
    assert code == 1 and "no key with id key_doesnotexist" in err


def test_balance_credit_and_show_are_exact_to_the_micro_dollar(table, capsys):
    account_id = table.create_account(1_000_000)
    code, out, _ = run(capsys, "balance", "credit", account_id, "0.000001")
    assert code == 0 and "$1.000001" in out and "1000001 micro-USD" in out
    code, out, _ = run(capsys, "balance", "show", account_id)
    assert code == 0 and "$1.000001" in out
    assert table.balance(account_id) == 1_000_001


def test_clear_errors_for_unknown_accounts_and_bad_amounts(table, capsys):
    code, _, err = run(capsys, "balance", "show", "acct_missing")
    assert code == 1 and "no account acct_missing" in err
    with pytest.raises(SystemExit) as exc:
        main(["keys", "create", "--balance", "0.0000001"])
    assert exc.value.code == 2
    assert "finer than one micro-dollar" in capsys.readouterr().err


def test_missing_table_is_a_one_line_error_not_a_traceback(table, capsys):
    code, _, err = run(capsys, "--table", "no-such-table", "balance", "show", "acct_x")
    assert code == 1
    assert err.startswith("imagegate: ResourceNotFoundException")
    assert "Traceback" not in err


def test_region_comes_from_the_aws_profile_when_not_set(table, monkeypatch, tmp_path):
    config = tmp_path / "config"
    config.write_text("[default]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    clients = AWSClients(Settings.from_env())
    assert clients.dynamodb.meta.region_name == "eu-west-1"


@pytest.mark.parametrize("amount", ["Infinity", "NaN", "-inf", "ten"])
def test_amounts_that_are_not_dollars_are_usage_errors(table, capsys, amount):
    with pytest.raises(SystemExit) as exc:
        main(["keys", "create", f"--balance={amount}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "not a USD amount" in err and "Traceback" not in err
    assert table.list_keys() == []

"""`imagegate`: the operator's admin CLI for keys and balances.

It talks to the local stack when AWS_ENDPOINT_URL is set (as `make serve` prints it), and to the deployed
stack otherwise: the table comes from --table, --stack (read from the stack's outputs) or IMAGEGATE_TABLE.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .accounts import Accounts
from .aws import AWSClients
from .config import Settings
from .money import micros_to_usd, usd_to_micros


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        accounts = Accounts(_clients(args).dynamodb, _table(args))
        return args.run(accounts, args)
    except CLIError as exc:
        print(f"imagegate: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # botocore's errors: say what failed without a traceback
        print(f"imagegate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


class CLIError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagegate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--table", help="DynamoDB table (default: $IMAGEGATE_TABLE, or 'imagegate')")
    parser.add_argument("--stack", help="read the table name from this CloudFormation stack's outputs")
    parser.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    groups = parser.add_subparsers(dest="group", required=True)

    keys = groups.add_parser("keys", help="create, list and revoke API keys").add_subparsers(required=True)
    create = keys.add_parser("create", help="create an account with a balance and a key for it")
    create.add_argument("--balance", required=True, type=_usd, help="opening balance in USD, e.g. 10")
    create.add_argument("--label", default="", help="a note to recognise the key by")
    create.add_argument(
        "--account", help="add the key to this existing account instead (balance is credited)"
    )
    create.set_defaults(run=_keys_create)
    keys.add_parser("list", help="list keys (prefixes and ids only)").set_defaults(run=_keys_list)
    revoke = keys.add_parser("revoke", help="revoke a key by its id (from `keys list`)")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=_keys_revoke)

    balance = groups.add_parser("balance", help="show and credit balances").add_subparsers(required=True)
    show = balance.add_parser("show", help="show an account's balance")
    show.add_argument("account_id")
    show.set_defaults(run=_balance_show)
    credit = balance.add_parser("credit", help="add USD to an account's balance")
    credit.add_argument("account_id")
    credit.add_argument("amount", type=_usd, help="USD to add, e.g. 5 or 0.25")
    credit.set_defaults(run=_balance_credit)
    return parser


def _usd(value: str) -> int:
    try:
        micros = usd_to_micros(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if micros < 0:
        raise argparse.ArgumentTypeError("amount must not be negative")
    return micros


def _clients(args: argparse.Namespace) -> AWSClients:
    settings = Settings.from_env()
    if args.region:
        settings = Settings(**{**settings.__dict__, "region": args.region})
    return AWSClients(settings, os.environ.get("AWS_ENDPOINT_URL"))


def _table(args: argparse.Namespace) -> str:
    if args.table:
        return args.table
    if args.stack:
        stacks = _clients(args).client("cloudformation").describe_stacks(StackName=args.stack)["Stacks"]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
        if "TableName" not in outputs:
            raise CLIError(f"stack {args.stack} has no TableName output; is it an imagegate stack?")
        return outputs["TableName"]
    return Settings.from_env().table


def _keys_create(accounts: Accounts, args: argparse.Namespace) -> int:
    account_id = args.account
    if account_id:
        if accounts.balance(account_id) is None:
            raise CLIError(f"no account {account_id}")
        accounts.credit(account_id, args.balance)
    else:
        account_id = accounts.create_account(args.balance, args.label)
    key = accounts.create_key(account_id, args.label)
    print(f"account {account_id}  balance {micros_to_usd(accounts.balance(account_id) or 0)}")
    print("key (shown once, store it now):")
    print(key)
    return 0


def _keys_list(accounts: Accounts, args: argparse.Namespace) -> int:
    rows = accounts.list_keys()
    if not rows:
        print("no keys")
        return 0
    _table_print(rows, ("key_id", "prefix", "account_id", "status", "label"))
    return 0


def _keys_revoke(accounts: Accounts, args: argparse.Namespace) -> int:
    if not accounts.revoke_key(args.key_id):
        raise CLIError(f"no key with id {args.key_id} (see `imagegate keys list`)")
    print(f"revoked {args.key_id}")
    return 0


def _balance_show(accounts: Accounts, args: argparse.Namespace) -> int:
    balance = accounts.balance(args.account_id)
    if balance is None:
        raise CLIError(f"no account {args.account_id}")
    print(f"{args.account_id}  {micros_to_usd(balance)}  ({balance} micro-USD)")
    return 0


def _balance_credit(accounts: Accounts, args: argparse.Namespace) -> int:
    if accounts.balance(args.account_id) is None:
        raise CLIError(f"no account {args.account_id}")
    balance = accounts.credit(args.account_id, args.amount)
    print(f"{args.account_id}  {micros_to_usd(balance)}  ({balance} micro-USD)")
    return 0


def _table_print(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


if __name__ == "__main__":
    sys.exit(main())

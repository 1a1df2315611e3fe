"""`imagegate`: the operator's admin CLI for accounts, keys, balances, usage, the ledger, webhooks and the
model catalog.

It talks to the local stack when AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_DYNAMODB) are set, as `make serve`
writes them to .imagegate/aws-env, and to the deployed stack otherwise: the table comes from --table, --stack
(read from the stack's outputs) or IMAGEGATE_TABLE. Amounts are USD with up to six decimals (money is kept in
micro-USD); API keys are shown once, when created or rotated, as the last line of the output.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
import re
import sys
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from botocore.exceptions import BotoCoreError, ClientError

from imagegate.aws import AWSClients, endpoints_from_env
from imagegate.catalog.lifecycle import Lifecycle
from imagegate.catalog.loader import Catalog, is_static, load_catalog, validate_document
from imagegate.catalog.sources import fetch_override
from imagegate.config import CATALOG_TTL_SECONDS, MAX_INTEGRATION_TIMEOUT_SECONDS, Deadlines, Settings
from imagegate.inputs.outbound import Outbound, OutboundError
from imagegate.jobs.webhooks import Endpoint, NoKey, Webhooks
from imagegate.money import ledger, statements
from imagegate.money.accounts import Accounts, KeyInfo, NotFound
from imagegate.money.billing import Billing
from imagegate.units import micros_to_decimal, micros_to_usd, usd_to_micros

if TYPE_CHECKING:
    from imagegate.money.topups import Topups

# A synchronous request's slot at the longest integration timeout the template allows: a younger
# reservation may belong to a request still running, whatever the stack's timeout.
MIN_SWEEP_AGE_S = Deadlines(sync_s=MAX_INTEGRATION_TIMEOUT_SECONDS).request_settle_s
SAFE_SWEEP_AGE_S = Deadlines(sync_s=MAX_INTEGRATION_TIMEOUT_SECONDS).stale_reservation_s

DEFAULT = "default"  # a key limit given as this falls back to the deployment's default
CREDIT_REASON = "manual credit"  # what `balance credit` records when no --reason is given
# `usage --by`: the fields a report row is summed over
GROUPINGS: dict[str, tuple[str, ...]] = {
    "day": ("day",),
    "model": ("model",),
    "key": ("account_id", "key_id"),
}
USAGE_COLUMNS = ("requests", "images", "charged", "charged_usd", "refunded", "refunded_usd")
MAX_ENTRIES = 1000  # `accounts show --entries`: one Query page of them at most
MAX_LABEL = 200  # characters in a label, reason or actor: a note, not a document
# What must never reach a terminal from the table: C0 and C1 controls (newlines, tabs, ANSI escapes), the
# invisible bidirectional controls that reorder what a line appears to say, line/paragraph separators, and
# lone surrogates (undecodable bytes in argv arrive as them, and DynamoDB cannot store them).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class CLIError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A usage mistake in one line (argparse would print the whole usage first); exit status 2."""
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


@dataclass
class Admin:
    """What every command works on: the table, through the same classes the service uses."""

    dynamodb: Any
    table: str
    actor: str
    aws: Any = None  # AWSClients (webhooks); `dynamodb` is its client
    outbound: Outbound | None = None  # how webhook URLs are checked and called (tests: local servers)
    webhook_key: str = ""  # the KMS key that seals webhook secrets

    @cached_property
    def accounts(self) -> Accounts:
        return Accounts(self.dynamodb, self.table)

    @cached_property
    def billing(self) -> Billing:
        return Billing(self.dynamodb, self.table)

    @cached_property
    def webhooks(self) -> Webhooks:
        return Webhooks(self.aws, self.table, key_id=self.webhook_key, outbound=self.outbound)


def main(argv: list[str] | None = None, outbound: Outbound | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        aws = _clients(args)
        if getattr(args, "tableless", False):  # the catalog's commands: no table, AWS only if they need it
            return args.run(Admin(None, "", "", aws, outbound), args)
        admin = Admin(aws.dynamodb, _table(args), args.actor or _login(), aws, outbound)
        if args.group == "webhooks":
            admin.webhook_key = _webhook_key(args)
        return args.run(admin, args)
    except (CLIError, NotFound, ValueError, NoKey) as exc:  # an operator's mistake, said in their terms
        print(f"imagegate: {exc}", file=sys.stderr)
        return 1
    except (BotoCoreError, ClientError) as exc:  # AWS's answer: say what failed, without a traceback
        print(f"imagegate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


# --- arguments ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="imagegate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--table", help="DynamoDB table (default: $IMAGEGATE_TABLE, or 'imagegate')")
    parser.add_argument("--stack", help="read the table name from this CloudFormation stack's outputs")
    parser.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    parser.add_argument(
        "--actor",
        type=_text,
        metavar="NAME",
        help="who the ledger records for balance changes (default: cli:<login name>)",
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    accounts = _group(groups, "accounts", "create, show and list accounts")
    create = _command(
        accounts, "accounts create", _accounts_create, "create an account; its id is the last line"
    )
    create.add_argument(
        "--balance", type=_amount, default=0, metavar="USD", help="opening balance in USD (default 0)"
    )
    create.add_argument("--label", type=_text, default="", help="a note to recognise the account by")
    show = _command(
        accounts,
        "accounts show",
        _accounts_show,
        "an account's balance, keys, latest ledger entries and latest requests",
    )
    show.add_argument("account_id")
    show.add_argument(
        "--entries",
        type=_entries,
        default=10,
        metavar="N",
        help=f"ledger entries and requests to show (default 10 each, at most {MAX_ENTRIES})",
    )
    _command(accounts, "accounts list", _accounts_list, "every account with its balance")
    account_limits = _command(
        accounts,
        "accounts limits",
        _accounts_limits,
        "show or set an account's rate limits over all its keys; `default` restores the deployment's",
    )
    account_limits.add_argument("account_id")
    _limit_options(account_limits)
    for status, verb, help in (
        (
            "suspended",
            "suspend",
            "refuse the account's jobs from AWS services (revoke its keys to stop HTTP too)",
        ),
        ("active", "resume", "take the account's jobs from AWS services again"),
    ):
        _command(accounts, f"accounts {verb}", _accounts_status(status), help).add_argument("account_id")

    keys = _group(groups, "keys", "create, list, rotate and revoke API keys; set their rate limits")
    create = _command(
        keys,
        "keys create",
        _keys_create,
        "issue a key for an account (--account), or for a new account (--balance); the key is the last line",
    )
    create.add_argument("--account", metavar="ID", help="the existing account to issue the key for")
    create.add_argument(
        "--balance",
        type=_amount,
        metavar="USD",
        help="without --account: the new account's opening balance in USD; with it: USD to credit",
    )
    create.add_argument(
        "--label", type=_text, default="", help="a note to recognise the key (and a new account) by"
    )
    create.add_argument(
        "--images-per-minute", type=_count, metavar="N", help="images per minute (default: deployment's)"
    )
    create.add_argument(
        "--max-concurrent", type=_count, metavar="N", help="requests at once (default: deployment's)"
    )
    create.add_argument(
        "--budget", type=_positive_amount, metavar="USD", help="what the key may spend in all (default: none)"
    )
    create.add_argument(
        "--admin",
        action="store_true",
        help="the key may also list, create and revoke its account's keys (the console, /v1/keys)",
    )
    listing = _command(keys, "keys list", _keys_list, "list keys: ids and prefixes, never the keys")
    listing.add_argument("--account", metavar="ID", help="only this account's keys")
    rotate = _command(
        keys,
        "keys rotate",
        _keys_rotate,
        "replace a key with a new one (same account, label, limits); the old one stops working",
    )
    rotate.add_argument("key_id")
    revoke = _command(keys, "keys revoke", _keys_revoke, "revoke a key by its id (from `keys list`), at once")
    revoke.add_argument("key_id")
    limits = _command(
        keys,
        "keys limits",
        _keys_limits,
        "show or set a key's rate limits; `default` restores the deployment's",
    )
    limits.add_argument("key_id")
    _limit_options(limits)

    balance = _group(groups, "balance", "show, credit and adjust balances (every change is a ledger entry)")
    show = _command(balance, "balance show", _balance_show, "an account's balance")
    show.add_argument("account_id")
    credit = _command(balance, "balance credit", _balance_credit, "add USD to an account's balance")
    credit.add_argument("account_id")
    credit.add_argument("amount", type=_positive_amount, help="USD to add, e.g. 5 or 0.25")
    credit.add_argument(
        "--reason",
        type=_text,
        default=CREDIT_REASON,
        help=f"recorded in the ledger (default: {CREDIT_REASON!r})",
    )
    adjust = _command(
        balance, "balance adjust", _balance_adjust, "correct a balance up or down (never below zero)"
    )
    adjust.add_argument("account_id")
    adjust.add_argument("amount", type=_signed_amount, help="USD to add (e.g. 1.5) or remove (e.g. -1.5)")
    adjust.add_argument("--reason", type=_text, required=True, help="why, recorded in the ledger (required)")

    usage = _command(groups, "usage", _usage, "requests, images and money per day, model or key")
    usage.add_argument(
        "--days",
        type=_days,
        default=30,
        metavar="N",
        help=f"the last N UTC days, today included (default 30, at most {ledger.MAX_USAGE_DAYS})",
    )
    usage.add_argument("--account", metavar="ID", help="only this account")
    usage.add_argument(
        "--by", choices=tuple(GROUPINGS), default="day", help="one row per day, model or key (default: day)"
    )
    usage.add_argument(
        "--format",
        choices=("table", "csv", "json"),
        default="table",
        help="table for people; csv and json (micro-USD integers and USD strings) for programs",
    )

    reconcile = _command(
        groups, "reconcile", _reconcile, "check balances against the ledger; exit status 1 on any mismatch"
    )
    which = reconcile.add_mutually_exclusive_group(required=True)
    which.add_argument("account_id", nargs="?", help="the account to check")
    which.add_argument("--all", action="store_true", help="check every account")

    webhooks = _group(
        groups, "webhooks", "an account's webhook endpoint for finished image jobs (Standard Webhooks)"
    )
    set_hook = _command(
        webhooks,
        "webhooks set",
        _webhooks_set,
        "set (or replace) the endpoint: https to a public address; its new signing secret is the last line",
    )
    set_hook.add_argument("account_id")
    set_hook.add_argument("url")
    for name, run, help in (
        ("show", _webhooks_show, "the endpoint's URL and when it was set (never its secret)"),
        ("remove", _webhooks_remove, "remove the endpoint; pending deliveries then fail"),
        ("test", _webhooks_test, "send a signed webhook.test event now and print the endpoint's answer"),
        ("seal", _webhooks_seal, "encrypt a secret an earlier version stored in plaintext (unchanged)"),
    ):
        _command(webhooks, f"webhooks {name}", run, help).add_argument("account_id")

    billing = _group(groups, "billing", "Stripe top-ups: the packs sold, and the events Stripe sent")
    _command(billing, "billing packs", _billing_packs, "the credit packs and bounds sold (IMAGEGATE_TOPUPS)")
    events = _command(
        billing,
        "billing events",
        _billing_events,
        "Stripe's events as they arrived, newest first, and what each did (credit, reversal, unapplied...)",
    )
    events.add_argument("--account", metavar="ID", help="only this account's events")
    catalog = _group(groups, "catalog", "check and publish the catalog override (docs/catalog.md)")
    validate = _command(
        catalog,
        "catalog validate",
        _catalog_validate,
        "check a catalog document as the service would load it",
    )
    validate.add_argument("file", help="the override document, a JSON file")
    validate.set_defaults(tableless=True)
    push = _command(
        catalog,
        "catalog push",
        _catalog_push,
        "validate a catalog document, then upload it to the stack's CatalogSource (S3 or SSM); functions "
        "read it within their cache's lifetime, without a redeploy",
    )
    push.add_argument("file", help="the override document, a JSON file")
    push.add_argument(
        "--to", metavar="SOURCE", help="s3://bucket/key or ssm:/name (default: $IMAGEGATE_CATALOG)"
    )
    push.set_defaults(tableless=True)
    models = _command(
        groups,
        "models",
        _models,
        "every public model id with its status, the routes that serve it and the days to their shutdown",
    )
    models.add_argument("--json", action="store_true", help="a JSON list of {id, status, routes}")
    models.add_argument("--date", type=_date, metavar="YYYY-MM-DD", help="as on this day (default: today)")
    models.set_defaults(tableless=True)

    sweep = _command(
        groups,
        "sweep",
        _sweep,
        "refund reservations that a killed request left open (each exactly once); image jobs are closed "
        "by the scheduled sweeper, on their own deadlines",
    )
    sweep.add_argument("--account", metavar="ID", help="only this account (default: every account)")
    sweep.add_argument(
        "--older-than",
        type=_sweep_age,
        # It does not know the stack's timeout: the default is safe at the longest allowed.
        default=SAFE_SWEEP_AGE_S,
        metavar="SECONDS",
        help=f"only reservations at least this old (default {SAFE_SWEEP_AGE_S})",
    )
    return parser


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date like 2026-12-06: {value!r}") from None


def _group(groups: Any, name: str, help: str) -> Any:
    group = groups.add_parser(name, help=help, description=help)
    return group.add_subparsers(dest="command", required=True, metavar="COMMAND")


def _command(
    commands: Any, name: str, run: Callable[[Admin, argparse.Namespace], int], help: str
) -> argparse.ArgumentParser:
    parser = commands.add_parser(name.split()[-1], help=help, description=help, prog=f"imagegate {name}")
    parser.set_defaults(run=run)
    return parser


def _parsed(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a checker raising ValueError: argparse then reports the message."""

    def parse(value: str) -> Any:
        try:
            return check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse


@_parsed
def _amount(value: str) -> int:
    micros = usd_to_micros(value)
    if micros < 0:
        raise ValueError("amount must not be negative")
    return micros


@_parsed
def _positive_amount(value: str) -> int:
    micros = usd_to_micros(value)
    if micros <= 0:
        raise ValueError("amount must be more than zero (use `balance adjust` to take money off)")
    return micros


@_parsed
def _signed_amount(value: str) -> int:
    micros = usd_to_micros(value)
    if micros == 0:
        raise ValueError("an adjustment of zero changes nothing")
    return micros


@_parsed
def _sweep_age(value: str) -> int:
    """A request may run for up to the integration timeout: sweeping younger reservations would refund live
    ones."""
    seconds = _whole(value)
    if seconds < MIN_SWEEP_AGE_S:
        raise ValueError(f"must be at least {MIN_SWEEP_AGE_S} seconds, so running requests are never swept")
    return seconds


@_parsed
def _count(value: str) -> int:
    return _whole(value)


@_parsed
def _days(value: str) -> int:
    """A usage window: each day is more to read, so it has a ceiling (a leap year)."""
    days = _whole(value.lstrip("0")[:4] or "0")  # no int() of a thousand digits
    if days > ledger.MAX_USAGE_DAYS:
        raise ValueError(f"must be from 1 to {ledger.MAX_USAGE_DAYS} days")
    return days


@_parsed
def _entries(value: str) -> int:
    count = _whole(value.lstrip("0")[:5] or "0")  # no int() of a thousand digits
    if count > MAX_ENTRIES:
        raise ValueError(f"must be from 1 to {MAX_ENTRIES}")
    return count


@_parsed
def _text(value: str) -> str:
    """A label, reason or actor: stored, and shown in tables, so one line of printable text."""
    if _UNSAFE.search(value):
        raise ValueError(
            "must not contain control characters (newlines, tabs, terminal escapes, bidirectional controls) "
            "or bytes that are not UTF-8"
        )
    if len(value) > MAX_LABEL:
        raise ValueError(f"must be at most {MAX_LABEL} characters, got {len(value)}")
    return value


def _whole(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return int(value)


@_parsed
def _limit(value: str) -> int | str:
    return DEFAULT if value == DEFAULT else _count(value)


def _clients(args: argparse.Namespace) -> AWSClients:
    settings = Settings.from_env()
    if args.region:
        settings = Settings(**{**settings.__dict__, "region": args.region})
    return AWSClients(settings, os.environ.get("AWS_ENDPOINT_URL"), endpoints_from_env(os.environ))


def _table(args: argparse.Namespace) -> str:
    if args.table:
        return args.table
    if args.stack:
        return _stack_output(args, "TableName")
    return Settings.from_env().table


def _webhook_key(args: argparse.Namespace) -> str:
    if args.stack:
        return _stack_output(args, "WebhookSecretsKeyArn")
    return Settings.from_env().webhook_key_id


def _stack_output(args: argparse.Namespace, name: str) -> str:
    stacks = _clients(args).client("cloudformation").describe_stacks(StackName=args.stack)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    if name not in outputs:
        raise CLIError(f"stack {args.stack} has no {name} output; is it an imagegate stack of this version?")
    return outputs[name]


def _login() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except OSError:  # no login name in the environment or the password database (some containers)
        return "cli"


# --- accounts -------------------------------------------------------------------------------------------


def _accounts_create(admin: Admin, args: argparse.Namespace) -> int:
    account_id = admin.accounts.create_account(args.balance, args.label, actor=admin.actor)
    print(
        f"created account with balance {micros_to_usd(args.balance)}"
        + (f", label {args.label}" if args.label else "")
    )
    print(account_id)
    return 0


def _accounts_show(admin: Admin, args: argparse.Namespace) -> int:
    account = admin.accounts.show_account(args.account_id)
    keys = admin.accounts.list_keys(account.account_id)
    active = sum(key["status"] == "active" for key in keys)
    _print_fields(
        {
            "account": account.account_id,
            "label": account.label,
            "created": _when(account.created_at),
            "balance": _balance_text(account.balance),
            "keys": f"{active} active, {len(keys) - active} revoked",
        }
    )
    if keys:
        print()
        _print_keys(keys, with_account=False)
    entries = ledger.latest_entries(admin.dynamodb, admin.table, account.account_id, args.entries)
    if entries:
        print()
        print("latest ledger entries:")
        _print_table(
            ("WHEN (UTC)", "KIND", "AMOUNT", "REQUEST OR REASON", "ACTOR"),
            [
                (_when(e.at_ms / 1000), e.kind, micros_to_usd(e.amount), e.request_id or e.reason, e.actor)
                for e in entries
            ],
            right={2},
        )
    # A request is its own ledger record (billing.py): what it charged is there, not in an entry.
    requests, _ = statements.request_log(admin.dynamodb, admin.table, account.account_id, args.entries)
    if requests:
        print()
        print("latest requests:")
        _print_table(
            ("WHEN (UTC)", "REQUEST", "STATUS", "CHARGED", "MODEL"),
            [
                (
                    _when(r["created_at"]),
                    r["request_id"],
                    r["status"],
                    micros_to_usd(-r["charged_micros"]),
                    r["model"],
                )
                for r in reversed(requests)
            ],
            right={3},
        )
    return 0


def _accounts_list(admin: Admin, args: argparse.Namespace) -> int:
    accounts = admin.accounts.list_accounts()
    if not accounts:
        print("no accounts")
        return 0
    active: dict[str, int] = {}
    for key in admin.accounts.list_keys():
        active[key["account_id"]] = active.get(key["account_id"], 0) + (key["status"] == "active")
    _print_table(
        ("ACCOUNT_ID", "LABEL", "BALANCE", "ACTIVE KEYS", "CREATED (UTC)"),
        [
            (
                a.account_id,
                a.label,
                micros_to_usd(a.balance),
                active.get(a.account_id, 0),
                _when(a.created_at),
            )
            for a in accounts
        ],
        right={2, 3},
    )
    return 0


# --- keys -----------------------------------------------------------------------------------------------


def _keys_create(admin: Admin, args: argparse.Namespace) -> int:
    account_id = args.account
    if account_id:
        if args.balance:
            admin.billing.credit(
                account_id, args.balance, reason=CREDIT_REASON, kind="credit", actor=admin.actor
            )
    elif args.balance is None:
        raise CLIError("give --account ID for an existing account, or --balance USD to open a new one")
    else:
        account_id = admin.accounts.create_account(args.balance, args.label, actor=admin.actor)
    key = admin.accounts.create_key(
        account_id,
        args.label,
        images_per_minute=args.images_per_minute,
        max_concurrent=args.max_concurrent,
        admin=args.admin,
        budget=args.budget,
    )
    print(f"account {account_id}  balance {micros_to_usd(admin.accounts.show_account(account_id).balance)}")
    _print_new_key(admin.accounts, key)
    return 0


def _keys_list(admin: Admin, args: argparse.Namespace) -> int:
    keys = admin.accounts.list_keys(args.account)
    if not keys:
        print("no keys" + (f" for account {args.account}" if args.account else ""))
        return 0
    _print_keys(keys, with_account=not args.account)
    return 0


def _keys_rotate(admin: Admin, args: argparse.Namespace) -> int:
    key = admin.accounts.rotate_key(args.key_id)
    print(f"revoked {args.key_id}; its replacement has the same account, label and limits")
    _print_new_key(admin.accounts, key)
    return 0


def _keys_revoke(admin: Admin, args: argparse.Namespace) -> int:
    if not admin.accounts.revoke_key(args.key_id):
        raise NotFound(f"no key with id {args.key_id} (see `imagegate keys list`)")
    print(f"revoked {args.key_id}")
    return 0


def _limit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images-per-minute", type=_limit, metavar="N|default", help="images per minute")
    parser.add_argument("--max-concurrent", type=_limit, metavar="N|default", help="requests at once")


def _accounts_status(status: str) -> Callable[[Admin, argparse.Namespace], int]:
    def run(admin: Admin, args: argparse.Namespace) -> int:
        admin.accounts.set_account_status(args.account_id, status)
        print(f"{args.account_id} is {status}")
        return 0

    return run


def _accounts_limits(admin: Admin, args: argparse.Namespace) -> int:
    account = admin.accounts.show_account(args.account_id)
    if args.images_per_minute is not None or args.max_concurrent is not None:
        admin.accounts.set_account_limits(
            account.account_id,
            images_per_minute=_new_limit(args.images_per_minute, account.images_per_minute),
            max_concurrent=_new_limit(args.max_concurrent, account.max_concurrent),
        )
        account = admin.accounts.show_account(args.account_id)
    print(
        f"{account.account_id}  images per minute: {_limit_text(account.images_per_minute)}  "
        f"concurrent requests: {_limit_text(account.max_concurrent)}"
    )
    return 0


def _keys_limits(admin: Admin, args: argparse.Namespace) -> int:
    key = admin.accounts.get_key(args.key_id)
    if args.images_per_minute is not None or args.max_concurrent is not None:
        key = admin.accounts.set_limits(
            args.key_id,
            images_per_minute=_new_limit(args.images_per_minute, key["images_per_minute"]),
            max_concurrent=_new_limit(args.max_concurrent, key["max_concurrent"]),
        )
    print(
        f"{key['key_id']}  images per minute: {_limit_text(key['images_per_minute'])}  "
        f"concurrent requests: {_limit_text(key['max_concurrent'])}"
    )
    return 0


def _new_limit(given: int | str | None, current: int | None) -> int | None:
    """A limit option's effect: absent keeps the current limit, `default` clears it."""
    if given is None:
        return current
    return None if given == DEFAULT else int(given)


def _print_new_key(accounts: Accounts, api_key: str) -> None:
    key = accounts.authenticate(f"Bearer {api_key}")
    images_per_minute, max_concurrent = key.limiter.overrides
    print(
        f"key {key.key_id}  images per minute: {_limit_text(images_per_minute)}  "
        f"concurrent requests: {_limit_text(max_concurrent)}"
    )
    print("key (shown once, store it now):")
    print(api_key)


def _print_keys(keys: Sequence[KeyInfo], with_account: bool) -> None:
    columns = ("KEY_ID", "PREFIX", *(("ACCOUNT_ID",) if with_account else ()), "STATUS", "LABEL")
    _print_table(
        (*columns, "IMAGES/MIN", "CONCURRENT", "CREATED (UTC)"),
        [
            (
                k["key_id"],
                k["prefix"],
                *((k["account_id"],) if with_account else ()),
                k["status"],
                k["label"],
                _limit_text(k["images_per_minute"]),
                _limit_text(k["max_concurrent"]),
                _when(k["created_at"]),
            )
            for k in keys
        ],
    )


# --- balances -------------------------------------------------------------------------------------------


def _balance_show(admin: Admin, args: argparse.Namespace) -> int:
    account = admin.accounts.show_account(args.account_id)
    print(f"{account.account_id}  {_balance_text(account.balance)}")
    return 0


def _balance_credit(admin: Admin, args: argparse.Namespace) -> int:
    return _change_balance(admin, args, "credit")


def _balance_adjust(admin: Admin, args: argparse.Namespace) -> int:
    return _change_balance(admin, args, "adjust")


def _change_balance(admin: Admin, args: argparse.Namespace, kind: str) -> int:
    balance = admin.billing.credit(
        args.account_id, args.amount, reason=args.reason, kind=kind, actor=admin.actor
    )
    print(f"{args.account_id}  {_balance_text(balance)}")
    return 0


# --- usage ----------------------------------------------------------------------------------------------


def _usage(admin: Admin, args: argparse.Namespace) -> int:
    rows = ledger.usage(admin.dynamodb, admin.table, days=args.days, account_id=args.account)
    fields = GROUPINGS[args.by]
    grouped = ledger.group_usage(rows, fields)
    if args.format == "table":
        _usage_table(grouped, fields, args.days)
    elif args.format == "json":
        print(json.dumps([_usage_record(row, fields) for row in grouped], indent=2))
    else:
        writer = csv.DictWriter(sys.stdout, fieldnames=[*fields, *USAGE_COLUMNS], lineterminator="\n")
        writer.writeheader()
        writer.writerows(
            {name: _shown(v) if isinstance(v, str) else v for name, v in _usage_record(row, fields).items()}
            for row in grouped
        )
    return 0


def _usage_record(row: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """A row for machines: micro-USD integers, and the same amounts as exact USD strings beside them."""
    usd = {f"{name}_usd": micros_to_decimal(row[name]) for name in ("charged", "refunded")}
    return {name: row[name] if name in row else usd[name] for name in (*fields, *USAGE_COLUMNS)}


def _usage_table(grouped: list[dict[str, Any]], fields: tuple[str, ...], days: int) -> None:
    if not grouped:
        print("no usage " + ("today" if days == 1 else f"in the last {days} days"))
        return

    def counts(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["requests"], row["images"], micros_to_usd(row["charged"]), micros_to_usd(row["refunded"]))

    total = {name: sum(row[name] for row in grouped) for name in ledger.USAGE_COUNTS}
    _print_table(
        (*(f.upper() for f in fields), "REQUESTS", "IMAGES", "CHARGED", "REFUNDED"),
        [(*(row[f] for f in fields), *counts(row)) for row in grouped],
        right=range(len(fields), len(fields) + 4),
        total=("total", *[""] * (len(fields) - 1), *counts(total)),
    )


# --- the ledger -----------------------------------------------------------------------------------------


def _reconcile(admin: Admin, args: argparse.Namespace) -> int:
    if args.all:
        ids = [a.account_id for a in admin.accounts.list_accounts()]
    else:
        ids = [admin.accounts.show_account(args.account_id).account_id]
    failed = busy = 0
    for account_id in ids:
        result = ledger.reconcile(admin.dynamodb, admin.table, account_id)
        busy += result.inconclusive
        failed += not result.ok and not result.inconclusive
        verdict = "ok" if result.ok else "BUSY" if result.inconclusive else "MISMATCH"
        in_flight = f"{result.in_flight} ({micros_to_usd(result.in_flight_micros)})"
        print(
            f"{account_id}  {verdict}  balance {micros_to_usd(result.balance or 0)}  "
            f"ledger {micros_to_usd(result.expected)}  in flight {in_flight}"
        )
        for problem in result.problems:
            print(f"  - {problem}")
        if result.stale:
            print(f"  abandoned reservations: {len(result.stale)} (`imagegate sweep` refunds them)")
    if args.all:
        print(f"accounts checked: {len(ids)}, with problems: {failed}, busy (no verdict): {busy}")
    return 1 if failed else 2 if busy else 0


def _sweep(admin: Admin, args: argparse.Namespace) -> int:
    account_id = admin.accounts.show_account(args.account).account_id if args.account else None
    closed = admin.billing.sweep(older_than_s=args.older_than, account_id=account_id)
    if closed:
        _print_table(
            ("REQUEST_ID", "ACCOUNT_ID", "MODEL", "RESERVED (UTC)", "CHARGED", "REFUNDED"),
            [
                (
                    r.request_id,
                    r.account_id,
                    r.model,
                    _when(r.created_at),
                    micros_to_usd(charged),
                    micros_to_usd(r.amount - charged),
                )
                for r, charged in closed
            ],
            right={4, 5},
        )
    refunded = micros_to_usd(sum(r.amount - charged for r, charged in closed))
    print(f"stale reservations closed: {len(closed)} (refunded {refunded})")
    return 0


# --- webhooks -------------------------------------------------------------------------------------------


def _webhooks_set(admin: Admin, args: argparse.Namespace) -> int:
    admin.accounts.show_account(args.account_id)  # NotFound for no such account
    try:
        secret = admin.webhooks.set(args.account_id, args.url)
    except OutboundError as exc:
        raise CLIError(f"webhook URL refused ({exc.code}): {exc.message}") from exc
    print(f"webhook for account {args.account_id}: {_shown(args.url)}")
    print("signing secret (shown once, store it now; verify deliveries with it):")
    print(secret)
    return 0


def _webhooks_show(admin: Admin, args: argparse.Namespace) -> int:
    endpoint = _endpoint(admin, args.account_id)
    secret = "encrypted (KMS)" if endpoint.is_sealed else "stored in plaintext: run `webhooks seal`"
    fields = {"url": endpoint.url, "set": _when(endpoint.created_at), "secret": secret}
    _print_fields({"account": endpoint.account_id, **fields})
    return 0


def _webhooks_seal(admin: Admin, args: argparse.Namespace) -> int:
    _endpoint(admin, args.account_id)
    if admin.webhooks.seal(args.account_id):
        print(f"the webhook secret of account {args.account_id} is now encrypted (unchanged for receivers)")
    else:
        print(f"the webhook secret of account {args.account_id} was already encrypted")
    return 0


def _webhooks_remove(admin: Admin, args: argparse.Namespace) -> int:
    if not admin.webhooks.remove(args.account_id):
        raise CLIError(f"account {args.account_id} has no webhook endpoint")
    print(f"removed the webhook endpoint of account {args.account_id}")
    return 0


def _webhooks_test(admin: Admin, args: argparse.Namespace) -> int:
    url = _endpoint(admin, args.account_id).url
    try:
        status = admin.webhooks.test(args.account_id)
    except OutboundError as exc:
        raise CLIError(f"test event not delivered to {_shown(url)} ({exc.code}): {exc.message}") from exc
    delivered = 200 <= status < 300
    outcome = "delivered" if delivered else "not delivered"
    print(f"test event sent to {_shown(url)}: HTTP {status} ({outcome})")
    return 0 if delivered else 1


def _endpoint(admin: Admin, account_id: str) -> Endpoint:
    endpoint = admin.webhooks.get(account_id)
    if endpoint is None:
        raise CLIError(f"account {account_id} has no webhook endpoint")
    return endpoint


def _topups(admin: Admin) -> Topups:
    from imagegate.money.topups import Topups, load_config

    return Topups(admin.dynamodb, admin.table, load_config(Settings.from_env().topups), dict)


def _billing_packs(admin: Admin, args: argparse.Namespace) -> int:
    config = _topups(admin).config.public()
    _print_table(
        ("pack", "label", "credit_usd", "price_usd"),
        [(p["id"], p["label"], p["credit_usd"], p["price_usd"]) for p in config["data"]],
        right=(2, 3),
    )
    print(
        f"custom amounts: {config['minimum_usd']} to {config['maximum_usd']} {config['currency'].upper()};"
        f" fee {config['fee_percent']}% + {config['fee_fixed_usd']}"
    )
    return 0


def _billing_events(admin: Admin, args: argparse.Namespace) -> int:
    rows = _topups(admin).events(args.account)
    if not rows:
        print("no Stripe events" + (f" for account {args.account}" if args.account else ""))
        return 0
    _print_table(
        ("received", "event", "type", "outcome", "account", "amount", "reason"),
        [
            (
                _when(r["received_at"]),
                r["id"],
                r["type"],
                r["outcome"],
                r["account_id"] or "-",
                micros_to_usd(r["amount_micros"]),
                r["reason"],
            )
            for r in rows
        ],
        right=(5,),
    )
    return 0


# --- output ---------------------------------------------------------------------------------------------


# --- the catalog ----------------------------------------------------------------------------------------


def _read_catalog_file(path: str) -> tuple[str, Catalog]:
    """A file's text and the catalog it makes over the packaged one; a ValueError naming what is wrong."""
    try:
        text = open(path, encoding="utf-8").read()  # noqa: SIM115 (read at once)
        document = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CLIError(f"{path}: {exc}") from None
    return text, validate_document(document, Settings.from_env())


def _catalog_validate(admin: Admin, args: argparse.Namespace) -> int:
    _, catalog = _read_catalog_file(args.file)
    dated = len(catalog.lifecycles.dates)
    print(f"{args.file}: valid ({len(catalog.models)} models, {len(catalog.aliases)} aliases, {dated} dated)")
    return 0


# An SSM String parameter holds 4 KB in the standard tier and 8 KB in the advanced one (which costs a little).
SSM_STANDARD_BYTES = 4096
SSM_ADVANCED_BYTES = 8192


def _catalog_push(admin: Admin, args: argparse.Namespace) -> int:
    text, _ = _read_catalog_file(args.file)
    target = (args.to or Settings.from_env().catalog).strip()
    if target.startswith("s3://"):
        bucket, _, key = target.removeprefix("s3://").partition("/")
        if not bucket or not key:
            raise CLIError(f"{target}: an S3 catalog is s3://bucket/key")
        admin.aws.s3.put_object(Bucket=bucket, Key=key, Body=text.encode(), ContentType="application/json")
    elif target.startswith("ssm:"):
        size = len(text.encode())
        if size > SSM_ADVANCED_BYTES:
            raise CLIError(
                f"{args.file} is {size} bytes; an SSM parameter holds {SSM_ADVANCED_BYTES}: use S3"
            )
        admin.aws.client("ssm").put_parameter(
            Name=target.removeprefix("ssm:"),
            Value=text,
            Type="String",
            Overwrite=True,
            Tier="Standard" if size <= SSM_STANDARD_BYTES else "Advanced",
        )
    else:
        raise CLIError("say where to push: --to s3://bucket/key or ssm:/name (the stack's CatalogSource)")
    print(f"{args.file}: valid, pushed to {target}; functions read it within {CATALOG_TTL_SECONDS:g} s")
    return 0


def _models(admin: Admin, args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    override = None
    if settings.catalog.strip() and not is_static(settings.catalog):
        override = json.loads(fetch_override(admin.aws, settings.catalog.strip()))
    catalog = load_catalog(settings, override)
    today = args.date or datetime.now(UTC).date()
    listed = []
    for model_id in catalog.contracts:
        status = catalog.status(model_id, today)
        # A retired model shows the routes that went; the others, the routes that serve them.
        routes = status.routes or catalog.routes[catalog.contracts[model_id].id]
        listed.append(
            {
                "id": model_id,
                "status": status.status,
                "routes": [
                    {"provider": r.provider, "model": r.model, "shutdown_at": _iso(catalog.lifecycles.of(r))}
                    for r in routes
                ],
                **({"alias_of": catalog.aliases[model_id]} if model_id in catalog.aliases else {}),
            }
        )
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    rows = []
    for model in listed:
        for i, route in enumerate(model["routes"] or [{"provider": "-", "model": "-", "shutdown_at": None}]):
            left = (date.fromisoformat(route["shutdown_at"]) - today).days if route["shutdown_at"] else None
            days = "-" if left is None else (f"{left}" if left > 0 else "past")
            first = i == 0
            rows.append(
                [
                    model["id"] if first else "",
                    model["status"] if first else "",
                    f"{route['provider']} {route['model']}",
                    route["shutdown_at"] or "-",
                    days,
                ]
            )
    _print_table(["MODEL", "STATUS", "ROUTE", "SHUTDOWN", "DAYS LEFT"], rows, right={4})
    return 0


def _iso(lifecycle: Lifecycle | None) -> str | None:
    return lifecycle.shutdown_at.isoformat() if lifecycle and lifecycle.shutdown_at else None


def _print_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    right: Collection[int] = (),
    total: Sequence[Any] | None = None,
) -> None:
    """Columns padded to their widest cell; `right`: columns aligned right (amounts, counts); `total`: a
    last row, under a rule."""
    cells = [list(headers), *([_shown(c) for c in row] for row in [*rows, *([total] if total else [])])]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]
    if total:
        lines.insert(-1, "  ".join("-" * w for w in widths))
    print("\n".join(line.rstrip() for line in lines))


def _print_fields(fields: dict[str, str]) -> None:
    width = max(len(name) for name in fields)
    for name, value in fields.items():
        print(f"{name.ljust(width)}  {_shown(value)}")


def _shown(value: object) -> str:
    """A value as one line of printable text: stored text can predate the checks on what is typed
    (or come from elsewhere), so controls are shown as escapes (`\\n`, `\\x1b`, `\\u202e`), never sent."""
    return _UNSAFE.sub(lambda m: _ESCAPES.get(m[0]) or _escape(m[0]), str(value))


def _escape(char: str) -> str:
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def _balance_text(micros: int) -> str:
    return f"{micros_to_usd(micros)}  ({micros} micro-USD)"


def _limit_text(limit: int | None) -> str:
    return DEFAULT if limit is None else str(limit)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


if __name__ == "__main__":
    sys.exit(main())

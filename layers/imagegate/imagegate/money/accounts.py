"""Accounts and API keys in DynamoDB. Keys are stored only as SHA-256 hashes.

Items (single table, `pk`/`sk`):
  KEY#<sha256 of key>  / KEY          -> account_id, key_id, prefix, label, status, created_at, admin (a
                                         key that may manage its account's keys: the console), and the key's
                                         optional limits images_per_minute, max_concurrent, and budget with
                                         spent (micro-USD: what its requests may spend in all, and what they
                                         have reserved or been charged; billing.py keeps `spent`)
  KEYS                 / <key_id>     -> the same, plus key_pk: the admin index (list, rotate, revoke, limits)
  ACCOUNT#<account_id> / ACCOUNT      -> balance (micro-USD), label, created_at, status (absent: active;
                                         `suspended` refuses jobs from AWS services: for_service)
  ACCOUNTS             / <account_id> -> label, created_at: the admin index of accounts (list)
Balances change only with a ledger entry in the same transaction (ledger.py); an opening balance too.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypedDict

from imagegate.errors import APIError
from imagegate.money import ledger
from imagegate.money.ratelimit import State, overrides
from imagegate.table import account_pk, batch_get, item_key, query, read_balance, transact

KEY_PREFIX = "sk-ig-"
ACTIVE, SUSPENDED = "active", "suspended"  # an account's status
KEY_INDEX = "KEYS"  # partition listing every key by id, for the admin CLI
ACCOUNT_INDEX = "ACCOUNTS"  # partition listing every account by id, for the admin CLI


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_id_for(api_key: str) -> str:
    """A stable, non-secret handle for a key (shown in listings, used to revoke)."""
    return "key_" + hash_key(api_key)[:16]


def key_prefix(api_key: str) -> str:
    """What listings show of a key: four characters past `sk-ig-`, and none of a short (dev) key."""
    return api_key[: len(KEY_PREFIX) + 4] + "…" if len(api_key) >= 32 else "(short key)"


class NotFound(LookupError):
    """No account or key with the given id; the message names it."""


@dataclass(frozen=True)
class Account:
    """An authenticated request's account and key, with the key's limiter state as just read. No key
    (`key_pk` empty): an AWS service that IAM authenticated (for_service), held to the account's limits."""

    account_id: str
    key_id: str
    key_pk: str = ""
    limiter: State = field(default_factory=State)
    admin: bool = False  # the key may list, create and revoke its own account's keys
    budget: int | None = None  # micro-USD the key may spend in all (None: the balance is the only limit)
    spent: int = 0  # micro-USD of the budget spent or reserved, as authenticated (billing.precheck)


@dataclass(frozen=True)
class AccountInfo:
    account_id: str
    label: str
    balance: int  # micro-USD
    created_at: int  # epoch seconds
    # The account's own rate limits over all its keys; None means the deployment's defaults.
    images_per_minute: int | None = None
    max_concurrent: int | None = None


class KeyInfo(TypedDict):
    """A key as admins see it: never the key, only its id and a short prefix."""

    key_id: str
    prefix: str
    account_id: str
    label: str
    status: str  # active | revoked
    created_at: int
    images_per_minute: int | None
    max_concurrent: int | None
    admin: bool
    budget: int | None  # micro-USD
    spent: int  # micro-USD: charged, and reserved by requests in flight


class Accounts:
    """Key lookup for requests, and the admin operations the CLI and dev server use."""

    def __init__(self, dynamodb: Any, table: str, clock: Any = time.time, sleep: Any = time.sleep) -> None:
        self._db = dynamodb
        self._table = table
        self._clock = clock
        self._sleep = sleep

    def authenticate(self, authorization: str | None) -> Account:
        """Resolve an `Authorization: Bearer <key>` header; 401 for missing, unknown or revoked keys."""
        scheme, _, api_key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not api_key.strip():
            raise APIError(
                401,
                "You didn't provide an API key. Provide it in the Authorization header "
                "(Authorization: Bearer YOUR_KEY).",
                code="missing_api_key",
            )
        key_pk = f"KEY#{hash_key(api_key.strip())}"
        item = self._db.get_item(TableName=self._table, Key=item_key(key_pk, "KEY"), ConsistentRead=True).get(
            "Item"
        )
        if item is None or item["status"]["S"] != "active":
            raise APIError(
                401,
                "Incorrect API key provided. Check the key, or ask your provider for a new one.",
                code="invalid_api_key",
            )
        admin = item.get("admin", {}).get("BOOL", False)
        limiter = State(overrides=overrides(item))  # its counters are on the ACCOUNT item (ratelimit.py)
        return Account(
            item["account_id"]["S"],
            item["key_id"]["S"],
            key_pk,
            limiter,
            admin,
            _number(item, "budget"),
            _number(item, "spent") or 0,
        )

    def for_service(self, account_id: str) -> Account:
        """The account an AWS service's event names, for a caller IAM has already authenticated: it must exist
        and be active. The Account holds no key, so only the account's own rate limits apply (billing)."""
        item = self._db.get_item(
            TableName=self._table, Key=item_key(account_pk(account_id), "ACCOUNT"), ConsistentRead=True
        ).get("Item")
        if item is None:
            raise APIError(404, f"No account '{account_id}'.", param="account_id", code="account_not_found")
        status = item.get("status", {}).get("S", ACTIVE)
        if status != ACTIVE:
            raise APIError(
                403,
                f"Account '{account_id}' is {status}: it takes no jobs from AWS services.",
                type="permission_error",
                param="account_id",
                code="account_inactive",
            )
        # No key, so no key limits (0: none; nothing is written for a scope without limits): the account's
        # own limits are the whole rate limit of a keyless request (billing.reserve).
        return Account(account_id, key_id="", limiter=State(overrides=(0, 0)))

    # --- accounts ---------------------------------------------------------------------------------------

    def create_account(self, balance_micros: int, label: str = "", *, actor: str = "") -> str:
        """A new account holding `balance_micros`; its opening credit is a ledger entry, written with it."""
        if balance_micros < 0:
            raise ValueError("an opening balance cannot be negative")
        account_id = "acct_" + uuid.uuid4().hex[:20]
        now = self._clock()
        listed = {"label": {"S": label}, "created_at": {"N": str(int(now))}}
        actions: list[dict[str, Any]] = [
            self._put(
                {
                    **item_key(account_pk(account_id), "ACCOUNT"),
                    "balance": {"N": str(balance_micros)},
                    **listed,
                },
                new=True,
            ),
            self._put({**item_key(ACCOUNT_INDEX, account_id), **listed}),
        ]
        if balance_micros:
            opening = {"reason": "opening balance", "actor": actor}
            actions.append(
                ledger.entry(account_id, "credit", balance_micros, lambda: now, table=self._table, **opening)
            )
        transact(self._db, actions, self._sleep)
        return account_id

    def set_account_status(self, account_id: str, status: str) -> None:
        """`active`, or `suspended`: refuses the account's jobs from AWS services (its keys are revoked
        separately)."""
        if status not in (ACTIVE, SUSPENDED):
            raise ValueError(f"an account is {ACTIVE} or {SUSPENDED}, not {status!r}")
        try:
            self._db.update_item(
                TableName=self._table,
                Key=item_key(account_pk(account_id), "ACCOUNT"),
                UpdateExpression="SET #s = :status",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":status": {"S": status}},
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            raise NotFound(f"no account {account_id}") from None

    def show_account(self, account_id: str) -> AccountInfo:
        item = self._db.get_item(
            TableName=self._table, Key=item_key(account_pk(account_id), "ACCOUNT"), ConsistentRead=True
        ).get("Item")
        if item is None:
            raise NotFound(f"no account {account_id}")
        return _account_info(account_id, item)

    def list_accounts(self) -> list[AccountInfo]:
        """Every account with its balance: the index names them, one batched read fetches the balances."""
        found: dict[str, AccountInfo] = {}
        for item in self.account_items():
            account_id = item["pk"]["S"].removeprefix("ACCOUNT#")
            found[account_id] = _account_info(account_id, item)
        return sorted(found.values(), key=lambda a: (a.created_at, a.account_id))

    def account_items(self) -> Iterator[dict[str, Any]]:
        """Every ACCOUNT item, as stored (balance, limiter attributes): the index names them, batched reads
        fetch them."""
        ids = [item["sk"]["S"] for item in self._query(ACCOUNT_INDEX)]
        keys = [item_key(account_pk(i), "ACCOUNT") for i in ids]
        return batch_get(self._db, self._table, keys, self._sleep)

    def balance(self, account_id: str) -> int | None:
        return read_balance(self._db, self._table, account_id)

    # --- keys -------------------------------------------------------------------------------------------

    def create_key(
        self,
        account_id: str,
        label: str = "",
        api_key: str | None = None,
        *,
        images_per_minute: int | None = None,
        max_concurrent: int | None = None,
        admin: bool = False,
        budget: int | None = None,
    ) -> str:
        """Issue a key for an account; returns the key itself, which is never stored or shown again. An
        `admin` key may also manage the account's keys (the console); `budget`: micro-USD its requests may
        spend in all."""
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise ValueError(f"a key's budget must be a positive number of micro-USD, got {budget!r}")
        limits = _limits(images_per_minute, max_concurrent)
        api_key = api_key or new_api_key()
        check = {
            "ConditionCheck": {
                "TableName": self._table,
                "Key": item_key(account_pk(account_id), "ACCOUNT"),
                "ConditionExpression": "attribute_exists(pk)",
            }
        }
        actions = [check, *self._put_key(api_key, account_id, label, limits, admin, budget)]
        failed = transact(self._db, actions, self._sleep)
        if failed == 0:
            raise NotFound(f"no account {account_id}")
        if failed is not None:
            raise ValueError("that API key has been issued before")
        return api_key

    def rotate_key(self, key_id: str) -> str:
        """Replace an active key: a new key on the same account, label and limits, and the old one revoked,
        in one transaction. Returns the new key."""
        entry = self._index_item(key_id)
        old = self._with_spent(_key_info(entry), entry)
        if old["status"] != "active":
            raise ValueError(f"key {key_id} is {old['status']}; only an active key can be rotated")
        api_key = new_api_key()
        limits = _limits(old["images_per_minute"], old["max_concurrent"])
        actions = [
            # A budget carries over as what is left of it, so rotating never lifts it.
            *self._put_key(api_key, old["account_id"], old["label"], limits, old["admin"], _left(old)),
            *self._revoke(entry, only_active=True),
        ]
        if transact(self._db, actions, self._sleep) is not None:
            raise ValueError(f"key {key_id} was revoked or rotated meanwhile; nothing changed")
        return api_key

    def revoke_key(self, key_id: str) -> bool:
        """Revoke a key at once; False when there is no such key. Revoking a revoked key is a no-op."""
        try:
            entry = self._index_item(key_id)
        except NotFound:
            return False
        transact(self._db, self._revoke(entry, only_active=False), self._sleep)
        return True

    def set_limits(
        self, key_id: str, images_per_minute: int | None = None, max_concurrent: int | None = None
    ) -> KeyInfo:
        """Set a key's rate limits (None: the deployment's default); returns the key as it now is."""
        update = _limits_update(_limits(images_per_minute, max_concurrent))
        entry = self._index_item(key_id)
        keys = (item_key(entry["key_pk"]["S"], "KEY"), item_key(KEY_INDEX, key_id))
        transact(
            self._db, [{"Update": {"TableName": self._table, "Key": k, **update}} for k in keys], self._sleep
        )
        key = _key_info(entry)
        key["images_per_minute"], key["max_concurrent"] = images_per_minute, max_concurrent
        return key

    def set_account_limits(
        self, account_id: str, images_per_minute: int | None = None, max_concurrent: int | None = None
    ) -> None:
        """Set an account's rate limits over all its keys (None: the deployment's default)."""
        update = _limits_update(_limits(images_per_minute, max_concurrent))
        try:
            self._db.update_item(
                TableName=self._table, Key=item_key(account_pk(account_id), "ACCOUNT"), **update
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            raise NotFound(f"no account {account_id}") from None

    def get_key(self, key_id: str) -> KeyInfo:
        entry = self._index_item(key_id)
        return self._with_spent(_key_info(entry), entry)

    def list_keys(self, account_id: str | None = None) -> list[KeyInfo]:
        """Every key (or one account's), oldest first; ids and prefixes only."""
        rows = [self._with_spent(_key_info(item), item) for item in self._query(KEY_INDEX, account_id)]
        return sorted(rows, key=lambda r: (r["created_at"], r["key_id"]))

    def _with_spent(self, key: KeyInfo, entry: dict[str, Any]) -> KeyInfo:
        """A budgeted key's `spent`, which billing keeps on the key item itself (the index has its budget)."""
        if key["budget"] is not None:
            item = self._db.get_item(
                TableName=self._table, Key=item_key(entry["key_pk"]["S"], "KEY"), ConsistentRead=True
            ).get("Item", {})
            key["spent"] = _number(item, "spent") or 0
        return key

    # --- items ------------------------------------------------------------------------------------------

    def _put(self, item: dict[str, Any], new: bool = False) -> dict[str, Any]:
        put: dict[str, Any] = {"TableName": self._table, "Item": item}
        if new:
            put["ConditionExpression"] = "attribute_not_exists(pk)"
        return {"Put": put}

    def _put_key(
        self,
        api_key: str,
        account_id: str,
        label: str,
        limits: dict[str, int | None],
        admin: bool = False,
        budget: int | None = None,
    ) -> list[dict[str, Any]]:
        """The key item, which answers requests, and its index entry, which lets admins find it by id."""
        key_pk = f"KEY#{hash_key(api_key)}"
        fields = {
            "account_id": {"S": account_id},
            "key_id": {"S": key_id_for(api_key)},
            "prefix": {"S": key_prefix(api_key)},
            "label": {"S": label},
            "status": {"S": "active"},
            "created_at": {"N": str(int(self._clock()))},
            **{name: {"N": str(value)} for name, value in limits.items() if value is not None},
            **({"admin": {"BOOL": True}} if admin else {}),
            **({"budget": {"N": str(budget)}, "spent": {"N": "0"}} if budget is not None else {}),
        }
        return [
            self._put({**item_key(key_pk, "KEY"), **fields}, new=True),
            self._put({**item_key(KEY_INDEX, key_id_for(api_key)), "key_pk": {"S": key_pk}, **fields}),
        ]

    def _revoke(self, entry: dict[str, Any], only_active: bool) -> list[dict[str, Any]]:
        """Revoke the key of an index entry, and the entry; `only_active`: fail unless it is active."""
        revoke: dict[str, Any] = {
            "UpdateExpression": "SET #s = :revoked",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":revoked": {"S": "revoked"}},
        }
        if only_active:
            revoke["ConditionExpression"] = "#s = :active"
            revoke["ExpressionAttributeValues"][":active"] = {"S": "active"}
        keys = (item_key(entry["key_pk"]["S"], "KEY"), item_key(KEY_INDEX, entry["key_id"]["S"]))
        return [{"Update": {"TableName": self._table, "Key": k, **revoke}} for k in keys]

    def _index_item(self, key_id: str) -> dict[str, Any]:
        item = self._db.get_item(
            TableName=self._table, Key=item_key(KEY_INDEX, key_id), ConsistentRead=True
        ).get("Item")
        if item is None:
            raise NotFound(f"no key with id {key_id}")
        return item

    def _query(self, pk: str, account_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Every item of one partition; only one account's when `account_id` is given."""
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": pk}},
        }
        if account_id:
            kwargs["FilterExpression"] = "account_id = :account"
            kwargs["ExpressionAttributeValues"][":account"] = {"S": account_id}
        return query(self._db, **kwargs)


def _limits(images_per_minute: int | None, max_concurrent: int | None) -> dict[str, int | None]:
    limits = {"images_per_minute": images_per_minute, "max_concurrent": max_concurrent}
    for name, value in limits.items():
        # Zero would lock the key out without saying so: revoking says it.
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a whole number of at least 1, got {value!r}")
    return limits


def _limits_update(limits: dict[str, int | None]) -> dict[str, Any]:
    """UpdateItem arguments that set the given limits and remove the others (back to the default)."""
    given = {name: value for name, value in limits.items() if value is not None}
    clauses = []
    if given:
        clauses.append("SET " + ", ".join(f"{name} = :{name}" for name in given))
    if len(given) < len(limits):
        clauses.append("REMOVE " + ", ".join(name for name in limits if name not in given))
    update: dict[str, Any] = {
        "UpdateExpression": " ".join(clauses),
        "ConditionExpression": "attribute_exists(pk)",
    }
    if given:
        update["ExpressionAttributeValues"] = {f":{name}": {"N": str(v)} for name, v in given.items()}
    return update


def _left(key: KeyInfo) -> int | None:
    return None if key["budget"] is None else max(1, key["budget"] - key["spent"])


def _number(item: dict[str, Any], name: str) -> int | None:
    return int(item[name]["N"]) if name in item else None


def _account_info(account_id: str, item: dict[str, Any]) -> AccountInfo:
    return AccountInfo(
        account_id,
        item.get("label", {}).get("S", ""),
        int(item["balance"]["N"]),
        int(item["created_at"]["N"]),
        _number(item, "images_per_minute"),
        _number(item, "max_concurrent"),
    )


def _key_info(item: dict[str, Any]) -> KeyInfo:
    return KeyInfo(
        key_id=item["key_id"]["S"],
        prefix=item["prefix"]["S"],
        account_id=item["account_id"]["S"],
        label=item["label"]["S"],
        status=item["status"]["S"],
        created_at=int(item["created_at"]["N"]),
        images_per_minute=_number(item, "images_per_minute"),
        max_concurrent=_number(item, "max_concurrent"),
        admin=item.get("admin", {}).get("BOOL", False),
        budget=_number(item, "budget"),
        spent=_number(item, "spent") or 0,
    )

"""Accounts and API keys in DynamoDB. Keys are stored only as SHA-256 hashes.

Items (single table, `pk`/`sk`):
  KEY#<sha256 of key>  / KEY      -> account_id, key_id, prefix, label, status, created_at
  KEYS                 / <key_id> -> the same, plus key_pk: the admin index (list, revoke)
  ACCOUNT#<account_id> / ACCOUNT  -> balance (micro-USD), label, created_at
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .errors import APIError

KEY_PREFIX = "sk-ig-"
KEY_INDEX = "KEYS"  # partition listing every key by id, for the admin CLI
KEY_COLUMNS = ("key_id", "prefix", "account_id", "label", "status", "created_at")


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


def account_pk(account_id: str) -> str:
    return f"ACCOUNT#{account_id}"


@dataclass(frozen=True)
class Account:
    account_id: str
    key_id: str
    # Per-key rate-limit overrides; None means the deployment's defaults.
    images_per_minute: int | None = None
    max_concurrent: int | None = None


class Accounts:
    """Key lookup for requests, and the admin operations the CLI and dev server use."""

    def __init__(self, dynamodb: Any, table: str, clock: Any = time.time) -> None:
        self._db = dynamodb
        self._table = table
        self._clock = clock

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
        item = self._db.get_item(
            TableName=self._table,
            Key=item_key(f"KEY#{hash_key(api_key.strip())}", "KEY"),
            ConsistentRead=True,
        ).get("Item")
        if item is None or item["status"]["S"] != "active":
            raise APIError(
                401,
                "Incorrect API key provided. Check the key, or ask your provider for a new one.",
                code="invalid_api_key",
            )
        return Account(item["account_id"]["S"], item["key_id"]["S"])

    def create_account(self, balance_micros: int, label: str = "") -> str:
        account_id = "acct_" + uuid.uuid4().hex[:20]
        self._db.put_item(
            TableName=self._table,
            Item={
                **item_key(account_pk(account_id), "ACCOUNT"),
                "balance": {"N": str(balance_micros)},
                "label": {"S": label},
                "created_at": {"N": str(int(self._clock()))},
            },
            ConditionExpression="attribute_not_exists(pk)",
        )
        return account_id

    def create_key(self, account_id: str, label: str = "", api_key: str | None = None) -> str:
        """Issue a key for an account; returns the key itself, which is never stored or shown again."""
        api_key = api_key or new_api_key()
        key_pk = f"KEY#{hash_key(api_key)}"
        fields = {
            "account_id": {"S": account_id},
            "key_id": {"S": key_id_for(api_key)},
            "prefix": {"S": key_prefix(api_key)},
            "label": {"S": label},
            "status": {"S": "active"},
            "created_at": {"N": str(int(self._clock()))},
        }
        # The key item answers requests; its index entry lets admins list and revoke without a table scan.
        self._db.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": {**item_key(key_pk, "KEY"), **fields},
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": {
                            **item_key(KEY_INDEX, key_id_for(api_key)),
                            "key_pk": {"S": key_pk},
                            **fields,
                        },
                    }
                },
            ]
        )
        return api_key

    def list_keys(self) -> list[dict[str, str]]:
        rows = []
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :index",
            "ExpressionAttributeValues": {":index": {"S": KEY_INDEX}},
        }
        while True:
            page = self._db.query(**kwargs)
            for item in page.get("Items", []):
                rows.append({name: item[name].get("S") or item[name].get("N", "") for name in KEY_COLUMNS})
            if "LastEvaluatedKey" not in page:
                return sorted(rows, key=lambda r: r["created_at"])
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def revoke_key(self, key_id: str) -> bool:
        entry = self._db.get_item(TableName=self._table, Key=item_key(KEY_INDEX, key_id)).get("Item")
        if entry is None:
            return False
        revoke = {
            "UpdateExpression": "SET #s = :revoked",
            "ExpressionAttributeNames": {"#s": "status"},
            "ExpressionAttributeValues": {":revoked": {"S": "revoked"}},
        }
        self._db.transact_write_items(
            TransactItems=[
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": item_key(entry["key_pk"]["S"], "KEY"),
                        **revoke,
                    }
                },
                {"Update": {"TableName": self._table, "Key": item_key(KEY_INDEX, key_id), **revoke}},
            ]
        )
        return True

    def balance(self, account_id: str) -> int | None:
        return read_balance(self._db, self._table, account_id)

    def credit(self, account_id: str, amount_micros: int) -> int:
        """Add to a balance atomically; returns the new balance."""
        out = self._db.update_item(
            TableName=self._table,
            Key=item_key(account_pk(account_id), "ACCOUNT"),
            UpdateExpression="ADD balance :amount",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={":amount": {"N": str(amount_micros)}},
            ReturnValues="UPDATED_NEW",
        )
        return int(out["Attributes"]["balance"]["N"])


def read_balance(dynamodb: Any, table: str, account_id: str) -> int | None:
    """An account's balance in micro-USD (strongly consistent), or None when there is no such account."""
    item = dynamodb.get_item(
        TableName=table, Key=item_key(account_pk(account_id), "ACCOUNT"), ConsistentRead=True
    ).get("Item")
    return int(item["balance"]["N"]) if item else None


def item_key(pk: str, sk: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}

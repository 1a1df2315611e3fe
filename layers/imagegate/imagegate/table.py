"""The single DynamoDB table: item keys, and the two calls every module makes (paged Query, Transact).

Everything imagegate stores lives in one table keyed by `pk`/`sk`; each module documents its own items:
  KEY#…, KEYS, ACCOUNT#<id> / ACCOUNT, ACCOUNTS       accounts.py
  ACCOUNT#<id> / REQUEST#…, LEDGER#…; USAGE#…         billing.py, ledger.py
  RATE#<key_id> / …                                   ratelimit.py
  IDEMPOTENCY#… / IDEMPOTENCY                         idempotency.py
This module is at the bottom: it imports nothing of imagegate, and every module above builds on it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

CONFLICT_ATTEMPTS = 6
CONFLICT_BACKOFF_S = 0.025


def item_key(pk: str, sk: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def account_pk(account_id: str) -> str:
    return f"ACCOUNT#{account_id}"


def query(dynamodb: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every item a Query returns, page by page."""
    while True:
        page = dynamodb.query(**kwargs)
        yield from page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def transact(dynamodb: Any, actions: list[dict[str, Any]], sleep: Any = time.sleep) -> int | None:
    """Run a transaction; None when it commits, else the index of the action whose condition failed.

    DynamoDB cancels a transaction that races another one on the same item (TransactionConflict), which
    is routine when one account sends requests in parallel; botocore does not retry that, so we do.
    """
    attempt = 0
    while True:
        try:
            dynamodb.transact_write_items(TransactItems=actions)
            return None
        except dynamodb.exceptions.TransactionCanceledException as exc:
            codes = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            if "ConditionalCheckFailed" in codes:
                return codes.index("ConditionalCheckFailed")
            attempt += 1
            if "TransactionConflict" not in codes or attempt == CONFLICT_ATTEMPTS:
                raise
            sleep(random.uniform(0, CONFLICT_BACKOFF_S * 2**attempt))


def read_balance(dynamodb: Any, table: str, account_id: str) -> int | None:
    """An account's balance in micro-USD (strongly consistent), or None when there is no such account."""
    item = dynamodb.get_item(
        TableName=table, Key=item_key(account_pk(account_id), "ACCOUNT"), ConsistentRead=True
    ).get("Item")
    return int(item["balance"]["N"]) if item else None

"""Reserve, settle and refund: the balance never goes below zero and every refund happens once.

A request's price is reserved by one DynamoDB transaction that debits the balance under the condition
`balance >= price` and writes a REQUEST item in state `reserved`. Settling moves that item out of
`reserved` under a condition, returning any unused part of the reservation in the same transaction, so a
second settle or refund of the same request is a no-op.
  ACCOUNT#<account_id> / REQUEST#<request_id> -> reserved, charged, refunded (micro-USD), state, model, ...
"""

from __future__ import annotations

import random
import time
from typing import Any

from .accounts import account_pk, item_key, read_balance
from .errors import APIError
from .money import micros_to_usd

CONFLICT_ATTEMPTS = 6
CONFLICT_BACKOFF_S = 0.025


class Billing:
    def __init__(self, dynamodb: Any, table: str, clock: Any = time.time, sleep: Any = time.sleep) -> None:
        self._db = dynamodb
        self._table = table
        self._clock = clock
        self._sleep = sleep

    def reserve(self, account_id: str, request_id: str, amount: int, details: dict[str, str]) -> None:
        """Debit `amount` micro-USD; a 402 stating price and balance when the balance does not cover it."""
        failed = self._transact(
            [
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": item_key(account_pk(account_id), "ACCOUNT"),
                        "UpdateExpression": "SET balance = balance - :amount",
                        "ConditionExpression": "attribute_exists(pk) AND balance >= :amount",
                        "ExpressionAttributeValues": {":amount": {"N": str(amount)}},
                    }
                },
                {
                    "Put": {
                        "TableName": self._table,
                        "Item": {
                            **item_key(account_pk(account_id), f"REQUEST#{request_id}"),
                            "state": {"S": "reserved"},
                            "reserved": {"N": str(amount)},
                            "created_at": {"N": str(int(self._clock()))},
                            **{k: {"S": v} for k, v in details.items()},
                        },
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
            ]
        )
        if failed == 0:
            balance = read_balance(self._db, self._table, account_id) or 0
            raise APIError(
                402,
                f"Insufficient balance: this request costs {micros_to_usd(amount)} and the account's "
                f"balance is {micros_to_usd(balance)}. Add credit and try again.",
                type="insufficient_quota",
                code="insufficient_balance",
            )
        if failed == 1:
            raise RuntimeError(f"request id {request_id} was reserved twice")

    def settle(self, account_id: str, request_id: str, charged: int) -> bool:
        """Finish a reservation, keeping `charged` and refunding the rest; False if already finished."""
        key = item_key(account_pk(account_id), f"REQUEST#{request_id}")
        item = self._db.get_item(TableName=self._table, Key=key, ConsistentRead=True).get("Item")
        if item is None or item["state"]["S"] != "reserved":
            return False
        reserved = int(item["reserved"]["N"])
        charged = max(0, min(charged, reserved))
        refund = reserved - charged
        actions: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": key,
                    "UpdateExpression": (
                        "SET #s = :state, charged = :charged, refunded = :refund, settled_at = :now"
                    ),
                    "ConditionExpression": "#s = :reserved",
                    "ExpressionAttributeNames": {"#s": "state"},
                    "ExpressionAttributeValues": {
                        ":state": {"S": "settled" if charged else "refunded"},
                        ":reserved": {"S": "reserved"},
                        ":charged": {"N": str(charged)},
                        ":refund": {"N": str(refund)},
                        ":now": {"N": str(int(self._clock()))},
                    },
                }
            }
        ]
        if refund:
            actions.append(
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": item_key(account_pk(account_id), "ACCOUNT"),
                        "UpdateExpression": "ADD balance :refund",
                        "ExpressionAttributeValues": {":refund": {"N": str(refund)}},
                    }
                }
            )
        # A failed condition means a concurrent settle won: the refund happened exactly once, there.
        return self._transact(actions) is None

    def _transact(self, actions: list[dict[str, Any]]) -> int | None:
        """Run a transaction; None when it commits, else the index of the action whose condition failed.

        DynamoDB cancels a transaction that races another one on the same item (TransactionConflict), which
        is routine when one account sends requests in parallel; botocore does not retry that, so we do.
        """
        attempt = 0
        while True:
            try:
                self._db.transact_write_items(TransactItems=actions)
                return None
            except self._db.exceptions.TransactionCanceledException as exc:
                codes = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
                if "ConditionalCheckFailed" in codes:
                    return codes.index("ConditionalCheckFailed")
                attempt += 1
                if "TransactionConflict" not in codes or attempt == CONFLICT_ATTEMPTS:
                    raise
                self._sleep(random.uniform(0, CONFLICT_BACKOFF_S * 2**attempt))

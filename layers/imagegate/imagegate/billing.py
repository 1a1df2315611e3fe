"""Reserve, settle and refund: the balance never goes below zero and every refund happens once.

A request's price is reserved by one DynamoDB transaction that debits the balance under the condition
`balance >= price` and writes a REQUEST item in state `reserved`. Settling moves that item out of
`reserved` under a condition, returning any unused part of the reservation in the same transaction, so a
second settle or refund of the same request is a no-op.
  ACCOUNT#<account_id> / REQUEST#<request_id> -> reserved, charged, refunded (micro-USD), state, model, ...
"""

from __future__ import annotations

import time
from typing import Any

from .accounts import account_pk, item_key
from .config import micros_to_usd
from .errors import APIError


class Billing:
    def __init__(self, dynamodb: Any, table: str, clock: Any = time.time) -> None:
        self._db = dynamodb
        self._table = table
        self._clock = clock

    def reserve(self, account_id: str, request_id: str, amount: int, details: dict[str, str]) -> None:
        """Debit `amount` micro-USD; a 402 stating price and balance when the balance does not cover it."""
        try:
            self._db.transact_write_items(
                TransactItems=[
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
        except self._db.exceptions.TransactionCanceledException as exc:
            reasons = exc.response.get("CancellationReasons", [])
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                balance = self._balance(account_id)
                raise APIError(
                    402,
                    f"Insufficient balance: this request costs {micros_to_usd(amount)} and the account's "
                    f"balance is {micros_to_usd(balance)}. Add credit and try again.",
                    type="insufficient_quota",
                    code="insufficient_balance",
                ) from exc
            raise

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
        try:
            self._db.transact_write_items(TransactItems=actions)
        except self._db.exceptions.TransactionCanceledException:
            return False  # a concurrent settle won the condition; the refund happened exactly once there
        return True

    def _balance(self, account_id: str) -> int:
        item = self._db.get_item(
            TableName=self._table, Key=item_key(account_pk(account_id), "ACCOUNT"), ConsistentRead=True
        ).get("Item")
        return int(item["balance"]["N"]) if item else 0

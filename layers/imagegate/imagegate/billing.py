"""Reserve, settle, refund and credit: the balance never goes below zero, every refund happens once, and
every balance change is written in one transaction with the ledger entry that records it (ledger.py).

A request's price is reserved by one DynamoDB transaction that debits the balance under the condition
`balance >= amount`, writes a REQUEST item in state `reserved` and a `reserve` ledger entry. Settling moves
that item out of `reserved` under a condition, returning any unused part of the reservation, writing a
`settle` ledger entry and adding to the day's usage counters, in one transaction, so a second settle or
refund of the same request is a no-op.
  ACCOUNT#<account_id> / REQUEST#<request_id> -> state (reserved|settled|refunded), reserved, charged,
      refunded (micro-USD), images, model, endpoint, key_id, provider, created_at, settled_at
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from . import ledger
from .accounts import NotFound
from .errors import APIError
from .money import micros_to_usd
from .table import account_pk, item_key, read_balance, transact


class Billing:
    def __init__(self, dynamodb: Any, table: str, clock: Any = time.time, sleep: Any = time.sleep) -> None:
        self._db = dynamodb
        self._table = table
        self._clock = clock
        self._sleep = sleep

    def reserve(
        self,
        account_id: str,
        request_id: str,
        amount: int,
        details: dict[str, str],
        *,
        upper_bound: bool = False,
    ) -> None:
        """Debit `amount` micro-USD; a 402 stating it and the balance when the balance does not cover it.

        `details` (model, endpoint, key_id) are kept on the request. `upper_bound`: the amount is a
        worst-case reservation (token-priced models), and the 402 says so.
        """
        if amount < 0:
            raise ValueError(f"cannot reserve a negative amount ({amount})")
        now = self._clock()
        failed = transact(
            self._db,
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
                            "created_at": {"N": str(int(now))},
                            **{k: {"S": v} for k, v in details.items()},
                        },
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                },
                ledger.entry(
                    account_id,
                    "reserve",
                    -amount,
                    lambda: now,
                    table=self._table,
                    request_id=request_id,
                    model=details.get("model", ""),
                    key_id=details.get("key_id", ""),
                ),
            ],
            self._sleep,
        )
        if failed == 0:
            balance = micros_to_usd(read_balance(self._db, self._table, account_id) or 0)
            price = (
                f"reserves up to {micros_to_usd(amount)} (it is charged for the tokens the model reports, "
                "and the rest is refunded)"
                if upper_bound
                else f"costs {micros_to_usd(amount)}"
            )
            raise APIError(
                402,
                f"Insufficient balance: this request {price} and the account's balance is {balance}. "
                "Add credit and try again.",
                type="insufficient_quota",
                code="insufficient_balance",
            )
        if failed is not None:
            # The request item or ledger entry already existed: reused ids, never a free request.
            raise RuntimeError(f"request id {request_id} collided with an existing item (action {failed})")

    def settle(
        self, account_id: str, request_id: str, charged: int, *, images: int = 0, provider: str = ""
    ) -> bool:
        """Finish a reservation, keeping `charged` (capped at the reservation) and refunding the rest, and
        count it in the day's usage; False, and nothing changes, if it was already finished (or never made).
        """
        key = item_key(account_pk(account_id), f"REQUEST#{request_id}")
        item = self._db.get_item(TableName=self._table, Key=key, ConsistentRead=True).get("Item")
        if item is None or item["state"]["S"] != "reserved":
            return False
        reserved = int(item["reserved"]["N"])
        charged = max(0, min(charged, reserved))
        refund = reserved - charged
        now = self._clock()
        values = {
            ":state": {"S": "settled" if charged else "refunded"},
            ":reserved": {"S": "reserved"},
            ":charged": {"N": str(charged)},
            ":refund": {"N": str(refund)},
            ":images": {"N": str(images)},
            ":now": {"N": str(int(now))},
        }
        if provider:
            values[":provider"] = {"S": provider}
        actions: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": key,
                    "UpdateExpression": (
                        "SET #s = :state, charged = :charged, refunded = :refund, images = :images, "
                        "settled_at = :now" + (", provider = :provider" if provider else "")
                    ),
                    "ConditionExpression": "#s = :reserved",
                    "ExpressionAttributeNames": {"#s": "state"},
                    "ExpressionAttributeValues": values,
                }
            },
            ledger.entry(
                account_id,
                "settle",
                refund,
                lambda: now,
                table=self._table,
                request_id=request_id,
                charged=charged,
                refunded=refund,
            ),
            ledger.usage_update(
                self._table,
                datetime.fromtimestamp(now, UTC).date(),
                account_id,
                item.get("key_id", {}).get("S") or "-",
                item.get("model", {}).get("S") or "-",
                images=images,
                charged=charged,
                refunded=refund,
            ),
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
        return transact(self._db, actions, self._sleep) is None

    def credit(
        self, account_id: str, amount: int, *, reason: str, kind: str = "credit", actor: str = ""
    ) -> int:
        """Add `amount` micro-USD to a balance with a ledger entry saying why and who; returns the balance
        just after. A `credit` adds money; an `adjust` may take it off too, never below zero.

        Raises NotFound for an unknown account and ValueError for anything else refused (nothing changes).
        """
        if kind not in ("credit", "adjust"):
            raise ValueError(f"a balance change is a credit or an adjust, not {kind!r}")
        if not reason.strip():
            raise ValueError("a reason is required: the ledger keeps it")
        if kind == "credit" and amount <= 0:
            raise ValueError("a credit must be positive; an adjustment can take money off")
        if amount == 0:
            raise ValueError("an adjustment of $0.000000 changes nothing")
        values = {":amount": {"N": str(amount)}}
        condition = "attribute_exists(pk)"
        if amount < 0:
            values[":debit"] = {"N": str(-amount)}
            condition += " AND balance >= :debit"
        failed = transact(
            self._db,
            [
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": item_key(account_pk(account_id), "ACCOUNT"),
                        "UpdateExpression": "ADD balance :amount",
                        "ConditionExpression": condition,
                        "ExpressionAttributeValues": values,
                    }
                },
                ledger.entry(
                    account_id, kind, amount, self._clock, table=self._table, reason=reason, actor=actor
                ),
            ],
            self._sleep,
        )
        balance = read_balance(self._db, self._table, account_id)
        if balance is None:
            raise NotFound(f"no account {account_id}")
        if failed is not None:
            raise ValueError(
                f"adjusting {account_id} by {micros_to_usd(amount)} would take its balance of "
                f"{micros_to_usd(balance)} below zero; nothing changed"
            )
        return balance

    def sweep(
        self, account_id: str, *, older_than_s: float = ledger.STALE_AFTER_S
    ) -> list[ledger.Reservation]:
        """Refund an account's reservations older than `older_than_s` seconds (a Lambda killed mid-request
        leaves them). Each is refunded once, whatever runs at the same time; returns those refunded here."""
        stale = ledger.stale_reservations(
            self._db, self._table, account_id, older_than_s=older_than_s, clock=self._clock
        )
        return [r for r in stale if self.settle(account_id, r.request_id, 0)]

    def sweep_accounts(
        self, account_ids: list[str], *, older_than_s: float = ledger.STALE_AFTER_S
    ) -> list[ledger.Reservation]:
        """`sweep` over several accounts (the CLI's and the scheduled sweeper's loop)."""
        return [r for account_id in account_ids for r in self.sweep(account_id, older_than_s=older_than_s)]

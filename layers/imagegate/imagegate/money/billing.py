"""Reserve, settle, refund and credit: the balance never goes below zero, every refund happens once, and
every balance change is written in one transaction with the ledger entry that records it (ledger.py).

A request costs three DynamoDB calls: the key lookup (accounts.py), the reserve transaction and the settle
transaction. Reserving debits the balance under `balance >= amount`, takes the key's and the account's rate
limits (ratelimit.py: conditions on the same items), writes a REQUEST item in state `reserved` and a
`reserve` ledger entry. Settling moves the REQUEST item out of `reserved` under a condition, returns any
unused part of the reservation, writes a `settle` ledger entry, adds to the usage counters, gives the
request's slots back and completes its Idempotency-Key record, all in one transaction: a second settle or
refund of the same request is a no-op, and a settled request is always replayable.
  ACCOUNT#<account_id> / REQUEST#<request_id> -> state (reserved|settled|refunded), reserved, charged,
      refunded (micro-USD), images, model, endpoint, key_id, key_pk, slots (scopes holding a slot: "k",
      "a"), provider, created_at, settled_at; while reserved open_shard + open_since (the sparse OPEN_INDEX
      the sweeper reads); once closed expires_at (TTL, REQUEST_RETENTION_DAYS); job (the job id) when
      the request is an image job's, whose reservation jobs.py closes, not `sweep`.
  INTENDED#<account_id> / REQUEST#<request_id> -> intended_charge, intended_images, provider, expires_at:
      what a request whose settle could not be written delivered, so the sweeper charges instead of
      refunding. Off the account's partition: the heat that failed the settle is usually there.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from imagegate.config import Deadlines
from imagegate.errors import APIError
from imagegate.money import ledger, ratelimit
from imagegate.money.accounts import Account, NotFound
from imagegate.money.ratelimit import Fragment, Limits, State
from imagegate.table import (
    OPEN_INDEX,
    OPEN_SHARDS,
    account_pk,
    item_key,
    query,
    read_balance,
    request_token,
    transact,
    transact_or_reasons,
)
from imagegate.units import micros_to_usd

# A reservation is rebuilt from what a failed condition showed (a stale limiter guess); more failures in a
# row than this means the items are too hot to win: the client is asked to slow down.
RESERVE_ATTEMPTS = 5
# How long a settle keeps trying through throttling and transport errors before it leaves an intended
# charge for the sweeper. Well inside the time a function has left after its upstream budget.
SETTLE_DEADLINE_S = 3.0
REQUEST_RETENTION_DAYS = 35
BUSY_CODES = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionConflictException",
        "TransactionCanceledException",
        "InternalServerError",
        "ServiceUnavailable",
    }
)


@dataclass(frozen=True)
class Reservation:
    """An open reservation: everything settling needs, so that settling reads nothing first."""

    account_id: str
    request_id: str
    amount: int
    key_id: str
    key_pk: str
    model: str
    created_at: int
    slots: str = ""  # scopes holding a slot for this request: "k" (the key), "a" (the account)
    headers: dict[str, str] = field(default_factory=dict)  # rate-limit headers for the response
    budgeted: bool = False  # the key has a budget: its `spent` holds this reservation until it settles


class Billing:
    def __init__(
        self,
        dynamodb: Any,
        table: str,
        clock: Any = time.time,
        sleep: Any = time.sleep,
        *,
        key_limits: Limits | None = None,
        account_limits: Limits | None = None,
    ) -> None:
        self._db = dynamodb
        self._table = table
        self._clock = clock
        self._sleep = sleep
        self._key_limits = key_limits or Limits(0, 0)
        self._account_limits = account_limits or Limits(0, 0)
        # What this container last saw of each account's limiter: a lower bound that picks the right update
        # form first; a wrong guess only costs a retry (ratelimit.py).
        self._accounts: dict[str, State] = {}

    # --- requests --------------------------------------------------------------------------------------

    def reserve(
        self,
        account: Account,
        request_id: str,
        amount: int,
        details: dict[str, str],
        *,
        images: int = 1,
        upper_bound: bool = False,
        hold_s: int = Deadlines().request_slot_s,
    ) -> Reservation:
        """Debit `amount` micro-USD and take the rate limits for `images` images, in one transaction.

        429 when a limit of the key or the account refuses (nothing consumed), 402 stating the price and the
        balance when the balance does not cover it. `details` (model, endpoint) are kept on the request;
        `upper_bound`: the amount is a worst-case reservation (token-priced models), and the 402 says so.
        `hold_s`: how long the concurrency slots outlive a request that never settles.
        """
        if amount < 0:
            raise ValueError(f"cannot reserve a negative amount ({amount})")
        if account.budget is not None and amount > account.budget:
            raise _over_budget(account, amount, account.budget)
        key_state = account.limiter
        # The container's memory of the account is a guess (its own limits may have changed since): only
        # an item image DynamoDB returned may refuse a request; a wrong guess merely fails the condition.
        account_state, account_seen = self._accounts.get(account.account_id, State()), False
        key_raced = account_raced = False
        for _ in range(RESERVE_ATTEMPTS):
            now = self._clock()
            self._refuse_if_limited(account, key_state, account_state if account_seen else None, images, now)
            key_take = ratelimit.take(
                "k", key_state, self._key_limits, request_id, images, now, raced=key_raced, hold_s=hold_s
            )
            account_take = ratelimit.take(
                "a",
                account_state,
                self._account_limits,
                request_id,
                images,
                now,
                raced=account_raced,
                hold_s=hold_s,
            )
            slots = "".join(
                scope
                for scope, state, default in (
                    ("k", key_state, self._key_limits),
                    ("a", account_state, self._account_limits),
                )
                if state.limits(default).max_concurrent
            )
            actions = [
                Fragment(
                    set=["balance = balance - :amount"],
                    conditions=["attribute_exists(pk) AND balance >= :amount"],
                    values={":amount": {"N": str(amount)}},
                )
                .merge(account_take)
                .update(self._table, item_key(account_pk(account.account_id), "ACCOUNT")),
                self._request_put(account, request_id, amount, details, slots, now),
                ledger.entry(
                    account.account_id,
                    "reserve",
                    -amount,
                    lambda now=now: now,
                    table=self._table,
                    request_id=request_id,
                    model=details.get("model", ""),
                    key_id=account.key_id,
                ),
            ]
            if account.budget is not None:  # spent <= budget - amount, and then spent += amount
                key_take = key_take.merge(
                    Fragment(
                        add=["spent :spend"],
                        conditions=["spent <= :room"],
                        values={":spend": {"N": str(amount)}, ":room": {"N": str(account.budget - amount)}},
                    )
                )
            if key_take.set or key_take.remove or key_take.add:  # a key with no limit is not written at all
                actions.append(key_take.update(self._table, item_key(account.key_pk, "KEY")))
            try:
                failed = transact_or_reasons(self._db, actions, self._sleep)
            except ClientError as exc:
                if _code(exc) not in BUSY_CODES:
                    raise
                raise ratelimit.busy(f"account {account.account_id}") from exc
            if failed is None:
                headers = ratelimit.headers(
                    ratelimit.admitted(
                        key_state, self._key_limits, request_id, images, now, hold_s, raced=key_raced
                    ),
                    self._key_limits,
                    now,
                )
                self._accounts[account.account_id] = ratelimit.admitted(
                    account_state, self._account_limits, request_id, images, now, hold_s, raced=account_raced
                )
                return Reservation(
                    account.account_id,
                    request_id,
                    amount,
                    account.key_id,
                    account.key_pk,
                    details.get("model", ""),
                    int(now),
                    slots,
                    headers,
                    account.budget is not None,
                )
            if 1 in failed or 2 in failed:
                # The request item or ledger entry already existed: reused ids, never a free request.
                raise RuntimeError(f"request id {request_id} collided with an existing item")
            if 0 in failed:
                if failed[0] is None:
                    raise NotFound(f"no account {account.account_id}")
                learned = State.from_item(failed[0])
                account_raced = learned.tat != account_state.tat
                account_state, account_seen = learned, True
                self._accounts[account.account_id] = account_state
                balance = int(failed[0]["balance"]["N"])
            else:
                balance = None
            if 3 in failed:
                if failed[3] is None:
                    raise NotFound(f"no key {account.key_id}")
                learned = State.from_item(failed[3])
                key_raced = learned.tat != key_state.tat
                key_state = learned
                spent, budget = int(failed[3].get("spent", {}).get("N", 0)), account.budget
            else:
                spent, budget = 0, None
            self._refuse_if_limited(account, key_state, account_state if account_seen else None, images, now)
            if budget is not None and spent + amount > budget:
                raise _over_budget(account, amount, budget - spent)
            if balance is not None and balance < amount:
                raise _insufficient(amount, balance, upper_bound)
        raise ratelimit.busy(f"account {account.account_id}")

    def count(self, account: Account, images: int) -> None:
        """Take `images` from the key's images-per-minute bucket without reserving money or a slot (an
        idempotent replay, which serves stored images); 429 when the bucket cannot give them."""
        state = account.limiter
        what = f"key {account.key_id}"
        if not state.limits(self._key_limits).images_per_minute:
            return
        for _ in range(RESERVE_ATTEMPTS):
            now = self._clock()
            refused = ratelimit.refusal(what, state, self._key_limits, images, now, slot=False)
            if refused is not None:
                raise refused
            take = ratelimit.take("k", state, self._key_limits, "", images, now, slot=False, hold_s=0)
            try:
                self._db.update_item(**take.update(self._table, item_key(account.key_pk, "KEY"))["Update"])
                return
            except self._db.exceptions.ConditionalCheckFailedException as exc:
                state = State.from_item(exc.response["Item"])
            except ClientError as exc:
                if _code(exc) not in BUSY_CODES:
                    raise
                raise ratelimit.busy(what) from exc
        raise ratelimit.busy(what)

    def settle(
        self,
        reservation: Reservation,
        charged: int,
        *,
        images: int = 0,
        provider: str = "",
        completion: dict[str, Any] | None = None,
        guard: dict[str, Any] | None = None,
        deadline_s: float = SETTLE_DEADLINE_S,
        tokens: int = 0,
    ) -> bool:
        """Finish a reservation, keeping `charged` (capped at the reservation) and refunding the rest; count
        it in the usage; give its slots back; complete its Idempotency-Key record. False, and nothing
        changes, if it was already finished.

        `guard`: an action that commits with the settle or not at all (jobs.py: the job's own conditional
        state move, so a job and its money always move together); False, and nothing changes, when its
        condition fails. A `completion` whose condition fails is dropped instead.

        Throttling and transport errors are retried until `deadline_s`; then the intended charge is left,
        off the account's partition, for the sweeper (which then charges it instead of refunding) and the
        error is raised.
        """
        r = reservation
        charged = max(0, min(charged, r.amount))
        refund = r.amount - charged
        give_up = self._clock() + deadline_s
        attempt = 0
        # Built once and sent unchanged with one ClientRequestToken until its shape changes: a settle that
        # committed behind a lost response is then found committed by its retry, not "already settled".
        now = self._clock()
        shape: tuple[bool, bool] | None = None
        while True:
            if shape != (guard is not None, completion is not None):
                shape = (guard is not None, completion is not None)
                actions = self._settle_actions(r, charged, refund, images, provider, now, tokens)
                if guard is not None:
                    actions.append(guard)
                if completion is not None:
                    actions.append(completion)
                # A token of this call's own: DynamoDB refuses (IdempotentParameterMismatch) a token reused
                # with other actions within 10 minutes, as another settle of the same request would send.
                token = request_token(r.request_id, "settle", str(shape), uuid.uuid4().hex)
            try:
                failed = transact_or_reasons(self._db, actions, self._sleep, token)
            except (ClientError, BotoCoreError) as exc:
                if isinstance(exc, ClientError) and _code(exc) not in BUSY_CODES:
                    raise
                attempt += 1
                if self._clock() >= give_up:
                    self._leave_intended_charge(r, charged, images, provider)
                    raise
                self._sleep(random.uniform(0, min(0.5, 0.05 * 2**attempt)))
                continue
            if failed is None:
                return True
            if 0 in failed or (guard is not None and len(actions) - 1 - (completion is not None) in failed):
                return False  # a concurrent settle or sweep won: the refund happened exactly once, there
            if completion is not None and len(actions) - 1 in failed:
                # The Idempotency-Key was taken over (its lock ran out): settle all the same, without it.
                completion = None
                continue
            raise RuntimeError(f"settle of {r.request_id} refused by {sorted(failed)}")

    def _request_put(
        self,
        account: Account,
        request_id: str,
        amount: int,
        details: dict[str, str],
        slots: str,
        now: float,
    ) -> dict[str, Any]:
        item = {
            **item_key(account_pk(account.account_id), f"{ledger.REQUEST}{request_id}"),
            "state": {"S": "reserved"},
            "reserved": {"N": str(amount)},
            "created_at": {"N": str(int(now))},
            "key_id": {"S": account.key_id},
            "key_pk": {"S": account.key_pk},
            "open_shard": {"S": _open_shard(request_id)},
            "open_since": {"N": str(int(now))},
            **{k: {"S": v} for k, v in details.items()},
        }
        if slots:
            item["slots"] = {"S": slots}
        if account.budget is not None:
            item["budgeted"] = {"BOOL": True}
        return {
            "Put": {"TableName": self._table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}
        }

    def _settle_actions(
        self,
        r: Reservation,
        charged: int,
        refund: int,
        images: int,
        provider: str,
        now: float,
        tokens: int = 0,
    ) -> list[dict[str, Any]]:
        values = {
            ":state": {"S": "settled" if charged else "refunded"},
            ":reserved": {"S": "reserved"},
            ":charged": {"N": str(charged)},
            ":refund": {"N": str(refund)},
            ":images": {"N": str(images)},
            ":now": {"N": str(int(now))},
            ":expires": {"N": str(int(now) + REQUEST_RETENTION_DAYS * 86400)},
        }
        if provider:
            values[":provider"] = {"S": provider}
        if tokens:
            values[":tokens"] = {"N": str(tokens)}
        actions: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": item_key(account_pk(r.account_id), f"{ledger.REQUEST}{r.request_id}"),
                    "UpdateExpression": (
                        "SET #s = :state, charged = :charged, refunded = :refund, images = :images, "
                        "settled_at = :now, expires_at = :expires"
                        + (", provider = :provider" if provider else "")
                        + (", tokens = :tokens" if tokens else "")
                        + " REMOVE open_shard, open_since, intended_charge"
                    ),
                    "ConditionExpression": "#s = :reserved",
                    "ExpressionAttributeNames": {"#s": "state"},
                    "ExpressionAttributeValues": values,
                }
            },
            ledger.entry(
                r.account_id,
                "settle",
                refund,
                lambda: now,
                table=self._table,
                request_id=r.request_id,
                charged=charged,
                refunded=refund,
            ),
            ledger.usage_update(
                self._table,
                datetime.fromtimestamp(now, UTC).date(),
                r.account_id,
                r.key_id or "-",
                r.model or "-",
                images=images,
                charged=charged,
                refunded=refund,
            ),
        ]
        account = (
            Fragment(add=["balance :refund"], values={":refund": {"N": str(refund)}}) if refund else None
        )
        if "a" in r.slots:
            account = (account or Fragment()).merge(ratelimit.release("a", r.request_id))
        if account is not None:
            actions.append(account.update(self._table, item_key(account_pk(r.account_id), "ACCOUNT")))
        key = ratelimit.release("k", r.request_id) if "k" in r.slots else None
        if r.budgeted and refund:  # what was not charged no longer counts against the key's budget
            key = (key or Fragment()).merge(
                Fragment(add=["spent :unspent"], values={":unspent": {"N": str(-refund)}})
            )
        if key is not None:
            actions.append(key.update(self._table, item_key(r.key_pk, "KEY")))
        return actions

    def _leave_intended_charge(self, r: Reservation, charged: int, images: int, provider: str) -> None:
        """Best effort, after a settle failed for good: so the sweeper charges what was delivered. Written
        off the account's partition (INTENDED#<account_id>), whose heat is what usually failed the settle."""
        # Failing too, it leaves the reservation to be refunded; the caller has logged the intended charge.
        with contextlib.suppress(ClientError, BotoCoreError):
            self._db.put_item(
                TableName=self._table,
                Item={
                    **_intended_key(r.account_id, r.request_id),
                    "intended_charge": {"N": str(charged)},
                    "intended_images": {"N": str(images)},
                    "provider": {"S": provider or "-"},
                    "expires_at": {"N": str(int(self._clock()) + REQUEST_RETENTION_DAYS * 86400)},
                },
            )

    def _intended(self, r: Reservation, item: dict[str, Any]) -> tuple[int, int]:
        """The (charge, images) a request that could not settle said it delivered, or (0, 0)."""
        found = item if "intended_charge" in item else None  # written on the request by earlier versions
        if found is None:
            found = self._db.get_item(
                TableName=self._table, Key=_intended_key(r.account_id, r.request_id), ConsistentRead=True
            ).get("Item")
        if found is None:
            return 0, 0
        return int(found["intended_charge"]["N"]), int(found["intended_images"]["N"])

    def precheck(self, account: Account, images: int, *, balance: int | None = None) -> None:
        """The 429 `reserve` would answer from the key as it was just authenticated, with no call, and the
        402 of an account whose `balance` (when given) pays for nothing: for work that costs before the
        reservation, such as fetching a JSON edit's images. The reservation still decides (and, as there,
        the container's memory of the account is a guess that may not refuse)."""
        self._refuse_if_limited(account, account.limiter, None, images, self._clock())
        if balance is not None and balance <= 0:
            raise APIError(
                402,
                f"Insufficient balance: the account's balance is {micros_to_usd(balance)}. Add credit and "
                "try again; nothing was fetched.",
                type="insufficient_quota",
                code="insufficient_balance",
            )

    def _refuse_if_limited(
        self, account: Account, key_state: State, account_state: State | None, images: int, now: float
    ) -> None:
        for what, state, default in (
            (f"key {account.key_id}", key_state, self._key_limits),
            (f"account {account.account_id}", account_state, self._account_limits),
        ):
            if state is None:
                continue
            refused = ratelimit.refusal(what, state, default, images, now)
            if refused is not None:
                raise refused

    # --- the sweeper -----------------------------------------------------------------------------------

    def open_reservations(self, *, older_than_s: float, account_id: str | None = None) -> list[Reservation]:
        """Reservations still open after `older_than_s` seconds, from the sparse index: the cost follows the
        number open, not the history."""
        return [r for r, _ in self._open(older_than_s, account_id)]

    def sweep(
        self,
        *,
        older_than_s: float = Deadlines().stale_reservation_s,
        account_id: str | None = None,
        log: Any = None,
    ) -> list[tuple[Reservation, int]]:
        """Close reservations a killed request left open, each exactly once whatever runs at the same time:
        refunded, or charged what a request that could not settle said it delivered. One failing reservation
        is logged and left for the next sweep, never stopping the others. Returns (reservation, charged)."""
        closed = []
        for r, item in self._open(older_than_s, account_id):
            if "job" in item:
                continue  # closed with its job, on the job's own clock (jobs.py, Jobs.sweep)
            try:
                charged, images = self._intended(r, item)
                if self.settle(r, charged, images=images, provider="" if charged else "sweep"):
                    closed.append((r, charged))
            except Exception:
                if log is not None:
                    log.exception("sweep failed for one reservation", extra={"request_id": r.request_id})
        return closed

    def open_jobs(
        self, *, older_than_s: float, account_id: str | None = None
    ) -> list[tuple[Reservation, str]]:
        """Open reservations of jobs (whose request item names its `job`), with the job id: `sweep` leaves
        them to jobs.py, which knows whether a job is waiting in its queue, running, or dead."""
        return [(r, item["job"]["S"]) for r, item in self._open(older_than_s, account_id) if "job" in item]

    def _open(self, older_than_s: float, account_id: str | None) -> list[tuple[Reservation, dict[str, Any]]]:
        cutoff = int(self._clock() - older_than_s)
        found = []
        for shard in range(OPEN_SHARDS):
            for item in query(
                self._db,
                TableName=self._table,
                IndexName=OPEN_INDEX,
                KeyConditionExpression="open_shard = :shard AND open_since < :cutoff",
                ExpressionAttributeValues={":shard": {"S": f"OPEN#{shard}"}, ":cutoff": {"N": str(cutoff)}},
            ):
                if account_id is None or item["pk"]["S"] == account_pk(account_id):
                    found.append(item)
        found.sort(key=lambda i: int(i["open_since"]["N"]))
        return [(_reservation(item), item) for item in found]

    # --- operator credits ------------------------------------------------------------------------------

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


def _insufficient(amount: int, balance: int, upper_bound: bool) -> APIError:
    price = (
        f"reserves up to {micros_to_usd(amount)} (it is charged for the tokens the model reports, "
        "and the rest is refunded)"
        if upper_bound
        else f"costs {micros_to_usd(amount)}"
    )
    return APIError(
        402,
        f"Insufficient balance: this request {price} and the account's balance is {micros_to_usd(balance)}. "
        "Add credit and try again.",
        type="insufficient_quota",
        code="insufficient_balance",
    )


def _over_budget(account: Account, amount: int, left: int) -> APIError:
    return APIError(
        402,
        f"This request costs up to {micros_to_usd(amount)} and key {account.key_id} has "
        f"{micros_to_usd(left)} left of its budget. Ask the account's admin for a key with more budget.",
        type="insufficient_quota",
        code="key_budget_exceeded",
    )


def _intended_key(account_id: str, request_id: str) -> dict[str, dict[str, str]]:
    return item_key(f"INTENDED#{account_id}", f"{ledger.REQUEST}{request_id}")


def _open_shard(request_id: str) -> str:
    return f"OPEN#{sum(request_id.encode()) % OPEN_SHARDS}"


def _reservation(item: dict[str, Any]) -> Reservation:
    return Reservation(
        account_id=item["pk"]["S"].removeprefix("ACCOUNT#"),
        request_id=item["sk"]["S"].removeprefix(ledger.REQUEST),
        amount=int(item["reserved"]["N"]),
        key_id=item.get("key_id", {}).get("S", ""),
        key_pk=item.get("key_pk", {}).get("S", ""),
        model=item.get("model", {}).get("S", ""),
        created_at=int(item["created_at"]["N"]),
        slots=item.get("slots", {}).get("S", ""),
        budgeted=item.get("budgeted", {}).get("BOOL", False),
    )


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")

"""Reserve, settle, refund and credit: the balance never goes below zero, every refund happens once, and a
balance and the record of what moved it always change in one transaction.

A request costs three DynamoDB calls: the key lookup (accounts.py), the reserve transaction and the settle.
Reserving debits the balance under `balance >= amount` and takes the key's and the account's rate limits
(ratelimit.py: conditions on the same ACCOUNT item), and puts the REQUEST item in state `reserved`: the
hold, which says where the debited money is. Settling moves the REQUEST item out of `reserved` under a
condition, with the unused part of the reservation returned and the request's slots given back on the
ACCOUNT item in the same transaction; a second settle or refund of the same request is a no-op. The
REQUEST item is the request's ledger record (ledger.py: an account's balance is the sum of its LEDGER
entries and of its requests), kept for good; usage counters follow from the table's stream (usage.py),
off the request path. A fixed-price request that is charged what it reserved and holds no slot settles
with one UpdateItem. Issue 22 counts it: 10 write units for a request with the default limits, where
separate ledger rows, usage counters and the KEY item's limiter took 20 (docs/performance.md).
  REQUESTS#<account_id>#<n> / REQUEST#<request_id> -> account_id, state (reserved|settled|refunded),
      reserved, charged, refunded (micro-USD), images, model, endpoint, key_id, key_pk, slots (scopes
      holding a slot: "k" the key, "a" the account), provider, created_at, settled_at, settle_token; while
      reserved open_shard + open_since (the sparse OPEN_INDEX the sweeper reads); job (the job id) when the
      request is an image job's, whose reservation jobs/lifecycle.py closes.
  ACCOUNT#<account_id> / REQUEST#<request_id>: the same, as written before issue 22, with `reserve` and
      `settle` LEDGER entries and a TTL once closed. Still settled the old way while any is open.
  INTENDED#<account_id> / REQUEST#<request_id> -> intended_charge, intended_images, provider, expires_at:
      what a request whose settle could not be written delivered, so the sweeper charges instead of
      refunding. Off the account's partition: the heat that failed the settle is usually there.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from imagegate.config import HOLD_MARGIN_SECONDS, Deadlines
from imagegate.errors import APIError
from imagegate.money import ledger, ratelimit
from imagegate.money.accounts import Account, NotFound
from imagegate.money.ledger import REQUEST_RETENTION_DAYS
from imagegate.money.ratelimit import ACCOUNT_SCOPE, Fragment, Limits, Scope, State, key_scope
from imagegate.table import (
    OPEN_SHARD,
    OPEN_SHARDS,
    REQUEST_PREFIX,
    account_pk,
    item_key,
    open_items,
    read_balance,
    request_pk,
    request_token,
    single_or_transact,
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
# Idle keys' limiter attributes removed by one update (ratelimit.forget): its expression stays small.
PRUNE_KEYS_PER_UPDATE = 25
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
    # The REQUEST item's partition; empty for a request reserved before issue 22 (a job's may still be open),
    # whose item is on the account's partition and whose money moves with LEDGER entries, and whose slots
    # were entries of a map no longer read (so none is given back).
    request_pk: str = ""

    @property
    def key(self) -> dict[str, dict[str, str]]:
        return item_key(self.request_pk or account_pk(self.account_id), f"{REQUEST_PREFIX}{self.request_id}")


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
        # What this container last saw of each scope's limiter on an ACCOUNT item, by (account, attribute): a
        # `tat` seen is a lower bound of the stored one (ratelimit.py), so a remembered one picks the right
        # update form first, and a wrong guess only costs a retry. The overrides are a guess too.
        self._seen: dict[tuple[str, str], State] = {}

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
        settle_within_s: int = 0,
    ) -> Reservation:
        """Debit `amount` micro-USD and take the rate limits for `images` images, in one transaction.

        429 when a limit of the key or the account refuses (nothing consumed), 402 stating the price and the
        balance when the balance does not cover it. `details` (model, endpoint) are kept on the request;
        `upper_bound`: the amount is a worst-case reservation (token-priced models), and the 402 says so.
        `settle_within_s`: the longest the reserving function may still settle it (its timeout, with margin),
        kept on the request as `settle_by`: the sweeper never refunds it sooner, whatever its own timeout.
        """
        if amount < 0:
            raise ValueError(f"cannot reserve a negative amount ({amount})")
        if account.budget is not None and amount > account.budget:
            raise _over_budget(account, amount, account.budget)
        key, acct = self._scopes(account)
        key_state, account_state = self._remembered(account, key), self._remembered(account, acct)
        # Only an item DynamoDB returned in this call may refuse outright; before it, what this container
        # remembers refuses only where it is a lower bound: a key's `tat`, whose limits were just read.
        seen = False
        key_raced = account_raced = False
        pk = request_pk(account.account_id, request_id)
        for _ in range(RESERVE_ATTEMPTS):
            now = self._clock()
            self._refuse_if_limited(account, key_state, account_state if seen else None, images, now, seen)
            slots = "".join(
                scope.tag
                for scope, state, default in (
                    (key, key_state, self._key_limits),
                    (acct, account_state, self._account_limits),
                )
                if state.limits(default).max_concurrent
            )
            actions = [
                Fragment(
                    set=["balance = balance - :amount"],
                    conditions=["attribute_exists(pk) AND balance >= :amount"],
                    values={":amount": {"N": str(amount)}},
                )
                .merge(ratelimit.take(key, key_state, self._key_limits, images, now, raced=key_raced))
                .merge(
                    ratelimit.take(
                        acct, account_state, self._account_limits, images, now, raced=account_raced
                    )
                )
                .update(self._table, item_key(account_pk(account.account_id), "ACCOUNT")),
                self._request_put(account, pk, request_id, amount, details, slots, now, settle_within_s),
            ]
            if account.budget is not None:  # spent <= budget - amount, and then spent += amount
                actions.append(
                    Fragment(
                        add=["spent :spend"],
                        conditions=["spent <= :room"],
                        values={":spend": {"N": str(amount)}, ":room": {"N": str(account.budget - amount)}},
                    ).update(self._table, item_key(account.key_pk, "KEY"))
                )
            try:
                failed = transact_or_reasons(self._db, actions, self._sleep)
            except ClientError as exc:
                if _code(exc) not in BUSY_CODES:
                    raise
                raise ratelimit.busy(f"account {account.account_id}") from exc
            if failed is None:
                key_after = ratelimit.admitted(key_state, self._key_limits, images, now, raced=key_raced)
                self._remember(account, key, key_after)
                self._remember(
                    account,
                    acct,
                    ratelimit.admitted(account_state, self._account_limits, images, now, raced=account_raced),
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
                    ratelimit.headers(key_after, self._key_limits, now),
                    account.budget is not None,
                    pk,
                )
            if 1 in failed:
                # The request item already existed: a reused id, never a free request.
                raise RuntimeError(f"request id {request_id} collided with an existing item")
            balance = None
            if 0 in failed:
                if failed[0] is None:
                    raise NotFound(f"no account {account.account_id}")
                learned_key = replace(State.from_item(failed[0], key), overrides=account.limiter.overrides)
                learned_account = State.from_item(failed[0], acct)
                key_raced, account_raced = (
                    learned_key.tat != key_state.tat,
                    learned_account.tat != account_state.tat,
                )
                key_state, account_state, seen = learned_key, learned_account, True
                self._remember(account, key, key_state)
                self._remember(account, acct, account_state)
                balance = int(failed[0]["balance"]["N"])
            spent = int(failed[2].get("spent", {}).get("N", 0)) if failed.get(2) else None
            self._refuse_if_limited(account, key_state, account_state if seen else None, images, now, seen)
            if spent is not None and account.budget is not None and spent + amount > account.budget:
                raise _over_budget(account, amount, account.budget - spent)
            if balance is not None and balance < amount:
                raise _insufficient(amount, balance, upper_bound)
            if 2 in failed and failed[2] is None:
                raise NotFound(f"no key {account.key_id}")
        raise ratelimit.busy(f"account {account.account_id}")

    def count(self, account: Account, images: int) -> None:
        """Take `images` from the key's images-per-minute bucket without reserving money or a slot (an
        idempotent replay, which serves stored images); 429 when the bucket cannot give them."""
        key, _ = self._scopes(account)
        state = self._remembered(account, key)
        what = f"key {account.key_id}"
        if not state.limits(self._key_limits).images_per_minute:
            return
        for _ in range(RESERVE_ATTEMPTS):
            now = self._clock()
            refused = ratelimit.refusal(what, state, self._key_limits, images, now, slot=False)
            if refused is not None:
                raise refused
            take = ratelimit.take(key, state, self._key_limits, images, now, slot=False)
            try:
                self._db.update_item(
                    **take.update(self._table, item_key(account_pk(account.account_id), "ACCOUNT"))["Update"]
                )
                self._remember(
                    account, key, ratelimit.admitted(state, self._key_limits, images, now, slot=False)
                )
                return
            except self._db.exceptions.ConditionalCheckFailedException as exc:
                state = replace(
                    State.from_item(exc.response["Item"], key), overrides=account.limiter.overrides
                )
                self._remember(account, key, state)
            except ClientError as exc:
                if _code(exc) not in BUSY_CODES:
                    raise
                raise ratelimit.busy(what) from exc
        raise ratelimit.busy(what)

    def _scopes(self, account: Account) -> tuple[Scope, Scope]:
        return key_scope(account.key_id), ACCOUNT_SCOPE

    def _remembered(self, account: Account, scope: Scope) -> State:
        state = self._seen.get((account.account_id, scope.tat), State())
        # A key's limits are its KEY item's, as just authenticated; the account's are remembered with it.
        return replace(state, overrides=account.limiter.overrides) if not scope.own_limits else state

    def _remember(self, account: Account, scope: Scope, state: State) -> None:
        self._seen[(account.account_id, scope.tat)] = state

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
        partials: tuple[int, int] = (0, 0),
    ) -> bool:
        """Finish a reservation, keeping `charged` (capped at the reservation) and refunding the rest; count
        it in the usage; give its slots back; complete its Idempotency-Key record. False, and nothing
        changes, if it was already finished.

        `guard`: an action that commits with the settle or not at all (jobs/lifecycle.py: the job's
        conditional state move, so a job and its money always move together); False, and nothing changes,
        when its condition fails. A `completion` whose condition fails is dropped instead.

        `partials`: a stream's partial images written to its client, and what they cost (kept on the request,
        so that `reconcile` sees a charge that gives them away or charges more).

        Throttling and transport errors are retried until `deadline_s`; then the intended charge is left,
        off the account's partition, for the sweeper (which then charges it instead of refunding) and the
        error is raised.
        """
        r = reservation
        charged = max(0, min(charged, r.amount))
        refund = r.amount - charged
        give_up = self._clock() + deadline_s
        attempt = 0
        # Built once and sent unchanged until its shape changes, with a token of this call's own (a
        # ClientRequestToken for a transaction, and `settle_token` on the request): a settle that committed
        # behind a lost response is then found committed by its retry, not "already settled". (DynamoDB
        # refuses a ClientRequestToken reused with other actions within 10 minutes, as another settle of the
        # same request would send: hence one per call.)
        now = self._clock()
        token = request_token(r.request_id, "settle", uuid.uuid4().hex)
        shape: tuple[bool, bool] | None = None
        while True:
            if shape != (guard is not None, completion is not None):
                shape = (guard is not None, completion is not None)
                actions = self._settle_actions(
                    r, charged, refund, images, provider, now, tokens, token, partials
                )
                if guard is not None:
                    actions.append(guard)
                if completion is not None:
                    actions.append(completion)
                attempt_token = request_token(token, str(shape))
            try:
                failed = single_or_transact(self._db, actions, self._sleep, attempt_token)
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
            if 0 in failed and (failed[0] or {}).get("settle_token", {}).get("S") == token:
                return True  # this very settle committed; its answer was lost
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
        pk: str,
        request_id: str,
        amount: int,
        details: dict[str, str],
        slots: str,
        now: float,
        settle_within_s: int = 0,
    ) -> dict[str, Any]:
        item = {
            **item_key(pk, f"{REQUEST_PREFIX}{request_id}"),
            "account_id": {"S": account.account_id},
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
        if settle_within_s:
            item["settle_by"] = {"N": str(int(now) + settle_within_s)}
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
        tokens: int,
        token: str,
        partials: tuple[int, int],
    ) -> list[dict[str, Any]]:
        values = {
            ":state": {"S": "settled" if charged else "refunded"},
            ":reserved": {"S": "reserved"},
            ":charged": {"N": str(charged)},
            ":refund": {"N": str(refund)},
            ":images": {"N": str(images)},
            ":now": {"N": str(int(now))},
            ":token": {"S": token},
        }
        sets = "SET #s = :state, charged = :charged, refunded = :refund, images = :images, settled_at = :now"
        sets += ", settle_token = :token"
        if provider:
            values[":provider"] = {"S": provider}
            sets += ", provider = :provider"
        if tokens:
            values[":tokens"] = {"N": str(tokens)}
            sets += ", tokens = :tokens"
        if partials[0]:
            values[":partials"], values[":partials_charge"] = ({"N": str(n)} for n in partials)
            sets += ", partials = :partials, partials_charge = :partials_charge"
        if not r.request_pk:  # written before issue 22: its record expires; the ledger keeps the money
            values[":expires"] = {"N": str(int(now) + REQUEST_RETENTION_DAYS * 86400)}
            sets += ", expires_at = :expires"
        actions: list[dict[str, Any]] = [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": r.key,
                    "UpdateExpression": sets + " REMOVE open_shard, open_since, intended_charge",
                    "ConditionExpression": "#s = :reserved",
                    "ExpressionAttributeNames": {"#s": "state"},
                    "ExpressionAttributeValues": values,
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                }
            }
        ]
        if not r.request_pk:
            actions += [
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
            Fragment(add=["balance :refund"], values={":refund": {"N": str(refund)}})
            if refund
            else Fragment()
        )
        if r.request_pk:  # slots of a request reserved before issue 22 were entries of a map no longer read
            for scope in (key_scope(r.key_id), ACCOUNT_SCOPE):
                if scope.tag in r.slots:
                    account = account.merge(ratelimit.release(scope))
        if account.add:
            actions.append(account.update(self._table, item_key(account_pk(r.account_id), "ACCOUNT")))
        if r.budgeted and refund:  # what was not charged no longer counts against the key's budget
            actions.append(
                Fragment(add=["spent :unspent"], values={":unspent": {"N": str(-refund)}}).update(
                    self._table, item_key(r.key_pk, "KEY")
                )
            )
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
        """With no call: the 429 `reserve` would answer from the key's images per minute as this container
        last saw them (a lower bound), and the 402 of an account whose `balance` (if given) pays for nothing,
        or of a key whose budget, as authenticated, has nothing left: for work that costs before the
        reservation, such as fetching a JSON edit's images. The reservation still decides (and, as there, the
        container's memory of the account is a guess that may not refuse)."""
        key, _ = self._scopes(account)
        self._refuse_if_limited(account, self._remembered(account, key), None, images, self._clock(), False)
        if account.budget is not None and account.budget - account.spent <= 0:
            raise APIError(
                402,
                f"Key {account.key_id} has nothing left of its budget ({micros_to_usd(account.budget)}). "
                "Ask the account's admin for a key with more budget; nothing was fetched.",
                type="insufficient_quota",
                code="key_budget_exceeded",
            )
        if balance is not None and balance <= 0:
            raise APIError(
                402,
                f"Insufficient balance: the account's balance is {micros_to_usd(balance)}. Add credit and "
                "try again; nothing was fetched.",
                type="insufficient_quota",
                code="insufficient_balance",
            )

    def _refuse_if_limited(
        self,
        account: Account,
        key_state: State,
        account_state: State | None,
        images: int,
        now: float,
        key_seen: bool = True,
    ) -> None:
        # A key's remembered count of requests in flight is no bound at all (they finish): only a counter
        # just returned by DynamoDB (`key_seen`) refuses a slot.
        for what, state, default, slot in (
            (f"key {account.key_id}", key_state, self._key_limits, key_seen),
            (f"account {account.account_id}", account_state, self._account_limits, True),
        ):
            if state is None:
                continue
            refused = ratelimit.refusal(what, state, default, images, now, slot=slot)
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
                continue  # closed with its job, on the job's own clock (jobs/lifecycle.py, Jobs.sweep)
            if int(item.get("settle_by", {}).get("N", 0)) + HOLD_MARGIN_SECONDS > self._clock():
                continue  # reserved under a longer timeout (a deploy lowered it): it may still settle
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
        them to jobs/lifecycle.py, which knows whether a job is waiting in its queue, running, or dead."""
        return [(r, item["job"]["S"]) for r, item in self._open(older_than_s, account_id) if "job" in item]

    def _open(self, older_than_s: float, account_id: str | None) -> list[tuple[Reservation, dict[str, Any]]]:
        cutoff = int(self._clock() - older_than_s)
        found = []
        for item in open_items(self._db, self._table, OPEN_SHARD, cutoff):
            if account_id is None or _account_of(item) == account_id:
                found.append(item)
        found.sort(key=lambda i: int(i["open_since"]["N"]))
        return [(_reservation(item), item) for item in found]

    def prune_limiters(self, accounts: Iterable[dict[str, Any]], log: Any = None) -> int:
        """Drop the limiter attributes of keys gone idle from these ACCOUNT items (Accounts.account_items;
        ratelimit.forget), a few keys per update; an update whose key became busy meanwhile is left for the
        next run. Returns how many keys' attributes were removed."""
        pruned = 0
        try:
            items = list(accounts)
        except (ClientError, BotoCoreError):
            if log is not None:
                log.exception("pruning limiters: the accounts could not be read; the next run tries again")
            return 0
        for item in items:
            idle = ratelimit.idle_keys(item, self._clock())
            for start in range(0, len(idle), PRUNE_KEYS_PER_UPDATE):
                chunk = idle[start : start + PRUNE_KEYS_PER_UPDATE]
                update = ratelimit.forget(chunk, self._clock()).update(
                    self._table, {"pk": item["pk"], "sk": item["sk"]}, return_old=False
                )["Update"]
                try:
                    self._db.update_item(**update)
                    pruned += len(chunk)
                except self._db.exceptions.ConditionalCheckFailedException:
                    continue
                except ClientError:
                    if log is not None:
                        log.exception("pruning limiters failed", extra={"account": item["pk"]["S"]})
        return pruned

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
    return item_key(f"INTENDED#{account_id}", f"{REQUEST_PREFIX}{request_id}")


def _open_shard(request_id: str) -> str:
    return f"{OPEN_SHARD}{sum(request_id.encode()) % OPEN_SHARDS}"


def _account_of(item: dict[str, Any]) -> str:
    """A request item's account: named on it, or (written before issue 22) its partition's."""
    return item["account_id"]["S"] if "account_id" in item else item["pk"]["S"].removeprefix("ACCOUNT#")


def _reservation(item: dict[str, Any]) -> Reservation:
    legacy = "account_id" not in item
    return Reservation(
        account_id=_account_of(item),
        request_id=item["sk"]["S"].removeprefix(REQUEST_PREFIX),
        amount=int(item["reserved"]["N"]),
        key_id=item.get("key_id", {}).get("S", ""),
        key_pk=item.get("key_pk", {}).get("S", ""),
        model=item.get("model", {}).get("S", ""),
        created_at=int(item["created_at"]["N"]),
        slots=item.get("slots", {}).get("S", ""),
        budgeted=item.get("budgeted", {}).get("BOOL", False),
        request_pk="" if legacy else item["pk"]["S"],
    )


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")

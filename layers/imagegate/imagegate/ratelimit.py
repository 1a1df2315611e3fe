"""Per-key rate limits in DynamoDB: images per minute, and requests in flight at once.

Items (single table, `pk`/`sk`):
  RATE#<key_id> / MINUTE#<epoch minute> -> images (requested in that minute), expires_at (TTL)
  RATE#<key_id> / INFLIGHT              -> slots: map request_id -> expiry (epoch seconds)

Images per minute is a fixed one-minute window: one conditional ADD admits a request only when its images
still fit, so a request that would overshoot is refused whole and consumes nothing. The images stay
counted when the request later fails, as OpenAI counts them: a client that retries failures at full speed
is exactly what the limit is for.

Concurrency is a map of slots; taking one is a conditional SET (`size(slots) < max`), giving it back a
REMOVE. Every slot carries an expiry, so the slot of a Lambda killed mid-request is pruned when it is in
the way instead of blocking the key forever.

Every refusal is a 429 in OpenAI's shape (type "requests", code "rate_limit_exceeded") with `retry-after`
and OpenAI's `x-ratelimit-*` headers; a `Lease` carries the same headers for the success response. A request
for more images than the key's whole minute allows is a 429 too, as OpenAI answers a request larger than a
limit, but with `x-should-retry: false` and no `retry-after`: waiting cannot make it pass.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from .accounts import Account
from .errors import APIError
from .table import item_key

IMAGES_PER_MINUTE = 50
MAX_CONCURRENT = 10
WINDOW_SECONDS = 60
# Longer than the 29 s function timeout: only the slot of a request that can no longer be running expires.
SLOT_SECONDS = 60
# Nothing reads a closed window; the margin only keeps TTL's lazy deletion away from the open one.
COUNTER_GRACE_SECONDS = 120
# When a slot frees is unknowable; in-flight requests finish within seconds, so ask for a short wait.
SLOT_RETRY_SECONDS = 1
# DynamoDB pushing back on one key's hot items is contention too: the client should slow down, not see a 500.
BUSY_CODES = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionConflictException",
    }
)


@dataclass(frozen=True)
class Lease:
    """A request admitted by the limiter; `release` it when the request ends, however it ends."""

    key_id: str
    request_id: str
    headers: dict[str, str]
    quota: _Quota
    images: int


@dataclass(frozen=True)
class _Quota:
    """One key's limits at one moment of one minute window."""

    key_id: str
    images: int
    requests: int
    minute: int
    reset: int  # whole seconds until the window closes, 1..60

    def headers(self, used: int | None = None, in_flight: int | None = None) -> dict[str, str]:
        """OpenAI's rate-limit headers; the remaining counts only where they are known."""
        headers = {
            "x-ratelimit-limit-images": str(self.images),
            "x-ratelimit-reset-images": duration(self.reset),
            "x-ratelimit-limit-requests": str(self.requests),
        }
        if used is not None:
            headers["x-ratelimit-remaining-images"] = str(max(0, self.images - used))
        if in_flight is not None:
            headers["x-ratelimit-remaining-requests"] = str(max(0, self.requests - in_flight))
        return headers

    def refused(
        self, what: str, *, limit: int, used: int, requested: int, wait: int, headers: dict[str, str]
    ) -> APIError:
        return APIError(
            429,
            f"Rate limit reached for {what} on key {self.key_id}: Limit {limit}, Used {used}, "
            f"Requested {requested}. Please try again in {duration(wait)}.",
            type="requests",
            code="rate_limit_exceeded",
            headers={"retry-after": str(wait), **headers},
        )


class _SlotsTaken(Exception):
    """Every slot is held; `slots` is the map that refused (None: the key has no slot map yet)."""

    def __init__(self, slots: dict | None) -> None:
        super().__init__("slots taken")
        self.slots = slots


class RateLimiter:
    def __init__(
        self,
        dynamodb: Any,
        table: str,
        clock: Any = time.time,
        images_per_minute: int = IMAGES_PER_MINUTE,
        max_concurrent: int = MAX_CONCURRENT,
    ) -> None:
        self._db = dynamodb
        self._table = table
        self._clock = clock
        self._images_per_minute = images_per_minute
        self._max_concurrent = max_concurrent

    def acquire(self, account: Account, request_id: str, images: int) -> Lease:
        """Admit a request for `images` images, or raise a 429 having consumed nothing."""
        now = self._clock()
        minute = int(now // WINDOW_SECONDS)
        images_limit, requests_limit = account.images_per_minute, account.max_concurrent
        quota = _Quota(
            key_id=account.key_id,
            images=self._images_per_minute if images_limit is None else images_limit,
            requests=self._max_concurrent if requests_limit is None else requests_limit,
            minute=minute,
            reset=math.ceil((minute + 1) * WINDOW_SECONDS - now),
        )
        if images > quota.images:
            raise _too_large(quota, images)
        try:
            return self._admit(quota, request_id, images, now)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in BUSY_CODES:
                raise
            raise APIError(
                429,
                f"Too many requests at once on key {quota.key_id}. "
                f"Please try again in {duration(SLOT_RETRY_SECONDS)}.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"retry-after": str(SLOT_RETRY_SECONDS), **quota.headers()},
            ) from exc

    def release(self, lease: Lease, *, refused: bool = False) -> bool:
        """Free the lease's slot; `refused`: the request was turned away before any work (a 402), so its
        images go back to the minute too. False when DynamoDB could not be reached: the slot then expires by
        itself after SLOT_SECONDS, so a failed release must not turn a served request into an error."""
        if refused:
            self._uncount(lease.quota, lease.images)
        try:
            self._db.update_item(
                TableName=self._table,
                Key=_inflight_key(lease.key_id),
                UpdateExpression="REMOVE slots.#id",
                ExpressionAttributeNames={"#id": lease.request_id},
            )
        except (ClientError, BotoCoreError):
            return False
        return True

    def _admit(self, quota: _Quota, request_id: str, images: int, now: float) -> Lease:
        """Count the images, then take a slot; a refused slot gives the images back."""
        used = self._count(quota, images, now)
        try:
            in_flight = self._take_slot(quota, request_id, now)
        except _SlotsTaken as full:
            self._uncount(quota, images)
            in_flight = _in_flight(full.slots or {}, now)
            raise quota.refused(
                "concurrent requests",
                limit=quota.requests,
                used=in_flight,
                requested=1,
                wait=SLOT_RETRY_SECONDS,
                headers=quota.headers(used - images, in_flight),
            ) from None
        except Exception:
            self._uncount(quota, images)
            raise
        return Lease(quota.key_id, request_id, quota.headers(used, in_flight), quota, images)

    def _count(self, quota: _Quota, images: int, now: float) -> int:
        """Add `images` to this minute's count when they fit; returns the new count."""
        try:
            out = self._db.update_item(
                TableName=self._table,
                Key=_minute_key(quota.key_id, quota.minute),
                UpdateExpression="SET expires_at = :expires ADD images :n",
                # `images + :n <= :limit`, written as DynamoDB can evaluate it (no arithmetic in conditions).
                ConditionExpression="attribute_not_exists(images) OR images <= :room",
                ExpressionAttributeValues={
                    ":n": _n(images),
                    ":room": _n(quota.images - images),
                    ":expires": _n((quota.minute + 1) * WINDOW_SECONDS + COUNTER_GRACE_SECONDS),
                },
                ReturnValues="UPDATED_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._db.exceptions.ConditionalCheckFailedException as exc:
            used = int(exc.response["Item"]["images"]["N"])
            in_flight = _in_flight(self._slots(quota.key_id), now)
            raise quota.refused(
                "images per minute",
                limit=quota.images,
                used=used,
                requested=images,
                wait=quota.reset,
                headers=quota.headers(used, in_flight),
            ) from None
        return int(out["Attributes"]["images"]["N"])

    def _uncount(self, quota: _Quota, images: int) -> None:
        """Give back images counted for a request that was then refused. Best effort: what a failure here
        leaves counted expires with the minute."""
        with contextlib.suppress(ClientError, BotoCoreError):
            self._db.update_item(
                TableName=self._table,
                Key=_minute_key(quota.key_id, quota.minute),
                UpdateExpression="ADD images :n",
                ExpressionAttributeValues={":n": _n(-images)},
            )

    def _take_slot(self, quota: _Quota, request_id: str, now: float) -> int:
        """Hold a slot for `request_id`; returns how many requests are in flight, this one included.

        A refusal is retried once, after creating the key's slot map (its first request) or pruning slots
        that expired; a refusal with nothing to prune, or a second one, raises _SlotsTaken.
        """
        try:
            return self._try_slot(quota, request_id, now)
        except _SlotsTaken as full:
            if full.slots is None:
                self._create_slots(quota.key_id)
            else:
                expired = [rid for rid, expiry in full.slots.items() if float(expiry["N"]) <= now]
                if not expired:
                    raise
                self._prune(quota.key_id, expired, now)
        return self._try_slot(quota, request_id, now)

    def _try_slot(self, quota: _Quota, request_id: str, now: float) -> int:
        try:
            out = self._db.update_item(
                TableName=self._table,
                Key=_inflight_key(quota.key_id),
                UpdateExpression="SET slots.#id = :expiry",
                # attribute_exists first: a missing map is a refusal to act on, not an invalid path.
                ConditionExpression="attribute_exists(slots) AND size(slots) < :max",
                ExpressionAttributeNames={"#id": request_id},
                ExpressionAttributeValues={
                    ":expiry": _n(int(now) + SLOT_SECONDS),
                    ":max": _n(quota.requests),
                },
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except self._db.exceptions.ConditionalCheckFailedException as exc:
            item = exc.response.get("Item")
            raise _SlotsTaken(item["slots"]["M"] if item else None) from None
        return _in_flight(out["Attributes"]["slots"]["M"], now)

    def _create_slots(self, key_id: str) -> None:
        # A concurrent first request may have created it: then there is nothing to do.
        with contextlib.suppress(self._db.exceptions.ConditionalCheckFailedException):
            self._db.put_item(
                TableName=self._table,
                Item={**_inflight_key(key_id), "slots": {"M": {}}},
                ConditionExpression="attribute_not_exists(pk)",
            )

    def _prune(self, key_id: str, expired: list[str], now: float) -> None:
        names = {f"#e{i}": rid for i, rid in enumerate(expired)}
        # Only slots still expired (or already pruned by a concurrent request) go; should one have been
        # renewed meanwhile, nothing is removed and the retry that follows decides.
        with contextlib.suppress(self._db.exceptions.ConditionalCheckFailedException):
            self._db.update_item(
                TableName=self._table,
                Key=_inflight_key(key_id),
                UpdateExpression="REMOVE " + ", ".join(f"slots.{name}" for name in names),
                ConditionExpression=" AND ".join(
                    f"(attribute_not_exists(slots.{name}) OR slots.{name} <= :now)" for name in names
                ),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={":now": _n(now)},
            )

    def _slots(self, key_id: str) -> dict:
        item = self._db.get_item(TableName=self._table, Key=_inflight_key(key_id)).get("Item")
        return item["slots"]["M"] if item else {}


def _too_large(quota: _Quota, images: int) -> APIError:
    """More images than the key's whole minute allows: waiting cannot help, so no `retry-after`, and
    `x-should-retry: false` keeps the OpenAI SDKs from retrying it (they retry every 429 otherwise)."""
    return APIError(
        429,
        f"Request too large for images per minute on key {quota.key_id}: Limit {quota.images}, "
        f"Requested {images}. This request can never fit the limit; ask for fewer images per request.",
        type="requests",
        code="rate_limit_exceeded",
        headers={"x-should-retry": "false", **quota.headers()},
    )


def duration(seconds: int) -> str:
    """OpenAI's reset format: `12s`, `1m0s`."""
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def _in_flight(slots: dict, now: float) -> int:
    return sum(1 for expiry in slots.values() if float(expiry["N"]) > now)


def _minute_key(key_id: str, minute: int) -> dict[str, dict[str, str]]:
    return item_key(f"RATE#{key_id}", f"MINUTE#{minute}")


def _inflight_key(key_id: str) -> dict[str, dict[str, str]]:
    return item_key(f"RATE#{key_id}", "INFLIGHT")


def _n(value: float) -> dict[str, str]:
    return {"N": str(value)}

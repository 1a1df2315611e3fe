"""Idempotency keys: a retried request gets the first one's response instead of running, and charging, again.

Item (single table, `pk`/`sk`):
  IDEMPOTENCY#<account_id>#<sha256 of the key> / IDEMPOTENCY
    -> state (in_progress|completed), fingerprint, request_id (the request that holds it), created_at,
       locked_until, response (JSON text, once completed), completed_at, expires_at (TTL: created_at +
       ttl_seconds)

Keys are scoped per account and stored only hashed (a client may put anything in them). The fingerprint ties
a key to one request: the same key with different parameters or images is a client bug, refused with 400
as Stripe does (`idempotency_key_reused`); retrying cannot fix it. While the first request runs, a retry
gets 409 `idempotency_key_in_use` with `retry-after`; the OpenAI SDKs retry 409 by themselves.

The service calls `begin` after validation. On success the record is completed inside the settle
transaction (`completion`), so a request that was charged can always be replayed, never run again; on a
failure before any image exists, `release` lets a retry run again. Once images exist the key is never
released. A Lambda killed mid-request does neither: its in-progress record stops blocking the key when its
lock runs out (`lock_s`: config.Deadlines, longer than the holder's function can run), and a request may
then take the key over; the dead request's reservation is closed by the sweeper.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import TYPE_CHECKING, Any

from imagegate.config import Deadlines
from imagegate.errors import APIError, invalid
from imagegate.table import item_key

if TYPE_CHECKING:
    from imagegate.inputs.request import ImageJob

TTL_SECONDS = 24 * 60 * 60
MAX_KEY_LENGTH = 255
# The response is stored in an item (400 KB at most); it holds S3 keys and metadata, never image bytes.
MAX_RESPONSE_BYTES = 300_000
# Long enough that the SDKs' two default retries span a typical generation, short enough not to idle.
IN_USE_RETRY_SECONDS = 5


def validate_key(key: str) -> str:
    """The `Idempotency-Key` header's value: 1 to 255 printable ASCII characters, else a 400."""
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not all(" " <= ch <= "~" for ch in key):
        raise invalid(
            f"Invalid 'Idempotency-Key' header: it must be 1 to {MAX_KEY_LENGTH} printable ASCII characters.",
            "Idempotency-Key",
        )
    return key


def fingerprint(job: ImageJob, user: str | None = None) -> str:
    """A digest of everything that makes a request what it is: resolved parameters (so `quality` omitted
    and `quality=medium` are the same request) and the bytes of every input image and mask, in order."""
    parts = {
        "endpoint": job.endpoint,
        "model": job.contract.id,
        "prompt": job.prompt,
        "n": job.n,
        "size": job.size,
        "quality": job.quality,
        "response_format": job.response_format,
        "output_format": job.output_format,
        "output_compression": job.output_compression,
        "background": job.background,
        "style": job.style,
        "moderation": job.moderation,
        "input_fidelity": job.input_fidelity,
        "user": user,
        "images": [_sha256(image.data) for image in job.images],
        "mask": _sha256(job.mask.data) if job.mask else None,
    }
    return _sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode())


class Idempotency:
    def __init__(
        self,
        dynamodb: Any,
        table: str,
        clock: Any = time.time,
        ttl_seconds: int = TTL_SECONDS,
        *,
        lock_s: int = Deadlines().request_lock_s,
    ) -> None:
        self._db = dynamodb
        self._table = table
        self._clock = clock
        self._ttl = ttl_seconds
        self._lock_s = lock_s

    def begin(
        self, account_id: str, key: str, fingerprint: str, request_id: str, *, lock_s: int | None = None
    ) -> dict | None:
        """Claim `key` for a request: None when it is this request's to run (an in-progress record is now
        written), the stored response when an identical request already completed. 400 when the key was
        used for a different request, 409 while the first request is still running. `lock_s`: how long the
        claim blocks others (default: the synchronous request's lock), longer than its holder can run."""
        validate_key(key)
        now = self._clock()
        try:
            self._db.put_item(
                TableName=self._table,
                Item={
                    **_item_key(account_id, key),
                    "state": {"S": "in_progress"},
                    "fingerprint": {"S": fingerprint},
                    "request_id": {"S": request_id},
                    "created_at": {"N": str(int(now))},
                    "locked_until": {"N": str(int(now) + (lock_s or self._lock_s))},
                    "expires_at": {"N": str(int(now) + self._ttl)},
                },
                # TTL deletes lazily: a record past expires_at is as good as gone.
                ConditionExpression=(
                    "attribute_not_exists(pk) OR expires_at <= :now "
                    "OR (#state = :in_progress AND locked_until <= :now)"
                ),
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":now": {"N": str(now)}, ":in_progress": {"S": "in_progress"}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            return None
        except self._db.exceptions.ConditionalCheckFailedException as exc:
            held = exc.response["Item"]
        if held["fingerprint"]["S"] != fingerprint:
            raise APIError(
                400,
                "This Idempotency-Key was already used for a different request (other parameters or "
                "images). Use a new key for a new request.",
                param="Idempotency-Key",
                code="idempotency_key_reused",
            )
        if held["state"]["S"] == "completed":
            return json.loads(held["response"]["S"])
        wait = max(1, min(IN_USE_RETRY_SECONDS, math.ceil(float(held["locked_until"]["N"]) - now)))
        raise APIError(
            409,
            "A request with this Idempotency-Key is in progress: the original request is still running. "
            f"Retry shortly (in {wait}s) to get its result.",
            param="Idempotency-Key",
            code="idempotency_key_in_use",
            headers={"retry-after": str(wait)},
        )

    def completion(self, account_id: str, key: str, request_id: str, response: dict) -> dict[str, Any]:
        """The Update (for the settle transaction) that stores the response later retries with `key` replay;
        its condition fails when the key is no longer this request's (taken over after its lock ran out)."""
        text = json.dumps(response, separators=(",", ":"))
        if len(text.encode()) > MAX_RESPONSE_BYTES:
            raise ValueError(
                f"an idempotent response must stay under {MAX_RESPONSE_BYTES} bytes of JSON, this one is "
                f"{len(text.encode())}: store S3 keys, never image bytes"
            )
        return {
            "Update": {
                "TableName": self._table,
                "Key": _item_key(account_id, key),
                "UpdateExpression": "SET #state = :completed, #response = :response, completed_at = :now",
                "ConditionExpression": "#state = :in_progress AND request_id = :rid",
                "ExpressionAttributeNames": {"#state": "state", "#response": "response"},
                "ExpressionAttributeValues": {
                    ":completed": {"S": "completed"},
                    ":in_progress": {"S": "in_progress"},
                    ":rid": {"S": request_id},
                    ":response": {"S": text},
                    ":now": {"N": str(int(self._clock()))},
                },
            }
        }

    def complete(self, account_id: str, key: str, request_id: str, response: dict) -> bool:
        """`completion` on its own; False when the key is no longer this request's."""
        return self.apply(self.completion(account_id, key, request_id, response))

    def apply(self, completion: dict[str, Any]) -> bool:
        """Run a `completion` outside the settle transaction (when that transaction could not carry it);
        False when the key is no longer this request's."""
        try:
            self._db.update_item(**completion["Update"])
        except self._db.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def release(self, account_id: str, key: str) -> bool:
        """Forget an in-progress claim after a failed request, so that a retry runs again. A completed
        record is never removed: False then, and when there was nothing to release."""
        try:
            self._db.delete_item(
                TableName=self._table,
                Key=_item_key(account_id, key),
                ConditionExpression="#state = :in_progress",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":in_progress": {"S": "in_progress"}},
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def forget(self, account_id: str, key: str, request_id: str) -> bool:
        """Remove the record `request_id` completed, when what it recorded never happened (a job whose
        message could not be queued, refunded): a retry with the key then runs anew instead of replaying a
        failure the client was told to retry. Another request's record is left alone."""
        try:
            self._db.delete_item(
                TableName=self._table,
                Key=_item_key(account_id, key),
                ConditionExpression="request_id = :rid",
                ExpressionAttributeValues={":rid": {"S": request_id}},
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return False
        return True


def key_hash(key: str) -> str:
    """What a request's billing record keeps of its Idempotency-Key (`idempotency`), for reconcile."""
    return _sha256(key.encode())


def record_key(account_id: str, hashed: str) -> dict[str, dict[str, str]]:
    """The record of a key, from its hash."""
    return item_key(f"IDEMPOTENCY#{account_id}#{hashed}", "IDEMPOTENCY")


def _item_key(account_id: str, key: str) -> dict[str, dict[str, str]]:
    return record_key(account_id, key_hash(key))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

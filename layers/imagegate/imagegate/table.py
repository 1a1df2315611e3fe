"""The single DynamoDB table: item keys, and the two calls every module makes (paged Query, Transact).

Everything imagegate stores lives in one table keyed by `pk`/`sk`; each module documents its own items:
  KEY#…, KEYS, ACCOUNT#<id> / ACCOUNT, ACCOUNTS       accounts.py (limiter attributes: ratelimit.py)
  ACCOUNT#<id> / LEDGER#…; USAGE#…                    ledger.py
  REQUESTS#<id>#<n> / REQUEST#<request id>            billing.py (n: REQUEST_SHARDS, from the request id)
  IDEMPOTENCY#… / IDEMPOTENCY                         idempotency.py
  JOBS#<id>#<n> / JOB#<job id>                        jobs/lifecycle.py (webhook delivery state: webhooks.py);
                                                      jobs written before: ACCOUNT#<id> / JOB#<job id>
The sparse index OPEN_INDEX holds only reservations still open (billing.py) and jobs whose announcements
are still owed (jobs/lifecycle.py, on shards of their own), for the sweeper.
This module is at the bottom: it imports nothing of imagegate, and every module above builds on it.
"""

from __future__ import annotations

import hashlib
import random
import secrets
import time
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

# The sparse GSI of open reservations (template.yaml and devserver.provision declare it): sharded, so that
# the whole deployment's requests do not write one index partition.
OPEN_INDEX = "open"
OPEN_SHARDS = 8
# OPEN_INDEX's shards: OPEN#<n> of open reservations, ANNOUNCE#<n> of jobs that still owe announcements.
OPEN_SHARD = "OPEN#"
ANNOUNCE_SHARD = "ANNOUNCE#"
JOB_PREFIX = "JOB#"
REQUEST_PREFIX = "REQUEST#"
# An account's requests spread over this many partitions of their own: the account's partition keeps only
# the ACCOUNT item's writes (one reserve and one settle update per request), and each request partition
# takes an eighth of the requests' writes (docs/performance.md: what one account sustains).
REQUEST_SHARDS = 8
# An account's jobs: JOB_SHARDS partitions of their own (JOBS#<account id>#<n>), off ACCOUNT#<id>, whose
# ACCOUNT item takes every request's balance write; each job is written 3-5 times in its life.
JOBS_PREFIX = "JOBS#"
JOB_SHARDS = 8
CONFLICT_ATTEMPTS = 6
CONFLICT_BACKOFF_S = 0.025
BATCH_GET_MAX = 100  # keys in one BatchGetItem: DynamoDB refuses more


def item_key(pk: str, sk: str) -> dict[str, dict[str, str]]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def key_of(item: dict[str, Any]) -> dict[str, dict[str, str]]:
    """An item's own key: a write after a read goes where the item was read (a job on its shard, or on the
    account partition it was written to before)."""
    return item_key(item["pk"]["S"], item["sk"]["S"])


def account_pk(account_id: str) -> str:
    return f"ACCOUNT#{account_id}"


def request_pk(account_id: str, request_id: str) -> str:
    """The partition of a request's item: its account's, one of REQUEST_SHARDS picked by the request id."""
    return f"REQUESTS#{account_id}#{zlib.crc32(request_id.encode()) % REQUEST_SHARDS}"


def request_partitions(account_id: str) -> list[str]:
    """Every partition holding one account's requests."""
    return [f"REQUESTS#{account_id}#{n}" for n in range(REQUEST_SHARDS)]


def new_request_id(clock: Any = time.time) -> str:
    """`req_` and 32 hex digits, the first 12 the time in ms (as a UUIDv7's): one partition's requests sort
    by time, so an account's request log reads newest first without an index."""
    return f"req_{int(clock() * 1000) & (2**48 - 1):012x}{secrets.token_hex(10)}"


def jobs_pk(account_id: str, shard: int) -> str:
    """One of an account's job partitions: the account id is in it, so a job id alone never reaches another
    account's job."""
    return f"{JOBS_PREFIX}{account_id}#{shard}"


def job_shard(job_id: str) -> int:
    # crc32: the same shard in every process and release (str hash() is salted per process).
    return zlib.crc32(job_id.encode()) % JOB_SHARDS


def job_key(account_id: str, job_id: str) -> dict[str, dict[str, str]]:
    """An image job's item: on its account's job shard."""
    return item_key(jobs_pk(account_id, job_shard(job_id)), f"{JOB_PREFIX}{job_id}")


def legacy_job_key(account_id: str, job_id: str) -> dict[str, dict[str, str]]:
    """Where jobs were written before they had partitions of their own (docs/upgrading.md: read until the
    last of them has expired)."""
    return item_key(account_pk(account_id), f"{JOB_PREFIX}{job_id}")


def job_partitions(account_id: str) -> list[str]:
    """Every partition that may hold an account's jobs: its shards, then its account partition (legacy)."""
    return [*(jobs_pk(account_id, n) for n in range(JOB_SHARDS)), account_pk(account_id)]


def job_ids(item: dict[str, Any]) -> tuple[str, str]:
    """(account id, job id) of a job item, on a shard or on the account partition."""
    pk, job_id = item["pk"]["S"], item["sk"]["S"].removeprefix(JOB_PREFIX)
    if pk.startswith(JOBS_PREFIX):
        return pk.removeprefix(JOBS_PREFIX).rpartition("#")[0], job_id
    return pk.removeprefix("ACCOUNT#"), job_id


def read_job(dynamodb: Any, table: str, account_id: str, job_id: str, **get: Any) -> dict[str, Any] | None:
    """A job's item (consistent read) where it lives: its shard, else the account partition; None when it is
    in neither. `get`: more GetItem arguments (a ProjectionExpression must keep pk and sk)."""
    for key in (job_key(account_id, job_id), legacy_job_key(account_id, job_id)):
        item = dynamodb.get_item(TableName=table, Key=key, ConsistentRead=True, **get).get("Item")
        if item is not None:
            return item
    return None


def update_job(dynamodb: Any, table: str, account_id: str, job_id: str, **update: Any) -> dict[str, Any]:
    """UpdateItem on a job where it lives; the key it wrote. `update`'s ConditionExpression must fail on a
    missing item (else UpdateItem would make one): the shard's key is tried first, and only when its
    condition fails for want of any item there, the account partition's. Raises ConditionalCheckFailed as
    UpdateItem does."""
    key = job_key(account_id, job_id)
    try:
        dynamodb.update_item(
            TableName=table, Key=key, ReturnValuesOnConditionCheckFailure="ALL_OLD", **update
        )
        return key
    except dynamodb.exceptions.ConditionalCheckFailedException as exc:
        if "Item" in exc.response:
            raise
    key = legacy_job_key(account_id, job_id)
    dynamodb.update_item(TableName=table, Key=key, **update)
    return key


def job_items(dynamodb: Any, table: str, account_id: str) -> list[dict[str, Any]]:
    """Every job item of an account (consistent reads), on its shards and on its account partition."""
    return partition_items(dynamodb, table, job_partitions(account_id), JOB_PREFIX)


def partition_items(dynamodb: Any, table: str, pks: list[str], prefix: str) -> list[dict[str, Any]]:
    """Every item whose sort key begins with `prefix` in each of the partitions `pks` (consistent reads): one
    kind of item of one account spread over partitions of its own."""
    return [
        item
        for pk in pks
        for item in query(
            dynamodb,
            TableName=table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
            ExpressionAttributeValues={":pk": {"S": pk}, ":prefix": {"S": prefix}},
            ConsistentRead=True,
        )
    ]


def query(dynamodb: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Every item a Query returns, page by page."""
    while True:
        page = dynamodb.query(**kwargs)
        yield from page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def open_items(dynamodb: Any, table: str, shard_prefix: str, before: int) -> Iterator[dict[str, Any]]:
    """The items of one kind in the sparse OPEN_INDEX (shards `<shard_prefix><n>`) open before `before`."""
    for shard in range(OPEN_SHARDS):
        yield from query(
            dynamodb,
            TableName=table,
            IndexName=OPEN_INDEX,
            KeyConditionExpression="open_shard = :shard AND open_since < :cutoff",
            ExpressionAttributeValues={
                ":shard": {"S": f"{shard_prefix}{shard}"},
                ":cutoff": {"N": str(before)},
            },
        )


def batch_get(
    dynamodb: Any, table: str, keys: list[dict[str, Any]], sleep: Any = time.sleep
) -> Iterator[dict[str, Any]]:
    """Every item of `keys` that exists (consistent reads), in BatchGetItem's chunks of at most
    BATCH_GET_MAX keys, asking again for what DynamoDB leaves unprocessed (throttled) after a backoff."""
    for start in range(0, len(keys), BATCH_GET_MAX):
        request: dict[str, Any] = {
            table: {"Keys": keys[start : start + BATCH_GET_MAX], "ConsistentRead": True}
        }
        attempt = 0
        while request:
            out = dynamodb.batch_get_item(RequestItems=request)
            yield from out["Responses"].get(table, [])
            request = out.get("UnprocessedKeys") or {}
            attempt += 1
            if request:
                sleep(random.uniform(0, CONFLICT_BACKOFF_S * 2 ** min(attempt, 8)))


def transact(dynamodb: Any, actions: list[dict[str, Any]], sleep: Any = time.sleep) -> int | None:
    """Run a transaction; None when it commits, else the index of the action whose condition failed."""
    failed = transact_or_reasons(dynamodb, actions, sleep)
    return None if failed is None else min(failed)


def transact_or_reasons(
    dynamodb: Any, actions: list[dict[str, Any]], sleep: Any = time.sleep, token: str = ""
) -> dict[int, dict[str, Any] | None] | None:
    """Run a transaction; None when it commits, else {index: the item as it was (for actions that asked with
    ReturnValuesOnConditionCheckFailure=ALL_OLD and whose item exists), for every failed condition}.

    DynamoDB cancels a transaction that races another one on the same item (TransactionConflict), which
    is routine when one account sends requests in parallel; botocore does not retry that, so we do, a few
    times, then raise.

    `token` (default: a new one): the ClientRequestToken, which makes a retry of the same actions within
    10 minutes idempotent: one whose first attempt committed behind a lost response succeeds instead of
    failing its conditions (botocore's own retries resend it; so may the caller, with the same actions).
    """
    attempt = 0
    token = token or uuid.uuid4().hex
    while True:
        try:
            dynamodb.transact_write_items(
                TransactItems=actions, ClientRequestToken=_attempt_token(token, attempt)
            )
            return None
        except dynamodb.exceptions.TransactionCanceledException as exc:
            reasons = exc.response.get("CancellationReasons", [])
            failed = {
                i: r.get("Item") for i, r in enumerate(reasons) if r.get("Code") == "ConditionalCheckFailed"
            }
            if failed:
                return failed
            attempt += 1
            if (
                not any(r.get("Code") == "TransactionConflict" for r in reasons)
                or attempt == CONFLICT_ATTEMPTS
            ):
                raise
            sleep(random.uniform(0, CONFLICT_BACKOFF_S * 2**attempt))


def request_token(*parts: str) -> str:
    """A ClientRequestToken (at most 36 characters) for one logical transaction named by `parts`."""
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:36]


def _attempt_token(token: str, attempt: int) -> str:
    # A transaction cancelled for a conflict did not commit; its retry is a new request.
    return token if attempt == 0 else request_token(token, str(attempt))


def read_balance(dynamodb: Any, table: str, account_id: str) -> int | None:
    """An account's balance in micro-USD (strongly consistent), or None when there is no such account."""
    item = dynamodb.get_item(
        TableName=table, Key=item_key(account_pk(account_id), "ACCOUNT"), ConsistentRead=True
    ).get("Item")
    return int(item["balance"]["N"]) if item else None


def single_or_transact(
    dynamodb: Any, actions: list[dict[str, Any]], sleep: Any = time.sleep, token: str = ""
) -> dict[int, dict[str, Any] | None] | None:
    """transact_or_reasons, except that one Update alone is sent as UpdateItem: DynamoDB bills a write in a
    transaction twice. The same answer: None, or {0: the item as it was} when its condition failed. (No
    ClientRequestToken there: a caller retrying one write must recognise its own, billing.settle's
    `settle_token`.)"""
    if len(actions) != 1 or "Update" not in actions[0]:
        return transact_or_reasons(dynamodb, actions, sleep, token)
    try:
        dynamodb.update_item(**actions[0]["Update"])
        return None
    except dynamodb.exceptions.ConditionalCheckFailedException as exc:
        return {0: exc.response.get("Item")}

"""Webhooks: one endpoint per account, told of each finished job by a signed POST, retried for about a day.

Endpoints. The operator sets them (`imagegate webhooks set|show|remove|test|seal`):
    ACCOUNT#<account_id> / WEBHOOK -> url, sealed_secret, created_at
The secret ("whsec_" + base64 of 32 random bytes) is shown once, when set; setting the URL again makes a new
one. It is stored only as a KMS ciphertext (`sealed_secret`, KMS Encrypt under the stack's webhook key, with
the encryption context {"imagegate:account_id": <id>}: a ciphertext copied to another account's item does not
decrypt). Only the delivery function (and the operator) may decrypt it; whatever else reads the endpoint sees
that it exists, never the secret. An endpoint set by an earlier version holds it in plaintext (`secret`): it
is still read and signed with, and `seal` (or the next `set`) replaces it with a ciphertext.
The URL is checked when set and again at every attempt (outbound.py: https, public addresses only, pinned,
no redirects, short timeouts).

Deliveries follow Standard Webhooks (https://www.standardwebhooks.com), signed by the `standardwebhooks`
library: headers `webhook-id` (msg_<job id>, the same on every retry, so receivers can drop duplicates),
`webhook-timestamp` (the attempt's, in seconds) and `webhook-signature` (`v1,<base64 HMAC-SHA256>`), and
the body {"type": "image.job.succeeded|failed|cancelled", "timestamp", "data": <the job>}, where the job is
its object without the result (GET /v1/images/jobs/{id} signs fresh URLs) plus client_reference_id.

Retries. A finished job of an account with an endpoint gets one message on the delivery queue. Each attempt
that fails (no 2xx, or a refused or unreachable URL) makes the message invisible until the next one is due
(ChangeMessageVisibility, up to SQS's 12 hours per receive) and reports the record failed, so SQS hands the
same message back then: no re-sending, so nothing can fork a second retry chain. DELAYS_S is Standard
Webhooks' schedule: 8 attempts over about 27.6 hours. The job item shows where it is, as attribute `webhook`
(jobs.py renders it): {state: pending|delivered|failed, attempts, last_status, last_error, last_attempt_at,
next_attempt_at}. Every state write is conditional on the attempt count it read, so a duplicated message
records (and schedules) nothing twice.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

from imagegate.config import Deadlines
from imagegate.inputs.outbound import Outbound, OutboundError
from imagegate.table import account_pk, item_key, key_of, read_job, update_job

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
# Delays after attempts 1..7 (Standard Webhooks' retry schedule): 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
DELAYS_S = (5, 300, 1800, 7200, 18000, 36000, 36000)
MAX_ATTEMPTS = len(DELAYS_S) + 1
ATTEMPT_TIMEOUT_S = 10.0  # one attempt's connect, send and wait for the answer's status line
# How long a job item must outlive its finish for its delivery's state to be there at the last attempt:
# the schedule, every attempt's timeout, and an hour for queue and function delays.
DELIVERY_WINDOW_S = sum(DELAYS_S) + MAX_ATTEMPTS * int(ATTEMPT_TIMEOUT_S) + 3600
# SQS caps a message's visibility timeout at 12 hours per receive.
MAX_VISIBILITY_S = 43_200
QUEUE_UNAVAILABLE = "queue_unavailable"  # a delivery the queue refused: never attempted, queued again
# Receives before the delivery queue's message goes to its dead-letter queue (template.yaml, maxReceiveCount):
# every attempt, and room for receives that fail before an attempt (DynamoDB unavailable).
MAX_RECEIVES = 2 * MAX_ATTEMPTS
EVENT_TYPES = {
    "succeeded": "image.job.succeeded",
    "failed": "image.job.failed",
    "cancelled": "image.job.cancelled",
}
TEST_EVENT = "webhook.test"
# What a webhook says of a job: its object, less the result (URLs are signed on GET) and anything internal.
JOB_FIELDS = (
    "id",
    "object",
    "status",
    "endpoint",
    "model",
    "created_at",
    "completed_at",
    "expires_at",
    "error",
    "request_id",
    "client_reference_id",
)
ENDPOINT_SK = "WEBHOOK"
# The encryption context a sealed secret is bound to (KMS authenticates it; CloudTrail logs it).
CONTEXT_KEY = "imagegate:account_id"

log = logging.getLogger("imagegate")


class NoEndpoint(LookupError):
    pass


class NoKey(RuntimeError):
    """No KMS key is configured to seal webhook secrets with (IMAGEGATE_WEBHOOK_KEY_ID)."""


@dataclass(frozen=True)
class Endpoint:
    account_id: str
    url: str
    created_at: int
    # The KMS ciphertext of the signing secret, or (an endpoint set by an earlier version) the plaintext.
    sealed: bytes | None = field(default=None, repr=False)
    plaintext: str | None = field(default=None, repr=False)

    @property
    def is_sealed(self) -> bool:
        return self.sealed is not None


class Webhooks:
    """Endpoints and deliveries. `aws`: anything with `dynamodb` and `sqs` client attributes (AWSClients,
    which makes them on first use); `queue_url`: the delivery queue (empty: finished jobs are not queued)."""

    def __init__(
        self,
        aws: Any,
        table: str,
        *,
        queue_url: str = "",
        key_id: str = "",
        outbound: Outbound | None = None,
        clock: Callable[[], float] = time.time,
        requeue_after_s: int = Deadlines().announce_grace_s,
    ) -> None:
        """`key_id`: the KMS key that seals secrets (its ARN, id or alias); needed to set and to sign.
        `requeue_after_s`: Deadlines.announce_grace_s, past which a job's final move no function is still
        queuing its delivery (`job_finished`)."""
        self._aws = aws
        self._table = table
        self.key_id = key_id
        self.queue_url = queue_url
        self.outbound = outbound or Outbound()
        self._clock = clock
        self._requeue_after_s = requeue_after_s

    # --- endpoints -----------------------------------------------------------------------------------

    def set(self, account_id: str, url: str) -> str:
        """Register (or replace) the account's endpoint; its new signing secret, to be shown once.
        An `OutboundError` when the URL is not https to a public address."""
        self.outbound.check(url)
        secret = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()
        # A put replaces the whole item: an earlier version's plaintext `secret` goes with it.
        self._aws.dynamodb.put_item(
            TableName=self._table,
            Item={
                **self._endpoint_key(account_id),
                "url": {"S": url},
                "sealed_secret": {"B": self._seal(account_id, secret)},
                "created_at": {"N": str(int(self._clock()))},
            },
        )
        return secret

    def get(self, account_id: str) -> Endpoint | None:
        item = self._aws.dynamodb.get_item(
            TableName=self._table, Key=self._endpoint_key(account_id), ConsistentRead=True
        ).get("Item")
        if item is None:
            return None
        return Endpoint(
            account_id,
            item["url"]["S"],
            int(item["created_at"]["N"]),
            sealed=item["sealed_secret"]["B"] if "sealed_secret" in item else None,
            plaintext=item["secret"]["S"] if "secret" in item else None,
        )

    def seal(self, account_id: str) -> bool:
        """Replace an endpoint's plaintext secret (an earlier version's) by its ciphertext, keeping the
        secret itself, so receivers verify as before; False when there is nothing in plaintext to seal."""
        endpoint = self.get(account_id)
        if endpoint is None or endpoint.plaintext is None:
            return False
        try:
            self._aws.dynamodb.update_item(
                TableName=self._table,
                Key=self._endpoint_key(account_id),
                UpdateExpression="SET sealed_secret = :sealed REMOVE secret",
                ConditionExpression="secret = :plain",  # not a secret set anew meanwhile
                ExpressionAttributeValues={
                    ":sealed": {"B": self._seal(account_id, endpoint.plaintext)},
                    ":plain": {"S": endpoint.plaintext},
                },
            )
        except self._aws.dynamodb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def remove(self, account_id: str) -> bool:
        """Forget the endpoint (pending deliveries then fail at their next attempt); False if none."""
        old = self._aws.dynamodb.delete_item(
            TableName=self._table, Key=self._endpoint_key(account_id), ReturnValues="ALL_OLD"
        )
        return "Attributes" in old

    def test(self, account_id: str) -> int:
        """Send a signed `webhook.test` event now, once; the endpoint's HTTP status. Raises `NoEndpoint`, or
        an `OutboundError` when the URL is refused or cannot be reached."""
        endpoint = self.get(account_id)
        if endpoint is None:
            raise NoEndpoint(f"account {account_id} has no webhook endpoint")
        message_id = f"msg_test_{secrets.token_hex(12)}"
        return self._post(endpoint, message_id, TEST_EVENT, {"account_id": account_id})

    # --- deliveries ----------------------------------------------------------------------------------

    def job_finished(self, detail: dict[str, Any]) -> None:
        """The `on_finished` callback (jobs.py): queue the job's delivery when its account has an endpoint."""
        account_id, job_id = detail["account_id"], detail["id"]
        if not self.queue_url or self.get(account_id) is None:
            return
        now = int(self._clock())
        # The job item (its TTL: the outputs' retention, a day by default) is kept until the schedule ends:
        # the delivery's state lives on it, and an attempt that finds it gone is dropped.
        keep = max(int(detail["expires_at"]), now + DELIVERY_WINDOW_S)
        try:
            key = update_job(
                self._aws.dynamodb,
                self._table,
                account_id,
                job_id,
                UpdateExpression="SET webhook = :state, expires_at = :keep",
                # Queued once only; but the job's outbox (jobs/lifecycle.py) retrying this callback queues
                # again one the queue refused, and one still pending unattempted once the job's final move
                # is older than the announcement grace: the function that wrote `pending` is surely over,
                # and may have died before its send. (If it had sent, the copy is a duplicate message,
                # which records nothing twice: each state write is conditional on the attempts it read.)
                ConditionExpression=(
                    "attribute_exists(pk) AND (attribute_not_exists(webhook)"
                    " OR (webhook.#state = :failed AND webhook.last_error = :unqueued)"
                    " OR (webhook.#state = :pending AND webhook.attempts = :zero AND completed_at < :cutoff))"
                ),
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={
                    ":state": _state("pending", 0, next_attempt_at=now),
                    ":keep": {"N": str(keep)},
                    ":failed": {"S": "failed"},
                    ":unqueued": {"S": QUEUE_UNAVAILABLE},
                    ":pending": {"S": "pending"},
                    ":zero": {"N": "0"},
                    ":cutoff": {"N": str(now - self._requeue_after_s)},
                },
            )
        except self._aws.dynamodb.exceptions.ConditionalCheckFailedException:
            return  # already queued once
        message = {
            "account_id": account_id,
            "job_id": job_id,
            "type": EVENT_TYPES[detail["status"]],
            "data": {k: detail.get(k) for k in JOB_FIELDS},
        }
        try:
            self._aws.sqs.send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(message))
        except Exception:
            # Say so on the job rather than leave it pending with nothing queued.
            self._record(key, 0, _state("failed", 0, last_error=QUEUE_UNAVAILABLE))
            raise

    def deliver(self, message: dict[str, Any]) -> float | None:
        """One attempt of a queued delivery; the seconds until the next one is due, or None when the
        delivery is over (delivered, failed for good, or nothing left to do for this message)."""
        account_id, job_id = message["account_id"], message["job_id"]
        db = self._aws.dynamodb
        item = read_job(db, self._table, account_id, job_id, ProjectionExpression="pk, sk, webhook")
        state = (item or {}).get("webhook", {}).get("M")
        if state is None or state["state"]["S"] != "pending":
            return None  # the job is gone, or a duplicate message finds the delivery over
        now = self._clock()
        due = float(state["next_attempt_at"]["N"])
        if now < due:
            return due - now  # back early: a duplicate, or a wait longer than one visibility timeout
        done = int(state["attempts"]["N"])
        attempts = done + 1
        endpoint = self.get(account_id)
        status, error = None, None
        if endpoint is None:
            error = "no_endpoint"
        else:
            try:
                status = self._post(endpoint, f"msg_{job_id}", message["type"], message["data"])
            except OutboundError as exc:
                error = exc.code
        if status is not None and 200 <= status < 300:
            new, delay = "delivered", None
        elif endpoint is None or attempts >= MAX_ATTEMPTS:
            new, delay = "failed", None
        else:
            new, delay = "pending", DELAYS_S[attempts - 1]
        if status is not None and new != "delivered":
            error = "http_status"
        at = int(now)
        record = _state(
            new,
            attempts,
            last_status=status,
            last_error=error,
            last_attempt_at=at,
            next_attempt_at=None if delay is None else at + delay,
        )
        if not self._record(key_of(item), done, record):
            return None  # another copy of this message recorded this attempt and carries the delivery on
        log.info(
            "webhook attempt",
            extra={"job_id": job_id, "attempt": attempts, "status": status, "error": error, "state": new},
        )
        return delay

    def record_handler(self) -> Callable[[Any], None]:
        """One delivery queue record (Powertools' SQSRecord: body, receipt_handle): an attempt; when another
        is due, the message is hidden until then and the record reported failed, so SQS keeps it."""

        def handle(record: Any) -> None:
            delay = self.deliver(json.loads(record.body))
            if delay is None:
                return
            self._aws.sqs.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=record.receipt_handle,
                VisibilityTimeout=min(MAX_VISIBILITY_S, max(1, math.ceil(delay))),
            )
            raise RetryLater(f"next webhook attempt in {delay:g} s")

        return handle

    # --- internals -----------------------------------------------------------------------------------

    def _post(self, endpoint: Endpoint, message_id: str, event_type: str, data: dict[str, Any]) -> int:
        sent = datetime.fromtimestamp(int(self._clock()), UTC)
        body = json.dumps(
            {"type": event_type, "timestamp": sent.isoformat().replace("+00:00", "Z"), "data": data},
            separators=(",", ":"),
        )
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(sent.timestamp())),
            "webhook-signature": Webhook(self._secret(endpoint)).sign(message_id, sent, body),
        }
        return self.outbound.post(endpoint.url, body.encode(), headers, timeout=ATTEMPT_TIMEOUT_S)

    def _seal(self, account_id: str, secret: str) -> bytes:
        if not self.key_id:
            raise NoKey("no KMS key to seal webhook secrets with (IMAGEGATE_WEBHOOK_KEY_ID)")
        return self._aws.client("kms").encrypt(
            KeyId=self.key_id, Plaintext=secret.encode(), EncryptionContext={CONTEXT_KEY: account_id}
        )["CiphertextBlob"]

    def _secret(self, endpoint: Endpoint) -> str:
        """The signing secret: decrypted (kms:Decrypt, the delivery function's alone), or an earlier
        version's plaintext."""
        if endpoint.sealed is None:
            return endpoint.plaintext or ""
        if not self.key_id:
            raise NoKey("no KMS key to open webhook secrets with (IMAGEGATE_WEBHOOK_KEY_ID)")
        plain: bytes = self._aws.client("kms").decrypt(
            KeyId=self.key_id,
            CiphertextBlob=endpoint.sealed,
            EncryptionContext={CONTEXT_KEY: endpoint.account_id},
        )["Plaintext"]
        return plain.decode()

    def _record(self, key: dict[str, Any], done: int, state: dict[str, Any]) -> bool:
        """Write the delivery's state on the job item `key` if it is still pending after `done` attempts."""
        try:
            self._aws.dynamodb.update_item(
                TableName=self._table,
                Key=key,
                UpdateExpression="SET webhook = :state",
                ConditionExpression="webhook.#state = :pending AND webhook.attempts = :done",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={
                    ":state": state,
                    ":pending": {"S": "pending"},
                    ":done": {"N": str(done)},
                },
            )
        except self._aws.dynamodb.exceptions.ConditionalCheckFailedException:
            return False
        return True

    @staticmethod
    def _endpoint_key(account_id: str) -> dict[str, Any]:
        return item_key(account_pk(account_id), ENDPOINT_SK)


class RetryLater(Exception):
    """Raised for a record whose next attempt is scheduled: the batch reports it failed, SQS keeps it."""


def _state(
    state: str,
    attempts: int,
    *,
    last_status: int | None = None,
    last_error: str | None = None,
    last_attempt_at: int | None = None,
    next_attempt_at: int | None = None,
) -> dict[str, Any]:
    """The job item's `webhook` map, as a DynamoDB attribute value."""

    def number(value: int | None) -> dict[str, Any]:
        return {"NULL": True} if value is None else {"N": str(value)}

    return {
        "M": {
            "state": {"S": state},
            "attempts": {"N": str(attempts)},
            "last_status": number(last_status),
            "last_error": {"NULL": True} if last_error is None else {"S": last_error},
            "last_attempt_at": number(last_attempt_at),
            "next_attempt_at": number(next_attempt_at),
        }
    }

"""Image jobs: work that may outlive API Gateway's timeout, queued on SQS and run by the worker function.

A job is submitted over HTTP (`Prefer: respond-async`) or by an AWS service (the entry points call
`Jobs.submit` with an `Account` they built), and run by `Jobs.run` (the SQS worker, or a direct invocation).
Submitting passes every check the synchronous path does (route, response size, rate limits, balance) and
reserves the price; the job's billing REQUEST record (request id = the job's `request_id`, `job` = its id) is
its reservation. Running settles it: charged on success, refunded in full on failure or cancellation, in the
same transaction as the job's own state move (`Billing.settle(guard=...)`), so a job and its money always
move together, once.

States, every move conditional on the state it leaves:
    queued --(run)--> in_progress --(run)--> succeeded | failed
    queued --(cancel)--> cancelled        queued --(expired: never started, sweep or run)--> failed
    in_progress --(its worker died: sweep, or a redelivered message)--> failed
A redelivered or duplicated message finds the job no longer queued and changes nothing.

Item (single table, table.job_key):
  JOBS#<account_id>#<n> / JOB#<job_id> -> status, endpoint, model, request_id, created_at, started_at,
      completed_at, expires_at (TTL: created_at + job_retention_days, the outputs' lifecycle), spec (JSON: the
      resolved ImageJob without its images) or, when that is larger than SPEC_INLINE_MAX_BYTES, spec_key (the
      S3 key of that JSON, beside the input images under `inputs/`) and spec_sha256 (its digest), inputs
      (JSON: the input images' S3 keys under `inputs/` and their headers), reservation (JSON: what settling
      needs), run (the token of the run that took it), result
      (JSON: the response record: body, format, extra, S3 keys; never URLs or bytes), error (JSON: the OpenAI
      error object), error_status (its HTTP status), source, client_reference_id, task_token, and `webhook`,
      which webhooks.py writes and this module never does (it renders it as `"webhook"`).
      The outbox, while announcements are owed: announce (SS: the names of the `on_finished` callbacks not
      yet done), announce_by (its deadline, which `reconcile` checks), open_shard (ANNOUNCE#<n>) and
      open_since (the final move's time), which put the job in the sparse OPEN_INDEX the sweeper reads.
  <n> is the job id's shard (table.job_shard, 0..JOB_SHARDS-1): a job is written 3-5 times in its life, and
  its writes stay off ACCOUNT#<account_id>, the partition of the account's balance. A job written before
  jobs had partitions of their own is on ACCOUNT#<account_id> / JOB#<job_id>: read there when its shard
  has no such job (table.read_job), listed and reconciled with the rest, and every later write of it goes
  where it was read (docs/upgrading.md says until when).

Job ids are `imgjob_` + 12 hex digits of the creation time in milliseconds + 20 random hex digits: they sort
by time, so an account's jobs newest first are the newest of each of its job partitions (one Query each,
backwards, in parallel), merged by sort key; the `after` cursor is a job id, the same whichever partition
holds it.

Announcements are an outbox. The final move (the same transaction that settles the job's money) writes the
names of the `on_finished` callbacks the job owes; each callback runs after the move committed, and those
that returned are marked done in one conditional update. A callback that raised, or a function that died
before or during them, leaves them owed: `sweep` runs them again once the committing function is surely
over (Deadlines.announce_grace_s). So a callback may be told twice, and must be idempotent: events and
webhooks carry the job id, a manifest result is overwritten, a task answered twice is refused by AWS.

The detail each `on_finished` callback gets when a job reaches succeeded, failed or cancelled:
    {"id", "object": "image.job", "status", "endpoint", "model", "created_at", "completed_at",
     "expires_at", "error", "webhook",
     "result": null or the ImagesResponse with each `data` item's `url`/`b64_json` replaced by
               {"s3_key": "<key>"} (revised_prompt and the body's other fields kept as they are),
     "bucket": the bucket of those keys, "account_id", "request_id", "source" ("http", or the AWS entry
     point's name), "client_reference_id" (or null), "task_token" (or null)}
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, fields
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from imagegate.errors import APIError
from imagegate.inputs.images import InputImage
from imagegate.inputs.request import ImageJob
from imagegate.money.accounts import Account
from imagegate.money.billing import Reservation
from imagegate.money.idempotency import fingerprint, key_hash
from imagegate.service import Admission, Closing
from imagegate.storage import CONTENT_TYPES
from imagegate.table import (
    ANNOUNCE_SHARD,
    JOB_PREFIX,
    OPEN_SHARDS,
    job_ids,
    job_key,
    job_partitions,
    key_of,
    open_items,
    read_job,
    transact_or_reasons,
)

if TYPE_CHECKING:
    from imagegate.service import Service

JOB_ID = re.compile(r"imgjob_[0-9a-f]{32}")  # fullmatch: "$" would also match before a "\n"
FINAL = frozenset({"succeeded", "failed", "cancelled"})
DEFAULT_LIST_LIMIT = 20
# A job's spec up to this size (its JSON, in bytes) stays on the item; a larger one goes to S3. A prompt of
# 8 KB is 8 write units on each of the job's ~4 writes; 32,000 characters may be ~380 KB escaped.
SPEC_INLINE_MAX_BYTES = 8 * 1024
MAX_LIST_LIMIT = 100
# How often `wait` reads the job while a client waits for it (`Prefer: wait=N`).
POLL_SECONDS = (0.1, 0.25, 0.5, 1.0)
Finished = Callable[[dict[str, Any]], None]


def new_job_id(now: float) -> str:
    return f"imgjob_{int(now * 1000):012x}{secrets.token_hex(10)}"


class Jobs:
    def __init__(
        self,
        service: Service,
        on_finished: Mapping[str, Finished] | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """`on_finished`: the callbacks told of every finished job, by name (the name is what the job's
        outbox records as owed, so it must stay the same across deployments)."""
        self.service = service
        self.settings = service.settings
        self.on_finished = dict(on_finished or {})
        self._clock = service.clock
        self._sleep = sleep
        self._table = service.settings.table

    @property
    def _db(self) -> Any:
        # Asked for at each use, never kept: a SnapStart restore (lambda_app.restored) replaces the clients.
        return self.service.aws.dynamodb

    # --- submit --------------------------------------------------------------------------------------

    def submit(
        self,
        account: Account,
        job: ImageJob,
        *,
        request_id: str,
        user: str | None = None,
        source: str = "http",
        client_reference_id: str | None = None,
        task_token: str | None = None,
        enqueue: bool = True,
        idempotency_key: str | None = None,
        answer: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Check, reserve and queue a job; its job object (queued). Refused exactly as the synchronous
        path refuses (400, 402, 429), nothing written then. `enqueue=False`: the caller runs it itself
        (`run`: a direct invocation). `idempotency_key`: a retried submit gets the first one's job. `answer`,
        when given, receives the response headers a synchronous answer would carry (`x-ratelimit-*`,
        `idempotent-replayed`, `x-imagegate-provider`)."""
        service = self.service
        if enqueue and not self.settings.jobs_queue_url:
            raise APIError(
                400,
                "This deployment has no jobs queue: asynchronous requests are not available.",
                code="async_not_available",
            )
        routes = service.check(job)
        if answer is not None:
            # Not run yet: the provider the router tries first (a fallover at run time may serve the job from
            # the next route; its billing record says which did).
            answer["x-imagegate-provider"] = routes[0].provider
        if idempotency_key is not None:
            deadlines = self.settings.deadlines
            stored = service.idempotency.begin(
                account.account_id,
                idempotency_key,
                f"async:{fingerprint(job, user)}",
                request_id,
                lock_s=deadlines.request_lock_s if source == "http" else deadlines.trigger_lock_s,
            )
            if stored is not None:
                if answer is not None:
                    answer["idempotent-replayed"] = "true"
                return self.get(account.account_id, stored["job_id"])
        now = self._clock()
        job_id = new_job_id(now)
        try:
            # The slots are held while the job may still be queued or running: a job counts against
            # max_concurrent until it ends, and the settle that ends it (or the sweeper's) gives them back.
            details = {"job": job_id}
            if idempotency_key is not None:
                details["idempotency"] = key_hash(idempotency_key)
            admission = service.reserve(account, job, request_id, routes, details)
        except BaseException:
            if idempotency_key is not None:
                service.idempotency.release(account.account_id, idempotency_key)
            raise
        if answer is not None:
            answer.update(admission.reservation.headers)
        item = self._new_item(account, job, job_id, request_id, admission.reservation, now)
        item.update(_optional(source=source, client_reference_id=client_reference_id, task_token=task_token))
        written: list[str] = []
        try:
            self._offload_spec(item, account.account_id, job_id, written)
            item["inputs"] = {"S": json.dumps(self._put_inputs(account.account_id, job_id, job, written))}
            put = {
                "Put": {
                    "TableName": self._table,
                    "Item": item,
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            }
            actions = [put]
            if idempotency_key is not None:
                actions.append(
                    service.idempotency.completion(
                        account.account_id, idempotency_key, request_id, {"job_id": job_id}
                    )
                )
            if transact_or_reasons(self._db, actions) is not None:
                # The key was taken over meanwhile (its lock ran out): the job stands on its own.
                transact_or_reasons(self._db, [put])
        except BaseException:
            # Nothing is queued: refund at once, and leave no inputs behind.
            service.billing.settle(admission.reservation, 0, provider="none")
            for key in written:
                service.storage.delete(key)
            if idempotency_key is not None:
                service.idempotency.release(account.account_id, idempotency_key)
            raise
        if enqueue:
            try:
                service.aws.sqs.send_message(
                    QueueUrl=self.settings.jobs_queue_url,
                    MessageBody=json.dumps({"account_id": account.account_id, "job_id": job_id}),
                )
            except Exception as exc:
                service.logger.exception("job not queued; refunded", extra={"job_id": job_id})
                # Not announced: the submitter hears the 503 itself, and retries (an SQS redelivery, a
                # client's retry) submit anew; a task answered now would be answered again by that retry.
                self._close(item, "queued", "failed", _queue_error(), announce=False)
                if idempotency_key is not None:
                    service.idempotency.forget(account.account_id, idempotency_key, request_id)
                raise _queue_error() from exc
        service.logger.info(
            "job queued",
            extra={
                "job_id": job_id,
                "request_id": request_id,
                "account_id": account.account_id,
                "source": source,
            },
        )
        return self._object(item)

    def _new_item(
        self, account: Account, job: ImageJob, job_id: str, request_id: str, r: Reservation, now: float
    ) -> dict[str, Any]:
        spec = {
            f.name: getattr(job, f.name)
            for f in fields(job)
            # input_seconds: the submit's time fetching inputs, which the worker's own budget does not owe.
            if f.name not in ("contract", "images", "mask", "input_seconds")
        }
        spec["model"] = job.contract.id
        reservation = {k: v for k, v in asdict(r).items() if k != "headers"}
        return {
            **job_key(account.account_id, job_id),
            "status": {"S": "queued"},
            "endpoint": {"S": job.endpoint},
            "model": {"S": job.contract.id},
            "request_id": {"S": request_id},
            "created_at": {"N": str(int(now))},
            "expires_at": {"N": str(int(now) + self.settings.job_retention_days * 86400)},
            "spec": {"S": json.dumps(spec)},
            "reservation": {"S": json.dumps(reservation)},
        }

    def _offload_spec(self, item: dict[str, Any], account_id: str, job_id: str, written: list[str]) -> None:
        """Move a large spec (a long prompt) to S3, keeping its key: every write of a 385 KB item (32,000
        emoji, JSON-escaped) cost ~400 write units, and one a second saturated the partition it is on."""
        spec = item["spec"]["S"]
        if len(spec.encode()) <= SPEC_INLINE_MAX_BYTES:
            return
        key = f"{self.settings.input_prefix}/{account_id}/{job_id}/spec.json"
        self.service.storage.put(key, spec.encode(), "application/json")
        written.append(key)
        del item["spec"]
        # The digest: an account's own roles may write under its inputs/ prefix (manifests), and a spec
        # changed after its price was reserved must not run.
        item["spec_key"] = {"S": key}
        item["spec_sha256"] = {"S": hashlib.sha256(spec.encode()).hexdigest()}

    def _put_inputs(self, account_id: str, job_id: str, job: ImageJob, written: list[str]) -> list[dict]:
        """Each input image (and the mask) as an S3 object under the inputs prefix (a short lifecycle): the
        queue carries ids only (SQS caps a message at 256 KB)."""
        inputs = []
        for i, img in enumerate([*job.images, *([job.mask] if job.mask is not None else [])]):
            key = f"{self.settings.input_prefix}/{account_id}/{job_id}/{i}"
            fmt = img.format.lower()
            self.service.storage.put(key, img.data, CONTENT_TYPES.get(fmt, "application/octet-stream"))
            written.append(key)
            inputs.append(
                {
                    "key": key,
                    "param": img.param,
                    "format": img.format,
                    "width": img.width,
                    "height": img.height,
                    "has_alpha": img.has_alpha,
                }
            )
        return inputs

    # --- run -----------------------------------------------------------------------------------------

    def run(self, account_id: str, job_id: str) -> dict[str, Any]:
        """Run one job to its end and return its job object. Idempotent: a job no longer queued is left as
        it is (a duplicate delivery), except a run whose worker is surely dead, which is failed and refunded.
        Raises only what a retry of the message can fix (DynamoDB or S3 unavailable); 404 for no such job."""
        item = self._read(account_id, job_id)
        status = item["status"]["S"]
        now = self._clock()
        deadlines = self.settings.deadlines
        if status == "queued" and now > int(item["created_at"]["N"]) + deadlines.job_start_s:
            self._close(item, "queued", "failed", _expired_error())
            return self.get(account_id, job_id)
        if status == "in_progress" and now > int(item["started_at"]["N"]) + deadlines.job_lease_s:
            self._close(item, "in_progress", "failed", _lost_error(), run=item["run"]["S"])
            return self.get(account_id, job_id)
        if status != "queued":
            return self._object(item)
        run = uuid.uuid4().hex
        try:
            self._db.update_item(
                TableName=self._table,
                Key=key_of(item),
                UpdateExpression="SET #s = :running, started_at = :now, #run = :run",
                ConditionExpression="#s = :queued",
                ExpressionAttributeNames={"#s": "status", "#run": "run"},
                ExpressionAttributeValues={
                    ":running": {"S": "in_progress"},
                    ":queued": {"S": "queued"},
                    ":now": {"N": str(int(now))},
                    ":run": {"S": run},
                },
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return self.get(account_id, job_id)  # cancelled, or another delivery took it
        item["status"], item["run"] = {"S": "in_progress"}, {"S": run}
        self._execute(item, run)
        return self.get(account_id, job_id)

    def _execute(self, item: dict[str, Any], run: str) -> None:
        service = self.service
        account_id, job_id = job_ids(item)
        request_id = item["request_id"]["S"]
        closing = Closing(guard=lambda record, error: self._move(item, "in_progress", record, error, run))
        try:
            job = self._rebuild(item)
            routes = service.check(job)
            reservation = _reservation(item)
            admission = Admission(
                service.prices.quote(job, [(s.model, s.options) for s in routes]), reservation
            )
        except Exception as exc:
            # Its model or route is gone since the submit, or its inputs cannot be read: refunded now rather
            # than left running until the sweeper's deadline.
            if not isinstance(exc, APIError):
                service.logger.exception("job could not start", extra={"job_id": job_id})
            self._close(item, "in_progress", "failed", exc, run=run)
            return
        account = Account(account_id, reservation.key_id, reservation.key_pk)
        try:
            service.execute(account, job, request_id, admission, keep=True, closing=closing)
        except APIError:
            pass  # the job failed and was refunded in the settle; its error is on the job
        except Exception:
            # A bug or an AWS failure mid-run: settled as a failure already when the settle could be written.
            service.logger.exception("job run failed", extra={"job_id": job_id, "request_id": request_id})
            if not closing.settled:
                raise
        if closing.settled:
            self._finished(account_id, job_id)

    def _rebuild(self, item: dict[str, Any]) -> ImageJob:
        spec = json.loads(self._spec(item))
        contract = self.service.catalog.get(spec.pop("model"))
        if contract is None:
            raise APIError(
                400,
                "The job's model is no longer offered by this deployment.",
                param="model",
                code="model_not_found",
            )
        inputs = [
            InputImage(
                i["param"],
                self.service.storage.get(i["key"]),
                i["format"],
                i["width"],
                i["height"],
                i["has_alpha"],
            )
            for i in json.loads(item.get("inputs", {"S": "[]"})["S"])
        ]
        # `mask`, or `mask.file_id` / `mask.image_url` for a JSON edit's reference.
        mask = inputs.pop() if inputs and inputs[-1].param.partition(".")[0] == "mask" else None
        return ImageJob(**spec, contract=contract, images=tuple(inputs), mask=mask)

    def _spec(self, item: dict[str, Any]) -> str | bytes:
        if "spec_key" not in item:
            return str(item["spec"]["S"])
        spec = self.service.storage.get(item["spec_key"]["S"])
        if hashlib.sha256(spec).hexdigest() != item["spec_sha256"]["S"]:
            raise ValueError("the job's stored spec was changed after its submit")
        return spec

    # --- reading -------------------------------------------------------------------------------------

    def get(self, account_id: str, job_id: str) -> dict[str, Any]:
        """The job object, `url` results signed now (for the URLs' TTL from now); 404 for an unknown job
        and for another account's (the key holds the account: it is never even read)."""
        return self._object(self._read(account_id, job_id))

    def list(
        self, account_id: str, limit: int = DEFAULT_LIST_LIMIT, after: str | None = None
    ) -> dict[str, Any]:
        """An account's jobs, newest first, in OpenAI's list shape; `after`: the previous page's last id."""
        if after is not None and not JOB_ID.fullmatch(after):
            raise APIError(
                400,
                f"Invalid 'after': '{after}' is not an image job id.",
                param="after",
                code="invalid_value",
            )
        upper = f"{JOB_PREFIX}{after}" if after else f"{JOB_PREFIX}~"

        db = self._db

        def newest(pk: str) -> tuple[list[dict[str, Any]], bool]:
            """A partition's newest jobs older than `after`, and whether it may hold more."""
            query: dict[str, Any] = {
                "TableName": self._table,
                "KeyConditionExpression": "pk = :pk AND sk BETWEEN :lo AND :hi",
                "ExpressionAttributeValues": {
                    ":pk": {"S": pk},
                    ":lo": {"S": JOB_PREFIX},
                    ":hi": {"S": upper},
                },
                "ScanIndexForward": False,
                "Limit": limit + 2,  # BETWEEN includes `after` itself; one more tells whether there are more
            }
            while True:
                page = db.query(**query)
                items = [i for i in page.get("Items", []) if i["sk"]["S"] != upper]
                # A page that held `after` alone (cut short) says nothing yet: read on past it.
                if items or "LastEvaluatedKey" not in page:
                    return items, "LastEvaluatedKey" in page
                query["ExclusiveStartKey"] = page["LastEvaluatedKey"]

        partitions = job_partitions(account_id)
        with ThreadPoolExecutor(max_workers=len(partitions)) as pool:
            pages = list(pool.map(newest, partitions))
        # A partition cut short (its Limit, or 1 MB) may hold jobs older than the last it returned, yet newer
        # than some the others returned: the page keeps only jobs no unread one can precede (at least that
        # last one, so every page but the last has a job in it).
        floor = max((found[-1]["sk"]["S"] for found, more in pages if more), default="")
        items = sorted(
            (i for found, _ in pages for i in found if i["sk"]["S"] >= floor),
            key=lambda i: i["sk"]["S"],
            reverse=True,
        )
        data = [self._object(i, _listed_result(i, self.service)) for i in items[:limit]]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(items) > limit or any(more for _, more in pages),
        }

    def wait(self, account_id: str, job_id: str, seconds: float) -> dict[str, Any]:
        """The job object once it is final, or as it is after `seconds`."""
        deadline = self._clock() + seconds
        for attempt in range(10**6):
            obj = self.get(account_id, job_id)
            left = deadline - self._clock()
            if obj["status"] in FINAL or left <= 0:
                return obj
            self._sleep(min(left, POLL_SECONDS[min(attempt, len(POLL_SECONDS) - 1)]))
        return obj

    def failure(self, account_id: str, job_id: str) -> APIError | None:
        """A failed job's error as the synchronous path would have raised it (its status included)."""
        item = self._read(account_id, job_id)
        if item["status"]["S"] != "failed" or "error" not in item:
            return None
        error = json.loads(item["error"]["S"])
        return APIError(
            int(item.get("error_status", {"N": "500"})["N"]),
            error["message"],
            type=error["type"],
            param=error["param"],
            code=error["code"],
        )

    # --- cancel --------------------------------------------------------------------------------------

    def cancel(self, account_id: str, job_id: str) -> dict[str, Any]:
        """Cancel a queued job and refund it (once); cancelling a cancelled job again returns it. A job
        running or finished is a 409: its money is, or soon will be, settled by its run."""
        item = self._read(account_id, job_id)
        status = item["status"]["S"]
        if status == "queued" and self._close(item, "queued", "cancelled", None):
            return self.get(account_id, job_id)
        current = self._read(account_id, job_id)
        if current["status"]["S"] == "cancelled":
            return self._object(current)
        raise APIError(
            409,
            f"Image job '{job_id}' is {current['status']['S']}; only a queued job can be cancelled.",
            param="job_id",
            code="job_not_cancellable",
        )

    # --- the sweeper ---------------------------------------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Fail and refund, once each, jobs whose worker died mid-run and jobs that were never started
        (their message went to the dead-letter queue). Jobs still waiting in the queue, or running within
        their worker's timeout, are left alone: their reservations are not stale, only long."""
        deadlines = self.settings.deadlines
        now = self._clock()
        closed = expired = lost = 0
        for r, job_id in self.service.billing.open_jobs(older_than_s=deadlines.job_lease_s):
            try:
                item = read_job(self._db, self._table, r.account_id, job_id)
                if item is None:
                    # The submit died between its reservation and its job item, and could not refund.
                    if now > r.created_at + deadlines.job_start_s:
                        closed += self.service.billing.settle(r, 0, provider="sweep")
                    continue
                status = item["status"]["S"]
                if status == "queued" and now > int(item["created_at"]["N"]) + deadlines.job_start_s:
                    expired += self._close(item, "queued", "failed", _expired_error())
                elif status == "in_progress" and now > int(item["started_at"]["N"]) + deadlines.job_lease_s:
                    lost += self._close(item, "in_progress", "failed", _lost_error(), run=item["run"]["S"])
            except Exception:
                self.service.logger.exception("job sweep failed for one job", extra={"job_id": job_id})
        return {"jobs_expired": expired, "jobs_lost": lost, "jobs_orphaned": closed} | self.announce_owed()

    def announce_owed(self) -> dict[str, int]:
        """Run again the announcements still owed by jobs that finished longer ago than the grace (the
        function that committed them is over); mark done those that now succeed."""
        cutoff = int(self._clock()) - self.settings.deadlines.announce_grace_s
        retried = left = 0
        for item in open_items(self._db, self._table, ANNOUNCE_SHARD, cutoff):
            retried += 1
            left += not self._finished(*job_ids(item))
        return {"announcements_retried": retried, "announcements_still_owed": left}

    # --- state moves ---------------------------------------------------------------------------------

    def _close(
        self,
        item: dict[str, Any],
        from_status: str,
        to_status: str,
        error: BaseException | None,
        run: str = "",
        *,
        announce: bool = True,
    ) -> bool:
        """Move a job that never delivered to a final state and refund its reservation, in one transaction;
        False when the job had moved on meanwhile (its new state owns the money). `announce`: tell the
        `on_finished` callbacks."""
        guard = self._move(item, from_status, None, error, run, to_status, announce=announce)
        settled = self.service.billing.settle(_reservation(item), 0, provider="none", guard=guard)
        if settled and announce:
            self._finished(*job_ids(item))
        return settled

    def _move(
        self,
        item: dict[str, Any],
        from_status: str,
        record: dict[str, Any] | None,
        error: BaseException | None,
        run: str = "",
        to_status: str | None = None,
        *,
        announce: bool = True,
    ) -> dict[str, Any]:
        """The job's conditional move out of `from_status` (and, from in_progress, out of this run only) to
        a final state; with `announce`, it records the announcements owed (the outbox) in the same write."""
        if to_status is None:
            to_status = "succeeded" if error is None else "failed"
        now = int(self._clock())
        values: dict[str, Any] = {
            ":to": {"S": to_status},
            ":from": {"S": from_status},
            ":now": {"N": str(now)},
        }
        sets = ["#s = :to", "completed_at = :now"]
        if announce and self.on_finished:
            job_id = job_ids(item)[1]
            values[":owed"] = {"SS": sorted(self.on_finished)}
            values[":by"] = {"N": str(now + self.settings.deadlines.announce_by_s)}
            values[":shard"] = {"S": f"{ANNOUNCE_SHARD}{sum(job_id.encode()) % OPEN_SHARDS}"}
            sets += ["announce = :owed", "announce_by = :by", "open_shard = :shard", "open_since = :now"]
        if record is not None:
            kept = {k: record[k] for k in ("body", "format", "extra", "keys")}
            values[":result"] = {"S": json.dumps(kept, separators=(",", ":"))}
            sets.append("#result = :result")
        if error is not None:
            api_error = error if isinstance(error, APIError) else _internal_error()
            values[":error"] = {"S": json.dumps(api_error.body()["error"])}
            values[":status"] = {"N": str(api_error.status)}
            sets += ["#error = :error", "error_status = :status"]
        condition = "#s = :from"
        if run:
            values[":run"] = {"S": run}
            condition += " AND #run = :run"
        names = {"#s": "status", "#run": "run", "#result": "result", "#error": "error"}
        expression = "SET " + ", ".join(sets)
        return {
            "Update": {
                "TableName": self._table,
                "Key": key_of(item),
                "UpdateExpression": expression,
                "ConditionExpression": condition,
                "ExpressionAttributeNames": {k: v for k, v in names.items() if k in expression + condition},
                "ExpressionAttributeValues": values,
            }
        }

    def _finished(self, account_id: str, job_id: str) -> bool:
        """Tell the `on_finished` callbacks the job still owes (its outbox), and mark done those that
        returned. True when nothing is owed any more. One that raises is logged and stays owed."""
        try:
            item = self._read(account_id, job_id)
            owed = set(item.get("announce", {}).get("SS", ()))
            if not owed:
                return True
            detail = self.detail(item)
        except Exception:
            self.service.logger.exception(
                "job detail unreadable; announcements owed", extra={"job_id": job_id}
            )
            return False
        done = owed - self.on_finished.keys()  # none here can send those: a callback no longer configured
        for name in sorted(owed & self.on_finished.keys()):
            try:
                self.on_finished[name](detail)
                done.add(name)
            except Exception:
                self.service.logger.exception(
                    "job announcement failed; the sweeper retries it", extra={"job_id": job_id, "hook": name}
                )
        if done:
            self._announced(item, done, everything=done == owed)
        return done == owed

    def _announced(self, item: dict[str, Any], done: set[str], *, everything: bool) -> None:
        """Mark announcements done. All of them: the job leaves the outbox (and the sweeper's index)."""
        if everything:
            expression, values = "REMOVE announce, announce_by, open_shard, open_since", {}
        else:
            expression, values = "DELETE announce :done", {":done": {"SS": sorted(done)}}
        try:
            self._db.update_item(
                TableName=self._table,
                Key=key_of(item),
                UpdateExpression=expression,
                ConditionExpression="attribute_exists(announce)",
                **({"ExpressionAttributeValues": values} if values else {}),
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            pass  # another run (the sweeper, a redelivery) marked them done first
        except Exception:
            # Told, but not marked: the sweeper tells them again, which each callback takes as a duplicate.
            self.service.logger.exception(
                "job announcements not marked done", extra={"job_id": job_ids(item)[1]}
            )

    # --- rendering -----------------------------------------------------------------------------------

    def detail(self, item: dict[str, Any]) -> dict[str, Any]:
        """The job for notifications: S3 keys in place of URLs and image bytes (module docstring)."""
        account_id, _ = job_ids(item)
        result = None
        if "result" in item:
            record = json.loads(item["result"]["S"])
            data = [{"s3_key": key, **record["extra"]} for key in record["keys"]]
            result = {"created": record["body"]["created"], "data": data, **record["body"]}
        return {
            **self._object(item, result=result),
            "bucket": self.settings.bucket,
            "account_id": account_id,
            "request_id": item["request_id"]["S"],
            "source": item.get("source", {"S": "http"})["S"],
            "client_reference_id": item.get("client_reference_id", {}).get("S"),
            "task_token": item.get("task_token", {}).get("S"),
        }

    def _object(self, item: dict[str, Any], result: Any = ...) -> dict[str, Any]:
        # One expiry, the outputs': the item itself may be kept longer (a webhook's delivery schedule).
        expires_at = int(item["created_at"]["N"]) + self.settings.job_retention_days * 86400
        if result is ...:
            if "result" in item and self._clock() >= expires_at:
                raise self.service.output_expired()
            result = self.service.render(json.loads(item["result"]["S"])) if "result" in item else None
        return {
            "id": job_ids(item)[1],
            "object": "image.job",
            "status": item["status"]["S"],
            "endpoint": item["endpoint"]["S"],
            "model": item["model"]["S"],
            "created_at": int(item["created_at"]["N"]),
            "completed_at": int(item["completed_at"]["N"]) if "completed_at" in item else None,
            "expires_at": expires_at,
            "result": result,
            "error": json.loads(item["error"]["S"]) if "error" in item else None,
            "webhook": _plain(item["webhook"]) if "webhook" in item else None,
        }

    def _read(self, account_id: str, job_id: str) -> dict[str, Any]:
        item = read_job(self._db, self._table, account_id, job_id) if JOB_ID.fullmatch(job_id) else None
        if item is None:
            raise APIError(404, f"No image job found with id '{job_id}'.", param="job_id", code="not_found")
        return item


def _listed_result(item: dict[str, Any], service: Service) -> dict[str, Any] | None:
    """A job's result as a list shows it: `url` results signed (no read), `b64_json` ones left out (null),
    since a page of them read back from S3 would not fit a response: GET the job for its images."""
    record = json.loads(item["result"]["S"]) if "result" in item else None
    return service.render(record) if record is not None and record["format"] == "url" else None


def _reservation(item: dict[str, Any]) -> Reservation:
    return Reservation(**json.loads(item["reservation"]["S"]))


def _optional(**values: str | None) -> dict[str, Any]:
    return {k: {"S": v} for k, v in values.items() if v}


def _plain(value: dict[str, Any]) -> Any:
    """A DynamoDB attribute value as JSON-ready Python (numbers as int when whole), written out rather than
    boto3's TypeDeserializer: importing boto3 costs an image function's first such answer ~250 ms."""
    ((kind, data),) = value.items()
    if kind == "N":
        number = Decimal(data)
        return int(number) if number == number.to_integral_value() else float(number)
    if kind == "M":
        return {k: _plain(v) for k, v in data.items()}
    if kind == "L":
        return [_plain(v) for v in data]
    if kind == "NULL":
        return None
    if kind in ("NS", "SS"):
        return [_plain({kind[0]: v}) for v in data]
    return data  # S, BOOL (B/BS never appear in a job's webhook state)


def _queue_error() -> APIError:
    return APIError(
        503,
        "The job could not be queued; it was not charged. Retry shortly.",
        type="server_error",
        code="queue_unavailable",
    )


def _expired_error() -> APIError:
    return APIError(
        503,
        "The job was not started in time (the queue could not deliver it); it was not charged.",
        type="server_error",
        code="job_expired",
    )


def _lost_error() -> APIError:
    return APIError(
        500,
        "The worker running this job stopped before it finished; it was not charged.",
        type="server_error",
        code="worker_lost",
    )


def _internal_error() -> APIError:
    return APIError(
        500,
        "The server had an error while processing your request.",
        type="server_error",
        code="internal_error",
    )

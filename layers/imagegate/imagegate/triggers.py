"""Jobs from other AWS services: EventBridge events, SQS messages, S3 manifests, direct invocation and Step
Functions (README, "Jobs from other AWS services").

Every entry point carries one request shape, validated here:
  {"account_id", "endpoint", "request": <the OpenAI request fields>, "inputs": [S3 references],
   "client_reference_id", "task_token" (optional: a Step Functions task to answer)}
IAM is the authentication: whoever may put the event on the bus, send to the requests queue, write under
`requests/<account_id>/` or invoke the function may charge the account it names, which must exist and be
active (Accounts.for_service). Inputs are objects in imagegate's own bucket, under the account's own
`inputs/<account_id>/` or `requests/<account_id>/`, decoded with the multipart uploads' checks (images.py).

One function serves every source. An SQS batch (the requests queue, which the EventBridge rules and the S3
manifest rule feed too) submits one job per message to the jobs queue; the worker runs it. A direct
invocation runs its job to the end in the same invocation and returns it, or, with a `task_token`, queues it
and returns at once: the finished job answers the task (`answer_task`, an on_finished callback).

A message that can never succeed (a bad shape, an unknown account, a 4xx refusal) is logged and reported as
processed, with its task failed and, for a manifest, the refusal written under `results/`; only what may
succeed later (429 rate limits, 5xx, AWS errors) is retried, and after JOB_MAX_DELIVERIES the dead-letter
queue takes it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from aws_lambda_powertools.logging import Logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import errors
from .catalog import Endpoint
from .errors import APIError
from .images import Upload
from .service import Service
from .validation import GenerationRequest, ImageParams, check_unicode, resolve

# The detail-type an EventBridge rule matches (template.yaml: JobRequestedRule).
REQUESTED = "Image Job Requested"
REQUESTS_PREFIX = "requests"  # S3 manifests: requests/<account_id>/<name>.json
RESULTS_PREFIX = "results"  # what became of them: results/<account_id>/...
# A manifest is one request shape, as small as an SQS message (256 KB); images are inputs beside it.
MAX_MANIFEST_BYTES = 256 * 1024
MAX_INPUTS = 17  # 16 images and a mask, as a multipart body
# Inputs are read into memory to be checked: one at most the largest any model takes (50 MB), all of one
# request at most this much, so a job cannot take its function's memory.
MAX_INPUT_BYTES = 50 * 1024 * 1024
MAX_INPUTS_TOTAL_BYTES = 64 * 1024 * 1024
# Manifest names stay within characters S3 events never encode, so a key means the same everywhere.
_MANIFEST = re.compile(r"^requests/([A-Za-z0-9_-]{1,64})/([A-Za-z0-9._/-]{1,512}\.json)$")
# Step Functions' limits for SendTaskFailure.
MAX_TASK_ERROR = 256
MAX_TASK_CAUSE = 32_768

Source = Literal["eventbridge", "sqs", "s3", "invoke"]


class InputRef(BaseModel):
    """An input image in imagegate's bucket: `key` under inputs/<account_id>/ or requests/<account_id>/."""

    model_config = ConfigDict(extra="forbid", strict=True)

    key: str = Field(min_length=1, max_length=1024)
    param: Literal["image", "mask"] = "image"


class JobRequest(BaseModel):
    """The one request shape of every AWS entry point."""

    model_config = ConfigDict(extra="forbid", strict=True)

    account_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    endpoint: Endpoint
    request: dict[str, Any]
    inputs: list[InputRef] = Field(default_factory=list, max_length=MAX_INPUTS)
    client_reference_id: str | None = Field(default=None, min_length=1, max_length=512)
    # Step Functions' task tokens are at most 2048 characters (SendTaskSuccess).
    task_token: str | None = Field(default=None, min_length=1, max_length=2048)


@dataclass(frozen=True)
class Arrival:
    """One request as an entry point received it: the document, where from, and the id that makes a
    redelivery of the same event the same job (its request id)."""

    document: Any
    source: Source
    event_id: str
    manifest: str = ""  # the S3 manifest's key, whose result goes under results/

    @property
    def request_id(self) -> str:
        # Deterministic: a redelivered message reserves under the same id, so it cannot be charged twice.
        digest = hashlib.sha256(f"{self.source}:{self.event_id}".encode()).hexdigest()
        return f"req_{digest[:32]}"


def parse(document: Any) -> JobRequest:
    """The request shape, or a 400 naming the field."""
    if not isinstance(document, dict):
        raise errors.invalid("A job request is a JSON object.", None, "invalid_type")
    check_unicode(document)
    try:
        return JobRequest.model_validate(document)
    except ValidationError as exc:
        raise errors.from_pydantic(exc.errors()) from exc


def allowed_input(account_id: str, key: str) -> bool:
    """Inputs only from the account's own prefixes: IAM grants writers one account's prefix, and one
    account's event can never read another's images."""
    return any(key.startswith(f"{prefix}/{account_id}/") for prefix in ("inputs", REQUESTS_PREFIX))


class Triggers:
    """Turns AWS events into job submissions, and finished jobs into Step Functions answers and S3 results."""

    def __init__(self, service: Service, jobs: Any, logger: Logger) -> None:
        self.service = service
        self.jobs = jobs
        self.logger = logger

    # --- entry points ---------------------------------------------------------------------------------

    def handle(self, event: Any, context: Any) -> dict[str, Any]:
        """The trigger function: an SQS batch from the requests queue, or a direct invocation."""
        if isinstance(event, dict) and _is_sqs_batch(event):
            return self.batch(event, context)
        return self.invoke(event, getattr(context, "aws_request_id", ""))

    def batch(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        """Partial batch response: only messages that may succeed later are reported as failures."""
        from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

        processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
        return process_partial_response(event, self.message, processor, context)

    def message(self, record: Any) -> None:
        """One SQS message: the request shape itself, or an EventBridge event the rules put on the queue."""
        try:
            body = json.loads(record.body)
        except ValueError:
            self.logger.error(
                "requests queue: a message that is not JSON", extra={"message_id": record.message_id}
            )
            return
        arrival = self.arrival(body, record.message_id)
        if arrival is not None:
            self.submit(arrival)

    def invoke(self, event: Any, invocation_id: str) -> dict[str, Any]:
        """`aws lambda invoke`: the finished job, or with a task_token the queued job (the worker answers
        the task); a refusal is an OpenAI error object."""
        arrival = Arrival(event, "invoke", invocation_id or _digest(event))
        try:
            request = parse(event)
            if request.task_token is not None:
                return self._submit(arrival, request, enqueue=True)
            job = self._submit(arrival, request, enqueue=False)
            return self.jobs.run(request.account_id, job["id"])
        except APIError as exc:
            self._refused(arrival, exc)
            return exc.body()

    # --- events ---------------------------------------------------------------------------------------

    def arrival(self, body: Any, message_id: str) -> Arrival | None:
        """What an SQS message holds; None (logged) for an EventBridge event no rule should have sent."""
        if not (isinstance(body, dict) and "detail-type" in body):
            return Arrival(body, "sqs", message_id)
        kind, event_id, detail = (
            body.get("detail-type"),
            str(body.get("id") or message_id),
            body.get("detail"),
        )
        if kind == REQUESTED:
            return Arrival(detail, "eventbridge", event_id)
        if kind == "Object Created" and body.get("source") == "aws.s3" and isinstance(detail, dict):
            bucket = detail.get("bucket", {}).get("name")
            key = str(detail.get("object", {}).get("key", ""))
            if bucket == self.service.settings.bucket:
                return Arrival(None, "s3", event_id, manifest=key)
        self.logger.error(
            "requests queue: an event that is not a job request",
            extra={"detail_type": kind, "event_id": event_id},
        )
        return None

    def submit(self, arrival: Arrival) -> dict[str, Any] | None:
        """Submit a queued arrival; a permanent refusal is handled here (logged, task failed, result written)
        and returns None, anything that may pass later is raised for SQS to redeliver."""
        try:
            document = self._manifest(arrival.manifest) if arrival.source == "s3" else arrival.document
            request = parse(document)
            if arrival.manifest:
                _check_manifest_account(arrival.manifest, request.account_id)
            job = self._submit(arrival, request, enqueue=True)
        except APIError as exc:
            if _retryable(exc):
                raise
            self._refused(arrival, exc)
            return None
        if arrival.manifest:
            done = result_key(request.account_id, job["id"])
            self._write_result(arrival.manifest, {"job": detail_without_token(job), "result_key": done})
        return job

    # --- submitting -----------------------------------------------------------------------------------

    def _submit(self, arrival: Arrival, request: JobRequest, *, enqueue: bool) -> dict[str, Any]:
        params = _params(request)
        if request.inputs and request.endpoint == "generations":
            raise errors.invalid(
                "Inputs are for the edits and variations endpoints; /generations takes none.",
                "inputs",
                "unsupported_parameter",
            )
        account = self.service.accounts.for_service(request.account_id)
        images, mask = self._inputs(request)
        job = resolve(request.endpoint, params, self.service.catalog, images, mask)
        submitted: dict[str, Any] = self.jobs.submit(
            account,
            job,
            request_id=arrival.request_id,
            user=params.user,
            source=arrival.source,
            client_reference_id=request.client_reference_id,
            task_token=request.task_token,
            enqueue=enqueue,
        )
        self.logger.info(
            "job submitted",
            extra={
                "job_id": submitted["id"],
                "account_id": request.account_id,
                "source": arrival.source,
                "request_id": arrival.request_id,
            },
        )
        return submitted

    def _inputs(self, request: JobRequest) -> tuple[list[Upload], Upload | None]:
        """The input images, read from S3 and named as a multipart body names its parts."""
        refs = [r for r in request.inputs if r.param == "image"]
        masks = [r for r in request.inputs if r.param == "mask"]
        if len(masks) > 1:
            raise errors.invalid(
                "Invalid 'inputs': send one mask, not several.", "inputs", "duplicate_parameter"
            )
        total = 0
        images: list[Upload] = []
        mask: Upload | None = None
        for i, ref in enumerate(request.inputs):
            if not allowed_input(request.account_id, ref.key):
                raise errors.invalid(
                    f"Invalid 'inputs[{i}]': inputs are read from inputs/{request.account_id}/ or "
                    f"requests/{request.account_id}/ in imagegate's bucket, not '{ref.key}'.",
                    "inputs",
                    "invalid_input_key",
                )
            data = self._read(ref.key, f"inputs[{i}]", MAX_INPUT_BYTES)
            total += len(data)
            if total > MAX_INPUTS_TOTAL_BYTES:
                raise errors.invalid(
                    f"Invalid 'inputs': together larger than {MAX_INPUTS_TOTAL_BYTES // 2**20} MB.",
                    "inputs",
                    "image_too_large",
                )
            if ref.param == "mask":
                mask = Upload("mask", data)
            else:
                images.append(Upload("image" if len(refs) == 1 else f"image[{len(images)}]", data))
        return images, mask

    def _read(self, key: str, param: str, limit: int) -> bytes:
        """An object of imagegate's bucket, at most `limit` bytes; a missing or larger one is the caller's
        400, found before the body is read where S3 says its size."""
        s3 = self.service.aws.s3
        try:
            obj = s3.get_object(Bucket=self.service.settings.bucket, Key=key)
        except s3.exceptions.NoSuchKey:
            raise errors.invalid(
                f"Invalid '{param}': no object '{key}'.", "inputs", "input_not_found"
            ) from None
        size = obj.get("ContentLength", 0)
        with obj["Body"] as body:
            data = body.read(limit + 1) if size <= limit else b""
        if size > limit or len(data) > limit:
            raise errors.invalid(
                f"Invalid '{param}': larger than {limit // 1024} KB.", "inputs", "input_too_large"
            )
        return data

    def _manifest(self, key: str) -> Any:
        """An S3 manifest's request shape."""
        if not _MANIFEST.match(key):
            raise errors.invalid(
                f"A manifest is requests/<account_id>/<name>.json (letters, digits, . _ - /), not '{key}'.",
                None,
                "invalid_manifest_key",
            )
        raw = self._read(key, "manifest", MAX_MANIFEST_BYTES)
        try:
            return json.loads(raw.decode("utf-8"))
        except ValueError:
            raise errors.invalid("The manifest is not a JSON object.", None, "invalid_json") from None

    # --- answers --------------------------------------------------------------------------------------

    def _refused(self, arrival: Arrival, exc: APIError) -> None:
        """A request that will never run: say so to whoever waits (a task, a manifest's result) and log it."""
        self.logger.error(
            "job request refused",
            extra={
                "source": arrival.source,
                "request_id": arrival.request_id,
                "status": exc.status,
                "code": exc.code,
                "param": exc.param,
                "error": exc.message,
            },
        )
        token = _task_token(arrival.document)
        if token:
            self.fail_task(token, exc.body()["error"])
        if arrival.manifest and _MANIFEST.match(arrival.manifest):
            self._write_result(arrival.manifest, exc.body())

    def on_finished(self, detail: dict[str, Any]) -> None:
        """Jobs' on_finished callback: answer the job's Step Functions task; write an S3 manifest's job."""
        if detail.get("task_token"):
            self.answer_task(detail)
        if detail.get("source") == "s3":
            self._put_json(result_key(detail["account_id"], detail["id"]), detail_without_token(detail))

    def answer_task(self, detail: dict[str, Any]) -> None:
        """SendTaskSuccess with the finished job (S3 keys, no token), or SendTaskFailure with its error."""
        token = detail["task_token"]
        job = detail_without_token(detail)
        if job.get("status") == "succeeded":
            self._task_call("send_task_success", taskToken=token, output=json.dumps(job))
        else:
            error = job.get("error") or {
                "message": f"The job was {job.get('status')}.",
                "type": "job_error",
                "param": None,
                "code": f"job_{job.get('status')}",
            }
            self.fail_task(token, error)

    def fail_task(self, token: str, error: dict[str, Any]) -> None:
        """SendTaskFailure: the error is the OpenAI code (what a Catch matches), the cause the error."""
        name = str(error.get("code") or error.get("type") or "imagegate_error")[:MAX_TASK_ERROR]
        cause = json.dumps({"error": error})[:MAX_TASK_CAUSE]
        self._task_call("send_task_failure", taskToken=token, error=name, cause=cause)

    def _task_call(self, operation: str, **kwargs: str) -> None:
        sfn = self.service.aws.client("stepfunctions")
        try:
            getattr(sfn, operation)(**kwargs)
        except (sfn.exceptions.TaskTimedOut, sfn.exceptions.TaskDoesNotExist, sfn.exceptions.InvalidToken):
            # The execution stopped waiting (timed out, aborted): nobody is left to answer.
            self.logger.warning(
                "the Step Functions task is gone; not answered", extra={"operation": operation}
            )

    def _write_result(self, manifest: str, body: dict[str, Any]) -> None:
        """results/<account_id>/<name>.json for requests/<account_id>/<name>.json: the job as submitted with
        the key its finished job will be written to, or why the manifest was refused."""
        self._put_json(RESULTS_PREFIX + manifest.removeprefix(REQUESTS_PREFIX), body)

    def _put_json(self, key: str, body: dict[str, Any]) -> None:
        self.service.aws.s3.put_object(
            Bucket=self.service.settings.bucket,
            Key=key,
            Body=json.dumps(body, indent=2).encode(),
            ContentType="application/json",
            ServerSideEncryption="AES256",
        )


def result_key(account_id: str, job_id: str) -> str:
    return f"{RESULTS_PREFIX}/{account_id}/jobs/{job_id}.json"


def detail_without_token(detail: dict[str, Any]) -> dict[str, Any]:
    """A finished job as it is written and answered: the task token is a bearer credential for the task."""
    return {k: v for k, v in detail.items() if k != "task_token"}


def _params(request: JobRequest) -> ImageParams:
    model: type[ImageParams] = GenerationRequest if request.endpoint == "generations" else ImageParams
    try:
        return model.model_validate(request.request)
    except ValidationError as exc:
        raise errors.from_pydantic(exc.errors()) from exc


def _check_manifest_account(key: str, account_id: str) -> None:
    match = _MANIFEST.match(key)
    if match is None or match.group(1) != account_id:
        raise APIError(
            403,
            f"A manifest under requests/{match.group(1) if match else '?'}/ can only charge that account, "
            f"not '{account_id}'.",
            type="permission_error",
            param="account_id",
            code="account_mismatch",
        )


def _retryable(exc: APIError) -> bool:
    """Rate limits and server-side failures may pass later; every other refusal never will."""
    return exc.status == 429 or exc.status >= 500


def _task_token(document: Any) -> str | None:
    """The task token of a request, even one refused for its shape (so the task fails at once, rather
    than waiting out its timeout)."""
    token = document.get("task_token") if isinstance(document, dict) else None
    return token if isinstance(token, str) and 0 < len(token) <= 2048 else None


def _is_sqs_batch(event: dict[str, Any]) -> bool:
    records = event.get("Records")
    return isinstance(records, list) and bool(records) and records[0].get("eventSource") == "aws:sqs"


def _digest(event: Any) -> str:
    return hashlib.sha256(json.dumps(event, sort_keys=True, default=str).encode()).hexdigest()

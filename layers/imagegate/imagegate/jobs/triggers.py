"""Jobs from other AWS services: EventBridge events, SQS messages, S3 manifests, direct invocation and Step
Functions (docs/jobs.md, "Jobs from other AWS services").

Every entry point carries one request shape, validated here:
  {"account_id", "endpoint", "request": <the OpenAI request fields>, "inputs": [S3 references],
   "client_reference_id", "task_token" (optional: a Step Functions task to answer)}
IAM is the authentication: whoever may put the event on the bus, send to the requests queue, write under
`requests/<account_id>/` or invoke the function may charge the account it names, which must exist and be
active (Accounts.for_service). Inputs are objects in imagegate's own bucket, under the account's own
`inputs/<account_id>/` or `requests/<account_id>/`, decoded with the multipart uploads' checks (images.py).

The requests queue is the one way in for three sources: SQS messages, and what the EventBridge rules put on
it (`Image Job Requested` events, and S3's `Object Created` for manifests). Each message submits one job to
the jobs queue, for the worker. A direct invocation runs its job to the end in the same invocation and
returns it, or, with a `task_token`, queues it and returns at once: the finished job answers the task
(`Answers`, an on_finished callback of every Jobs that runs jobs).

A redelivered message is the same job: its Idempotency-Key is the event's own id. A message that can never
succeed (a bad shape, an unknown account, a 4xx refusal) is logged and reported as processed, its task
failed and, for a manifest, the refusal written under `results/`; only what may succeed later (409 while a
duplicate is being submitted, 429, 5xx, AWS errors) is retried, and the dead-letter queue takes what still
fails after the queue's maxReceiveCount deliveries.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aws_lambda_powertools.logging import Logger
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imagegate import errors
from imagegate.aws import AWSClients
from imagegate.catalog.contracts import Endpoint
from imagegate.config import Settings
from imagegate.errors import APIError
from imagegate.inputs.images import Upload
from imagegate.inputs.validation import GenerationRequest, ImageParams, check_unicode, resolve
from imagegate.service import Service
from imagegate.storage import missing
from imagegate.table import new_request_id

if TYPE_CHECKING:
    from imagegate.jobs.lifecycle import Jobs

# The detail-type the EventBridge rule matches (template.yaml: JobRequestedRule).
REQUESTED = "Image Job Requested"
INPUTS_PREFIX, REQUESTS_PREFIX, RESULTS_PREFIX = "inputs", "requests", "results"
# A manifest is one request shape, as small as an SQS message (256 KB); images go beside it as inputs.
MAX_MANIFEST_BYTES = 256 * 1024
MAX_INPUTS = 17  # 16 images and a mask, as in a multipart body
# Inputs are read into memory to be checked: each at most the largest any model takes (50 MB), all of one
# request at most this much, so that one job cannot take its function's memory.
MAX_INPUT_BYTES = 50 * 1024 * 1024
MAX_INPUTS_TOTAL_BYTES = 64 * 1024 * 1024
# Manifest names keep to characters S3 never encodes in events, so a key reads the same everywhere.
_MANIFEST = re.compile(r"requests/([A-Za-z0-9_-]{1,64})/([A-Za-z0-9._/-]{1,512}\.json)")  # fullmatch
# Step Functions' limits: a task token, and SendTaskFailure's error name and cause.
MAX_TASK_TOKEN = 2048
MAX_TASK_ERROR = 256
MAX_TASK_CAUSE = 32_768

Source = Literal["eventbridge", "sqs", "s3", "invoke"]


class InputRef(BaseModel):
    """An input image: `key` in imagegate's bucket, under inputs/<account_id>/ or requests/<account_id>/."""

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
    task_token: str | None = Field(default=None, min_length=1, max_length=MAX_TASK_TOKEN)


@dataclass(frozen=True)
class Arrival:
    """One request as an entry point received it: the document, where from, and the event's own id."""

    document: Any
    source: Source
    event_id: str
    manifest: str = ""  # an S3 manifest's key: its result goes under results/

    @property
    def idempotency_key(self) -> str:
        """The same for every delivery of one event, so a redelivery gets the first delivery's job."""
        return f"aws:{self.source}:{self.event_id}"[:255]


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
    """Inputs come from the account's own prefixes only: IAM can grant a writer one account's prefix, and
    one account's request can never read another's images."""
    return key.startswith((f"{INPUTS_PREFIX}/{account_id}/", f"{REQUESTS_PREFIX}/{account_id}/"))


def result_key(account_id: str, job_id: str) -> str:
    """Where a manifest's finished job is written."""
    return f"{RESULTS_PREFIX}/{account_id}/jobs/{job_id}.json"


class Answers:
    """What a job from an AWS service owes its caller when it ends, or is refused: its Step Functions task
    answered, an S3 manifest's result written. Called as an on_finished callback with the job's detail."""

    def __init__(self, aws: AWSClients, settings: Settings, logger: Logger) -> None:
        self.aws = aws
        self.settings = settings
        self.logger = logger

    def __call__(self, detail: dict[str, Any]) -> None:
        if detail.get("task_token"):
            self.answer_task(detail["task_token"], _public(detail))
        if detail.get("source") == "s3":
            self.put_json(result_key(detail["account_id"], detail["id"]), _public(detail))

    def answer_task(self, token: str, job: dict[str, Any]) -> None:
        """SendTaskSuccess with the finished job (S3 keys, no URLs), or SendTaskFailure with its error."""
        if job.get("status") == "succeeded":
            self._task("send_task_success", taskToken=token, output=json.dumps(job))
            return
        self.fail_task(
            token,
            job.get("error")
            or {
                "message": f"The image job was {job.get('status')}.",
                "type": "invalid_request_error",
                "param": None,
                "code": f"job_{job.get('status')}",
            },
        )

    def fail_task(self, token: str, error: dict[str, Any]) -> None:
        """SendTaskFailure: the error name is the OpenAI code (what a Catch matches), the cause the error."""
        name = str(error.get("code") or error.get("type") or "imagegate_error")[:MAX_TASK_ERROR]
        cause = json.dumps({"error": error})[:MAX_TASK_CAUSE]
        self._task("send_task_failure", taskToken=token, error=name, cause=cause)

    def refused(self, arrival: Arrival, exc: APIError) -> None:
        """A request that will never run: logged, its task failed, a manifest's refusal written."""
        self.logger.error(
            "job request refused",
            extra={
                "source": arrival.source,
                "event_id": arrival.event_id,
                "status": exc.status,
                "code": exc.code,
                "param": exc.param,
                "error": exc.message,
            },
        )
        token = _task_token(arrival.document)
        if token:
            self.fail_task(token, exc.body()["error"])
        if _MANIFEST.fullmatch(arrival.manifest):
            self.put_json(manifest_result(arrival.manifest), exc.body())

    def put_json(self, key: str, body: dict[str, Any]) -> None:
        self.aws.s3.put_object(
            Bucket=self.settings.bucket,
            Key=key,
            Body=json.dumps(body, indent=2).encode(),
            ContentType="application/json",
            ServerSideEncryption="AES256",
        )

    def _task(self, operation: str, **kwargs: str) -> None:
        sfn = self.aws.client("stepfunctions")
        try:
            getattr(sfn, operation)(**kwargs)
        except (sfn.exceptions.TaskTimedOut, sfn.exceptions.TaskDoesNotExist, sfn.exceptions.InvalidToken):
            # The execution stopped waiting (it timed out, or was stopped): nobody is left to answer.
            self.logger.warning("Step Functions task gone; not answered", extra={"operation": operation})


def manifest_result(manifest: str) -> str:
    """results/<account_id>/<name>.json for the manifest requests/<account_id>/<name>.json."""
    return RESULTS_PREFIX + manifest.removeprefix(REQUESTS_PREFIX)


class Triggers:
    """Turns AWS events into job submissions."""

    def __init__(self, service: Service, jobs: Jobs, answers: Answers) -> None:
        self.service = service
        self.jobs = jobs
        self.answers = answers

    # --- entry points ---------------------------------------------------------------------------------

    def batch(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        """The requests queue's batch. Partial batch response: only messages that may succeed later are
        reported as failures, for SQS to deliver again."""
        from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

        processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
        return process_partial_response(event, self.message, processor, context)

    def message(self, record: Any) -> dict[str, Any] | None:
        """One SQS message: the request shape itself, or an EventBridge event a rule put on the queue. The
        submitted job, or None when the message was refused for good."""
        try:
            body = json.loads(record.body)
        except ValueError:
            body = None  # refused below for its shape, like any other body that is not a request
        arrival = self.arrival(body, record.message_id)
        return None if arrival is None else self.submit(arrival)

    def invoke(self, event: Any, invocation_id: str) -> dict[str, Any]:
        """`aws lambda invoke`: the finished job; with a task_token the queued job (the worker answers the
        task). A refusal is returned as an OpenAI error object, never raised: Lambda would retry it."""
        # A client's retry is a new invocation with a new id (the AWS CLI and SDKs retry an invoke that
        # outlives their 60 s read timeout): the caller's own reference makes the retry the same request.
        reference = event.get("client_reference_id") if isinstance(event, dict) else None
        event_id = f"ref:{reference}" if isinstance(reference, str) and reference else invocation_id
        arrival = Arrival(event, "invoke", event_id or new_request_id())
        try:
            request = parse(event)
            if request.task_token is not None:
                return _public(self._submit(arrival, request, enqueue=True))
            job = self._submit(arrival, request, enqueue=False)
            return self.jobs.run(request.account_id, job["id"])
        except APIError as exc:
            self.answers.refused(arrival, exc)
            return exc.body()

    # --- the requests queue ---------------------------------------------------------------------------

    def arrival(self, body: Any, message_id: str) -> Arrival | None:
        """What a message holds; None (logged) for an EventBridge event no rule of ours sends."""
        if not (isinstance(body, dict) and "detail-type" in body):
            return Arrival(body, "sqs", message_id)
        kind = body["detail-type"]
        event_id = str(body.get("id") or message_id)
        if kind == REQUESTED:
            return Arrival(body.get("detail"), "eventbridge", event_id)
        if _our_object_created(body, self.service.settings.bucket):
            return Arrival(
                None, "s3", event_id, manifest=str(body["detail"].get("object", {}).get("key", ""))
            )
        self.service.logger.error(
            "requests queue: an event that is not a job request",
            extra={"detail_type": str(kind)[:100], "event_id": event_id},
        )
        return None

    def submit(self, arrival: Arrival) -> dict[str, Any] | None:
        """Submit one arrival; a permanent refusal is answered here and returns None, and anything that may
        pass later is raised, for SQS to deliver again."""
        try:
            document = self._manifest(arrival.manifest) if arrival.source == "s3" else arrival.document
            request = parse(document)
            if arrival.manifest:
                _check_manifest_account(arrival.manifest, request.account_id)
            job = self._submit(arrival, request, enqueue=True)
        except APIError as exc:
            if _retryable(exc):
                raise
            self.answers.refused(arrival, exc)
            return None
        if arrival.manifest:
            submitted = {"job": _public(job), "result_key": result_key(request.account_id, job["id"])}
            self.answers.put_json(manifest_result(arrival.manifest), submitted)
        return job

    # --- submitting -----------------------------------------------------------------------------------

    def _submit(self, arrival: Arrival, request: JobRequest, *, enqueue: bool) -> dict[str, Any]:
        """Validate the request's fields first (cheap), then its account, then read and check its inputs;
        the job system reserves and queues it."""
        model = GenerationRequest if request.endpoint == "generations" else ImageParams
        try:
            params = model.model_validate(request.request)
        except ValidationError as exc:
            raise errors.from_pydantic(exc.errors()) from exc
        if request.inputs and request.endpoint == "generations":
            raise errors.invalid(
                "Invalid 'inputs': input images are for the edits and variations endpoints.",
                "inputs",
                "unsupported_parameter",
            )
        account = self.service.accounts.for_service(request.account_id)
        images, mask = self._inputs(request)
        job = resolve(request.endpoint, params, self.service.catalog, images, mask)
        submitted: dict[str, Any] = self.jobs.submit(
            account,
            job,
            request_id=new_request_id(),
            user=params.user,
            source=arrival.source,
            client_reference_id=request.client_reference_id,
            task_token=request.task_token,
            enqueue=enqueue,
            idempotency_key=arrival.idempotency_key,
        )
        return submitted

    def _inputs(self, request: JobRequest) -> tuple[list[Upload], Upload | None]:
        """The input images read from S3, named as a multipart body names its parts."""
        if sum(ref.param == "mask" for ref in request.inputs) > 1:
            raise errors.invalid(
                "Invalid 'inputs': send one mask, not several.", "inputs", "duplicate_parameter"
            )
        single = sum(ref.param == "image" for ref in request.inputs) == 1
        images: list[Upload] = []
        mask: Upload | None = None
        total = 0
        for i, ref in enumerate(request.inputs):
            if not allowed_input(request.account_id, ref.key):
                raise errors.invalid(
                    f"Invalid 'inputs[{i}]': inputs are read from {INPUTS_PREFIX}/{request.account_id}/ or "
                    f"{REQUESTS_PREFIX}/{request.account_id}/ in imagegate's bucket, not '{ref.key}'.",
                    "inputs",
                    "invalid_input_key",
                )
            data = self._read(ref.key, f"inputs[{i}]", MAX_INPUT_BYTES)
            total += len(data)
            if total > MAX_INPUTS_TOTAL_BYTES:
                raise errors.invalid(
                    f"Invalid 'inputs': together larger than {MAX_INPUTS_TOTAL_BYTES // 2**20} MB.",
                    "inputs",
                    "input_too_large",
                )
            if ref.param == "mask":
                mask = Upload("mask", data)
            else:
                images.append(Upload("image" if single else f"image[{len(images)}]", data))
        return images, mask

    def _read(self, key: str, param: str, limit: int) -> bytes:
        """An object of imagegate's bucket, at most `limit` bytes: a missing or larger one is the caller's
        400, found before the body is read when S3 gives its size."""
        s3 = self.service.aws.s3
        try:
            obj = s3.get_object(Bucket=self.service.settings.bucket, Key=key)
        except ClientError as exc:
            if not missing(exc):
                raise
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
        if not _MANIFEST.fullmatch(key):
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


def _public(detail: dict[str, Any]) -> dict[str, Any]:
    """A job as it is written to S3 and answered to a task: without the task token, a bearer credential
    for the task."""
    return {k: v for k, v in detail.items() if k != "task_token"}


def _check_manifest_account(key: str, account_id: str) -> None:
    """A writer under requests/<account_id>/ charges that account only: IAM on the prefix is the grant."""
    match = _MANIFEST.fullmatch(key)
    if match is None or match.group(1) != account_id:
        raise APIError(
            403,
            f"A manifest under requests/{match.group(1) if match else '?'}/ can only charge that account, "
            f"not '{account_id}'.",
            type="permission_error",
            param="account_id",
            code="account_mismatch",
        )


def _our_object_created(event: dict[str, Any], bucket: str) -> bool:
    """S3's EventBridge event for a new object in imagegate's own bucket (the manifest rule's events)."""
    detail = event.get("detail")
    return (
        event.get("detail-type") == "Object Created"
        and event.get("source") == "aws.s3"
        and isinstance(detail, dict)
        and detail.get("bucket", {}).get("name") == bucket
    )


def _retryable(exc: APIError) -> bool:
    """A duplicate still being submitted (409), rate limits and server-side failures may pass later; every
    other refusal never will."""
    return exc.status in (409, 429) or exc.status >= 500


def _task_token(document: Any) -> str | None:
    """The task token of a request, even of one refused for its shape: its task fails at once rather than
    waiting out its timeout."""
    token = document.get("task_token") if isinstance(document, dict) else None
    return token if isinstance(token, str) and 0 < len(token) <= MAX_TASK_TOKEN else None

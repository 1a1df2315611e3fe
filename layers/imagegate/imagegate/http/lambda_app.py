"""Lambda entry points: one FastAPI app per function, adapted by Mangum (API Gateway REST API events).

With SnapStart (template parameter SnapStart=on) Lambda runs the init once per published version and
snapshots it. Before the snapshot the function primes what every cold start would otherwise redo: imports,
prices and the catalog, the route table and its provider modules, one request through the app, and
botocore's service models. Nothing of one environment's identity goes in: no AWS client, connection or
credentials (dropped before the snapshot, made anew after restore), no upstream secret (the router, which
holds them, is built on the first request), and `random` is re-seeded after restore.
"""

from __future__ import annotations

import base64
import contextvars
import importlib
import json
import os
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.logging import Logger
from mangum import Mangum

from imagegate.aws import AWSClients
from imagegate.catalog.lifecycle import day_of
from imagegate.config import Settings
from imagegate.errors import APIError
from imagegate.http.api import Route, create_app
from imagegate.jobs.lifecycle import Finished, Jobs
from imagegate.providers import Deps
from imagegate.service import Service

if TYPE_CHECKING:
    from imagegate.jobs.webhooks import Webhooks

DEMO_HEADER = (b"x-imagegate-demo", b"local renderer, not AI")


def lambda_handler(route: Route, http_client: Any = None) -> Any:
    """Build the handler for one route. Nothing here touches the network: clients, credentials and
    routes come on the first request. `http_client`: the upstreams' httpx client (benchmarks inject one)."""
    app, service = build_app(route, http_client)
    # lifespan="off": there is nothing to start, and Mangum would otherwise run it on every invocation.
    adapter = Mangum(app, lifespan="off")
    handler = service.logger.inject_lambda_context(_one_thread(adapter))
    _register_snapstart_hooks(route, adapter, service)
    return _traced(handler, service.settings)


def build_app(route: Route, http_client: Any = None) -> tuple[Any, Service]:
    """The ASGI app one function serves, from the environment, and its service."""
    settings = Settings.from_env()
    logger = Logger(service="imagegate")
    aws = AWSClients(settings, os.environ.get("AWS_ENDPOINT_URL"))
    deps = Deps(aws, http_client) if http_client is not None else None
    service = Service(settings, aws, logger, deps)
    return wrap(create_app(service, [route], build_jobs(service)), settings), service


def build_jobs(service: Service) -> Jobs:
    """The job system on a service, with everything that hears of a finished job."""
    return Jobs(service, job_hooks(service))


def job_hooks(service: Service) -> dict[str, Finished]:
    """The callbacks told of every job that reaches succeeded, failed or cancelled, by the name its outbox
    records (jobs/lifecycle.py), with the job's detail: Step Functions task answers and manifest results,
    the EventBridge event, the webhook delivery. Each runs after the job's move committed; one that raises
    stays owed, and the sweeper runs it again."""
    from imagegate.jobs.triggers import Answers

    hooks: dict[str, Finished] = {"answer": Answers(service.aws, service.settings, service.logger)}
    if service.settings.event_bus:
        from imagegate.jobs.notifications import JobEvents

        hooks["event"] = JobEvents(service.aws, service.settings.event_bus)
    if service.settings.webhook_queue_url:
        hooks["webhook"] = build_webhooks(service.aws, service.settings).job_finished
    return hooks


def build_webhooks(aws: AWSClients, settings: Settings) -> Webhooks:
    """Webhook endpoints and deliveries (webhooks.py) on the deployment's table and delivery queue."""
    from imagegate.jobs.webhooks import Webhooks

    return Webhooks(
        aws,
        settings.table,
        queue_url=settings.webhook_queue_url,
        key_id=settings.webhook_key_id,
        requeue_after_s=settings.deadlines.announce_grace_s,
    )


def webhook_handler() -> Any:
    """The webhook delivery queue's consumer (SQS): one attempt per record. A record whose next attempt is
    due later is hidden until then and reported failed, so SQS keeps it (webhooks.py)."""
    settings = Settings.from_env()
    logger = Logger(service="imagegate")
    webhooks = build_webhooks(AWSClients(settings, os.environ.get("AWS_ENDPOINT_URL")), settings)
    return _traced(logger.inject_lambda_context(sqs_batch(webhooks.record_handler())), settings)


def sqs_batch(record_handler: Callable[[Any], None]) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """An SQS batch event in, the records to keep out (`batchItemFailures`, Powertools' partial batch
    response): a record whose handler raised stays in the queue, the others are deleted. The queue
    consumers' body, which `make serve` runs against its local queues too."""
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

    # A batch whose every record is kept is still an answer, not an invocation error (which would count
    # as a function error and alarm): the records' failures say it all.
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )

    return handler


def worker_handler() -> Any:
    """The jobs queue's consumer (SQS, batch size 1): runs each job to its end with the upstream budget of
    the worker's own timeout. Powertools reports a failed record alone (partial batch response), so SQS
    redelivers it and, after JOB_MAX_DELIVERIES, moves it to the dead-letter queue."""
    settings = Settings.from_env().for_worker()
    logger = Logger(service="imagegate")
    service = Service(settings, AWSClients(settings, os.environ.get("AWS_ENDPOINT_URL")), logger)
    return _traced(logger.inject_lambda_context(batch_handler(build_jobs(service))), settings)


def batch_handler(jobs: Jobs) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """An SQS batch event in, the failed records out (`batchItemFailures`): the worker function's body,
    which `make serve`'s local worker calls too."""
    return sqs_batch(job_record_handler(jobs))


def job_record_handler(jobs: Jobs) -> Callable[[Any], None]:
    """One queue message (`{"account_id", "job_id"}`) run to its end. Raises, so the message comes back,
    only for what a later delivery can fix; a job that no longer exists (past its retention) is dropped."""

    def run(record: Any) -> None:
        message = json.loads(record.body)
        try:
            jobs.run(message["account_id"], message["job_id"])
        except APIError as exc:
            if exc.status != 404:
                raise
            jobs.service.logger.warning(
                "job message for no job; dropped", extra={"job_id": message["job_id"]}
            )

    return run


# Set while a Lambda invocation runs: FastAPI's sync dependencies and routes then run on the event loop's
# thread instead of a worker thread (see `_one_thread`).
_INLINE = contextvars.ContextVar("imagegate_inline_sync", default=False)


def _one_thread(adapter: Any) -> Any:
    """Run each invocation's sync work on the invoking thread.

    Lambda hands an execution environment one event at a time, so a worker thread buys no concurrency.
    It did cost: anyio ties its worker threads to the task that started them, and Mangum starts a new task
    per event, so every invocation started a thread, handed work to it twice (the key lookup, then the
    route) and stopped it again. Scoped by a context variable, the local server and anything else in the
    process keep their thread pool."""
    _install_inline_run_sync()

    def handler(event: dict[str, Any], context: Any) -> Any:
        token = _INLINE.set(True)
        try:
            return adapter(_encodable(event), context)
        finally:
            _INLINE.reset(token)

    return handler


def _encodable(event: dict[str, Any]) -> dict[str, Any]:
    """A text body Mangum can encode. One holding a lone UTF-16 surrogate (the event's JSON may carry one)
    made Mangum's `body.encode()` raise before the app ran: API Gateway's bare 500. Passed on as the bytes
    it stands for, the app's strict UTF-8 decoding answers its 400."""
    body = event.get("body")
    if event.get("isBase64Encoded") or not isinstance(body, str):
        return event
    try:
        body.encode()
    except UnicodeEncodeError:
        raw = body.encode("utf-8", "surrogatepass")
        return {**event, "body": base64.b64encode(raw).decode(), "isBase64Encoded": True}
    return event


def _install_inline_run_sync() -> None:
    import anyio.to_thread

    threaded = anyio.to_thread.run_sync
    if getattr(threaded, "imagegate_inline", False):
        return

    async def run_sync(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if _INLINE.get():
            return func(*args)
        return await threaded(func, *args, **kwargs)

    run_sync.imagegate_inline = True  # type: ignore[attr-defined]
    anyio.to_thread.run_sync = run_sync


SNAPSTART_INIT = "snap-start"  # AWS_LAMBDA_INITIALIZATION_TYPE while Lambda initialises for a snapshot


def _register_snapstart_hooks(route: Route, adapter: Any, service: Service) -> None:
    """Prime before the snapshot, refresh after restore: only in a SnapStart init, where Lambda's runtime
    provides `snapshot_restore_py` (it is not a dependency of ours)."""
    if os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") != SNAPSTART_INIT:
        return
    try:
        from snapshot_restore_py import register_after_restore, register_before_snapshot
    except ImportError:
        return
    register_before_snapshot(prime, route, adapter, service)
    register_after_restore(restored, service)


def prime(route: Route, adapter: Any, service: Service) -> None:
    """Everything a first request would build that is the same in every environment of this version."""
    from imagegate.http.api import METHODS, PATHS
    from imagegate.http.pretraffic import unauthenticated_event

    routes = service.models.routes
    for provider in sorted({spec.provider for specs in routes.values() for spec in specs}):
        importlib.import_module(f"imagegate.providers.{provider}")
    # One request through the whole app (routing, the key dependency, error rendering, the response), refused
    # for want of a key before anything reaches AWS.
    path = PATHS[route]
    adapter(unauthenticated_event(METHODS[path], path), _SnapshotContext())
    _ = service.aws.dynamodb, service.aws.s3  # botocore loads and caches the service models
    service.aws.reset()  # ... and the snapshot keeps no client, connection or credentials


def restored(service: Service) -> None:
    """After a restore: fresh randomness, and AWS clients made with this environment's credentials."""
    random.seed()
    service.aws.reset()
    _ = service.aws.dynamodb


class _SnapshotContext:
    function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "imagegate")
    function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
    memory_limit_in_mb = 0
    invoked_function_arn = ""
    aws_request_id = "snapshot-prime"


def sweep_handler() -> Any:
    """The scheduled sweeper (EventBridge): refunds reservations left open by requests killed mid-way, fails
    and refunds jobs whose worker died or that were never started (jobs/lifecycle.py, Jobs.sweep), sends the
    announcements finished jobs still owe (Jobs.announce_owed), and once a day warns of routes near their
    upstream model's shutdown (Service.route_warnings) and forgets idle keys' limiters (Billing)."""
    settings = Settings.from_env()
    logger = Logger(service="imagegate")
    service = Service(settings, AWSClients(settings, os.environ.get("AWS_ENDPOINT_URL")), logger)

    jobs = build_jobs(service)

    def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
        if event.get("check") == "routes":  # the daily schedule's input (template.yaml)
            result = service.route_warnings(day_of(service.clock()))
            # Once a day, not every minute: it reads every account. Keys gone idle leave the ACCOUNT item,
            # which otherwise grows with every key ever used.
            result["limiters_pruned"] = service.billing.prune_limiters(
                service.accounts.account_items(), logger
            )
        else:
            result = service.sweep() | jobs.sweep()
        logger.info("sweep finished", extra=result)
        return result

    return _traced(logger.inject_lambda_context(handler), settings)


def usage_handler() -> Any:
    """The table's stream (template.yaml: UsageFunction, filtered to requests that close): each batch adds
    to the usage counters, one write per counter, exactly once (money/usage.py)."""
    settings = Settings.from_env()
    logger = Logger(service="imagegate")
    aws = AWSClients(settings, os.environ.get("AWS_ENDPOINT_URL"))
    return _traced(logger.inject_lambda_context(stream_batch(aws, settings.table, logger)), settings)


def stream_batch(
    aws: AWSClients, table: str, logger: Logger
) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """A DynamoDB stream batch in, the record to deliver it again from out (`batchItemFailures`, as
    ReportBatchItemFailures reads it: Lambda restarts the shard at the lowest sequence number reported).
    The usage function's body, which `make serve` runs on its local stream too (local/streams.py).

    Not Powertools' BatchProcessor: it handles one record at a time, and the counters are written per
    batch; a failed counter's records come back, and the watermarks skip what of them was counted."""
    from imagegate.money.usage import UsageCounters

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        applied = UsageCounters(aws.dynamodb, table).apply(event.get("Records", []))
        if applied.retry_from is not None:
            logger.warning("usage counters not written", extra={"errors": list(applied.errors)})
        logger.debug("usage counted", extra={"counted": applied.counted, "writes": applied.writes})
        failures = [{"itemIdentifier": applied.retry_from}] if applied.retry_from is not None else []
        return {"batchItemFailures": failures}

    return handler


def wrap(app: Any, settings: Settings) -> Any:
    """What a deployment adds around the app: CORS for browser clients, and the demo mark."""
    if settings.demo_mode:
        app = _Marked(app)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app = CORSMiddleware(
            app,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "idempotency-key", "openai-organization"],
            expose_headers=["x-request-id", "x-imagegate-provider", "x-imagegate-demo", "retry-after"],
            max_age=600,
        )
    return app


class _Marked:
    """Every response of a demo deployment says that its images are the local renderer's, not AI."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        async def marked(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), DEMO_HEADER]}
            await send(message)

        await self.app(scope, receive, marked if scope["type"] == "http" else send)


def _traced(handler: Any, settings: Settings) -> Any:
    """X-Ray through the Powertools Tracer, only when the stack turns it on (the SDK costs cold start)."""
    if not settings.tracing:
        return handler
    from aws_lambda_powertools import Tracer

    return Tracer(service="imagegate").capture_lambda_handler(handler, capture_response=False)


def job_requests_handler() -> Any:
    """The requests queue (SQS messages, and what the EventBridge rules put on it: `Image Job Requested`
    events and S3 manifests): each message submits one job for the worker (triggers.py)."""
    triggers, logger, settings = _triggers()

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return triggers.batch(event, context)

    return _traced(logger.inject_lambda_context(handler), settings)


def invoke_job_handler() -> Any:
    """Direct invocation (`aws lambda invoke`, Step Functions): the request shape in, the finished job out;
    with a `task_token`, the job is queued and its end answers the task (triggers.py)."""
    triggers, logger, settings = _triggers()

    def handler(event: Any, context: Any) -> dict[str, Any]:
        return triggers.invoke(event, getattr(context, "aws_request_id", ""))

    return _traced(logger.inject_lambda_context(handler), settings)


def pretraffic_handler() -> Any:
    """CodeDeploy's pre-traffic hook (PreTrafficCheck): one free request through each new version
    (pretraffic.py); IMAGEGATE_PROBES names the kind of each function of the stack."""
    from imagegate.http.pretraffic import PreTrafficHook

    settings = Settings.from_env()
    logger = Logger(service="imagegate")
    aws = AWSClients(settings, os.environ.get("AWS_ENDPOINT_URL"))
    hook = PreTrafficHook(aws, json.loads(os.environ.get("IMAGEGATE_PROBES") or "{}"), logger)
    return logger.inject_lambda_context(hook)


def _triggers() -> tuple[Any, Logger, Settings]:
    """Triggers over a service with the worker's upstream budget: a direct invocation runs its job here."""
    from imagegate.jobs.triggers import Answers, Triggers

    settings = Settings.from_env().for_worker()
    logger = Logger(service="imagegate")
    aws = AWSClients(settings, os.environ.get("AWS_ENDPOINT_URL"))
    service = Service(settings, aws, logger)
    return Triggers(service, build_jobs(service), Answers(aws, settings, logger)), logger, settings

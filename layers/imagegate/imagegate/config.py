"""Settings, read once from the environment and passed explicitly to everything that needs them."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imagegate.units import usd_to_micros

# --- platform limits (docs/limits.md) ----------------------------------------------------------------
# Lambda takes and returns at most 6 MB (6,291,456 bytes) per synchronous invocation, the whole event or
# response JSON included. API Gateway hands multipart bodies over base64-encoded (4 bytes for every 3),
# next to the headers and request context, for which this much is kept back.
LAMBDA_PAYLOAD_BYTES = 6_291_456
EVENT_ENVELOPE_BYTES = 32_768
# The largest body that still fits in the invocation once base64-encoded: 4,694,016 bytes (about 4.5 MB).
# A larger one never reaches the function on AWS, so the local server refuses it too, with the same 413.
MAX_BODY_BYTES = (LAMBDA_PAYLOAD_BYTES - EVENT_ENVELOPE_BYTES) // 4 * 3
# The response JSON travels as text (not base64), less room for the status line and headers.
MAX_RESPONSE_BYTES = LAMBDA_PAYLOAD_BYTES - EVENT_ENVELOPE_BYTES

# --- time ------------------------------------------------------------------------------------------------
# API Gateway's integration timeout runs from the request's arrival, a cold start included; the function's
# own work outside the upstream calls (authenticate, reserve, store the images, settle) needs some too. The
# upstream budget is what is left, so that a charged request is answered before the gateway gives up.
DEFAULT_INTEGRATION_TIMEOUT_SECONDS = 29.0
# The longest IntegrationTimeoutSeconds the template allows (tests/deploy checks the two agree).
MAX_INTEGRATION_TIMEOUT_SECONDS = 300.0
# A function's imports with the layer's bytecode took 2.3-2.8 s on a busy 2-core x86_64 machine
# (docs/development.md); Lambda's own start-up comes on top, a few hundred milliseconds.
COLD_START_ALLOWANCE_SECONDS = 3.0
FINISH_ALLOWANCE_SECONDS = 2.0  # DynamoDB reserve and settle, S3 writes of the images
MIN_UPSTREAM_BUDGET_SECONDS = 1.0

# --- the catalog (catalog/sources.py) ----------------------------------------------------------------------
# How long a container serves a fetched catalog override (S3 or SSM) before it reads it again: an operator's
# push reaches every warm container within this, and a busy function reads the object about once per
# container per TTL (SSM's standard throughput, 40 reads a second, takes ~12,000 containers at 5 minutes).
CATALOG_TTL_SECONDS = 300.0

# --- jobs (jobs/lifecycle.py; docs/jobs.md) ------------------------------------------------------------
# The worker function's timeout (template parameter WorkerTimeout): its upstream budget follows from it as
# the API's does from the integration timeout.
DEFAULT_WORKER_TIMEOUT_SECONDS = 900.0
# AWS advises a queue visibility timeout of six times the function's timeout (room for the poller's retries
# when the function is throttled); SQS allows at most 12 hours. template.yaml's WorkerTimeout table holds the
# same figures (tests/deploy checks them).
VISIBILITY_TIMEOUT_FACTOR = 6
MAX_VISIBILITY_TIMEOUT_SECONDS = 43_200
# Deliveries of one message before SQS moves it to the dead-letter queue (template: maxReceiveCount).
JOB_MAX_DELIVERIES = 3
# A running job is declared dead (failed and refunded) this long after its worker's timeout ran out.
JOB_LEASE_GRACE_SECONDS = 60.0
# What a lock or slot keeps beyond the longest its holder can run: clocks of two containers may disagree by
# a few seconds, and a settle retried through throttling ends a little after the upstream's last byte.
HOLD_MARGIN_SECONDS = 30
# The requests queue's function (template: RequestsFunction) submits jobs under an Idempotency-Key too.
REQUESTS_FUNCTION_TIMEOUT_SECONDS = 60
# The scheduled sweeper (template: SweepFunction) fails jobs too, and announces what it failed.
SWEEP_FUNCTION_TIMEOUT_SECONDS = 300
# template: the sweeper's rate(1 minute). A stopped request's concurrency slots come back with the sweep
# that refunds it (ratelimit.py), so a client refused for them waits a minute or two, not a quarter hour.
SWEEP_INTERVAL_SECONDS = 60
# The usage function (template: UsageFunction and its stream event; money/usage.py): its timeout, how long
# Lambda gathers a batch, how often it retries a failed one, and the record age past which it gives up (at
# least every retry of a batch that waited its window). Deadlines.usage_lag_s follows from them.
USAGE_FUNCTION_TIMEOUT_SECONDS = 60
USAGE_BATCH_WINDOW_SECONDS = 5
USAGE_MAX_RETRY_ATTEMPTS = 5
USAGE_MAX_RECORD_AGE_SECONDS = 600


def upstream_budget(integration_timeout_seconds: float, requested: float | None = None) -> float:
    """The upstream time a request may spend within `integration_timeout_seconds`: `requested` when given
    and it fits, never more than the timeout less the cold-start and finishing allowances."""
    ceiling = max(
        MIN_UPSTREAM_BUDGET_SECONDS,
        integration_timeout_seconds - COLD_START_ALLOWANCE_SECONDS - FINISH_ALLOWANCE_SECONDS,
    )
    return ceiling if requested is None else max(MIN_UPSTREAM_BUDGET_SECONDS, min(requested, ceiling))


def visibility_timeout(worker_timeout_seconds: float) -> int:
    """The jobs queue's visibility timeout for a worker timeout: six times it, capped at SQS's 12 hours."""
    return min(MAX_VISIBILITY_TIMEOUT_SECONDS, int(VISIBILITY_TIMEOUT_FACTOR * worker_timeout_seconds))


@dataclass(frozen=True)
class Deadlines:
    """Every lock, slot, lease and sweeper threshold, derived in this one place from the configured function
    timeouts (docs/timeouts.md has the table). Each outlives the longest its holder can run, so that only
    a holder Lambda stopped can lose it, and the sweeper closes only what no running function can close.

    `sync_s`: the image functions' timeout (the template's IntegrationTimeoutSeconds: the gateway's and the
    functions' timeout); `worker_s`: the worker's (WorkerTimeout).
    """

    sync_s: float = DEFAULT_INTEGRATION_TIMEOUT_SECONDS
    worker_s: float = DEFAULT_WORKER_TIMEOUT_SECONDS

    @property
    def request_lock_s(self) -> int:
        """An Idempotency-Key's lock while its request runs: a retry before it is a 409, never a rerun."""
        return math.ceil(self.sync_s) + HOLD_MARGIN_SECONDS

    @property
    def trigger_lock_s(self) -> int:
        """The same lock for a job submitted by an AWS entry point (the requests queue's function, or a
        direct invocation running its job in the worker's time)."""
        return (
            math.ceil(max(self.sync_s, self.worker_s, REQUESTS_FUNCTION_TIMEOUT_SECONDS))
            + HOLD_MARGIN_SECONDS
        )

    @property
    def announce_grace_s(self) -> int:
        """How long after a job's final move the function that committed it may still be sending its
        announcements (any function that finishes jobs: image, worker, requests, sweeper). Past it the
        sweeper sends what is still owed: nothing still running will."""
        return (
            math.ceil(
                max(
                    self.sync_s,
                    self.worker_s,
                    REQUESTS_FUNCTION_TIMEOUT_SECONDS,
                    SWEEP_FUNCTION_TIMEOUT_SECONDS,
                )
            )
            + HOLD_MARGIN_SECONDS
        )

    @property
    def announce_by_s(self) -> int:
        """The deadline of a job's announcements after its final move: the grace, then two sweeps (the first
        sweep past the grace retries them; the second allows for one sweep that failed). `reconcile`
        reports any announcement still owed past it."""
        return self.announce_grace_s + 2 * SWEEP_INTERVAL_SECONDS

    @property
    def request_settle_s(self) -> int:
        """The longest a synchronous request may still settle: its function's timeout, with margin."""
        return math.ceil(self.sync_s) + HOLD_MARGIN_SECONDS

    @property
    def visibility_s(self) -> int:
        """The jobs queue's visibility timeout."""
        return visibility_timeout(self.worker_s)

    @property
    def job_start_s(self) -> float:
        """How long a job may stay queued: every delivery SQS gives its message (each hidden for the
        visibility timeout) and one run. Past it the message is in the dead-letter queue or lost."""
        return JOB_MAX_DELIVERIES * self.visibility_s + self.worker_s

    @property
    def job_lease_s(self) -> float:
        """How long after a run starts its worker is surely dead (Lambda stopped it at its timeout)."""
        return self.worker_s + JOB_LEASE_GRACE_SECONDS

    @property
    def usage_lag_s(self) -> int:
        """How long after a settle its usage may still be missing from the counters: Lambda hands a stream
        record to the usage function until it is USAGE_MAX_RECORD_AGE_SECONDS old (its batching window and
        retries fit within), and the last attempt runs up to the function's timeout. `reconcile` expects
        every request settled longer ago than this in the counters."""
        return USAGE_MAX_RECORD_AGE_SECONDS + USAGE_FUNCTION_TIMEOUT_SECONDS + HOLD_MARGIN_SECONDS

    @property
    def stale_reservation_s(self) -> int:
        """When the sweeper refunds a synchronous request's reservation, and gives back its concurrency slots
        (ratelimit.py: a slot's lease is its reservation): once no function still running can settle it, nor
        its key's lock guard it."""
        return self.request_settle_s + HOLD_MARGIN_SECONDS


@dataclass(frozen=True)
class Settings:
    table: str = "imagegate"
    bucket: str = "imagegate-outputs"
    region: str | None = None  # None: botocore resolves it (AWS config profile), as the AWS CLI would
    url_ttl_seconds: int = 3600
    local_price_micros: int = 2_000
    # Lambda's payload limits, everywhere, so a laptop refuses what AWS would (0: no ceiling).
    max_body_bytes: int = MAX_BODY_BYTES
    max_response_bytes: int = MAX_RESPONSE_BYTES
    output_prefix: str = "outputs"
    # Upstream credentials: a Secrets Manager secret or an SSM SecureString holding a JSON object of
    # credential name -> value; locally, environment variables of the same names.
    upstream_secret_arn: str = ""
    upstream_ssm_parameter: str = ""
    # The Stripe keys' own secret (same JSON shape), so that functions calling upstreams cannot read them;
    # empty: they sit with the upstream credentials.
    stripe_secret_arn: str = ""
    # Bedrock routes are live only when a region is given (Bedrock authenticates with the Lambda role).
    bedrock_region: str = ""
    # The operator's catalog override (catalog/loader.py): JSON text, a file path, s3://bucket/key or
    # ssm:<parameter>; empty means the packaged catalog. S3 and SSM are re-read every catalog_ttl_seconds.
    catalog: str = ""
    catalog_ttl_seconds: float = CATALOG_TTL_SECONDS
    # The older spellings of parts of it (IMAGEGATE_ROUTES, IMAGEGATE_PRICES): JSON text or a file path.
    routes: str = ""
    prices: str = ""
    # Seconds a whole request may spend on upstreams, retries and fallbacks included: derived from the API's
    # integration timeout (29 s: 24 s), with room for a cold start and to store the images and settle.
    integration_timeout_seconds: float = DEFAULT_INTEGRATION_TIMEOUT_SECONDS
    upstream_budget_seconds: float = upstream_budget(DEFAULT_INTEGRATION_TIMEOUT_SECONDS)
    # When no upstream is configured, may the local renderer stand in for every model id? Yes on a laptop
    # and in tests; never in a deployed function (AWS_LAMBDA_FUNCTION_NAME set) unless demo mode is on.
    local_serves_all: bool = True
    # A demo deployment: local output under every model id, at the local price, and every response marked.
    demo_mode: bool = False
    # Browser origins allowed by CORS ("*" or a list); empty: no CORS headers.
    cors_origins: tuple[str, ...] = ()
    tracing: bool = False  # X-Ray through the Powertools Tracer
    metrics: bool = False  # CloudWatch EMF lines on stdout; on in Lambda, off on a laptop
    # Per-key defaults; a key's own limits (imagegate keys limits) override them.
    images_per_minute: int = 50
    max_concurrent: int = 10
    # Per-account ceilings over all of an account's keys (0: none); an account's own limits override them.
    # They keep one tenant well under what a single DynamoDB partition takes (docs/money.md).
    account_images_per_minute: int = 600
    account_max_concurrent: int = 50
    # Jobs: the queue the worker reads (empty: no async path, `Prefer: respond-async` is refused), the
    # worker's timeout, the S3 prefix of a job's uploaded inputs (short lifecycle), and how long a job and
    # its images are kept (the outputs' lifecycle, OutputRetentionDays).
    jobs_queue_url: str = ""
    worker_timeout_seconds: float = DEFAULT_WORKER_TIMEOUT_SECONDS
    input_prefix: str = "inputs"
    job_retention_days: int = 1
    # Finished jobs are told (notifications.py, webhooks.py) to this EventBridge bus (empty: no events) and,
    # for accounts with a webhook endpoint, through this delivery queue (empty: no webhook deliveries).
    event_bus: str = ""
    webhook_queue_url: str = ""
    # The KMS key that seals webhook signing secrets (webhooks.py): the stack's own, or the operator's.
    webhook_key_id: str = ""
    # Top-ups (money/topups.py): the operator's packs, JSON text or a path (empty: the packaged defaults),
    # and another Stripe API to talk to instead of Stripe's (make serve's fake; empty: Stripe's own).
    topups: str = ""
    stripe_api_base: str = ""

    @property
    def deadlines(self) -> Deadlines:
        return Deadlines(self.integration_timeout_seconds, self.worker_timeout_seconds)

    def for_worker(self) -> Settings:
        """The settings a job runs under: the upstream budget of the worker's timeout, not the gateway's."""
        return replace(self, upstream_budget_seconds=upstream_budget(self.worker_timeout_seconds))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        demo = env.get("IMAGEGATE_DEMO_MODE", "") == "on"
        deployed = bool(env.get("AWS_LAMBDA_FUNCTION_NAME"))
        integration = float(
            env.get("IMAGEGATE_INTEGRATION_TIMEOUT_SECONDS") or DEFAULT_INTEGRATION_TIMEOUT_SECONDS
        )
        requested = env.get("IMAGEGATE_UPSTREAM_BUDGET_SECONDS")
        local_price = usd_to_micros(env.get("IMAGEGATE_LOCAL_PRICE_USD", "0.002"))
        prices = env.get("IMAGEGATE_PRICES", "")
        return cls(
            table=env.get("IMAGEGATE_TABLE", cls.table),
            bucket=env.get("IMAGEGATE_BUCKET", cls.bucket),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            url_ttl_seconds=int(env.get("IMAGEGATE_URL_TTL", cls.url_ttl_seconds)),
            local_price_micros=local_price,
            max_body_bytes=int(env.get("IMAGEGATE_MAX_BODY_BYTES", cls.max_body_bytes)),
            max_response_bytes=int(env.get("IMAGEGATE_MAX_RESPONSE_BYTES", cls.max_response_bytes)),
            upstream_secret_arn=env.get("IMAGEGATE_UPSTREAM_SECRET_ARN", ""),
            upstream_ssm_parameter=env.get("IMAGEGATE_UPSTREAM_SSM_PARAMETER", ""),
            stripe_secret_arn=env.get("IMAGEGATE_STRIPE_SECRET_ARN", ""),
            bedrock_region=env.get("IMAGEGATE_BEDROCK_REGION", ""),
            catalog=env.get("IMAGEGATE_CATALOG", ""),
            catalog_ttl_seconds=float(env.get("IMAGEGATE_CATALOG_TTL_SECONDS") or CATALOG_TTL_SECONDS),
            routes=env.get("IMAGEGATE_ROUTES", ""),
            prices=prices,
            integration_timeout_seconds=integration,
            upstream_budget_seconds=upstream_budget(integration, float(requested) if requested else None),
            local_serves_all=demo or not deployed,
            demo_mode=demo,
            cors_origins=tuple(
                o.strip() for o in env.get("IMAGEGATE_CORS_ORIGINS", "").split(",") if o.strip()
            ),
            tracing=env.get("IMAGEGATE_TRACING", "") == "on",
            metrics=env.get("IMAGEGATE_METRICS", "") == "on",
            images_per_minute=int(env.get("IMAGEGATE_IMAGES_PER_MINUTE", cls.images_per_minute)),
            max_concurrent=int(env.get("IMAGEGATE_MAX_CONCURRENT", cls.max_concurrent)),
            account_images_per_minute=int(
                env.get("IMAGEGATE_ACCOUNT_IMAGES_PER_MINUTE", cls.account_images_per_minute)
            ),
            account_max_concurrent=int(
                env.get("IMAGEGATE_ACCOUNT_MAX_CONCURRENT", cls.account_max_concurrent)
            ),
            jobs_queue_url=env.get("IMAGEGATE_JOBS_QUEUE_URL", ""),
            worker_timeout_seconds=float(
                env.get("IMAGEGATE_WORKER_TIMEOUT_SECONDS") or DEFAULT_WORKER_TIMEOUT_SECONDS
            ),
            job_retention_days=int(env.get("IMAGEGATE_JOB_RETENTION_DAYS", cls.job_retention_days)),
            event_bus=env.get("IMAGEGATE_EVENT_BUS", ""),
            webhook_queue_url=env.get("IMAGEGATE_WEBHOOK_QUEUE_URL", ""),
            webhook_key_id=env.get("IMAGEGATE_WEBHOOK_KEY_ID", ""),
            topups=env.get("IMAGEGATE_TOPUPS", ""),
            stripe_api_base=env.get("IMAGEGATE_STRIPE_API_BASE", ""),
        )


def load_document(source: str, default: Path) -> Any:
    """An operator's JSON document: inline JSON text, a path to a JSON file, or (when empty) the packaged
    default. A broken document fails loudly at startup rather than mispricing or misrouting requests."""
    if not source.strip():
        return json.loads(default.read_text())
    text = source if source.lstrip().startswith(("{", "[")) else Path(source).read_text()
    return json.loads(text)

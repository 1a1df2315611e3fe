"""One image request from authenticated key to OpenAI-shaped response.

check the route → (idempotency) → rate limit → reserve → upstream(s) → store → settle. Every step that can
refuse a request runs before money moves, and every path after the reservation settles it exactly once.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import date
from functools import cached_property
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.logging import Logger
from botocore.exceptions import ClientError

from imagegate.aws import AWSClients
from imagegate.catalog.contracts import Contract, estimate_usage
from imagegate.catalog.lifecycle import WARNING_DAYS
from imagegate.catalog.loader import Catalog
from imagegate.catalog.prices import PARTIAL_IMAGE_TOKENS, PriceBook, Quote
from imagegate.catalog.sources import CatalogSource, fetch_override
from imagegate.config import Settings
from imagegate.errors import APIError, ProviderError, invalid
from imagegate.inputs.references import Resolver, fetch_image
from imagegate.inputs.request import ImageJob
from imagegate.inputs.uploads import Uploads
from imagegate.metrics import Metrics
from imagegate.money.accounts import Account, Accounts
from imagegate.money.billing import Billing, Reservation
from imagegate.money.idempotency import Idempotency, fingerprint, key_hash
from imagegate.money.ratelimit import Limits
from imagegate.providers import Deps, PartialImage, ProviderResult
from imagegate.providers.routing import Router, RouteSpec, Served, Streamed
from imagegate.storage import Storage, missing
from imagegate.streaming import EventStream, error_event, image_event
from imagegate.table import new_request_id
from imagegate.units import micros_to_decimal

if TYPE_CHECKING:
    from imagegate.inputs.outbound import Outbound
    from imagegate.money.topups import Topups

# A replayed response reuses the first response's URLs while they have this long left to live.
REUSE_URL_MARGIN_S = 300


@dataclass
class ImageResponse:
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass(frozen=True)
class Admission:
    """A request that passed every check and holds its reservation: what `Service.execute` runs."""

    quote: Quote
    reservation: Reservation


@dataclass
class Closing:
    """What a settle carries besides the money, and whether it won.

    `completion(record)`: on success, an action that completes with the settle when it can (an
    Idempotency-Key record), dropped when its condition fails. `guard(record or None, error or None)`: an
    action that commits with the settle or not at all (a job's state move, jobs/lifecycle.py); with a guard, a
    failure is refunded in full.
    """

    completion: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    guard: Callable[[dict[str, Any] | None, BaseException | None], dict[str, Any]] | None = None
    settled: bool = False


class Service:
    """Everything a request needs, built from settings; AWS clients and upstream routes come on first use."""

    def __init__(
        self,
        settings: Settings,
        aws: AWSClients,
        logger: Logger,
        deps: Deps | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.aws = aws
        self.logger = logger
        self.deps = deps or Deps(aws)
        # The metrics' service dimension is the logger's service: both share the request's one log line.
        self.metrics = Metrics(settings.metrics, service=logger.service, clock=clock)
        self._router: Router | None = None
        self._router_catalog: Catalog | None = None

    @cached_property
    def catalog_source(self) -> CatalogSource:
        """The packaged catalog and the operator's override, refreshed from S3 or SSM (catalog/sources.py)."""
        return CatalogSource(
            self.settings,
            lambda source: fetch_override(self.aws, source),
            self.logger,
            lambda: self.metrics.record(model="catalog", provider="none", CatalogRefused=1),
        )

    @property
    def models(self) -> Catalog:
        """The catalog in force: contracts, prices, routes, aliases and lifecycle dates."""
        return self.catalog_source.current()

    @property
    def prices(self) -> PriceBook:
        return self.models.prices

    @property
    def catalog(self) -> Mapping[str, Contract]:
        """Every contract by public id, aliases included, with its prices."""
        return self.models.contracts

    @cached_property
    def accounts(self) -> Accounts:
        return Accounts(self.aws.dynamodb, self.settings.table)

    @cached_property
    def billing(self) -> Billing:
        return Billing(
            self.aws.dynamodb,
            self.settings.table,
            self.clock,
            key_limits=Limits(self.settings.images_per_minute, self.settings.max_concurrent),
            account_limits=Limits(
                self.settings.account_images_per_minute, self.settings.account_max_concurrent
            ),
        )

    @cached_property
    def topups(self) -> Topups:
        """Stripe top-ups; the Stripe keys are read on first use, once: from their own secret when one is
        configured (then the functions that call upstreams need no grant to it), else from the upstream
        credential store."""
        from imagegate.catalog.credentials import load_credentials, read_secret
        from imagegate.money.topups import CREDENTIAL_NAMES, Topups, load_config

        credentials: dict[str, str] = {}

        def read() -> dict[str, str]:
            if not credentials:
                arn = self.settings.stripe_secret_arn
                found = (
                    read_secret(self.aws, arn)
                    if arn
                    else load_credentials(self.settings, self.aws, names=CREDENTIAL_NAMES)
                )
                credentials.update({name: found[name] for name in CREDENTIAL_NAMES if name in found})
            return credentials

        return Topups(
            self.aws.dynamodb,
            self.settings.table,
            load_config(self.settings.topups),
            read,
            self.settings.stripe_api_base,
            self.clock,
        )

    @cached_property
    def idempotency(self) -> Idempotency:
        return Idempotency(
            self.aws.dynamodb, self.settings.table, self.clock, lock_s=self.settings.deadlines.request_lock_s
        )

    @cached_property
    def storage(self) -> Storage:
        return Storage(
            self.aws.s3, self.settings.bucket, self.settings.output_prefix, self.settings.url_ttl_seconds
        )

    @property
    def router(self) -> Router:
        """Routes and credentials, read on the first request (never at import) and again when the catalog
        changes (an override refreshed from S3 or SSM)."""
        catalog = self.models
        if self._router is None or (self._router_catalog is not catalog and self._router_catalog is not None):
            self._router = self._build_router(catalog)
            self._router_catalog = catalog
        return self._router

    @router.setter
    def router(self, router: Router) -> None:
        """A router of the caller's (tests): kept whatever the catalog does."""
        self._router, self._router_catalog = router, None

    def _build_router(self, catalog: Catalog) -> Router:
        from imagegate.catalog.credentials import load_credentials
        from imagegate.providers.routing import credential_names

        routes = dict(catalog.routes)
        credentials = load_credentials(self.settings, self.aws, names=credential_names(routes))
        router = Router(
            self.settings, routes, credentials, self.deps, self.logger, catalog=catalog, now=self.clock
        )
        if router.local_only:
            self.logger.info("provider local serves every model: no upstream credentials are configured")
        else:
            self.logger.info("upstream providers configured", providers=router.configured)
        return router

    @cached_property
    def uploads(self) -> Uploads:
        return Uploads(self.aws.s3, self.settings.bucket, clock=self.clock)

    def create_upload(self, account: Account) -> dict[str, Any]:
        """`POST /v1/images/uploads`: a file id and its presigned POST. Storing costs nothing; the upload
        counts as one image towards the key's images per minute, which bounds how fast a key can fill the
        bucket (the operator pays for the storage until the lifecycle rule expires it)."""
        self.billing.count(account, 1)
        upload = self.uploads.create(account.account_id)
        # Never the URL's fields: they hold the signature.
        self.logger.info(
            "upload created",
            extra={"account_id": account.account_id, "key_id": account.key_id, "file_id": upload["id"]},
        )
        return upload

    @cached_property
    def outbound(self) -> Outbound:
        """Calls to customer-chosen URLs (image URLs): public https addresses only. Tests replace it."""
        from imagegate.inputs.outbound import Outbound

        return Outbound()

    def references(self, account: Account) -> Resolver:
        """What turns the account's image references (JSON edits) into inputs."""
        return Resolver(self.uploads, account.account_id, self.fetch_image)

    def fetch_image(self, url: str, param: str, timeout: float) -> bytes:
        # The outbound module (and httpx) is loaded by the first image URL, not by every edit.
        return fetch_image(self.outbound, url, param, timeout)

    def handle(
        self,
        account: Account,
        job: ImageJob,
        idempotency_key: str | None = None,
        user: str | None = None,
        request_id: str | None = None,
    ) -> ImageResponse:
        request_id = request_id or new_request_id()
        routes = self.check(job)
        if idempotency_key is None:
            return self._serve(account, job, request_id, routes, None)
        stored = self.idempotency.begin(
            account.account_id, idempotency_key, fingerprint(job, user), request_id
        )
        if stored is not None:
            self.billing.count(account, job.n)  # a replay is metered like the request it repeats
            return self._replay(stored)
        try:
            return self._serve(account, job, request_id, routes, idempotency_key)
        except BaseException:
            # Raised only while no image was delivered, and refunded: the client may retry with the same key.
            self.idempotency.release(account.account_id, idempotency_key)
            raise

    def check(self, job: ImageJob) -> list[RouteSpec]:
        """The routes that may serve a job; the 400s a job gets before anything is reserved: a model this
        deployment cannot serve, a b64_json answer too large for the runtime to return."""
        routes = self.router.check(job)
        _check_response_fits(job, self.settings.max_response_bytes)
        return routes

    def list_models(self) -> dict[str, Any]:
        """`GET /v1/models`: what this deployment can serve today, aliases as models, in OpenAI's shape."""
        found = (self.model_object(model_id) for model_id in self.catalog)
        return {"object": "list", "data": [model for model in found if model is not None]}

    def model_object(self, model_id: str) -> dict[str, Any] | None:
        """`GET /v1/models/{id}`: OpenAI's model object, with `shutdown_date` when the day is known after
        which nothing serves it, and under `imagegate` the endpoints it serves and why others are not
        (a retired upstream's variations). None when this deployment serves none of its endpoints."""
        contract = self.catalog.get(model_id)
        if contract is None:
            return None
        router = self.router
        offer = router.offer(contract)
        endpoints = [endpoint for endpoint, routes in offer.items() if not isinstance(routes, str)]
        if not endpoints:
            return None
        model: dict[str, Any] = {
            "id": model_id,
            "object": "model",
            "created": contract.created,
            "owned_by": contract.owned_by,
        }
        status = self.models.status(model_id, router.today(), router.reachable(contract.id))
        if status.shutdown_date is not None:
            model["shutdown_date"] = status.shutdown_date.isoformat()
        unavailable = {endpoint: why for endpoint, why in offer.items() if isinstance(why, str)}
        model["imagegate"] = {"endpoints": endpoints, **({"unavailable": unavailable} if unavailable else {})}
        return model

    def balance(self, account: Account, days: int) -> dict[str, Any]:
        """`GET /v1/balance`: the account's balance and its usage per day and model, newest day first."""
        from imagegate.money.ledger import group_usage, usage

        balance = self.accounts.balance(account.account_id) or 0
        rows = usage(self.aws.dynamodb, self.settings.table, days=days, account_id=account.account_id)
        data = [
            {
                "date": t["day"],
                "model": t["model"],
                "requests": t["requests"],
                "images": t["images"],
                "charged_usd": micros_to_decimal(t["charged"]),
                "refunded_usd": micros_to_decimal(t["refunded"]),
                "charged_micros": t["charged"],
                "refunded_micros": t["refunded"],
            }
            for t in reversed(group_usage(rows, ("day", "model")))
        ]
        return {
            "object": "balance",
            "account_id": account.account_id,
            "balance_usd": micros_to_decimal(balance),
            "balance_micros": balance,
            "usage": {"days": days, "data": data},
        }

    def sweep(self) -> dict[str, int]:
        """The scheduled sweeper: close, once each, reservations a killed request left open."""
        closed = self.billing.sweep(older_than_s=self.settings.deadlines.stale_reservation_s, log=self.logger)
        for r, charged in closed:
            self.logger.warning(
                "stale reservation closed",
                extra={
                    "request_id": r.request_id,
                    "account_id": r.account_id,
                    "charged_micros": charged,
                    "refunded_micros": r.amount - charged,
                },
            )
            self.metrics.record(
                model=r.model or "unknown",
                provider="sweep",
                RevenueMicroUSD=charged,
                RefundMicroUSD=r.amount - charged,
            )
        return {
            "closed": len(closed),
            "charged_micros": sum(c for _, c in closed),
            "refunded_micros": sum(r.amount - c for r, c in closed),
        }

    def route_warnings(self, today: date) -> dict[str, int]:
        """Routes near their upstream model's end: every route of a model that served traffic since
        yesterday (UTC) and is within `WARNING_DAYS` of its `shutdown_at`, or past it, gets a warning log
        line and the `RoutesNearShutdown` metric (an alarm in template.yaml). The routes are the catalog's,
        as `imagegate models` shows them, so the sweeper needs no upstream credentials."""
        from imagegate.money.ledger import usage

        catalog = self.models
        lifecycles = catalog.lifecycles
        rows = usage(self.aws.dynamodb, self.settings.table, days=2, today=today)
        served = sorted({self.catalog[r.model].id for r in rows if r.requests and r.model in self.catalog})
        warned = 0
        for model_id in served:
            routes = [*catalog.plan(model_id, today).routes, *catalog.routes[model_id]]
            for spec in {(r.provider, r.model): r for r in routes}.values():
                days = lifecycles.days_left(spec, today)
                if days is None or days > WARNING_DAYS:
                    continue
                lifecycle = lifecycles.of(spec)
                self.logger.warning(
                    "route near shutdown",
                    extra={
                        "model": model_id,
                        "provider": spec.provider,
                        "upstream_model": spec.model,
                        "shutdown_at": str(lifecycle.shutdown_at) if lifecycle else None,
                        "days_left": days,
                        "successor": lifecycle.successor if lifecycle else None,
                    },
                )
                self.metrics.record(model=model_id, provider=spec.provider, RoutesNearShutdown=1)
                warned += 1
        return {"routes_near_shutdown": warned}

    def _serve(
        self,
        account: Account,
        job: ImageJob,
        request_id: str,
        routes: list[RouteSpec],
        idempotency_key: str | None,
    ) -> ImageResponse:
        details = None if idempotency_key is None else {"idempotency": key_hash(idempotency_key)}
        admission = self.reserve(account, job, request_id, routes, details)
        closing = Closing()
        if idempotency_key is not None:
            key = idempotency_key
            closing = Closing(
                completion=lambda record: self.idempotency.completion(
                    account.account_id, key, request_id, record
                )
            )
        try:
            return self.execute(
                account, job, request_id, admission, keep=idempotency_key is not None, closing=closing
            )
        except APIError as exc:
            if exc.code != "upstream_timeout" or not self.settings.jobs_queue_url:
                raise
            # Out of the gateway's time: the same request as a job has the worker's whole timeout.
            raise APIError(
                exc.status,
                f"{exc.message} It was not charged. Requests that take longer can run as a job: send the "
                "header 'Prefer: respond-async' and fetch the result from /v1/images/jobs/{id}.",
                type=exc.type,
                param=exc.param,
                code=exc.code,
                headers=exc.headers,
            ) from exc.__cause__

    def reserve(
        self,
        account: Account,
        job: ImageJob,
        request_id: str,
        routes: list[RouteSpec],
        details: dict[str, str] | None = None,
    ) -> Admission:
        """Quote the job and reserve its price under the key's and the account's rate limits: 429 or 402
        here leave nothing behind. `details` are kept on the request record (jobs/lifecycle.py: the job
        id)."""
        quote = self.prices.quote(job, [(spec.model, spec.options) for spec in routes])
        try:
            reservation = self.billing.reserve(
                account,
                request_id,
                quote.reserve,
                {**_request_details(job), **(details or {})},
                images=job.n,
                upper_bound=quote.token_priced,
                settle_within_s=self.settings.deadlines.request_settle_s,
            )
        except APIError as exc:
            refused = {"RateLimited": 1} if exc.status == 429 else {"Rejected": 1}
            self.metrics.record(model=job.contract.id, provider="none", **refused)
            raise
        return Admission(quote, reservation)

    def execute(
        self,
        account: Account,
        job: ImageJob,
        request_id: str,
        admission: Admission,
        *,
        keep: bool,
        closing: Closing,
    ) -> ImageResponse:
        """Run a reserved job on its routes, store its images, and settle: charged on success, refunded on
        any failure, exactly once, whatever is raised. `keep`: write the images to S3 even for b64_json (a
        replay or a job reads them back). `closing` says what the settle carries besides the money, and
        learns whether it won (`closing.settled`)."""
        quote, reservation = admission.quote, admission.reservation
        log = _log_line(account, job, request_id, quote)
        started = time.perf_counter()
        charged, delivered, provider, tokens = 0, 0, "none", 0
        completion: dict[str, Any] | None = None
        record: dict[str, Any] | None = None
        error: BaseException | None = None
        try:
            served = self.router.run(job, request_id)
            provider = served.provider
            log.update(_upstream(served))
            images = served.result.images[: job.n]
            if not images:
                raise ProviderError("The upstream returned no images.")
            body, record, headers = self._respond(account, request_id, job, served, images, keep=keep)
            delivered = len(images)
            charged = self.prices.charge(quote, delivered, job.n, served.result.usage)
            tokens = int((served.result.usage or {}).get("total_tokens") or 0)
            headers |= {**reservation.headers, "x-imagegate-provider": provider, "x-request-id": request_id}
            record["headers"] = headers
            if closing.completion is not None:
                completion = closing.completion(record)
        except ProviderError as exc:
            error = self._upstream_error(job, exc, provider, log)
            raise error from exc
        except BaseException as exc:
            error = exc
            raise
        finally:
            # Runs on success, on a provider error and on anything unexpected: a failed request is refunded.
            guard = None
            if closing.guard is not None:
                if error is not None:
                    charged = delivered = 0  # a failed job delivers nothing, whatever was made
                guard = closing.guard(None if error is not None else record, error)
            closing.settled = self._close(
                job, admission, started, charged, delivered, provider, log, completion, guard, tokens
            )
        return ImageResponse(body, headers)

    def stream(
        self,
        account: Account,
        job: ImageJob,
        idempotency_key: str | None = None,
        request_id: str | None = None,
    ) -> EventStream:
        """A `stream=true` request: checked, reserved and started as `handle` runs one, so that every error
        up to the upstream's first event is an ordinary JSON error (refunded); then its events."""
        request_id = request_id or new_request_id()
        if idempotency_key is not None:
            # A stream cannot be replayed, and running it again would charge again.
            raise invalid(
                "Idempotency-Key is not supported with stream=true; send one or the other.",
                "Idempotency-Key",
                "unsupported_parameter",
            )
        admission = self.reserve(account, job, request_id, self.check(job))
        log = _log_line(account, job, request_id, admission.quote)
        started = time.perf_counter()
        try:
            streamed = self.router.stream(job, request_id)
        except ProviderError as exc:
            error = self._upstream_error(job, exc, "none", log)
            self._close(job, admission, started, 0, 0, "none", log)
            raise error from exc
        except BaseException:
            self._close(job, admission, started, 0, 0, "none", log)
            raise
        log.update(_upstream(streamed))
        run = _StreamRun(self, job, admission, streamed, log, started)
        headers = {
            **admission.reservation.headers,
            "x-imagegate-provider": streamed.provider,
            "x-request-id": request_id,
        }
        return EventStream(run.events(), run.abandon, headers)

    def _upstream_error(
        self, job: ImageJob, exc: ProviderError, provider: str, log: dict[str, Any]
    ) -> APIError:
        """The client's error for an upstream failure, logged and counted."""
        # The code, not the message: an upstream's message may quote the prompt.
        log.update(error=exc.code, status=exc.status)
        self.metrics.record(model=job.contract.id, provider=provider, UpstreamErrors=1)
        return APIError(
            exc.status,
            str(exc),
            type=exc.type,
            param=exc.param,
            code=exc.code,
            headers=exc.client_headers(),
        )

    def _close(
        self,
        job: ImageJob,
        admission: Admission,
        started: float,
        charged: int,
        delivered: int,
        provider: str,
        log: dict[str, Any],
        completion: dict[str, Any] | None = None,
        guard: dict[str, Any] | None = None,
        tokens: int = 0,
        partials: tuple[int, int] = (0, 0),
    ) -> bool:
        """Settle a reserved request (the rest refunded), with its log line and metrics; whether it won.
        `tokens`: the upstream's token count, kept on the request for the key holder's usage log;
        `partials`: a stream's partial images written, and what they cost (Billing.settle)."""
        latency = round((time.perf_counter() - started) * 1000, 1)
        log.update(provider=provider, charged_micros=charged, images=delivered, latency_ms=latency)
        settled = self._settle(
            admission.reservation, charged, delivered, provider, completion, guard, log, tokens, partials
        )
        counts = {
            "Requests": 1,
            "Images": delivered,
            "RevenueMicroUSD": charged,
            "RefundMicroUSD": admission.quote.reserve - charged,
        }
        if self.logger.isEnabledFor(logging.INFO):
            # The metrics ride in the log line (EMF is a log line CloudWatch reads metrics from): one line
            # per request, where a line of each cost every request its formatting and its write.
            metrics = self.metrics.embedded(
                model=job.contract.id, provider=provider, latency_ms=latency, **counts
            )
            self.logger.info("image request", extra={**log, **metrics})
        else:  # LogLevel WARNING or above: no request line, but the dashboards still get their metrics
            self.metrics.record(model=job.contract.id, provider=provider, latency_ms=latency, **counts)
        return settled

    def _settle(
        self,
        reservation: Reservation,
        charged: int,
        delivered: int,
        provider: str,
        completion: dict[str, Any] | None,
        guard: dict[str, Any] | None,
        log: dict[str, Any],
        tokens: int = 0,
        partials: tuple[int, int] = (0, 0),
    ) -> bool:
        """Settle; a settle that cannot be written answers the client all the same once images exist (the
        sweeper charges the intended amount), and never turns a delivered request into an error. False when
        someone else closed the reservation (or the guard's job) first."""
        try:
            settled = self.billing.settle(
                reservation,
                charged,
                images=delivered,
                provider=provider,
                completion=completion,
                guard=guard,
                tokens=tokens,
                partials=partials,
            )
        except Exception:
            self.logger.exception("settle failed; the sweeper closes the reservation", extra=log)
            if completion is not None:
                with contextlib.suppress(Exception):
                    self.idempotency.apply(completion)
            if not delivered or guard is not None:
                raise
            return True
        if not settled and charged:
            # Someone closed the reservation first (a sweep with too short a threshold): served unpaid.
            self.logger.error("reservation already closed; images delivered uncharged", extra=log)
        return settled

    def _respond(
        self,
        account: Account,
        request_id: str,
        job: ImageJob,
        served: Served,
        images: list[bytes],
        keep: bool,
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
        """The OpenAI body, what an idempotent replay needs to rebuild it (S3 keys, never image bytes), and
        the response's own headers.

        b64_json images that turn out larger than the runtime can return (the up-front check in
        `_check_response_fits` lets through what may fit) are delivered as URLs instead, and charged: they
        were made, and the client can fetch them. `x-imagegate-response-format: url` says so.
        """
        result = served.result
        extra = {"revised_prompt": result.revised_prompt} if result.revised_prompt is not None else {}
        body: dict[str, Any] = {"created": int(self.clock())}
        if job.contract.gpt_params:
            body.update(
                background="transparent" if job.background == "transparent" else "opaque",
                output_format=job.output_format,
                size=job.size,
                quality=job.quality,
            )
        if job.contract.reports_usage:
            body["usage"] = result.usage or estimate_usage(
                job.contract, job.prompt, [(i.width, i.height) for i in job.images], job.quality, job.size
            )
        fmt, headers = job.response_format, {}
        if fmt == "b64_json":
            data = [{"b64_json": base64.b64encode(img).decode(), **extra} for img in images]
            ceiling = self.settings.max_response_bytes
            if ceiling and sum(len(d["b64_json"]) for d in data) > ceiling:
                fmt, headers = "url", {"x-imagegate-response-format": "url"}
        record: dict[str, Any] = {"body": dict(body), "format": fmt, "extra": extra}
        if fmt == "url" or keep:
            record["keys"] = self.storage.put_images(
                account.account_id, request_id, images, job.output_format
            )
        if fmt == "url":
            data = [{"url": self.storage.presign(key), **extra} for key in record["keys"]]
            record["urls"], record["signed_at"] = [d["url"] for d in data], int(self.clock())
        return _with_data(body, data), record, headers

    def _replay(self, record: dict[str, Any]) -> ImageResponse:
        """The first response again: its URLs while they live, else fresh signatures for the same objects."""
        return ImageResponse(
            self.render(record),
            # The first response's rate-limit figures are stale now, and a replay consumes none.
            {k: v for k, v in record["headers"].items() if not k.startswith("x-ratelimit-")}
            | {"idempotent-replayed": "true"},
        )

    def render(self, record: dict[str, Any]) -> dict[str, Any]:
        """An ImagesResponse from a stored record (S3 keys, never image bytes): its URLs while they have
        REUSE_URL_MARGIN_S left to live, else signed now; b64_json read back from S3, a 410 `output_expired`
        once the outputs' lifecycle deleted them."""
        extra = record["extra"]
        if record["format"] == "url":
            signed_at = record.get("signed_at")
            fresh = (
                signed_at is not None
                and signed_at + self.storage.url_ttl_seconds - REUSE_URL_MARGIN_S > self.clock()
            )
            urls = record["urls"] if fresh else [self.storage.presign(key) for key in record["keys"]]
            data = [{"url": url, **extra} for url in urls]
        else:
            try:
                data = [
                    {"b64_json": base64.b64encode(self.storage.get(key)).decode(), **extra}
                    for key in record["keys"]
                ]
            except ClientError as exc:
                if not missing(exc):
                    raise
                raise self.output_expired() from None
        return _with_data(record["body"], data)

    def output_expired(self) -> APIError:
        """410: a stored result whose images the outputs' lifecycle deleted."""
        return APIError(
            410,
            "This result's images have expired: outputs are kept for "
            f"{self.settings.job_retention_days} day(s) and cannot be returned again. Run the request again "
            "(with a new Idempotency-Key) for new images.",
            code="output_expired",
        )


class _StreamRun:
    """A streamed request once its upstream has answered: its events as they come, and its settlement,
    exactly once. Its price: the final image as `handle` charges it, plus each partial image written
    (`PriceBook.charge`). One rule on every other path (an upstream failure, a final image too large to
    send, a client that goes away): the partial images written so far are charged, nothing else. A partial
    counts as written once the HTTP layer comes back for the next event (it asks only after its write
    succeeded); the completed image is settled before it is sent."""

    def __init__(
        self,
        service: Service,
        job: ImageJob,
        admission: Admission,
        streamed: Streamed,
        log: dict[str, Any],
        started: float,
    ) -> None:
        self.service = service
        self.job = job
        self.admission = admission
        self.streamed = streamed
        self.log = log
        self.started = started
        self.partials = 0
        self.settled = False

    def settle(self, charged: int, delivered: int = 0, *, partials: int | None = None) -> None:
        """Settle once, recording the partial images written (`partials`: None, all of them; 0 when none
        reached the client, a buffering gateway having answered 504 first)."""
        if not self.settled:
            self.settled = True
            count = self.partials if partials is None else partials
            self.service._close(
                self.job,
                self.admission,
                self.started,
                charged,
                delivered,
                self.streamed.provider,
                self.log,
                partials=(count, self.admission.quote.partials(count)),
            )

    def abandon(self) -> None:
        """Settle for the partial images written, and nothing else (a no-op once settled)."""
        self.settle(self.service.prices.charge(self.admission.quote, 0, 1, None, self.partials))

    def events(self) -> Generator[dict[str, Any], None, None]:
        service, job = self.service, self.job
        # The response limit holds for the whole stream (on Lambda, Mangum returns it in one piece).
        room = service.settings.max_response_bytes or math.inf
        try:
            with contextlib.closing(self.streamed.events) as items:
                for item in items:
                    if isinstance(item, PartialImage):
                        b64 = base64.b64encode(item.image).decode()
                        # Room is kept for the final image, estimated at this partial's size; a partial that
                        # would leave none is not sent (nor charged): OpenAI too may send fewer than asked.
                        if 2 * len(b64) > room:
                            continue
                        room -= len(b64)
                        created = int(service.clock())
                        yield image_event(
                            job, "partial_image", b64, created, partial_image_index=self.partials
                        )
                        self.partials += 1  # asked for the next event: this one was written
                        continue
                    yield self._completed(item, room)
                    return
            raise ProviderError("The upstream returned no images.")
        except ProviderError as exc:
            error = service._upstream_error(job, exc, self.streamed.provider, self.log)
            if exc.code == "upstream_timeout":
                # Past the budget, a buffering gateway already answered 504: nothing arrived.
                self.settle(0, partials=0)
            self.abandon()
            yield error_event(error)
        except APIError as exc:
            self.abandon()
            yield error_event(exc)
        except Exception:
            service.logger.exception("stream failed", extra=self.log)
            self.abandon()
            yield error_event(INTERNAL_ERROR)
        finally:
            self.abandon()  # a no-op unless the client went away first

    def _completed(self, result: ProviderResult, room: float) -> dict[str, Any]:
        """The completed event, its request settled first, as `handle` settles before it answers."""
        service, job, quote = self.service, self.job, self.admission.quote
        if not result.images:
            raise ProviderError("The upstream returned no images.")
        # Past the request's budget, on a deployment whose gateway buffers the stream the client has already
        # had its 504: the image is not charged.
        if self.streamed.remaining() < 0:
            raise ProviderError(
                "The upstream finished the image after this request's time budget of "
                f"{service.settings.upstream_budget_seconds:g} seconds; it was not charged. Requests that "
                "take longer can run as a job: send 'Prefer: respond-async' (without stream).",
                status=504,
                code="upstream_timeout",
                fallover=False,
            )
        b64 = base64.b64encode(result.images[0]).decode()
        if len(b64) > room:
            raise APIError(
                400,
                f"The image came to {len(b64)} bytes of base64, more than this deployment's response limit "
                "leaves for it. Stream with fewer partial_images, a smaller size, or output_format=jpeg or "
                "webp, or do not stream. Only the partial images sent were charged.",
                param="partial_images" if self.partials else "stream",
                code="response_too_large",
            )
        usage = result.usage or _estimated_usage(job, self.partials)
        self.settle(service.prices.charge(quote, 1, 1, result.usage, self.partials), delivered=1)
        return image_event(job, "completed", b64, int(service.clock()), usage=usage)


def _estimated_usage(job: ImageJob, partials: int) -> dict[str, Any]:
    """`estimate_usage`, with the output tokens OpenAI adds for each partial image."""
    usage = estimate_usage(
        job.contract, job.prompt, [(i.width, i.height) for i in job.images], job.quality, job.size
    )
    extra = partials * PARTIAL_IMAGE_TOKENS
    usage["output_tokens"] += extra
    usage["total_tokens"] += extra
    usage["output_tokens_details"]["image_tokens"] += extra
    return usage


INTERNAL_ERROR = APIError(
    500, "The server had an error while processing your request.", type="server_error", code="internal_error"
)


def _upstream(served: Served | Streamed) -> dict[str, Any]:
    """What a request's log line tells of the upstream that served it (its attempts that failed, if any,
    have lines of their own: routing.py)."""
    return {
        "upstream_model": served.model,
        "attempts": len(served.attempts),
        "upstream_ms": served.attempts[-1].latency_ms if served.attempts else None,
    }


def _log_line(account: Account, job: ImageJob, request_id: str, quote: Quote) -> dict[str, Any]:
    """The start of a request's one log line, completed as it runs."""
    return {
        "request_id": request_id,
        "account_id": account.account_id,
        "key_id": account.key_id,
        "endpoint": job.endpoint,
        "model": job.contract.id,
        "n": job.n,
        "size": job.size,
        "quality": job.quality,
        "reserved_micros": quote.reserve,
    }


def _with_data(body: dict[str, Any], data: list[dict[str, str]]) -> dict[str, Any]:
    """OpenAI's field order: `created`, `data`, then the rest."""
    return {"created": body["created"], "data": data, **body}


# The fewest bytes an image of each format plausibly compresses to. A request whose images would not fit
# the runtime's response even at this size is refused before anything is made or reserved.
MIN_BYTES_PER_PIXEL = {"png": 0.5, "jpeg": 0.05, "webp": 0.05}


def _check_response_fits(job: ImageJob, ceiling: int) -> None:
    """Refuse, before the upstream is paid, a b64_json answer the runtime (Lambda: 6 MB) cannot return."""
    if not ceiling or job.response_format != "b64_json":
        return
    smallest = math.ceil(job.n * job.width * job.height * MIN_BYTES_PER_PIXEL[job.output_format] * 4 / 3)
    if smallest > ceiling:
        raise APIError(
            400,
            f"{job.n} image(s) of {job.width}x{job.height} as {job.output_format} come to at least "
            f"{smallest} bytes of base64, above this deployment's response limit of {ceiling} bytes. Use "
            "response_format=url, a smaller n, or output_format=jpeg or webp. Nothing was charged.",
            param="response_format",
            code="response_too_large",
        )


def _request_details(job: ImageJob) -> dict[str, str]:
    """What the billing record keeps of a request for the key holder's usage log (ledger.requests)."""
    details = {"model": job.contract.id, "endpoint": job.endpoint, "size": job.size or "auto"}
    details["quality"] = job.quality or "-"
    details["response_format"] = job.response_format
    details["output_format"] = job.output_format
    return details

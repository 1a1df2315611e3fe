"""One image request from authenticated key to OpenAI-shaped response.

check the route → (idempotency) → rate limit → reserve → upstream(s) → store → settle. Every step that can
refuse a request runs before money moves, and every path after the reservation settles it exactly once.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from aws_lambda_powertools.logging import Logger

from .accounts import Account, Accounts
from .aws import AWSClients
from .billing import Billing
from .catalog import Contract, build_catalog, estimate_usage
from .config import Settings
from .errors import APIError
from .idempotency import Idempotency, fingerprint
from .metrics import Metrics
from .money import micros_to_decimal
from .pricing import PriceBook, load_prices
from .providers import Deps, ProviderError
from .ratelimit import RateLimiter
from .routing import Router, Served
from .storage import Storage
from .validation import ImageJob

# A replayed response reuses the first response's URLs while they have this long left to live.
REUSE_URL_MARGIN_S = 300


@dataclass
class ImageResponse:
    body: dict[str, Any]
    headers: dict[str, str]


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
        self.metrics = Metrics(settings.metrics)

    @cached_property
    def prices(self) -> PriceBook:
        return load_prices(self.settings)

    @cached_property
    def catalog(self) -> dict[str, Contract]:
        return build_catalog(self.prices)

    @cached_property
    def accounts(self) -> Accounts:
        return Accounts(self.aws.dynamodb, self.settings.table)

    @cached_property
    def billing(self) -> Billing:
        return Billing(self.aws.dynamodb, self.settings.table)

    @cached_property
    def limiter(self) -> RateLimiter:
        return RateLimiter(
            self.aws.dynamodb,
            self.settings.table,
            images_per_minute=self.settings.images_per_minute,
            max_concurrent=self.settings.max_concurrent,
        )

    @cached_property
    def idempotency(self) -> Idempotency:
        return Idempotency(self.aws.dynamodb, self.settings.table)

    @cached_property
    def storage(self) -> Storage:
        return Storage(
            self.aws.s3, self.settings.bucket, self.settings.output_prefix, self.settings.url_ttl_seconds
        )

    @cached_property
    def router(self) -> Router:
        """Routes and credentials, read once per container on the first request (never at import)."""
        from .credentials import load_credentials
        from .routing import credential_names, load_routes

        routes = load_routes(self.settings, self.catalog)
        credentials = load_credentials(self.settings, self.aws, names=credential_names(routes))
        router = Router(self.settings, routes, credentials, self.deps, self.logger)
        if router.local_only:
            self.logger.info("provider local serves every model: no upstream credentials are configured")
        else:
            self.logger.info("upstream providers configured", providers=router.configured)
        return router

    def handle(
        self,
        account: Account,
        job: ImageJob,
        idempotency_key: str | None = None,
        user: str | None = None,
        request_id: str | None = None,
    ) -> ImageResponse:
        """`request_id`: the id the HTTP layer already sent in `x-request-id`; a new one when None."""
        self.router.check(job)  # a model this deployment cannot serve is a 400 before anything else
        request_id = request_id or "req_" + uuid.uuid4().hex
        if idempotency_key is None:
            return self._serve(account, job, keep=False, request_id=request_id)[0]
        stored = self.idempotency.begin(account.account_id, idempotency_key, fingerprint(job, user))
        if stored is not None:
            return self._replay(stored)
        try:
            response, record = self._serve(account, job, keep=True, request_id=request_id)
        except BaseException:
            # Refused or failed, and refunded: the client may retry with the same key.
            self.idempotency.release(account.account_id, idempotency_key)
            raise
        try:
            self.idempotency.complete(account.account_id, idempotency_key, record)
        except Exception:
            # The request is served and charged: answer it. The key stays locked for a minute at most.
            self.logger.exception(
                "idempotency record not completed", extra={"account_id": account.account_id}
            )
        return response

    def balance(self, account: Account, days: int) -> dict[str, Any]:
        """`GET /v1/balance`: the account's balance and its usage per day and model, newest day first."""
        from .ledger import group_usage, usage

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
        """The scheduled sweeper: refund, once each, reservations a killed request left open."""
        ids = [a.account_id for a in self.accounts.list_accounts()]
        refunded = self.billing.sweep_accounts(ids)
        for r in refunded:
            self.logger.warning(
                "stale reservation refunded",
                extra={"request_id": r.request_id, "account_id": r.account_id, "refunded_micros": r.amount},
            )
            self.metrics.record(model=r.model or "unknown", provider="sweep", RefundMicroUSD=r.amount)
        return {
            "accounts": len(ids),
            "refunded": len(refunded),
            "refunded_micros": sum(r.amount for r in refunded),
        }

    def _serve(
        self, account: Account, job: ImageJob, keep: bool, request_id: str
    ) -> tuple[ImageResponse, dict[str, Any]]:
        model = job.contract.id
        try:
            lease = self.limiter.acquire(account, request_id, job.n)
        except APIError:
            self.metrics.record(model=model, provider="none", RateLimited=1)
            raise
        refused = False
        try:
            return self._reserved(account, job, request_id, lease.headers, keep)
        except APIError as exc:
            refused = exc.status == 402  # turned away before any work: the images were not used
            raise
        finally:
            self.limiter.release(lease, refused=refused)

    def _reserved(
        self, account: Account, job: ImageJob, request_id: str, headers: dict[str, str], keep: bool
    ) -> tuple[ImageResponse, dict[str, Any]]:
        quote = self.prices.quote(job)
        log: dict[str, Any] = {
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
        details = {"model": job.contract.id, "endpoint": job.endpoint, "key_id": account.key_id}
        try:
            self.billing.reserve(
                account.account_id, request_id, quote.reserve, details, upper_bound=quote.token_priced
            )
        except APIError:
            self.metrics.record(model=job.contract.id, provider="none", Rejected=1)
            raise
        started = time.perf_counter()
        charged, delivered, provider = 0, 0, "none"
        try:
            served = self.router.run(job, request_id)
            provider = served.provider
            images = served.result.images[: job.n]
            if not images:
                raise ProviderError("The upstream returned no images.")
            body, record = self._respond(account, request_id, job, served, images, keep)
            delivered = len(images)
            charged = self.prices.charge(quote, delivered, job.n, served.result.usage)
        except ProviderError as exc:
            # The code, not the message: an upstream's message may quote the prompt.
            log.update(error=exc.code, status=exc.status)
            self.metrics.record(model=job.contract.id, provider=provider, UpstreamErrors=1)
            raise APIError(exc.status, str(exc), type=exc.type, param=exc.param, code=exc.code) from exc
        finally:
            # Runs on success, on a provider error and on anything unexpected: a failed request is refunded.
            settled = self.billing.settle(
                account.account_id, request_id, charged, images=delivered, provider=provider
            )
            if not settled and charged:
                # Someone closed the reservation first (a sweep with too short a threshold): served unpaid.
                self.logger.error("reservation already closed; images delivered uncharged", extra=log)
            latency = round((time.perf_counter() - started) * 1000, 1)
            log.update(provider=provider, charged_micros=charged, images=delivered, latency_ms=latency)
            self.logger.info("image request", extra=log)
            self.metrics.record(
                model=job.contract.id,
                provider=provider,
                latency_ms=latency,
                Requests=1,
                Images=delivered,
                RevenueMicroUSD=charged,
                RefundMicroUSD=quote.reserve - charged,
            )
        headers = {**headers, "x-imagegate-provider": provider, "x-request-id": request_id}
        record["headers"] = headers
        return ImageResponse(body, headers), record

    def _respond(
        self,
        account: Account,
        request_id: str,
        job: ImageJob,
        served: Served,
        images: list[bytes],
        keep: bool,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The OpenAI body, and what an idempotent replay needs to rebuild it: S3 keys, never image bytes."""
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
                job.prompt, [(i.width, i.height) for i in job.images], job.quality, job.size
            )
        record: dict[str, Any] = {"body": dict(body), "format": job.response_format, "extra": extra}
        if job.response_format == "b64_json":
            data = [{"b64_json": base64.b64encode(img).decode(), **extra} for img in images]
            _check_response_size(data, self.settings.max_response_bytes)
        if job.response_format == "url" or keep:
            record["keys"] = self.storage.put_images(
                account.account_id, request_id, images, job.output_format
            )
        if job.response_format == "url":
            data = [{"url": self.storage.presign(key), **extra} for key in record["keys"]]
            record["urls"], record["signed_at"] = [d["url"] for d in data], int(self.clock())
        return _with_data(body, data), record

    def _replay(self, record: dict[str, Any]) -> ImageResponse:
        """The first response again: its URLs while they live, else fresh signatures for the same objects."""
        extra = record["extra"]
        if record["format"] == "url":
            fresh = record["signed_at"] + self.storage.url_ttl_seconds - REUSE_URL_MARGIN_S > self.clock()
            urls = record["urls"] if fresh else [self.storage.presign(key) for key in record["keys"]]
            data = [{"url": url, **extra} for url in urls]
        else:
            data = [
                {"b64_json": base64.b64encode(self.storage.get(key)).decode(), **extra}
                for key in record["keys"]
            ]
        return ImageResponse(
            _with_data(record["body"], data),
            # The first response's rate-limit figures are stale now, and a replay consumes none.
            {k: v for k, v in record["headers"].items() if not k.startswith("x-ratelimit-")}
            | {"idempotent-replayed": "true"},
        )


def _with_data(body: dict[str, Any], data: list[dict[str, str]]) -> dict[str, Any]:
    """OpenAI's field order: `created`, `data`, then the rest."""
    return {"created": body["created"], "data": data, **body}


def _check_response_size(data: list[dict[str, str]], ceiling: int) -> None:
    """Refuse a b64_json answer the runtime could not return (Lambda: 6 MB). Raised before settling, so the
    request is refunded; the images were made but cannot be sent."""
    size = sum(len(d["b64_json"]) for d in data)
    if ceiling and size > ceiling:
        raise APIError(
            400,
            f"The images come to {size} bytes of base64, above this deployment's response limit of {ceiling} "
            "bytes. Use response_format=url, or fewer or smaller images. Nothing was charged.",
            param="response_format",
            code="response_too_large",
        )

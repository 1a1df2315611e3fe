"""One image request from authenticated key to OpenAI-shaped response: reserve, run, store, settle."""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from aws_lambda_powertools.logging import Logger

from .accounts import Account, Accounts
from .aws import AWSClients
from .billing import Billing
from .catalog import Contract, build_catalog, estimate_usage
from .config import Settings
from .errors import APIError
from .providers import Provider, ProviderError, ProviderResult, run
from .storage import Storage
from .validation import ImageJob


@dataclass
class ImageResponse:
    body: dict[str, Any]
    provider: str
    request_id: str


@dataclass
class Service:
    """Everything a request needs, built from settings; AWS clients come into being on first use."""

    settings: Settings
    aws: AWSClients
    logger: Logger
    providers: dict[str, Provider] = field(default_factory=dict)

    @cached_property
    def catalog(self) -> dict[str, Contract]:
        return build_catalog(self.settings.local_price_micros)

    @cached_property
    def accounts(self) -> Accounts:
        return Accounts(self.aws.dynamodb, self.settings.table)

    @cached_property
    def billing(self) -> Billing:
        return Billing(self.aws.dynamodb, self.settings.table)

    @cached_property
    def storage(self) -> Storage:
        return Storage(
            self.aws.s3, self.settings.bucket, self.settings.output_prefix, self.settings.url_ttl_seconds
        )

    def provider_for(self, contract: Contract) -> Provider:
        """The provider serving a contract: the built-in renderer until upstream routes are configured."""
        provider = self.providers.get("local")
        if provider is None:
            from .providers.local import LocalProvider

            provider = self.providers["local"] = LocalProvider()  # routing replaces this seam
        return provider

    def handle(self, account: Account, job: ImageJob) -> ImageResponse:
        request_id = "req_" + uuid.uuid4().hex
        provider = self.provider_for(job.contract)
        log = {
            "request_id": request_id,
            "account_id": account.account_id,
            "key_id": account.key_id,
            "endpoint": job.endpoint,
            "model": job.contract.id,
            "provider": provider.name,
            "n": job.n,
            "size": job.size,
            "quality": job.quality,
            "price_micros": job.price,
        }
        started = time.perf_counter()
        self.billing.reserve(
            account.account_id,
            request_id,
            job.price,
            {"model": job.contract.id, "endpoint": job.endpoint, "provider": provider.name},
        )
        charged = 0
        try:
            result = run(provider, job)
            images = result.images[: job.n]
            if not images:
                raise ProviderError("The upstream returned no images.")
            data = self._data(account, request_id, job, result, images)
            charged = job.price_per_image * len(images)
        except ProviderError as exc:
            self.logger.warning("provider failed", extra={**log, "error": str(exc), "status": exc.status})
            raise APIError(exc.status, str(exc), type="server_error", code=exc.code) from exc
        finally:
            # Runs on success, on a provider error and on anything unexpected: a failed request is refunded.
            self.billing.settle(account.account_id, request_id, charged)
            log.update(charged_micros=charged, latency_ms=round((time.perf_counter() - started) * 1000, 1))
            self.logger.info("image request", extra=log)
        body: dict[str, Any] = {"created": int(time.time()), "data": data}
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
        return ImageResponse(body, provider.name, request_id)

    def _data(
        self, account: Account, request_id: str, job: ImageJob, result: ProviderResult, images: list[bytes]
    ) -> list[dict[str, str]]:
        extra = {"revised_prompt": result.revised_prompt} if result.revised_prompt is not None else {}
        if job.response_format == "b64_json":
            data = [{"b64_json": base64.b64encode(img).decode(), **extra} for img in images]
            _check_response_size(data, self.settings.max_response_bytes)
            return data
        keys = self.storage.put_images(account.account_id, request_id, images, job.output_format)
        return [{"url": self.storage.presign(key), **extra} for key in keys]


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

"""Black Forest Labs' FLUX API (https://docs.bfl.ai): text to image, asynchronous.

- `POST {base}/v1/{model}` with the `x-key` header and `{"prompt", "width", "height", "output_format"}`
  answers `{"id", "polling_url"}`;
- `GET {polling_url}` (same header) answers `{"id", "status", "result"}`, with `status` one of `Pending`,
  `Ready` (then `result.sample` is the image's URL), `Error`, `Request Moderated`, `Content Moderated` or
  `Task not found`;
- the sample URL is signed and expires after 10 minutes: the image is downloaded as soon as it is Ready and
  handed to the service, which stores it in S3 like every output.

Both URLs come from the upstream's answer, so neither is trusted: the key goes only to a `polling_url` on
the configured endpoint's host or on https `*.bfl.ai` (the global endpoint answers with regional polling
hosts), anything else is refused; the sample is fetched without the key through `Outbound` (https, public
addresses only, pinned, no redirects, at most MAX_SAMPLE_BYTES), like any URL a customer could choose.

Polling happens inside the attempt's timeout (the router's budget: the gateway's for a request, the worker's
for a job), every `options.poll_seconds` (default 1). One image per task, so n images are n tasks side by
side. `options.region` "eu" or "us" uses BFL's regional endpoint instead of the global one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from imagegate.catalog.routes import check_options
from imagegate.errors import ProviderError
from imagegate.inputs.images import fit
from imagegate.providers import Deps, Operation, ProviderResult, Upstream, content_policy, gather
from imagegate.providers._http import bad_response, json_of, send

if TYPE_CHECKING:
    import httpx

    from imagegate.inputs.outbound import Outbound
    from imagegate.inputs.request import ImageJob

ENDPOINTS = {"global": "https://api.bfl.ai", "eu": "https://api.eu.bfl.ai", "us": "https://api.us.bfl.ai"}
MODERATED = frozenset({"Request Moderated", "Content Moderated"})
DEFAULT_POLL_SECONDS = 1.0
BFL_DOMAIN = "bfl.ai"
# A 4-megapixel PNG (FLUX's largest) is about 12 MB; the cap bounds the function's memory, not the image.
MAX_SAMPLE_BYTES = 32 * 1024 * 1024


class BFLProvider:
    name = "bfl"

    def __init__(
        self,
        upstream: Upstream,
        client: httpx.Client,
        outbound: Outbound,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        check_options(self.name, upstream.options, f"bfl route for {upstream.model}")
        self.upstream = upstream
        self.client = client
        self.outbound = outbound
        self.clock = clock
        self.sleep = sleep
        self.base_url = (upstream.base_url or ENDPOINTS[upstream.options.get("region", "global")]).rstrip("/")
        self.poll_seconds = float(upstream.options.get("poll_seconds", DEFAULT_POLL_SECONDS))
        self.headers = {"x-key": upstream.api_key, "accept": "application/json"}

    def supports(self, operation: Operation) -> bool:
        return operation == "generate"

    def generate(self, job: ImageJob) -> ProviderResult:
        return ProviderResult(images=gather([lambda: self._one(job)] * job.n))

    def edit(self, job: ImageJob) -> ProviderResult:
        raise NotImplementedError  # `supports` says no: the router never asks

    vary = edit

    def _one(self, job: ImageJob) -> bytes:
        deadline = self.clock() + self.upstream.timeout_s
        body = {
            "prompt": job.prompt,
            "width": job.width,
            "height": job.height,
            "output_format": "jpeg" if job.output_format == "jpeg" else "png",
        }
        task = self._json("POST", f"{self.base_url}/v1/{self.upstream.model}", deadline, json=body)
        polling_url = task.get("polling_url") if isinstance(task, dict) else None
        if not isinstance(polling_url, str):
            raise bad_response(self.name, "a task without a polling_url")
        if not self._ours(polling_url):
            # The key would go wherever the answer pointed: refuse rather than follow.
            raise bad_response(self.name, "a polling_url off its own host")
        while True:
            result = self._json("GET", polling_url, deadline)
            status = result.get("status") if isinstance(result, dict) else None
            if status == "Ready":
                sample = (result.get("result") or {}).get("sample")
                if not isinstance(sample, str):
                    raise bad_response(self.name, "a Ready task without result.sample")
                data = self._sample(sample, deadline)  # now: the signed URL lives 10 minutes
                try:
                    return fit(data, job.width, job.height, job.output_format, job.output_compression)
                except Exception:  # Pillow's many decoder errors: the upstream sent no image
                    raise bad_response(self.name, "a sample that is not an image") from None
            if status in MODERATED:
                raise content_policy(f"The image service ({self.name}) refused the prompt: {status}.")
            if status != "Pending" and status not in (None, "Processing", "Queued"):
                raise ProviderError(f"The upstream image service ({self.name}) failed the task: {status}.")
            if self._left(deadline) <= self.poll_seconds:
                seconds = self.upstream.timeout_s
                raise ProviderError(
                    f"The upstream image service ({self.name}) did not finish within {seconds:g} seconds.",
                    status=504,
                    code="upstream_timeout",
                    retry=False,
                )
            self.sleep(self.poll_seconds)

    def _json(self, method: str, url: str, deadline: float, **kwargs: Any) -> Any:
        secret = self.upstream.api_key
        response = send(
            self.client,
            method,
            url,
            label=self.name,
            timeout_s=self._left(deadline),
            secret=secret,
            headers=self.headers,
            **kwargs,
        )
        return json_of(response, self.name)

    def _ours(self, url: str) -> bool:
        """Whether `url` may receive the key: the configured endpoint's origin, or https on *.bfl.ai."""
        try:
            parts, base = urlsplit(url), urlsplit(self.base_url)
            port, base_port = parts.port, base.port
        except ValueError:
            return False
        if parts.username is not None or parts.password is not None:
            return False
        host = (parts.hostname or "").rstrip(".")
        if (parts.scheme, host, port) == (base.scheme, base.hostname, base_port):
            return True
        on_bfl = host == BFL_DOMAIN or host.endswith(f".{BFL_DOMAIN}")
        return parts.scheme == "https" and port in (None, 443) and on_bfl

    def _sample(self, url: str, deadline: float) -> bytes:
        from imagegate.inputs.outbound import OutboundError

        try:
            fetched = self.outbound.fetch(
                url, max_bytes=MAX_SAMPLE_BYTES, timeout=self._left(deadline), max_redirects=0
            )
        except OutboundError as exc:
            raise bad_response(self.name, f"a sample we will not fetch ({exc.code}): {exc.message}") from None
        return fetched.body

    def _left(self, deadline: float) -> float:
        return max(0.1, deadline - self.clock())


def create(upstream: Upstream, deps: Deps) -> BFLProvider:
    return BFLProvider(upstream, deps.http, deps.outbound)

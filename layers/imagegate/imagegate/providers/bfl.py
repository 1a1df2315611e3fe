"""Black Forest Labs' FLUX API (https://docs.bfl.ai): text to image, asynchronous.

- `POST {base}/v1/{model}` with the `x-key` header and `{"prompt", "width", "height", "output_format"}`
  answers `{"id", "polling_url"}`;
- `GET {polling_url}` (same header) answers `{"id", "status", "result"}`, with `status` one of `Pending`,
  `Ready` (then `result.sample` is the image's URL), `Error`, `Request Moderated`, `Content Moderated` or
  `Task not found`;
- the sample URL is signed and expires after 10 minutes: the image is downloaded as soon as it is Ready and
  handed to the service, which stores it in S3 like every output.

Polling happens inside the attempt's timeout (the router's budget: the gateway's for a request, the worker's
for a job), every `options.poll_seconds` (default 1). One image per task, so n images are n tasks side by
side. `options.region` "eu" or "us" uses BFL's regional endpoint instead of the global one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from imagegate.errors import ProviderError
from imagegate.inputs.images import fit
from imagegate.providers import Deps, Operation, ProviderResult, Upstream, content_policy, gather
from imagegate.providers._http import bad_response, json_of, send

if TYPE_CHECKING:
    import httpx

    from imagegate.inputs.request import ImageJob

ENDPOINTS = {"global": "https://api.bfl.ai", "eu": "https://api.eu.bfl.ai", "us": "https://api.us.bfl.ai"}
MODERATED = frozenset({"Request Moderated", "Content Moderated"})
DEFAULT_POLL_SECONDS = 1.0


class BFLProvider:
    name = "bfl"

    def __init__(
        self,
        upstream: Upstream,
        client: httpx.Client,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.upstream = upstream
        self.client = client
        self.clock = clock
        self.sleep = sleep
        region = upstream.options.get("region", "global")
        if region not in ENDPOINTS:
            raise ValueError(f"options.region must be one of {', '.join(ENDPOINTS)}, not {region!r}")
        self.base_url = (upstream.base_url or ENDPOINTS[region]).rstrip("/")
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
        if not isinstance(polling_url, str) or not polling_url.startswith("https://"):
            raise bad_response(self.name, "a task without a polling_url")
        while True:
            result = self._json("GET", polling_url, deadline)
            status = result.get("status") if isinstance(result, dict) else None
            if status == "Ready":
                sample = (result.get("result") or {}).get("sample")
                if not isinstance(sample, str):
                    raise bad_response(self.name, "a Ready task without result.sample")
                # Downloaded now: the signed URL lives 10 minutes.
                data = send(
                    self.client, "GET", sample, label=self.name, timeout_s=self._left(deadline)
                ).content
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

    def _left(self, deadline: float) -> float:
        return max(0.1, deadline - self.clock())


def create(upstream: Upstream, deps: Deps) -> BFLProvider:
    return BFLProvider(upstream, deps.http)

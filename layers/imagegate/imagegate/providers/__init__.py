"""Upstream providers behind one small interface.

A provider turns a validated `ImageJob` into encoded images at exactly the job's size and output format
(`images.fit` does the resizing and re-encoding). Each provider is one module here exposing
`create(upstream, deps) -> Provider`; `routing` finds it by the route's `provider` name, so adding a
provider is a module plus route (and, for a new public model id, catalog) entries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from imagegate.errors import ProviderError

if TYPE_CHECKING:
    import httpx

    from imagegate.aws import AWSClients
    from imagegate.inputs.outbound import Outbound
    from imagegate.inputs.request import ImageJob

Operation = Literal["generate", "edit", "vary"]
T = TypeVar("T")


@dataclass(frozen=True)
class ProviderResult:
    images: list[bytes]  # encoded in the job's output_format, at the job's size
    revised_prompt: str | None = None
    # OpenAI-shaped token usage, only as the upstream reported it (settled from by token-priced contracts).
    usage: dict[str, Any] | None = None


@dataclass(frozen=True)
class PartialImage:
    """One streamed partial image, encoded as the final one will be (the job's size and output_format)."""

    image: bytes
    index: int  # 0-based, in the order the upstream made them


# What a stream yields: partial images, then exactly one result (with one image: streams have n=1).
StreamItem = PartialImage | ProviderResult


def content_policy(message: str) -> ProviderError:
    """The upstream refused the prompt or image on safety grounds: a 400, final, the same on every route."""
    return ProviderError(
        message,
        status=400,
        code="content_policy_violation",
        type="invalid_request_error",
        param="prompt",
        fallover=False,
    )


@dataclass(frozen=True)
class Upstream:
    """One route entry, with its credential resolved: which provider module, which upstream model."""

    provider: str  # module name in imagegate.providers: openai, openai_compatible, gemini, bedrock, local
    model: str = ""  # the upstream's model id (a route's model-name map)
    base_url: str = ""
    api_key: str = field(default="", repr=False)  # never logged: repr hides it
    region: str = ""
    timeout_s: float = 20.0
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Deps:
    """What providers are built with: the container's AWS clients, one pooled HTTP client for the
    configured upstreams, and `outbound` for URLs an upstream's answer names (trusted no more than a
    user's)."""

    aws: AWSClients
    http_client: httpx.Client | None = None
    outbound_client: Outbound | None = None

    @cached_property
    def outbound(self) -> Outbound:
        if self.outbound_client is not None:
            return self.outbound_client
        from imagegate.inputs.outbound import Outbound

        return Outbound()

    @cached_property
    def http(self) -> httpx.Client:
        if self.http_client is not None:
            return self.http_client
        import httpx

        # Timeouts are set per call from the route; retries are the router's job, not the transport's.
        return httpx.Client(timeout=None, limits=httpx.Limits(max_connections=20))


class Provider(Protocol):
    """Optionally also `stream(job) -> Iterator[StreamItem]`, for providers whose upstream makes partial
    images (`job.partial_images` of them at most); see `stream` below for the others."""

    name: str

    def supports(self, operation: Operation) -> bool: ...

    def generate(self, job: ImageJob) -> ProviderResult: ...

    def edit(self, job: ImageJob) -> ProviderResult: ...

    def vary(self, job: ImageJob) -> ProviderResult: ...


def gather(calls: Sequence[Callable[[], T]], max_workers: int = 8) -> list[T]:
    """Run the upstream calls side by side: every success, or (all failed) the most final error.

    Partial success is a result: the service charges pro rata for the images delivered.
    """
    if len(calls) == 1:
        return [calls[0]()]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(calls))) as pool:
        futures = [pool.submit(call) for call in calls]
    results: list[T] = []
    errors: list[ProviderError] = []
    for future in futures:
        try:
            results.append(future.result())
        except ProviderError as exc:
            errors.append(exc)
    if results:
        return results
    # A refusal (content policy) is the same on every route; report it over a transient failure.
    raise next((e for e in errors if not (e.retry or e.fallover)), errors[0])


def operation(job: ImageJob) -> Operation:
    if job.endpoint == "variations":
        return "vary"
    return "edit" if job.images else "generate"


def run(provider: Provider, job: ImageJob) -> ProviderResult:
    """Dispatch a job to the provider method for its kind of work."""
    return getattr(provider, operation(job))(job)


def stream(provider: Provider, job: ImageJob) -> Iterator[StreamItem]:
    """A streamed job's partial images as the upstream makes them, then its result. A provider without a
    `stream` method makes no partial images: its stream is the result alone."""
    method = getattr(provider, "stream", None)
    if method is None:
        yield run(provider, job)
    else:
        yield from method(job)

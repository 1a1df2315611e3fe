"""Upstream providers behind one small interface.

A provider turns a validated `ImageJob` into encoded images. Adding one is a module here with a class
implementing `Provider`, plus its entry in `PROVIDERS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..validation import ImageJob


@dataclass(frozen=True)
class ProviderResult:
    images: list[bytes]  # encoded in the job's output_format
    revised_prompt: str | None = None
    usage: dict[str, Any] | None = None


class ProviderError(Exception):
    """An upstream failure, mapped to the status the client sees (502 by default, 504 for timeouts)."""

    def __init__(self, message: str, *, status: int = 502, code: str = "upstream_error") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Provider(Protocol):
    name: str

    def generate(self, job: ImageJob) -> ProviderResult: ...

    def edit(self, job: ImageJob) -> ProviderResult: ...

    def vary(self, job: ImageJob) -> ProviderResult: ...


def run(provider: Provider, job: ImageJob) -> ProviderResult:
    """Dispatch a job to the provider method for its kind of work."""
    if job.endpoint == "variations":
        return provider.vary(job)
    if job.images:
        return provider.edit(job)
    return provider.generate(job)

"""The validated request: what `validation.resolve` returns and every provider, price and job reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from imagegate.catalog.contracts import Contract, Endpoint
    from imagegate.inputs.images import InputImage


@dataclass(frozen=True)
class ImageJob:
    """A fully validated, priced request: what a provider is asked to make."""

    endpoint: Endpoint
    contract: Contract
    prompt: str
    n: int
    width: int
    height: int
    quality: str
    response_format: Literal["url", "b64_json"]
    output_format: str
    output_compression: int | None
    background: str
    style: str | None
    moderation: str
    input_fidelity: str | None
    images: tuple[InputImage, ...]
    mask: InputImage | None
    price_per_image: int
    # Seconds already spent fetching the inputs (image URLs, uploaded files): the router's upstream budget
    # is shortened by as much, so the whole request still fits the gateway's timeout.
    input_seconds: float = field(default=0.0, compare=False)
    stream: bool = False
    # Partial images to stream before the final one: 0 unless `stream` (alone, `partial_images` asks none).
    partial_images: int = 0

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def price(self) -> int:
        return self.price_per_image * self.n

"""Model contracts: what each public model id accepts, and what an image costs.

A contract is the promise made to clients (endpoints, sizes, qualities, n, prompt length, input image rules,
price), independent of which upstream serves it. The contracts themselves are data (`catalog.json`, read by
`catalog/loader.py`, which attaches each one's prices); here are their shape and the pure functions on it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from imagegate.catalog.rates import ModelPrice

Endpoint = Literal["generations", "edits", "variations"]
ALL_ENDPOINTS: frozenset[Endpoint] = frozenset({"generations", "edits", "variations"})

MB = 1024 * 1024

GPT_SIZES = ("1024x1024", "1536x1024", "1024x1536")
DALLE2_SIZES = ("256x256", "512x512", "1024x1024")
DALLE3_SIZES = ("1024x1024", "1792x1024", "1024x1792")


@dataclass(frozen=True)
class FreeFormSizes:
    """Any `WxH` within these bounds (gpt-image-2 style)."""

    multiple_of: int = 16
    max_edge: int = 3840
    min_pixels: int = 655_360
    max_pixels: int = 3840 * 2160
    max_aspect: float = 3.0


@dataclass(frozen=True)
class Contract:
    id: str
    endpoints: frozenset[Endpoint]
    sizes: tuple[str, ...]
    qualities: tuple[str, ...]
    prompt_max: int
    default_size: str = "1024x1024"
    default_quality: str = "auto"
    free_form: FreeFormSizes | None = None
    styles: tuple[str, ...] = ()
    n_max: int = 10
    # GPT-image parameters: background, output_format, output_compression, moderation, input_fidelity.
    gpt_params: bool = False
    input_fidelity: bool = False
    transparent_background: bool = True
    default_response_format: Literal["url", "b64_json"] = "b64_json"
    max_input_images: int = 16
    input_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP")
    max_input_bytes: int = 50 * MB
    square_png_input: bool = False
    revised_prompt: bool = False
    reports_usage: bool = False
    # What `quality=auto` resolves to; priced and rendered as that quality.
    auto_quality: str = "medium"
    # The price book's entry for this model (rates.ModelPrice), attached by the catalog's loader.
    pricing: ModelPrice | None = None
    # For GET /v1/models: who makes the model, and when it was released (unix seconds; 0: unknown).
    owned_by: str = "imagegate"
    created: int = 0

    def serves(self, endpoint: Endpoint) -> bool:
        return endpoint in self.endpoints


LOCAL_MODEL = "imagegate-local"
# The model of a generation, edit or variation that names none (OpenAI's old default, now served by its
# successor: see the catalog's lifecycle).
DEFAULT_MODEL = "dall-e-2"


_SIZE = re.compile(r"([1-9][0-9]{0,4})x([1-9][0-9]{0,4})", re.ASCII)


def parse_size(size: str) -> tuple[int, int] | None:
    """`"1536x1024"` -> (1536, 1024); None unless it is `WxH` in plain ASCII digits, each 1 to 99999."""
    match = _SIZE.fullmatch(size)
    return (int(match[1]), int(match[2])) if match else None


def free_form_problem(bounds: FreeFormSizes, width: int, height: int) -> str | None:
    """Why `width`x`height` breaks the free-form rules, or None when it is allowed."""
    m = bounds.multiple_of
    if width % m or height % m:
        return f"both dimensions must be multiples of {m}"
    if max(width, height) > bounds.max_edge:
        return f"the longest edge must be at most {bounds.max_edge} pixels"
    if not bounds.min_pixels <= width * height <= bounds.max_pixels:
        return f"the total pixel count must be between {bounds.min_pixels} and {bounds.max_pixels}"
    if max(width, height) > bounds.max_aspect * min(width, height):
        return f"the aspect ratio must be between 1:{bounds.max_aspect:g} and {bounds.max_aspect:g}:1"
    return None


# What a GPT-image successor makes for a DALL·E quality (see providers/openai.py); a route's
# `options.quality` may choose otherwise. Pricing uses the same mapping to bound the upstream's bill.
DALLE_QUALITY = {"standard": "low", "hd": "medium"}


def upstream_quality(quality: str, options: Mapping[str, Any]) -> str:
    """The quality an upstream is asked for when a contract's `quality` is served through a route."""
    return {**DALLE_QUALITY, **options.get("quality", {})}.get(quality, quality)


def price_per_image(contract: Contract, quality: str, size: str) -> int:
    """Micro-USD for one image of a resolved (never `auto`) quality and size, markup included."""
    parsed = parse_size(size)
    if contract.pricing is None or parsed is None:
        raise ValueError(
            f"no price for {contract.id} at {size!r}: contracts are priced by the catalog loader"
        )
    return contract.pricing.per_image(quality, *parsed)


def estimate_usage(
    contract: Contract, prompt: str, input_pixels: list[tuple[int, int]], quality: str, size: str
) -> dict:
    """OpenAI-shaped token usage for a GPT-image response the upstream did not report itself.

    Text tokens are estimated at four characters a token; output image tokens are the contract's own table
    where its prices have one (gpt-image-2 and later, with xhigh and max), else OpenAI's published table for
    the gpt-image-1 family at 1024x1024 (272 / 1056 / 4160 for low / medium / high), scaled by area.
    """
    text_tokens = max(1, math.ceil(len(prompt) / 4))
    image_tokens = sum(math.ceil(w * h / (512 * 512)) * 85 + 85 for w, h in input_pixels)
    w, h = parse_size(size) or (1024, 1024)
    tokens = contract.pricing.tokens if contract.pricing is not None else None
    if tokens is not None and any(q == quality for q, _ in tokens.output_tokens):
        output_tokens = tokens.image_output_tokens(quality, w, h)
    else:
        per_megapixel = {"low": 272, "medium": 1056, "high": 4160}.get(quality, 4160)
        output_tokens = math.ceil(per_megapixel * w * h / (1024 * 1024))
    return {
        "input_tokens": text_tokens + image_tokens,
        "output_tokens": output_tokens,
        "total_tokens": text_tokens + image_tokens + output_tokens,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
        "output_tokens_details": {"image_tokens": output_tokens, "text_tokens": 0},
    }

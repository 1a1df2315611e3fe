"""Model contracts: what each public model id accepts, and what an image costs.

A contract is the promise made to clients (endpoints, sizes, qualities, n, prompt length, input image rules,
price), independent of which upstream serves it. Everything here is pure data and pure functions; the
prices themselves are data too (prices.json, read by pricing.py) and are attached by `build_catalog`.
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
GPT_QUALITIES = ("low", "medium", "high", "auto")
# Gemini 3 image models' 1K output for each aspect ratio the gemini provider asks for (1:1, 2:3, 3:2, 3:4,
# 4:3, 4:5, 5:4, 9:16, 16:9, 21:9), from Google's image-generation guide: served at its native size.
GEMINI_SIZES = (
    "1024x1024", "848x1264", "1264x848", "896x1200", "1200x896",
    "928x1152", "1152x928", "768x1376", "1376x768", "1584x672",
)  # fmt: skip
# One size for each aspect ratio Stable Image Core takes (1:1, 2:3, 3:2, 4:5, 5:4, 9:16, 16:9, 9:21, 21:9):
# Stability's one-megapixel sizes (SDXL, SD3); images.fit brings Core's output to them.
STABILITY_SIZES = (
    "1024x1024", "832x1216", "1216x832", "896x1088", "1088x896",
    "768x1344", "1344x768", "640x1536", "1536x640",
)  # fmt: skip


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
    # The price book's entry for this model (pricing.ModelPrice), attached by build_catalog.
    pricing: ModelPrice | None = None

    def serves(self, endpoint: Endpoint) -> bool:
        return endpoint in self.endpoints


def _gpt(
    model_id: str,
    *,
    endpoints: frozenset[Endpoint] = frozenset({"generations", "edits"}),
    input_fidelity: bool = True,
    **kw: object,
) -> Contract:
    return Contract(
        id=model_id,
        endpoints=endpoints,
        sizes=(*GPT_SIZES, "auto"),
        qualities=GPT_QUALITIES,
        prompt_max=32000,
        default_size="auto",
        gpt_params=True,
        input_fidelity=input_fidelity,
        reports_usage=True,
        **kw,  # type: ignore[arg-type]
    )


OPENAI_CONTRACTS: tuple[Contract, ...] = (
    Contract(
        id="dall-e-2",
        endpoints=ALL_ENDPOINTS,
        sizes=DALLE2_SIZES,
        qualities=("standard", "auto"),
        default_quality="standard",
        auto_quality="standard",
        prompt_max=1000,
        default_response_format="url",
        max_input_images=1,
        input_formats=("PNG",),
        max_input_bytes=4 * MB,
        square_png_input=True,
    ),
    Contract(
        id="dall-e-3",
        endpoints=frozenset({"generations"}),
        sizes=DALLE3_SIZES,
        qualities=("standard", "hd", "auto"),
        default_quality="standard",
        auto_quality="standard",
        styles=("vivid", "natural"),
        n_max=1,
        prompt_max=4000,
        default_response_format="url",
        revised_prompt=True,
    ),
    _gpt("gpt-image-1"),
    _gpt("gpt-image-1-mini", input_fidelity=False),
    _gpt("gpt-image-1.5"),
    _gpt("chatgpt-image-latest"),
    *(
        _gpt(model_id, free_form=FreeFormSizes(), transparent_background=False)
        for model_id in ("gpt-image-2", "gpt-image-2-2026-04-21")
    ),
)


def _own_price(
    model_id: str, *, endpoints: frozenset[Endpoint], sizes: tuple[str, ...], **kw: object
) -> Contract:
    """A non-OpenAI upstream's model under its own id, sold at that upstream's per-image price: one
    quality (`auto` is `standard`), n up to 4 (each image is its own upstream call, inside the 24 s budget),
    base64 by default, and no GPT-image parameters."""
    return Contract(
        id=model_id,
        endpoints=endpoints,
        sizes=(*sizes, "auto"),
        qualities=("standard", "auto"),
        default_quality="standard",
        auto_quality="standard",
        n_max=4,
        **kw,  # type: ignore[arg-type]
    )


# Each input image is sent again with every image of a request, and billed each time, so the input count
# (with the prompt length) bounds what a request costs upstream: prices.json prices that bound in.
UPSTREAM_CONTRACTS: tuple[Contract, ...] = (
    *(
        _own_price(
            model_id,
            endpoints=ALL_ENDPOINTS,
            sizes=GEMINI_SIZES,
            prompt_max=4000,
            max_input_images=4,
            max_input_bytes=7 * MB,  # Gemini's limit for one inline file
        )
        for model_id in ("gemini-3.1-flash-image", "gemini-3-pro-image")
    ),
    _own_price(
        "stability.stable-image-core-v1:1",
        endpoints=frozenset({"generations"}),
        sizes=STABILITY_SIZES,
        prompt_max=10000,  # Stable Image Core's documented prompt limit
    ),
)

LOCAL_MODEL = "imagegate-local"
DEFAULT_MODEL = "dall-e-2"


# The built-in renderer's own model id: every endpoint, free-form sizes, one flat price per image.
LOCAL_CONTRACT = Contract(
    id=LOCAL_MODEL,
    endpoints=ALL_ENDPOINTS,
    sizes=(*DALLE2_SIZES[:2], *GPT_SIZES, *DALLE3_SIZES[1:], "auto"),
    free_form=FreeFormSizes(multiple_of=16, max_edge=2048, min_pixels=64 * 64, max_pixels=2048 * 2048),
    qualities=GPT_QUALITIES,
    default_size="auto",
    prompt_max=32000,
    gpt_params=True,
    reports_usage=True,
)

CONTRACTS: tuple[Contract, ...] = (*OPENAI_CONTRACTS, *UPSTREAM_CONTRACTS, LOCAL_CONTRACT)


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
        raise ValueError(f"no price for {contract.id} at {size!r}: contracts are priced by build_catalog")
    return contract.pricing.per_image(quality, *parsed)


def estimate_usage(prompt: str, input_pixels: list[tuple[int, int]], quality: str, size: str) -> dict:
    """OpenAI-shaped token usage for a GPT-image response the upstream did not report itself.

    Text tokens are estimated at four characters a token; image tokens follow OpenAI's published
    output-token table for 1024x1024 (272 / 1056 / 4160 for low / medium / high), scaled by area.
    """
    text_tokens = max(1, math.ceil(len(prompt) / 4))
    image_tokens = sum(math.ceil(w * h / (512 * 512)) * 85 + 85 for w, h in input_pixels)
    per_megapixel = {"low": 272, "medium": 1056, "high": 4160}[quality]
    w, h = parse_size(size) or (1024, 1024)
    output_tokens = math.ceil(per_megapixel * w * h / (1024 * 1024))
    return {
        "input_tokens": text_tokens + image_tokens,
        "output_tokens": output_tokens,
        "total_tokens": text_tokens + image_tokens + output_tokens,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
        "output_tokens_details": {"image_tokens": output_tokens, "text_tokens": 0},
    }

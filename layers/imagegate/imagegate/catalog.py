"""Model contracts: what each public model id accepts, and what an image costs.

A contract is the promise made to clients (endpoints, sizes, qualities, n, prompt length, input image rules,
price), independent of which upstream serves it. Everything here is pure data and pure functions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from .money import usd_to_micros

Endpoint = Literal["generations", "edits", "variations"]
ALL_ENDPOINTS: frozenset[Endpoint] = frozenset({"generations", "edits", "variations"})

MB = 1024 * 1024

GPT_SIZES = ("1024x1024", "1536x1024", "1024x1536")
DALLE2_SIZES = ("256x256", "512x512", "1024x1024")
DALLE3_SIZES = ("1024x1024", "1792x1024", "1024x1792")
GPT_QUALITIES = ("low", "medium", "high", "auto")


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
    # micro-USD per image, keyed by (quality, size); sizes absent from the table (free-form ones) are
    # priced by area against the 1024x1024 entry, or at that entry's flat price when not priced_by_area.
    prices: dict[tuple[str, str], int]
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
    priced_by_area: bool = True

    def serves(self, endpoint: Endpoint) -> bool:
        return endpoint in self.endpoints


_usd = usd_to_micros


def _gpt_table(low: tuple[str, str], medium: tuple[str, str], high: tuple[str, str]) -> dict:
    """Square and non-square per-image prices for each quality, as OpenAI publishes them."""
    table = {}
    for quality, (square, wide) in (("low", low), ("medium", medium), ("high", high)):
        table[(quality, "1024x1024")] = _usd(square)
        table[(quality, "1536x1024")] = _usd(wide)
        table[(quality, "1024x1536")] = _usd(wide)
    return table


def _gpt(
    model_id: str,
    prices: dict,
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
        prices=prices,
        default_size="auto",
        gpt_params=True,
        input_fidelity=input_fidelity,
        reports_usage=True,
        **kw,  # type: ignore[arg-type]
    )


_GPT_IMAGE_1_5 = _gpt_table(("0.009", "0.013"), ("0.034", "0.05"), ("0.133", "0.2"))
_GPT_IMAGE_2 = {
    ("low", "1024x1024"): _usd("0.006"),
    ("medium", "1024x1024"): _usd("0.053"),
    ("high", "1024x1024"): _usd("0.211"),
}

OPENAI_CONTRACTS: tuple[Contract, ...] = (
    Contract(
        id="dall-e-2",
        endpoints=ALL_ENDPOINTS,
        sizes=DALLE2_SIZES,
        qualities=("standard", "auto"),
        default_quality="standard",
        auto_quality="standard",
        prompt_max=1000,
        prices={
            ("standard", "256x256"): _usd("0.016"),
            ("standard", "512x512"): _usd("0.018"),
            ("standard", "1024x1024"): _usd("0.020"),
        },
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
        prices={
            ("standard", "1024x1024"): _usd("0.04"),
            ("standard", "1792x1024"): _usd("0.08"),
            ("standard", "1024x1792"): _usd("0.08"),
            ("hd", "1024x1024"): _usd("0.08"),
            ("hd", "1792x1024"): _usd("0.12"),
            ("hd", "1024x1792"): _usd("0.12"),
        },
        default_response_format="url",
        revised_prompt=True,
    ),
    _gpt("gpt-image-1", _gpt_table(("0.011", "0.016"), ("0.042", "0.063"), ("0.167", "0.25"))),
    _gpt(
        "gpt-image-1-mini",
        _gpt_table(("0.005", "0.006"), ("0.011", "0.015"), ("0.036", "0.052")),
        input_fidelity=False,
    ),
    _gpt("gpt-image-1.5", _GPT_IMAGE_1_5),
    _gpt("chatgpt-image-latest", _GPT_IMAGE_1_5),
    *(
        _gpt(model_id, _GPT_IMAGE_2, free_form=FreeFormSizes(), transparent_background=False)
        for model_id in ("gpt-image-2", "gpt-image-2-2026-04-21")
    ),
)

LOCAL_MODEL = "imagegate-local"
DEFAULT_MODEL = "dall-e-2"


def local_contract(price_micros: int) -> Contract:
    """The built-in renderer's own model id: every endpoint, free-form sizes, one flat price."""
    return Contract(
        id=LOCAL_MODEL,
        endpoints=ALL_ENDPOINTS,
        sizes=(*DALLE2_SIZES[:2], *GPT_SIZES, *DALLE3_SIZES[1:], "auto"),
        free_form=FreeFormSizes(multiple_of=16, max_edge=2048, min_pixels=64 * 64, max_pixels=2048 * 2048),
        qualities=GPT_QUALITIES,
        default_size="auto",
        prompt_max=32000,
        prices={(q, "1024x1024"): price_micros for q in ("low", "medium", "high")},
        gpt_params=True,
        reports_usage=True,
        priced_by_area=False,
    )


def build_catalog(local_price_micros: int) -> dict[str, Contract]:
    contracts = (*OPENAI_CONTRACTS, local_contract(local_price_micros))
    return {c.id: c for c in contracts}


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


def price_per_image(contract: Contract, quality: str, size: str) -> int:
    """Micro-USD for one image of a resolved (never `auto`) quality and size."""
    exact = contract.prices.get((quality, size))
    if exact is not None:
        return exact
    base = contract.prices[(quality, "1024x1024")]
    if not contract.priced_by_area:
        return base
    w, h = parse_size(size) or (1024, 1024)
    # Integer ceiling division: rounded up so that a free-form size is never sold below cost.
    return -(-base * w * h // (1024 * 1024))


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

"""Request validation: the wire shape (pydantic) and the model contract's rules (pure functions).

`ImageParams` checks types and universal ranges; `resolve` applies the contract of the chosen model and
returns an `ImageJob` with every default filled in and every `auto` resolved, priced, ready to run.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import errors
from .catalog import (
    DEFAULT_MODEL,
    GPT_SIZES,
    Contract,
    Endpoint,
    free_form_problem,
    parse_size,
    price_per_image,
)
from .images import InputImage, inspect

Quality = Literal["standard", "hd", "low", "medium", "high", "auto"]


class ImageParams(BaseModel):
    """Every parameter any of the three endpoints accepts; `null` means absent, as in OpenAI's API."""

    # No blanket string limit: the body limit bounds every field, and `image` may carry megabytes of base64.
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = None
    model: str | None = None
    n: int | None = Field(default=None, ge=1, le=10)
    size: str | None = None
    quality: Quality | None = None
    response_format: Literal["url", "b64_json"] | None = None
    style: Literal["vivid", "natural"] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    moderation: Literal["low", "auto"] | None = None
    input_fidelity: Literal["high", "low"] | None = None
    stream: bool | None = None
    partial_images: int | None = Field(default=None, ge=0, le=3)
    # Generations only: input images as base64 or data URLs, to edit through /generations.
    image: str | list[str] | None = None

    @field_validator("n", "output_compression", "partial_images", mode="before")
    @classmethod
    def _whole_number(cls, value: object) -> object:
        # pydantic would take true as 1 and 2.0 as 2; OpenAI wants an integer. Form fields arrive as text.
        if isinstance(value, bool | float):
            raise ValueError("expected an integer")
        return value


class GenerationRequest(ImageParams):
    prompt: str  # required on /generations; FastAPI documents and enforces it


# Which parameters each endpoint takes beyond the ones every endpoint takes.
_COMMON = {"model", "n", "size", "response_format", "user", "safety_identifier"}
_GPT = {"quality", "background", "output_format", "output_compression", "stream", "partial_images"}
ENDPOINT_PARAMS: dict[Endpoint, frozenset[str]] = {
    "generations": frozenset(_COMMON | _GPT | {"prompt", "style", "moderation", "image"}),
    "edits": frozenset(_COMMON | _GPT | {"prompt", "input_fidelity"}),
    "variations": frozenset(_COMMON),
}
_GPT_ONLY = ("background", "output_format", "output_compression", "moderation", "input_fidelity")


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

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def price(self) -> int:
        return self.price_per_image * self.n


def resolve(
    endpoint: Endpoint,
    params: ImageParams,
    catalog: dict[str, Contract],
    images: list[InputImage] = (),  # type: ignore[assignment]
    mask: InputImage | None = None,
) -> ImageJob:
    """Apply the model contract to validated wire parameters; a 400 naming the parameter on any breach."""
    given = params.model_dump(exclude_none=True)
    for name in given:
        if name not in ENDPOINT_PARAMS[endpoint]:
            raise errors.unknown_parameter(name)

    # `is None`, not `or`: an empty string is a bad value to report, not an absent one to default.
    contract = _contract(catalog, DEFAULT_MODEL if params.model is None else params.model, endpoint)
    for name in _GPT_ONLY:
        if name in given and not contract.gpt_params:
            raise errors.invalid(
                f"'{name}' is not supported by {contract.id}; it applies to GPT image models.",
                name,
                "unsupported_parameter",
            )
    if params.stream:
        raise errors.invalid(
            "Streaming is not supported by this API; omit 'stream' or set it to false.",
            "stream",
            "unsupported_parameter",
        )

    prompt = _prompt(contract, endpoint, params.prompt)
    n = params.n or 1
    if n > contract.n_max:
        raise errors.invalid(
            f"You must provide n={contract.n_max} for this model."
            if contract.n_max == 1
            else f"{n} is greater than the maximum of {contract.n_max} - 'n'",
            "n",
        )

    if params.image is not None:
        images = _generation_images(contract, params.image)
    images, mask = _check_inputs(contract, endpoint, images, mask)

    width, height = _size(
        contract, endpoint, contract.default_size if params.size is None else params.size, images
    )
    quality = params.quality or contract.default_quality
    if quality not in contract.qualities:
        raise errors.invalid_choice("quality", quality, contract.qualities)
    if quality == "auto":
        quality = contract.auto_quality

    if params.style is not None and not contract.styles:
        raise errors.invalid(
            f"'style' is not supported by {contract.id}; it applies to dall-e-3.",
            "style",
            "unsupported_parameter",
        )

    output_format = params.output_format or "png"
    if params.output_compression is not None and params.output_compression < 100 and output_format == "png":
        raise errors.invalid(
            "'output_compression' applies to jpeg and webp output; png is lossless.", "output_compression"
        )
    background = params.background or "auto"
    if background == "transparent":
        if not contract.transparent_background:
            raise errors.invalid(f"Transparent backgrounds are not supported by {contract.id}.", "background")
        if output_format == "jpeg":
            raise errors.invalid("Transparent backgrounds need output_format 'png' or 'webp'.", "background")
    if params.input_fidelity is not None and not contract.input_fidelity:
        raise errors.invalid(
            f"'input_fidelity' is not supported by {contract.id}.", "input_fidelity", "unsupported_parameter"
        )

    return ImageJob(
        endpoint=endpoint,
        contract=contract,
        prompt=prompt,
        n=n,
        width=width,
        height=height,
        quality=quality,
        response_format=params.response_format or contract.default_response_format,
        output_format=output_format,
        output_compression=params.output_compression,
        background=background,
        style=(params.style or contract.styles[0]) if contract.styles else None,
        moderation=params.moderation or "auto",
        input_fidelity=params.input_fidelity,
        images=tuple(images),
        mask=mask,
        price_per_image=price_per_image(contract, quality, f"{width}x{height}"),
    )


def _contract(catalog: dict[str, Contract], model: str, endpoint: Endpoint) -> Contract:
    contract = catalog.get(model)
    if contract is None:
        raise errors.invalid(
            f"The model '{model}' does not exist or you do not have access to it.", "model", "model_not_found"
        )
    if not contract.serves(endpoint):
        serving = sorted(c.id for c in catalog.values() if c.serves(endpoint))
        raise errors.invalid(
            f"Model '{model}' does not support /v1/images/{endpoint}. Models that do: {', '.join(serving)}.",
            "model",
        )
    return contract


def _prompt(contract: Contract, endpoint: Endpoint, prompt: str | None) -> str:
    if endpoint == "variations":
        return ""
    if prompt is None:
        raise errors.invalid("Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter")
    if not prompt.strip():
        raise errors.invalid("Invalid 'prompt': the prompt must not be empty.", "prompt", "empty_string")
    if len(prompt) > contract.prompt_max:
        raise errors.invalid(
            f"Invalid 'prompt': string too long. Expected a string with maximum length "
            f"{contract.prompt_max}, but got a string with length {len(prompt)} instead.",
            "prompt",
            "string_above_max_length",
        )
    return prompt


def _size(contract: Contract, endpoint: Endpoint, size: str, images: list[InputImage]) -> tuple[int, int]:
    if size == "auto" and "auto" in contract.sizes:
        return _auto_size(contract, images)
    parsed = parse_size(size)
    if size in contract.sizes and parsed:
        return parsed
    if contract.free_form and parsed:
        problem = free_form_problem(contract.free_form, *parsed)
        if problem is None:
            return parsed
        raise errors.invalid(f"Invalid value: '{size}'. For {contract.id}, {problem}.", "size")
    raise errors.invalid_choice("size", size, contract.sizes)


def _auto_size(contract: Contract, images: list[InputImage]) -> tuple[int, int]:
    """`auto` is the contract's standard size nearest an input image's aspect (edits), else 1024x1024.

    Free-form contracts choose among the GPT sizes: `auto` means a standard size, not the input's own.
    """
    if not images:
        return 1024, 1024
    aspect = images[0].width / images[0].height
    sizes = [wh for wh in map(parse_size, GPT_SIZES if contract.free_form else contract.sizes) if wh]
    return min(sizes, key=lambda wh: abs(wh[0] / wh[1] - aspect))


def _check_inputs(
    contract: Contract, endpoint: Endpoint, images: list[InputImage], mask: InputImage | None
) -> tuple[list[InputImage], InputImage | None]:
    if endpoint == "variations" and mask is not None:
        raise errors.unknown_parameter("mask", "Variations take no mask.")
    if endpoint == "generations" and not images:
        return [], None
    if not images:
        raise errors.invalid("Missing required parameter: 'image'.", "image", "missing_required_parameter")
    if len(images) > contract.max_input_images:
        if contract.max_input_images == 1:
            raise errors.invalid(
                f"Invalid type for 'image': {contract.id} takes one file, but got {len(images)}.",
                "image",
                "invalid_type",
            )
        raise errors.invalid(
            f"Too many images: at most {contract.max_input_images}, got {len(images)}.",
            "image",
            "too_many_images",
        )
    for img in images:
        _check_image(contract, img)
    if mask is not None:
        first = images[0]
        if mask.format != "PNG" or len(mask.data) >= 4 * 1024 * 1024:
            raise errors.invalid(
                "Invalid 'mask': it must be a PNG under 4 MB.", "mask", "invalid_image_format"
            )
        if (mask.width, mask.height) != (first.width, first.height):
            raise errors.invalid(
                f"Invalid 'mask': its size {mask.width}x{mask.height} differs from the image's "
                f"{first.width}x{first.height}; they must match.",
                "mask",
                "invalid_image_size",
            )
        if not mask.has_alpha:
            raise errors.invalid(
                "Invalid 'mask': it needs an alpha channel; fully transparent pixels mark the area to edit.",
                "mask",
                "invalid_image_format",
            )
    elif endpoint == "edits" and contract.square_png_input and not images[0].has_alpha:
        raise errors.invalid(
            "Invalid input image: with no mask, the image needs an alpha channel "
            "(RGBA, LA); its transparent pixels mark the area to edit.",
            "image",
            "invalid_image_format",
        )
    return images, mask


def _check_image(contract: Contract, img: InputImage) -> None:
    if contract.square_png_input:
        if img.format != "PNG" or len(img.data) >= contract.max_input_bytes:
            raise errors.invalid(
                f"Invalid '{img.param}': uploaded image must be a PNG and less than 4 MB.",
                img.param,
                "invalid_image_format",
            )
        if img.width != img.height:
            raise errors.invalid(
                f"Invalid '{img.param}': uploaded image must be square, got {img.width}x{img.height}.",
                img.param,
                "invalid_image_size",
            )
        return
    if img.format not in contract.input_formats:
        allowed = ", ".join(f.lower() for f in contract.input_formats)
        raise errors.invalid(
            f"Invalid '{img.param}': unsupported image format {img.format.lower() or '?'}; "
            f"supported: {allowed}.",
            img.param,
            "invalid_image_format",
        )
    if len(img.data) > contract.max_input_bytes:
        raise errors.invalid(
            f"Invalid '{img.param}': larger than {contract.max_input_bytes // 2**20} MB.",
            img.param,
            "image_too_large",
        )


_DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


def _generation_images(contract: Contract, image: str | list[str]) -> list[InputImage]:
    """Decode `image` on /generations (base64 or data URLs) for models that edit."""
    if not (contract.serves("edits") and contract.gpt_params):
        raise errors.invalid(
            f"'image' is not supported by {contract.id} on /v1/images/generations.",
            "image",
            "unsupported_parameter",
        )
    items = [image] if isinstance(image, str) else image
    decoded = []
    for i, item in enumerate(items):
        param = "image" if isinstance(image, str) else f"image[{i}]"
        try:
            data = base64.b64decode(_DATA_URL.sub("", item, count=1), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise errors.invalid(
                f"Invalid '{param}': expected base64 image data or a data URL.", param, "invalid_base64"
            ) from exc
        decoded.append(inspect(data, param))
    return decoded

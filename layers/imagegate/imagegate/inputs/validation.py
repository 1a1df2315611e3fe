"""Request validation: the wire shape (pydantic) and the model contract's rules (pure functions).

`ImageParams` checks types and universal ranges; `resolve` applies the contract of the chosen model and
returns an `ImageJob` with every default filled in and every `auto` resolved, priced, ready to run.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from imagegate import errors
from imagegate.catalog.contracts import (
    DEFAULT_MODEL,
    GPT_SIZES,
    Contract,
    Endpoint,
    free_form_problem,
    parse_size,
    price_per_image,
)
from imagegate.inputs.images import MAX_REQUEST_PIXELS, InputImage, Source, Upload, inspect
from imagegate.inputs.request import ImageJob

Quality = Literal["standard", "hd", "low", "medium", "high", "xhigh", "max", "auto"]


class ImageParams(BaseModel):
    """Every parameter any of the three endpoints accepts; `null` means absent, as in OpenAI's API."""

    # No blanket string limit: the body limit bounds every field, and `image` may carry megabytes of base64.
    # Strict, as OpenAI is: "2" is not an integer and "true" not a boolean. Form fields arrive as text and
    # are converted by `form_values` first, by the same rules.
    model_config = ConfigDict(extra="forbid", strict=True)

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

    @field_validator("*", mode="after")
    @classmethod
    def _valid_unicode(cls, value: object, info: ValidationInfo) -> object:
        """Every string must be encodable as UTF-8. JSON's \\uXXXX escapes can carry a lone UTF-16
        surrogate, which nothing downstream (pricing, renderers, logs, JSON responses) could encode."""
        for text in value if isinstance(value, list) else (value,):
            if isinstance(text, str) and not _encodable(text):
                raise PydanticCustomError("invalid_unicode", surrogate_message(info.field_name or "?"))
        return value


class GenerationRequest(ImageParams):
    prompt: str  # required on /generations


# The typed fields a form carries as text (tests/hostile/test_properties.py checks them against the model).
INT_FIELDS = frozenset({"n", "output_compression", "partial_images"})
BOOL_FIELDS = frozenset({"stream"})
_DECIMAL = re.compile(r"-?[0-9]+", re.ASCII)
_BIG = 10**20  # beyond every range: a longer digit string is out of range, not worth converting


def form_values(fields: Mapping[str, str]) -> dict[str, Any]:
    """Multipart text fields as typed values: an integer field takes decimal digits only (`2`, `-1`; not
    `2.0`, ` 2`, `+2` or `0x2`), a boolean field `true` or `false`. Anything else stays text, which the
    strict model then refuses as `invalid_type`, as OpenAI does."""
    values: dict[str, Any] = dict(fields)
    for name, text in fields.items():
        if name in INT_FIELDS and _DECIMAL.fullmatch(text):
            digits = text.lstrip("-")
            number = int(digits) if len(digits) <= 20 else _BIG
            values[name] = -number if text.startswith("-") else number
        elif name in BOOL_FIELDS and text.lower() in ("true", "false"):
            values[name] = text.lower() == "true"
    return values


def surrogate_message(param: str) -> str:
    return (
        f"Invalid '{param}': it contains a lone UTF-16 surrogate, which is not valid Unicode text. "
        "Send the text as UTF-8."
    )


def check_unicode(document: Mapping[str, Any]) -> None:
    """A 400 naming the top-level parameter of any string (a key or a value, at any depth) that is not
    valid Unicode; run on parsed JSON before anything reads or echoes it."""

    def valid(value: Any) -> bool:
        if isinstance(value, str):
            return _encodable(value)
        if isinstance(value, dict):
            return all(valid(k) and valid(v) for k, v in value.items())
        if isinstance(value, list):
            return all(valid(v) for v in value)
        return True

    for name, value in document.items():
        if not (valid(name) and valid(value)):
            raise errors.invalid(surrogate_message(name), name, "invalid_unicode")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# The JSON form of edits takes GPT image models only (DALL-E edits are multipart). OpenAI's spec defaults it
# to gpt-image-1.5, shut down on 2026-12-01: its successor (catalog.json, upstreams) is the default here.
JSON_EDIT_MODEL = "gpt-image-2"


def json_edit_params(params: ImageParams, catalog: dict[str, Contract]) -> ImageParams:
    """The parameters of a JSON edit with its model defaulted; a 400 naming `model` for a model that takes
    edits as multipart/form-data only. An unknown model is left for `resolve` to report."""
    model = JSON_EDIT_MODEL if params.model is None else params.model
    contract = catalog.get(model)
    if contract is not None and contract.serves("edits") and not contract.gpt_params:
        raise errors.invalid(
            f"Model '{model}' takes edits as multipart/form-data only; the JSON form of /v1/images/edits "
            "(images as references) is for GPT image models.",
            "model",
            "unsupported_parameter",
        )
    return params.model_copy(update={"model": model})


# Which parameters each endpoint takes beyond the ones every endpoint takes.
_COMMON = {"model", "n", "size", "response_format", "user", "safety_identifier"}
_GPT = {"quality", "background", "output_format", "output_compression", "stream", "partial_images"}
ENDPOINT_PARAMS: dict[Endpoint, frozenset[str]] = {
    "generations": frozenset(_COMMON | _GPT | {"prompt", "style", "moderation", "image"}),
    "edits": frozenset(_COMMON | _GPT | {"prompt", "input_fidelity"}),
    "variations": frozenset(_COMMON),
}
_GPT_ONLY = (
    "background",
    "output_format",
    "output_compression",
    "moderation",
    "input_fidelity",
    "partial_images",
)


def resolve(
    endpoint: Endpoint,
    params: ImageParams,
    catalog: dict[str, Contract],
    images: Sequence[InputImage | Source] = (),
    mask: InputImage | Source | None = None,
) -> ImageJob:
    """Apply the model contract to validated wire parameters; a 400 naming the parameter on any breach.

    Uploads are opened only after the cheap checks (parameters, model, endpoint, prompt, n, how many
    files), and then only their headers are read: format, dimensions, mode. No pixel is decoded here; that
    happens in the provider, after the key, its rate limit and its balance have been checked.
    """
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
    prompt = _prompt(contract, endpoint, params.prompt)
    n = params.n or 1
    if n > contract.n_max:
        raise errors.invalid(
            f"You must provide n={contract.n_max} for this model."
            if contract.n_max == 1
            else f"{n} is greater than the maximum of {contract.n_max} - 'n'",
            "n",
        )
    if params.stream:
        _check_stream(contract, n, params.response_format)

    if params.image is not None:
        images = _generation_images(contract, params.image)
    inputs, mask = _check_inputs(contract, endpoint, images, mask)

    width, height = _size(
        contract, endpoint, contract.default_size if params.size is None else params.size, inputs
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
        images=tuple(inputs),
        mask=mask,
        price_per_image=price_per_image(contract, quality, f"{width}x{height}"),
        stream=bool(params.stream),
        partial_images=(params.partial_images or 0) if params.stream else 0,
    )


def _check_stream(contract: Contract, n: int, response_format: str | None) -> None:
    """`stream=true`: GPT image models only, one image (the events carry no image index, so the images of
    n > 1 could not be told apart), and b64_json, the only form the events have."""
    if not contract.gpt_params:
        raise errors.invalid(
            f"'stream' is not supported by {contract.id}; streaming applies to GPT image models.",
            "stream",
            "unsupported_parameter",
        )
    if n != 1:
        raise errors.invalid(
            "Streaming makes one image: use n=1 with stream=true (the events carry no image index).", "n"
        )
    if response_format == "url":
        raise errors.invalid(
            "Streaming answers with b64_json only; omit 'response_format' with stream=true.",
            "response_format",
            "unsupported_parameter",
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


def _check_count(contract: Contract, count: int) -> None:
    if count > contract.max_input_images:
        if contract.max_input_images == 1:
            raise errors.invalid(
                f"Invalid type for 'image': {contract.id} takes one file, but got {count}.",
                "image",
                "invalid_type",
            )
        raise errors.invalid(
            f"Too many images: at most {contract.max_input_images}, got {count}.",
            "image",
            "too_many_images",
        )


def _open_all(uploads: Sequence[InputImage | Source]) -> list[InputImage]:
    """Read each upload's header, in order, stopping as soon as the request's pixels exceed the cap."""
    opened: list[InputImage] = []
    pixels = 0
    for upload in uploads:
        img = upload if isinstance(upload, InputImage) else inspect(upload.data, upload.param)
        pixels += img.width * img.height
        if pixels > MAX_REQUEST_PIXELS:
            # A reference of the JSON form names itself (`images[2].file_id`); a multipart part its field.
            param = img.param if "." in img.param else "mask" if img.param == "mask" else "image"
            raise errors.invalid(
                f"Invalid '{param}': the input images come to more than {MAX_REQUEST_PIXELS:,} pixels "
                f"in all (at '{img.param}', {img.width}x{img.height}); send fewer or smaller images.",
                param,
                "image_too_large",
            )
        opened.append(img)
    return opened


def _check_inputs(
    contract: Contract,
    endpoint: Endpoint,
    uploads: Sequence[InputImage | Source],
    mask_upload: InputImage | Source | None,
) -> tuple[list[InputImage], InputImage | None]:
    if endpoint == "variations" and mask_upload is not None:
        raise errors.unknown_parameter("mask", "Variations take no mask.")
    if endpoint == "generations" and not uploads:
        return [], None
    if not uploads:
        raise errors.invalid("Missing required parameter: 'image'.", "image", "missing_required_parameter")
    _check_count(contract, len(uploads))
    # Headers only, and the mask counts towards the pixel cap: a renderer decodes it at full size too.
    opened = _open_all([*uploads, *([mask_upload] if mask_upload is not None else [])])
    images, mask = (opened[:-1], opened[-1]) if mask_upload is not None else (opened, None)
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


def _generation_images(contract: Contract, image: str | list[str]) -> list[Upload]:
    """Decode `image` on /generations (base64 or data URLs) for models that edit; headers are read later."""
    if not (contract.serves("edits") and contract.gpt_params):
        raise errors.invalid(
            f"'image' is not supported by {contract.id} on /v1/images/generations.",
            "image",
            "unsupported_parameter",
        )
    items = [image] if isinstance(image, str) else image
    _check_count(contract, len(items))
    decoded = []
    for i, item in enumerate(items):
        param = "image" if isinstance(image, str) else f"image[{i}]"
        try:
            data = base64.b64decode(_DATA_URL.sub("", item, count=1), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise errors.invalid(
                f"Invalid '{param}': expected base64 image data or a data URL.", param, "invalid_base64"
            ) from exc
        decoded.append(Upload(param, data))
    return decoded

"""The JSON form of `/v1/images/edits`: image references turned into inputs that validation opens.

OpenAI's spec (`EditImageBodyJsonParam`): `images` holds 1-16 `ImageRefParam` objects, each with exactly one
of `image_url` (a URL or a base64 data URL, at most 20,971,520 characters) and `file_id`; `mask` is one
more. Here an `image_url` is a data URL or an https URL, and a `file_id` one of the caller's own uploads
(uploads.py). Each reference is fetched only when validation first reads it, after the cheap checks
(parameters, model, prompt, n, how many images), and then judged by its bytes exactly as a multipart part
is (`images.inspect`). Every failure is a 400 naming the reference (`images[1].image_url`,
`mask.file_id`), before any money moves.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from imagegate import errors
from imagegate.inputs.uploads import MAX_UPLOAD_BYTES, Uploads

if TYPE_CHECKING:
    from imagegate.inputs.outbound import Outbound

MAX_REFERENCES = 16
MAX_IMAGE_URL_CHARS = 20_971_520
# All of one request's https URLs together: their time comes out of the request's upstream budget
# (ImageJob.input_seconds), so it is kept well under it.
URL_FETCH_SECONDS = 10.0
# All of one request's referenced images together: each may be 50 MB, and sixteen of them would not fit the
# function's memory beside the work (the pixel cap is checked only once each is read).
MAX_REFERENCES_BYTES = 64 * 1024 * 1024
_DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+(;[a-z0-9.+-]+=[^;,]*)*;base64,", re.IGNORECASE)
Kind = Literal["image_url", "file_id"]
# What an image URL may answer with; the bytes are judged again by their content (`images.inspect`).
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")


@dataclass(frozen=True)
class Ref:
    """One `{"image_url": ...}` or `{"file_id": ...}` object, as the client sent it."""

    param: str  # where it is: `images[0].image_url`, `mask.file_id`
    kind: Kind
    value: str


def parse(document: dict[str, Any]) -> tuple[list[Ref], Ref | None]:
    """Take `images` and `mask` out of a JSON edit's parameters (what is left are `ImageParams`)."""
    if "images" not in document or document["images"] is None:
        raise errors.invalid("Missing required parameter: 'images'.", "images", "missing_required_parameter")
    items = document.pop("images")
    if not isinstance(items, list):
        raise errors.invalid(
            "Invalid type for 'images': expected an array of image references.", "images", "invalid_type"
        )
    if not 1 <= len(items) <= MAX_REFERENCES:
        raise errors.invalid(
            f"Invalid 'images': expected 1 to {MAX_REFERENCES} image references, got {len(items)}.",
            "images",
            "invalid_value",
        )
    mask = document.pop("mask", None)
    return (
        [_ref(item, f"images[{i}]") for i, item in enumerate(items)],
        None if mask is None else _ref(mask, "mask"),
    )


def _ref(item: Any, where: str) -> Ref:
    if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in ("image_url", "file_id"):
        raise errors.invalid(
            f"Invalid '{where}': expected an object with exactly one of 'image_url' and 'file_id'.",
            where,
            "invalid_type",
        )
    [(kind, value)] = item.items()
    param = f"{where}.{kind}"
    if not isinstance(value, str):
        raise errors.invalid(f"Invalid type for '{param}': expected a string.", param, "invalid_type")
    if kind == "image_url" and len(value) > MAX_IMAGE_URL_CHARS:
        raise errors.invalid(
            f"Invalid '{param}': longer than {MAX_IMAGE_URL_CHARS} characters.",
            param,
            "string_above_max_length",
        )
    return Ref(param, kind, value)


class Reference:
    """An input named by reference: `data` is fetched on first read, once."""

    def __init__(self, param: str, load: Callable[[], bytes]) -> None:
        self.param = param
        self._load = load

    @cached_property
    def data(self) -> bytes:
        return self._load()


# Fetches an https image: (url, param, timeout) -> bytes, or a 400 naming `param`.
UrlFetcher = Callable[[str, str, float], bytes]


class Resolver:
    """Turns one request's references into inputs, for one account: file ids are looked up under that
    account's prefix only, and the request's https URLs share one time budget."""

    def __init__(
        self,
        uploads: Uploads,
        account_id: str,
        fetch_url: UrlFetcher,
        clock: Callable[[], float] = time.monotonic,
        url_seconds: float = URL_FETCH_SECONDS,
    ) -> None:
        self._uploads = uploads
        self._account_id = account_id
        self._fetch_url = fetch_url
        self._clock = clock
        self._url_seconds = url_seconds
        self._deadline: float | None = None
        self._read = 0  # bytes of this request's references so far

    def inputs(self, refs: list[Ref], mask: Ref | None) -> tuple[list[Reference], Reference | None]:
        return [self._reference(r) for r in refs], None if mask is None else self._reference(mask)

    def _reference(self, ref: Ref) -> Reference:
        return Reference(ref.param, lambda: self._load(ref))

    def _load(self, ref: Ref) -> bytes:
        data = self._fetch(ref)
        self._read += len(data)
        if self._read > MAX_REFERENCES_BYTES:
            raise errors.invalid(
                f"Invalid '{ref.param}': the request's images come to more than {MAX_REFERENCES_BYTES} bytes "
                "together.",
                ref.param,
                "inputs_too_large",
            )
        return data

    def _fetch(self, ref: Ref) -> bytes:
        if ref.kind == "file_id":
            return self._uploads.read(self._account_id, ref.value, ref.param)
        if ref.value[:5].lower() == "data:":
            return data_url(ref.value, ref.param)
        # Any other URL goes to the outbound check, which takes https to public addresses only.
        now = self._clock()
        if self._deadline is None:
            self._deadline = now + self._url_seconds
        return self._fetch_url(ref.value, ref.param, max(0.0, self._deadline - now))


def fetch_image(outbound: Outbound, url: str, param: str, timeout: float) -> bytes:
    """An image URL's bytes through `outbound` (public https addresses only, the address pinned, redirects
    checked hop by hop): at most MAX_UPLOAD_BYTES of an image content type; any refusal a 400."""
    from imagegate.inputs.outbound import OutboundError

    try:
        return outbound.fetch(
            url, max_bytes=MAX_UPLOAD_BYTES, timeout=timeout, content_types=IMAGE_TYPES
        ).body
    except OutboundError as exc:
        raise errors.invalid(f"Invalid '{param}': {exc.message}", param, exc.code) from exc


def data_url(url: str, param: str) -> bytes:
    """The bytes of a base64 `data:image/...` URL; a 400 naming `param` for anything else."""
    prefix = _DATA_URL.match(url)
    if prefix is None:
        raise errors.invalid(
            f"Invalid '{param}': a data URL must be data:image/<type>;base64,<data>.",
            param,
            "invalid_image_url",
        )
    try:
        return base64.b64decode(url[prefix.end() :], validate=True)
    except ValueError as exc:  # binascii.Error, or characters outside ASCII
        raise errors.invalid(
            f"Invalid '{param}': its base64 data is malformed.", param, "invalid_base64"
        ) from exc

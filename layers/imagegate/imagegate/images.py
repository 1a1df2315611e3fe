"""Reading uploaded images and encoding outputs, with Pillow (imported on first use: cold start)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import invalid

if TYPE_CHECKING:
    from PIL.Image import Image

ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# Far above any accepted size (3840x2160); stops decompression bombs before decoding.
MAX_INPUT_PIXELS = 40_000_000


@dataclass(frozen=True)
class InputImage:
    """An uploaded image, checked by its bytes rather than its declared content type."""

    param: str
    data: bytes
    format: str  # Pillow's name: PNG, JPEG, WEBP, ...
    width: int
    height: int
    has_alpha: bool

    def open(self) -> Image:
        from PIL import Image as PILImage

        return PILImage.open(io.BytesIO(self.data))


def inspect(data: bytes, param: str) -> InputImage:
    """Decode the header of an upload; a 400 naming `param` when it is not an image at all."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    if not data:
        raise invalid(f"Invalid file '{param}': the file is empty.", param, "invalid_image")
    PILImage.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            fmt, (width, height), mode = img.format or "", img.size, img.mode
            has_alpha = mode in ALPHA_MODES or "transparency" in img.info
            img.verify()
    except (UnidentifiedImageError, PILImage.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise invalid(
            f"Invalid file '{param}': could not read it as an image ({type(exc).__name__}).",
            param,
            "invalid_image_format",
        ) from exc
    return InputImage(param, data, fmt, width, height, has_alpha)


def encode(img: Image, output_format: str, compression: int | None) -> bytes:
    """Encode as png, jpeg or webp; `compression` is OpenAI's 0-100 (100 = best quality)."""
    buf = io.BytesIO()
    if output_format == "jpeg":
        img.convert("RGB").save(buf, "JPEG", quality=_quality(compression))
    elif output_format == "webp":
        img.save(buf, "WEBP", quality=_quality(compression))
    else:
        img.save(buf, "PNG")
    return buf.getvalue()


def _quality(compression: int | None) -> int:
    # Pillow's JPEG quality tops out at 95 in practice; 100 disables useful compression altogether.
    return 95 if compression is None else max(1, min(95, compression))

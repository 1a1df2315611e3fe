"""Reading uploaded images and encoding outputs, with Pillow (imported on first use: cold start)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import APIError, invalid

if TYPE_CHECKING:
    from PIL.Image import Image

ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# 4096x4096: above any output size (3840x2160). Checked from the header, before any pixel is decoded, so a
# small file that claims a huge canvas (a decompression bomb) costs nothing.
MAX_INPUT_PIXELS = 4096 * 4096


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

    if not data:
        raise invalid(f"Invalid file '{param}': the file is empty.", param, "invalid_image")
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            fmt, (width, height), mode = img.format or "", img.size, img.mode
            has_alpha = mode in ALPHA_MODES or "transparency" in img.info
            if width * height > MAX_INPUT_PIXELS:
                raise invalid(
                    f"Invalid file '{param}': {width}x{height} is more than {MAX_INPUT_PIXELS} pixels.",
                    param,
                    "image_too_large",
                )
            # Decode every pixel now, before anything is reserved: a file whose header is fine but whose
            # data is corrupt must be a 400 here, not a failure inside a provider.
            img.load()
    except APIError:
        raise
    except Exception as exc:  # Pillow's decoders raise many exception types on hostile input
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


def fit(data: bytes, width: int, height: int, output_format: str, compression: int | None) -> bytes:
    """An upstream's image at exactly `width`x`height` in `output_format`: scaled to cover, centre-cropped.

    Upstreams generate at their own sizes (a successor model's nearest size, an aspect ratio's native size);
    the contract promises the requested size and format, so every provider returns its images through this.
    """
    from PIL import Image as PILImage
    from PIL import ImageOps

    with PILImage.open(io.BytesIO(data)) as img:
        if img.size == (width, height) and (img.format or "").lower() == output_format:
            return data  # already right: re-encoding would only lose quality
        img.load()
        mode = "RGBA" if img.mode in ALPHA_MODES or "transparency" in img.info else "RGB"
        fitted = ImageOps.fit(img.convert(mode), (width, height), PILImage.Resampling.LANCZOS)
    return encode(fitted, output_format, compression)


def _quality(compression: int | None) -> int:
    # Pillow's JPEG quality tops out at 95 in practice; 100 disables useful compression altogether.
    return 95 if compression is None else max(1, min(95, compression))

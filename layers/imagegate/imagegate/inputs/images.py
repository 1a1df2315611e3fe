"""Reading uploaded images and encoding outputs, with Pillow (imported on first use: cold start)."""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from imagegate.errors import APIError, invalid

if TYPE_CHECKING:
    from PIL.Image import Image

ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# 4096x4096: above any output size (3840x2160). Checked from the header, before any pixel is decoded, so a
# small file that claims a huge canvas (a decompression bomb) costs nothing.
MAX_INPUT_PIXELS = 4096 * 4096
# All the input images (and the mask) of one request: 64 Mi pixels, four images at the largest size or
# sixteen at 2048x2048. Bounds what a renderer decodes for one request: about 256 MB as RGBA, a few
# seconds of CPU. Legitimate uploads meet the body limit long before this; only files that decompress
# far beyond their size (bombs) reach it.
MAX_REQUEST_PIXELS = 4 * MAX_INPUT_PIXELS
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Source(Protocol):
    """What validation opens: an `Upload`, or an input named by reference and fetched when first read."""

    @property
    def param(self) -> str: ...

    @property
    def data(self) -> bytes: ...


@dataclass(frozen=True)
class Upload:
    """An uploaded file as it arrived, not yet opened: validation reads its header only when the cheap
    checks have passed."""

    param: str
    data: bytes


@dataclass(frozen=True)
class InputImage:
    """An uploaded image, checked by its bytes rather than its declared content type."""

    param: str
    data: bytes
    format: str  # Pillow's name: PNG, JPEG, WEBP, ...
    width: int
    height: int
    has_alpha: bool

    def open(self, size: tuple[int, int] | None = None) -> Image:
        """The upload, decoded: validation read only its header, so this is where its pixels are first
        decoded, in whichever provider needs them (after the key, rate limit and balance have passed).
        `size`: a JPEG may decode at a reduced scale that still covers it. Pixels that cannot be decoded
        are the client's 400 (a final ProviderError, refunded), never a provider's crash."""
        from PIL import Image as PILImage

        img = PILImage.open(io.BytesIO(self.data))
        try:
            if size is not None:
                img.draft(img.mode, size)
            img.load()
        except Exception as exc:  # Pillow's decoders raise many exception types on hostile input
            img.close()
            raise undecodable(self, exc) from exc
        return img


def inspect(data: bytes, param: str) -> InputImage:
    """Read the header of an upload (format, dimensions, mode; no pixel is decoded); a 400 naming `param`
    when it is not an image, claims too large a canvas, or (PNG) is cut short or has a damaged chunk.

    Pixel data that is corrupt behind an intact structure is found when a provider decodes it, after the
    request's money is reserved: the provider answers 400 and the request is refunded.
    """
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
        if fmt == "PNG" and not _png_intact(data):
            raise ValueError("truncated or damaged PNG")
    except APIError:
        raise
    except Exception as exc:  # Pillow's decoders raise many exception types on hostile input
        raise invalid(
            f"Invalid file '{param}': could not read it as an image ({type(exc).__name__}).",
            param,
            "invalid_image_format",
        ) from exc
    return InputImage(param, data, fmt, width, height, has_alpha)


def _png_intact(data: bytes) -> bool:
    """Every chunk complete, its CRC right, up to IEND: the file's structure, checked without inflating the
    pixel data (a CRC over the compressed bytes costs what reading them does, whatever they decode to)."""
    view = memoryview(data)
    offset = len(_PNG_SIGNATURE)
    while offset + 12 <= len(data):
        length = int.from_bytes(view[offset : offset + 4], "big")
        end = offset + 8 + length
        if end + 4 > len(data):
            return False
        if zlib.crc32(view[offset + 4 : end]) != int.from_bytes(view[end : end + 4], "big"):
            return False
        if view[offset + 4 : offset + 8] == b"IEND":
            return True
        offset = end + 4
    return False


def png_size(data: bytes) -> tuple[int, int] | None:
    """A PNG's width and height from its IHDR chunk (always the first), or None when `data` is not a PNG."""
    if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def undecodable(image: InputImage, exc: Exception) -> Exception:
    """An upload whose header was fine but whose pixels are not: a 400 naming it, the same on any route."""
    from imagegate.errors import ProviderError

    return ProviderError(
        f"Invalid file '{image.param}': its image data could not be decoded ({type(exc).__name__}).",
        status=400,
        code="invalid_image_format",
        type="invalid_request_error",
        param=image.param,
        fallover=False,
    )


def encode(img: Image, output_format: str, compression: int | None, *, png_level: int = 6) -> bytes:
    """Encode as png, jpeg or webp; `compression` is OpenAI's 0-100 (100 = best quality); `png_level` is
    zlib's effort for PNG (6, Pillow's default: smaller files, three times the CPU of 1)."""
    buf = io.BytesIO()
    if output_format == "jpeg":
        img.convert("RGB").save(buf, "JPEG", quality=_quality(compression))
    elif output_format == "webp":
        img.save(buf, "WEBP", quality=_quality(compression))
    else:
        img.save(buf, "PNG", compress_level=png_level)
    return buf.getvalue()


def fit(data: bytes, width: int, height: int, output_format: str, compression: int | None) -> bytes:
    """An upstream's image at exactly `width`x`height` in `output_format`: scaled to cover, centre-cropped.

    Upstreams generate at their own sizes (a successor model's nearest size, an aspect ratio's native size);
    the contract promises the requested size and format, so every provider returns its images through this.
    """
    if output_format == "png" and png_size(data) == (width, height) and _png_intact(data):
        # Already right, and whole: the usual answer of an upstream asked for this size. Read from the header
        # without Pillow, whose import (~60 ms) would otherwise fall on a cold start's first request.
        return data
    from PIL import Image as PILImage
    from PIL import ImageOps

    from imagegate.errors import ProviderError

    try:
        with PILImage.open(io.BytesIO(data)) as img:
            if img.size == (width, height) and (img.format or "").lower() == output_format:
                return data  # already right: re-encoding would only lose quality
            if img.width * img.height > MAX_INPUT_PIXELS:
                # An upstream's answer is decoded here; one claiming a canvas this size is not to be trusted.
                raise ProviderError(
                    f"The upstream returned an image of {img.width}x{img.height} pixels, too large to "
                    "process.",
                    code="upstream_bad_response",
                )
            img.draft(img.mode, (width, height))  # JPEG: decode at a reduced scale that still covers the size
            img.load()
            mode = "RGBA" if img.mode in ALPHA_MODES or "transparency" in img.info else "RGB"
            fitted = ImageOps.fit(img.convert(mode), (width, height), PILImage.Resampling.LANCZOS)
    except (OSError, ValueError, SyntaxError, EOFError, PILImage.DecompressionBombError) as exc:
        # Whatever the provider: an upstream answer that is not a decodable image falls over to the next
        # route as a bad response, never a 500 (Pillow raises all of these for broken data).
        raise ProviderError(
            f"The upstream returned data that is not a decodable image ({type(exc).__name__}).",
            code="upstream_bad_response",
        ) from None
    return encode(fitted, output_format, compression)


def _quality(compression: int | None) -> int:
    # Pillow's JPEG quality tops out at 95 in practice; 100 disables useful compression altogether.
    return 95 if compression is None else max(1, min(95, compression))

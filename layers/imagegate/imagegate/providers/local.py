"""The built-in offline provider: deterministic Pillow drawings, never presented as AI.

Images depend only on the prompt, the parameters and the image index, so tests can compare them. Edits
redraw only where the mask (or the image's own alpha) is transparent; variations recolour and mirror
the input.
"""

from __future__ import annotations

import functools
import hashlib
import io
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

from PIL import Image, ImageChops, ImageDraw, ImageFont, ImageOps

from imagegate.inputs.images import encode
from imagegate.providers import Deps, Operation, PartialImage, ProviderResult, StreamItem, Upstream, run

if TYPE_CHECKING:
    from imagegate.inputs.images import InputImage
    from imagegate.inputs.request import ImageJob

LABEL = "imagegate local renderer"
# zlib's fastest level: the drawings are placeholders, and level 6 took two thirds of their CPU (a 256x256
# drawing: ~15 ms instead of ~45 ms), the dev server's largest cost of its own. The PNGs are larger: a fifth
# at 256x256, 38% at 1024x1024, 64% at 2048x2048 (also for the `imagegate-local` model and DemoMode stacks,
# whose drawings are placeholders too).
PNG_LEVEL = 1


class LocalProvider:
    name = "local"

    def supports(self, operation: Operation) -> bool:
        return True

    def generate(self, job: ImageJob) -> ProviderResult:
        images = [
            self._finish(job, render(job.prompt, job.width, job.height, seed(job, i))) for i in range(job.n)
        ]
        return self._result(job, images)

    def edit(self, job: ImageJob) -> ProviderResult:
        base = _decoded(job.images[0], (job.width, job.height))
        edit_area = self._edit_area(job, base)
        # Decoded one at a time and kept only as thumbnails (an eighth of the side: 15 of them fit a row):
        # up to 16 inputs must not all sit in memory.
        side = (job.width // 8, job.height // 8)
        thumbs = [_thumbnail(img, side) for img in job.images[1:]]
        keep = ImageChops.invert(edit_area)  # where the input shows through
        del edit_area
        images = []
        for i in range(job.n):
            drawing = render(job.prompt, job.width, job.height, seed(job, i))
            for k, thumb in enumerate(thumbs):
                drawing.paste(thumb, (8 + k * (side[0] + 8) % job.width, 8), thumb)
            drawing.paste(base, (0, 0), keep)  # in place: no third full-size canvas per image
            if i == job.n - 1:
                del base, keep, thumbs  # the last encode needs none of them: its peak is theirs no more
            images.append(self._finish(job, drawing))
        return self._result(job, images)

    def vary(self, job: ImageJob) -> ProviderResult:
        source = _decoded(job.images[0], (job.width, job.height))
        images = []
        for i in range(job.n):
            rng = random.Random(seed(job, i))
            r, g, b, a = source.split()
            channels = [r, g, b]
            rng.shuffle(channels)
            varied = Image.merge("RGBA", (*channels, a))
            if i % 2:
                varied = ImageOps.mirror(varied)
            images.append(self._finish(job, varied))
        return self._result(job, images)

    def stream(self, job: ImageJob) -> Iterator[StreamItem]:
        """Real progressive partials, coarse to fine: partial i of k is the final image at 1/2**(k-i+1) of its
        resolution (with k=2: 1/8, then 1/4), scaled back up to the full size, then the final image."""
        result = run(self, job)
        if job.partial_images:
            with Image.open(io.BytesIO(result.images[0])) as final:
                final.load()
                for i in range(job.partial_images):
                    factor = 2 ** (job.partial_images - i + 1)
                    small = (max(1, final.width // factor), max(1, final.height // factor))
                    coarse = final.resize(small, Image.Resampling.BOX).resize(
                        final.size, Image.Resampling.NEAREST
                    )
                    yield PartialImage(
                        encode(coarse, job.output_format, job.output_compression, png_level=PNG_LEVEL), i
                    )
        yield result

    @staticmethod
    def _edit_area(job: ImageJob, base: Image.Image) -> Image.Image:
        """White where the image may change: the mask's transparent pixels; with no mask, dall-e-2 uses
        the image's own transparent pixels, and GPT models rework the whole image (drawn over it)."""
        if job.mask is not None:
            alpha = _decoded(job.mask, (job.width, job.height)).getchannel("A")
            return ImageChops.invert(alpha.point(lambda v: 255 if v else 0))
        if job.contract.square_png_input:
            return ImageChops.invert(base.getchannel("A").point(lambda v: 255 if v else 0))
        return Image.new("L", base.size, 160)

    @staticmethod
    def _finish(job: ImageJob, img: Image.Image) -> bytes:
        if job.background == "transparent":
            img = _transparent_corners(img)
        elif job.output_format == "jpeg" or job.background == "opaque":
            img = img.convert("RGB")
        return encode(img, job.output_format, job.output_compression, png_level=PNG_LEVEL)

    @staticmethod
    def _result(job: ImageJob, images: list[bytes]) -> ProviderResult:
        # No usage: nothing was tokenised, so the contract's per-image price applies.
        return ProviderResult(
            images=images, revised_prompt=job.prompt if job.contract.revised_prompt else None
        )


def create(upstream: Upstream, deps: Deps) -> LocalProvider:
    return LocalProvider()


def _thumbnail(image: InputImage, box: tuple[int, int]) -> Image.Image:
    with image.open(box) as img:  # decoded at a reduced scale where the format allows (JPEG draft mode)
        img.thumbnail(box)
        return img.convert("RGBA")


def _decoded(image: InputImage, size: tuple[int, int]) -> Image.Image:
    """An upload decoded once, RGBA at `size`. Modes that resize well are resized before the RGBA
    conversion, so no full-size RGBA copy is made of them."""
    with image.open(size) as img:
        if img.mode not in ("RGBA", "RGB", "L", "LA"):
            return img.convert("RGBA").resize(size)
        resized = img.resize(size)
    return resized if resized.mode == "RGBA" else resized.convert("RGBA")


def seed(job: ImageJob, index: int) -> int:
    material = f"{job.contract.id}|{job.endpoint}|{job.prompt}|{job.size}|{job.quality}|{job.style}|{index}"
    return int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big")


def render(prompt: str, width: int, height: int, seed_value: int) -> Image.Image:
    """A gradient, a few shapes and the prompt's first words: cheap, deterministic, recognisably fake."""
    rng = random.Random(seed_value)
    top = tuple(rng.randrange(256) for _ in range(3))
    bottom = tuple(rng.randrange(256) for _ in range(3))
    gradient = Image.linear_gradient("L").resize((width, height))
    # One canvas: the bottom colour painted through the gradient onto the top colour (what composite of two
    # full-size colour canvases gives, without making them).
    img = Image.new("RGBA", (width, height), (*top, 255))
    img.paste((*bottom, 255), (0, 0, width, height), gradient)
    del gradient
    draw = ImageDraw.Draw(img)
    unit = min(width, height)
    for _ in range(6):
        x, y = rng.randrange(width), rng.randrange(height)
        r = rng.randrange(unit // 12, unit // 4)
        colour = (*(rng.randrange(256) for _ in range(3)), 255)
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        else:
            draw.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=colour)
    size = max(10, unit // 24)
    # Text stays inside the frame that a transparent background clears.
    left, top, bottom = width // 6, height // 6, height - height // 6 - unit // 20
    for text, origin, stroke in (
        (LABEL, (left, top), 1),
        (" ".join(prompt.split()[:8])[:60], (left, bottom), 2),
    ):
        layer, (dx, dy) = _text_layer(text, size, stroke)
        img.alpha_composite(layer, (origin[0] + dx, origin[1] + dy))
    return img


# Bounded by count, and so by memory: a layer is at most 60 characters at the largest font, ~1.2 MB RGBA.
@functools.lru_cache(maxsize=16)
def _text_layer(text: str, size: int, stroke: int) -> tuple[Image.Image, tuple[int, int]]:
    """`text` in white outlined in black on a transparent layer, and where it sits from the text's origin.

    FreeType's outline (stroke) was half a drawing's CPU; the label is the same in every drawing of a size,
    and a prompt may repeat, so the last few layers are kept (never written to after this): 16 at most,
    under 20 MB even for long prompts at the largest sizes.
    """
    font = ImageFont.load_default(size=size)
    x0, y0, x1, y1 = (int(v) for v in font.getbbox(text, stroke_width=stroke))
    layer = Image.new("RGBA", (max(1, x1 - x0), max(1, y1 - y0)), (0, 0, 0, 0))
    ImageDraw.Draw(layer).text(
        (-x0, -y0),
        text,
        fill=(255, 255, 255, 255),
        font=font,
        stroke_width=stroke,
        stroke_fill=(0, 0, 0, 255),
    )
    return layer, (x0, y0)


def _transparent_corners(img: Image.Image) -> Image.Image:
    """Transparent background requested: clear a frame around the drawing."""
    img = img.convert("RGBA")
    w, h = img.size
    alpha = Image.new("L", (w, h), 0)
    ImageDraw.Draw(alpha).rounded_rectangle(
        (w // 8, h // 8, w - w // 8, h - h // 8), radius=min(w, h) // 8, fill=255
    )
    img.putalpha(alpha)
    return img

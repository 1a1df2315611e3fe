"""Google Gemini image models through the REST `generateContent` method.

Request/response: https://ai.google.dev/api/generate-content (contents[].parts[] text and inline_data;
generationConfig.responseModalities and imageConfig {aspectRatio, imageSize}; candidates[].content.parts[]
.inlineData; promptFeedback.blockReason; candidates[].finishReason). Aspect ratios: ImageConfig in
https://pub.dev/documentation/google_cloud_ai_generativelanguage_v1beta/latest/generativelanguage/ImageConfig-class.html
plus 4:5 and 5:4 from the image-generation guide; newer models add 1:4, 4:1, 1:8 and 8:1, which are never
the nearest for a contract size (at most 3:1). Block reasons:
https://googleapis.github.io/js-genai/release_docs/enums/types.BlockedReason.html and FinishReason in
https://firebase.google.com/docs/reference/android/com/google/firebase/ai/type/FinishReason.

- One call makes one image (there is no sampleCount): n images are n parallel calls, and a partial
  success is returned as such (the service charges pro rata).
- Gemini has no mask input. With a mask (or, for dall-e-2 edits, the image's own transparency) the edit is
  composited: the original's pixels where the mask is not fully transparent, Gemini's where it is, which
  is OpenAI's mask contract ("fully transparent pixels mark the area to edit").
- Variations: the input image plus a fixed instruction to vary it.
- Gemini makes no transparent backgrounds; usage is not OpenAI-shaped, so none is reported.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

from imagegate.errors import ProviderError
from imagegate.inputs.images import encode, fit
from imagegate.providers import Deps, Operation, ProviderResult, Upstream, content_policy, gather
from imagegate.providers._http import bad_response, nearest_aspect, post
from imagegate.storage import CONTENT_TYPES

if TYPE_CHECKING:
    import httpx

    from imagegate.inputs.images import InputImage
    from imagegate.inputs.request import ImageJob

BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
# Finish/block reasons that mean "refused on safety, policy or copyright grounds".
BLOCK_REASONS = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "RECITATION",
        "IMAGE_RECITATION",
        "SPII",
    }
)
VARY_INSTRUCTION = (
    "Create a variation of this image: keep its subject, composition and style, and change the details."
)


class GeminiProvider:
    name = "gemini"

    def __init__(self, upstream: Upstream, client: httpx.Client) -> None:
        self.upstream = upstream
        self.client = client
        self.url = f"{(upstream.base_url or BASE_URL).rstrip('/')}/models/{upstream.model}:generateContent"

    def supports(self, operation: Operation) -> bool:
        return True

    def generate(self, job: ImageJob) -> ProviderResult:
        return self._fitted(job, self._images(job, [{"text": job.prompt}]))

    def edit(self, job: ImageJob) -> ProviderResult:
        generated = self._images(job, [{"text": job.prompt}, *(_inline(img) for img in job.images)])
        # dall-e-2 edits where its (PNG) image is transparent: the image is its own mask.
        mask = job.mask or (job.images[0] if job.contract.id == "dall-e-2" else None)
        if mask is None:
            return self._fitted(job, generated)
        return ProviderResult(images=[_keep_unmasked(job, data, mask) for data in generated])

    def vary(self, job: ImageJob) -> ProviderResult:
        return self._fitted(job, self._images(job, [{"text": VARY_INSTRUCTION}, _inline(job.images[0])]))

    def _images(self, job: ImageJob, parts: list[dict[str, Any]]) -> list[bytes]:
        image_config = {"aspectRatio": aspect_ratio(job.width, job.height)}
        edge = max(job.width, job.height)
        if edge > 1600:  # the default 1K renders about 1024 px on the long side; fitting up further blurs
            image_config["imageSize"] = "4K" if edge > 2816 else "2K"
        body = {
            "contents": [{"parts": parts}],
            "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": image_config},
        }

        key = self.upstream.api_key
        headers = {"x-goog-api-key": key} if key else {}  # a keyless proxy in front of Gemini

        def once() -> bytes:
            answer = post(
                self.client,
                self.url,
                label=self.name,
                timeout_s=self.upstream.timeout_s,
                secret=key,
                headers=headers,
                json=body,
            )
            return _image(answer)

        return gather([once] * job.n)

    @staticmethod
    def _fitted(job: ImageJob, generated: list[bytes]) -> ProviderResult:
        return ProviderResult(
            images=[
                fit(d, job.width, job.height, job.output_format, job.output_compression) for d in generated
            ]
        )


def create(upstream: Upstream, deps: Deps) -> GeminiProvider:
    return GeminiProvider(upstream, deps.http)


def aspect_ratio(width: int, height: int) -> str:
    """Gemini's supported aspect ratio nearest to `width`x`height`."""
    shapes = {tuple(int(x) for x in r.split(":")): r for r in ASPECT_RATIOS}
    return shapes[nearest_aspect(width, height, shapes)]


def _inline(image: InputImage) -> dict[str, Any]:
    return {
        "inline_data": {
            "mime_type": CONTENT_TYPES[image.format.lower()],
            "data": base64.b64encode(image.data).decode(),
        }
    }


def _image(answer: Any) -> bytes:
    """The image in one generateContent answer, or the reason there is none."""
    if not isinstance(answer, dict):
        raise bad_response("gemini", "an answer that is not a JSON object")
    try:
        return _parse(answer)
    except (AttributeError, TypeError, IndexError, KeyError):
        raise bad_response("gemini", "an answer of an unexpected shape") from None


def _parse(answer: dict[str, Any]) -> bytes:
    blocked = (answer.get("promptFeedback") or {}).get("blockReason")
    if blocked:
        raise content_policy(f"Your request was rejected by the upstream's safety system ({blocked}).")
    candidates = answer.get("candidates") or [{}]
    candidate = candidates[0]
    images = []
    for part in (candidate.get("content") or {}).get("parts") or ():
        data = part.get("inlineData") or part.get("inline_data") or {}
        mime = data.get("mimeType") or data.get("mime_type") or ""
        # Thinking models also send draft images flagged `thought`; the answer is the last final one.
        if mime.startswith("image/") and data.get("data") and not part.get("thought"):
            images.append(data["data"])
    if images:
        return _decoded(images[-1])
    reason = candidate.get("finishReason") or "none given"
    if reason in BLOCK_REASONS:
        raise content_policy(f"Your request was rejected by the upstream's safety system ({reason}).")
    # Image models now and then answer with text only; another attempt usually draws.
    raise ProviderError(
        f"The upstream image service (gemini) returned no image (finish reason {reason}).",
        code="upstream_no_image",
        retry=True,
    )


def _keep_unmasked(job: ImageJob, generated: bytes, mask: InputImage) -> bytes:
    """Gemini's pixels only where the mask is fully transparent; the original's everywhere else."""
    from PIL import Image, ImageOps

    size = (job.width, job.height)
    with job.images[0].open() as img:
        original = ImageOps.fit(img.convert("RGBA"), size, Image.Resampling.LANCZOS)
    with Image.open(io.BytesIO(generated)) as img:
        edited = ImageOps.fit(img.convert("RGBA"), size, Image.Resampling.LANCZOS)
    with mask.open() as img:
        # Nearest-neighbour keeps the mask's edge exactly where the client drew it.
        alpha = ImageOps.fit(img.convert("RGBA").getchannel("A"), size, Image.Resampling.NEAREST)
    keep = alpha.point(lambda v: 255 if v else 0)
    result = Image.composite(original, edited, keep)
    return encode(
        result if job.images[0].has_alpha else result.convert("RGB"),
        job.output_format,
        job.output_compression,
    )


def _decoded(b64: str) -> bytes:
    """Inline data that really is an image: a broken one is the upstream's failure, not a crash later."""
    from PIL import Image

    try:
        data = base64.b64decode(b64, validate=True)
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception:  # binascii and Pillow's many decoder errors
        raise bad_response("gemini", "inline data that is not an image") from None
    return data

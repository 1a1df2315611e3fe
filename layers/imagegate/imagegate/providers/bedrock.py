"""Amazon Bedrock image models through `bedrock-runtime` InvokeModel (JSON in, base64 images out).

Request and response shapes, size rules and error texts follow AWS's documentation:
- Nova Canvas: https://docs.aws.amazon.com/nova/latest/userguide/image-gen-access.html
  (sizes: #image-gen-resolutions; content-filter texts: .../userguide/image-gen-errors.html)
- Titan Image Generator v2: https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters-titan-image.html
- Stability on Bedrock: https://docs.aws.amazon.com/bedrock/latest/userguide/
  model-parameters-diffusion-stable-image-core-text-image-request-response.html

Nova Canvas and Titan v2 share one schema (taskType + task params + imageGenerationConfig) and make up to 5
images a call; Stability models make one image a call, text-to-image only. Several calls for one job run in
a small thread pool, and a job returns whatever images were made when only some calls fail (the service
charges pro rata). No retries here: clients are built with max_attempts=1 and the router retries.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
from functools import cached_property
from typing import TYPE_CHECKING, Any

from imagegate.errors import ProviderError
from imagegate.inputs.images import fit
from imagegate.providers import Deps, Operation, ProviderResult, Upstream, content_policy, gather

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from PIL.Image import Image

    from imagegate.inputs.images import InputImage
    from imagegate.inputs.request import ImageJob

# Most concurrent InvokeModel calls for one job: Bedrock's image quotas are low, and a job is at most 10.
PARALLEL_CALLS = 4
AMAZON_BATCH = 5  # numberOfImages range is 1-5 for Nova Canvas and Titan v2

_FAMILIES = (
    ("amazon.nova-canvas", "nova"),
    ("amazon.titan-image-generator-v2", "titan"),
    ("stability.", "stability"),
)
# A cross-region inference profile id carries a geography prefix: "us.stability.sd3-5-large-v1:0".
_PROFILE_PREFIX = re.compile(r"^[a-z]{2,6}\.(?=amazon\.|stability\.)")
_OPTIONS = {
    "nova": {"negative_text", "cfg_scale", "similarity_strength"},
    "titan": {"negative_text", "cfg_scale", "similarity_strength"},
    "stability": {"negative_text"},
}
DEFAULT_SIMILARITY = 0.7  # AWS's documented default for IMAGE_VARIATION

# Nova Canvas: each side 320-4096 and a multiple of 16, aspect within 1:4..4:1, fewer than 4,194,304 pixels.
NOVA_MIN_SIDE, NOVA_MAX_SIDE, NOVA_MAX_PIXELS = 320, 4096, 4_194_304
# Titan v2 accepts only these sizes (AWS's table; 1173x640 is its 16:9 entry, not a multiple of 16).
TITAN_SIZES = (
    (1024, 1024), (768, 768), (512, 512),
    (768, 1152), (384, 576), (1152, 768), (576, 384),
    (768, 1280), (384, 640), (1280, 768), (640, 384),
    (896, 1152), (448, 576), (1152, 896), (576, 448),
    (768, 1408), (384, 704), (1408, 768), (704, 384),
    (640, 1408), (320, 704), (1408, 640), (704, 320),
    (1152, 640), (1173, 640),
)  # fmt: skip
STABILITY_RATIOS = ("1:1", "16:9", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21")

# Nova: "This request has been blocked by our content filters..."; Stability: "Filter reason: prompt".
_FILTER_MARKERS = ("content filter", "filter reason")
_AUTH_CODES = {
    "AccessDeniedException",
    "ResourceNotFoundException",
    "UnrecognizedClientException",
    "ExpiredTokenException",
}
_THROTTLE_CODES = {"ThrottlingException", "ServiceQuotaExceededException"}
_TRANSIENT_CODES = {
    "ServiceUnavailableException",
    "ModelErrorException",
    "InternalServerException",
    "ModelNotReadyException",
}


class BedrockProvider:
    name = "bedrock"

    def __init__(self, upstream: Upstream, deps: Deps) -> None:
        self._upstream = upstream
        self._deps = deps
        self.model = upstream.model
        self.family = _family(upstream.model)
        unknown = set(upstream.options) - _OPTIONS[self.family]
        if unknown:
            raise ValueError(
                f"Bedrock route for {upstream.model}: unknown option(s) {sorted(unknown)}; "
                f"allowed: {sorted(_OPTIONS[self.family])}."
            )
        self._negative = _option(upstream, "negative_text", str)
        self._cfg_scale = _option(upstream, "cfg_scale", float)
        similarity = _option(upstream, "similarity_strength", float)
        self._similarity = DEFAULT_SIMILARITY if similarity is None else similarity

    def supports(self, operation: Operation) -> bool:
        return self.family != "stability" or operation == "generate"

    def generate(self, job: ImageJob) -> ProviderResult:
        if self.family == "stability":
            return self._stability(job)
        return self._amazon(job, "TEXT_IMAGE", {"textToImageParams": self._text(job.prompt)}, self._size(job))

    def edit(self, job: ImageJob) -> ProviderResult:
        self._require("edit")
        size = self._size(job)
        # With no mask, dall-e-2 edits where the image itself is transparent; GPT models rework all of it.
        source = job.mask or (job.images[0] if job.contract.square_png_input else None)
        mask = _bedrock_mask(source, size) if source else None
        if mask is None:
            # Nothing marked editable. An all-black inpainting mask would discard the input altogether; a
            # prompted variation reworks the whole image but keeps its look, as a GPT-style edit does.
            return self._variation(job, job.images[:AMAZON_BATCH], size)
        params = {"image": _b64_png(_fit_rgb(job.images[0], size)), "maskImage": _b64_png(mask)}
        return self._amazon(
            job, "INPAINTING", {"inPaintingParams": {**params, **self._text(job.prompt)}}, size
        )

    def vary(self, job: ImageJob) -> ProviderResult:
        self._require("vary")
        return self._variation(job, job.images[:1], self._size(job))

    def _variation(
        self, job: ImageJob, images: tuple[InputImage, ...], size: tuple[int, int]
    ) -> ProviderResult:
        params = {
            "images": [_b64_png(_fit_rgb(img, size)) for img in images],
            "similarityStrength": self._similarity,
            # Text is optional for variations (OpenAI's /variations has no prompt); empty text is rejected.
            **(self._text(job.prompt) if job.prompt else {}),
        }
        return self._amazon(job, "IMAGE_VARIATION", {"imageVariationParams": params}, size)

    def _amazon(
        self, job: ImageJob, task: str, params: dict[str, Any], size: tuple[int, int]
    ) -> ProviderResult:
        width, height = size
        config: dict[str, Any] = {
            "width": width,
            "height": height,
            "quality": "premium" if job.quality in ("hd", "high") else "standard",
        }
        if self._cfg_scale is not None:
            config["cfgScale"] = self._cfg_scale
        batches = [min(AMAZON_BATCH, job.n - done) for done in range(0, job.n, AMAZON_BATCH)]
        bodies = [
            {"taskType": task, **params, "imageGenerationConfig": {"numberOfImages": k, **config}}
            for k in batches
        ]
        calls = [lambda body=body: self._amazon_images(body) for body in bodies]
        return _result(job, [img for batch in gather(calls, PARALLEL_CALLS) for img in batch])

    def _amazon_images(self, body: dict[str, Any]) -> list[bytes]:
        payload = self._invoke(body)
        images = _decode(payload.get("images"))
        error = payload.get("error")
        # "Some of the generated images have been blocked..." comes with the images that were not.
        if not images and isinstance(error, str) and _filtered(error):
            raise content_policy(f"Your request was rejected by the upstream's safety system: {error}")
        if not images:
            raise ProviderError(f"Bedrock {self.model} returned no images: {error or 'no reason given'}.")
        return images

    def _stability(self, job: ImageJob) -> ProviderResult:
        body = {
            "prompt": job.prompt,
            "aspect_ratio": _nearest_ratio(job.width, job.height),
            # Stability on Bedrock makes png or jpeg; webp is re-encoded from png by images.fit.
            "output_format": "jpeg" if job.output_format == "jpeg" else "png",
        }
        if self._negative:
            body["negative_prompt"] = self._negative
        calls = [lambda: self._stability_images(body)] * job.n
        return _result(job, [img for batch in gather(calls, PARALLEL_CALLS) for img in batch])

    def _stability_images(self, body: dict[str, Any]) -> list[bytes]:
        payload = self._invoke(body)
        reason = next((r for r in payload.get("finish_reasons") or () if r), None)
        if isinstance(reason, str) and _filtered(reason):
            raise content_policy(f"Your request was rejected by the upstream's safety system: {reason}.")
        images = _decode(payload.get("images"))
        if reason or not images:
            # "Inference error" or an empty answer: a fault on Bedrock's side, worth another attempt.
            raise ProviderError(
                f"Bedrock {self.model} made no image: {reason or 'no reason given'}.", retry=True
            )
        return images

    def _invoke(self, body: dict[str, Any]) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._client.invoke_model(
                modelId=self.model,
                body=json.dumps(body),
                contentType="application/json",
                accept="application/json",
            )
            raw = response["body"].read()  # streamed: a read timeout can surface here too
        except (BotoCoreError, ClientError) as exc:
            raise _error(exc, self.model) from exc
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise ProviderError(f"Bedrock {self.model} returned an unreadable response.", retry=True)
        return payload

    @cached_property
    def _client(self) -> Any:
        # Built on first call, not at create(): routes are built at startup, and most never run.
        return self._deps.aws.client(
            "bedrock-runtime",
            self._upstream.region or None,
            read_timeout=self._upstream.timeout_s,
            max_attempts=1,
        )

    def _text(self, prompt: str) -> dict[str, str]:
        return {"text": prompt, **({"negativeText": self._negative} if self._negative else {})}

    def _size(self, job: ImageJob) -> tuple[int, int]:
        return (
            _nova_size(job.width, job.height) if self.family == "nova" else _titan_size(job.width, job.height)
        )

    def _require(self, operation: Operation) -> None:
        if not self.supports(operation):
            raise ProviderError(f"Bedrock {self.model} cannot {operation} images.")


def create(upstream: Upstream, deps: Deps) -> BedrockProvider:
    return BedrockProvider(upstream, deps)


def _family(model: str) -> str:
    base = _PROFILE_PREFIX.sub("", model)
    for prefix, family in _FAMILIES:
        if base.startswith(prefix):
            return family
    raise ValueError(
        f"Bedrock model {model!r} is not a supported image model: expected amazon.nova-canvas-*, "
        "amazon.titan-image-generator-v2*, or stability.*."
    )


def _option(upstream: Upstream, name: str, kind: type[str] | type[float]) -> Any:
    value = upstream.options.get(name)
    if value is None:
        return None
    if kind is str and isinstance(value, str):
        return value
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"Bedrock route for {upstream.model}: option {name!r} must be a {kind.__name__}.")


def _nova_size(width: int, height: int) -> tuple[int, int]:
    """The job's shape at Nova's rules: scaled down under the pixel limit, sides on the 16-pixel grid."""
    scale = min(1.0, math.sqrt(NOVA_MAX_PIXELS / (width * height)))
    w, h = (min(NOVA_MAX_SIDE, max(NOVA_MIN_SIDE, round(side * scale / 16) * 16)) for side in (width, height))
    w, h = min(w, 4 * h), min(h, 4 * w)
    while w * h >= NOVA_MAX_PIXELS:
        w, h = (w - 16, h) if w >= h else (w, h - 16)
    return w, h


def _titan_size(width: int, height: int) -> tuple[int, int]:
    """Titan's size nearest in aspect ratio; of those, the smallest that covers the job, else the largest."""

    def rank(size: tuple[int, int]) -> tuple[float, bool, int]:
        covers = size[0] >= width and size[1] >= height
        return _aspect_distance(*size, width, height), not covers, size[0] * size[1] * (1 if covers else -1)

    return min(TITAN_SIZES, key=rank)


def _nearest_ratio(width: int, height: int) -> str:
    def distance(ratio: str) -> float:
        w, h = ratio.split(":")
        return _aspect_distance(int(w), int(h), width, height)

    return min(STABILITY_RATIOS, key=distance)


def _aspect_distance(w1: int, h1: int, w2: int, h2: int) -> float:
    # On a log scale 2:1 and 1:2 are equally far from 1:1; integer products keep equal ratios exactly tied.
    return abs(math.log(w1 * h2 / (h1 * w2)))


def _bedrock_mask(source: InputImage, size: tuple[int, int]) -> Image | None:
    """OpenAI's mask (fully transparent = edit) as Bedrock's: pure black where the image may change, white
    elsewhere, at `size`. None when no pixel is editable."""
    from PIL import Image as PILImage
    from PIL import ImageOps

    with source.open() as img:
        alpha = img.convert("RGBA").getchannel("A")
    editable = alpha.point(lambda v: 255 if v else 0)
    # Nearest neighbour, so scaling adds no grey: Bedrock rejects masks that are not pure black and white.
    editable = ImageOps.fit(editable, size, PILImage.Resampling.NEAREST)
    if editable.getextrema()[0] == 255:
        return None
    return editable.convert("RGB")


def _fit_rgb(image: InputImage, size: tuple[int, int]) -> Image:
    # The same cover-and-crop as the mask, so the two stay aligned pixel for pixel.
    from PIL import Image as PILImage
    from PIL import ImageOps

    with image.open() as img:
        return ImageOps.fit(img.convert("RGB"), size, PILImage.Resampling.LANCZOS)


def _b64_png(img: Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _decode(images: object) -> list[bytes]:
    if not isinstance(images, list):
        return []
    try:
        return [base64.b64decode(item, validate=True) for item in images if item]
    except (binascii.Error, TypeError, ValueError) as exc:
        raise ProviderError("Bedrock returned an image that is not valid base64.", retry=True) from exc


def _result(job: ImageJob, images: list[bytes]) -> ProviderResult:
    try:
        fitted = [
            fit(img, job.width, job.height, job.output_format, job.output_compression) for img in images
        ]
    except ProviderError as exc:  # `fit` found no decodable image: on Bedrock a glitch worth a retry
        raise ProviderError("Bedrock returned data that is not an image.", retry=True) from exc
    return ProviderResult(images=fitted[: job.n])


def _filtered(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in _FILTER_MARKERS)


def _error(exc: Exception, model: str) -> ProviderError:
    """A botocore failure as the router's kind of error; never echoes AWS auth text (it names roles)."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        HTTPClientError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    if isinstance(exc, ClientError):
        return _client_error(exc, model)
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
        return ProviderError(f"Bedrock {model} timed out.", status=504, code="upstream_timeout", retry=True)
    if isinstance(exc, NoCredentialsError):
        return ProviderError("The Bedrock upstream is not available: the gateway has no AWS credentials.")
    if isinstance(exc, EndpointConnectionError | HTTPClientError):
        return ProviderError(f"Could not reach Bedrock for {model} ({type(exc).__name__}).", retry=True)
    # Anything else botocore raises (parameter validation, configuration) would fail the same way again.
    return ProviderError(f"The Bedrock call for {model} failed ({type(exc).__name__}).")


def _client_error(exc: ClientError, model: str) -> ProviderError:
    error = exc.response.get("Error", {})
    code, message = error.get("Code", ""), error.get("Message", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if code == "ValidationException":
        if _filtered(message):
            return content_policy(f"Your request was rejected by the upstream's safety system: {message}")
        # Our translation disagreed with the model: another route may take the job as it is.
        return ProviderError(f"Bedrock {model} rejected the request: {message}")
    if code in _AUTH_CODES or status in (401, 403):
        return ProviderError(
            f"The Bedrock upstream refused this gateway ({code} for {model}): an access or model "
            "configuration problem on the gateway's side, not your API key."
        )
    if code in _THROTTLE_CODES:
        # 502 like an OpenAI upstream's 429, not 429: the client's own rate limit was not exceeded.
        return ProviderError(
            f"Bedrock {model} is busy ({code}); try again shortly.",
            code="upstream_rate_limited",
            retry=True,
        )
    if code == "ModelTimeoutException":
        return ProviderError(f"Bedrock {model} timed out.", status=504, code="upstream_timeout", retry=True)
    if code in _TRANSIENT_CODES or status >= 500:
        return ProviderError(f"Bedrock {model} failed ({code or status}).", retry=True)
    return ProviderError(f"Bedrock {model} rejected the request ({code or status}): {message}")

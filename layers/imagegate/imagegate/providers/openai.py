"""OpenAI's Images API (and servers that speak it): generations, edits, variations.

Wire shapes from OpenAI's spec (openai-openapi `openapi.yaml`, CreateImageRequest / CreateImageEditRequest
/ CreateImageVariationRequest / ImagesResponse; https://platform.openai.com/docs/api-reference/images) and
the Python SDK's multipart encoding (a list of files becomes repeated `image[]` parts).

Two dialects, chosen from the upstream model's name or the route's `options.dialect`:
- "gpt-image" (gpt-image-*, chatgpt-image-*, anything not named dall-e): output_format, background,
  moderation, output_compression, input_fidelity; always b64_json; reports token `usage`.
- "dall-e" (a server that still has dall-e-2/dall-e-3): response_format=b64_json, quality standard/hd,
  style; edits and variations only on dall-e-2, and dall-e-3 makes one image per call.

Legacy contracts routed to a successor keep their promise (see `_gpt_quality`, `_prompt`, `_size`):
- size: a size the successor lacks is generated at its nearest size (same orientation, closest aspect)
  and fitted to the requested one by `images.fit`, like every output.
- quality: DALL·E's standard -> low and hd -> medium. The successor's low and medium match or beat
  dall-e-3's standard and hd, and one step higher would cost more than the contract sells for (dall-e-3
  hd 1024x1024 sells at $0.08; gpt-image-1.5 high costs $0.133). Operators can set `options.quality`
  ({"standard": ..., "hd": ...}) on the route to choose otherwise.
- style: dall-e-3's vivid/natural becomes a one-line style hint appended to the prompt, so a client's
  choice still changes the picture (GPT image models have no style parameter).
- revised_prompt: only when the upstream returns one (a dall-e-3 upstream); never invented.
- dall-e-2 edits without a mask edit where the image itself is transparent: the image doubles as the mask.
- usage: always passed on as the upstream reported it: a translated contract is charged at the dearer of its
  own token rates and the upstream model's (catalog/prices.py), never below its per-image price.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from imagegate.catalog.contracts import (
    DALLE2_SIZES,
    DALLE3_SIZES,
    GPT_SIZES,
    FreeFormSizes,
    free_form_problem,
    parse_size,
    upstream_quality,
)
from imagegate.catalog.routes import check_options
from imagegate.inputs.images import fit
from imagegate.providers import (
    Deps,
    Operation,
    PartialImage,
    ProviderResult,
    StreamItem,
    Upstream,
    gather,
    run,
)
from imagegate.providers._http import bad_response, nearest_aspect, post, stream_events
from imagegate.storage import CONTENT_TYPES

if TYPE_CHECKING:
    import httpx

    from imagegate.inputs.images import InputImage
    from imagegate.inputs.request import ImageJob

Dialect = Literal["gpt-image", "dall-e"]
DEFAULT_BASE_URL = "https://api.openai.com/v1"
STYLE_HINTS = {
    "vivid": "Style: vivid, dramatic and hyper-real.",
    "natural": "Style: natural and realistic, not hyper-real.",
}


class OpenAIProvider:
    name = "openai"

    def __init__(self, upstream: Upstream, client: httpx.Client) -> None:
        self.upstream = upstream
        self.client = client
        self.model = upstream.model
        check_options(upstream.provider, upstream.options, f"{upstream.provider} route for {upstream.model}")
        dialect = upstream.options.get("dialect")
        self.dialect: Dialect = dialect or ("dall-e" if self.model.startswith("dall-e") else "gpt-image")
        # Under the dall-e dialect, a model not named dall-e-3 follows dall-e-2's rules.
        self.dalle3 = self.dialect == "dall-e" and "dall-e-3" in self.model
        self.base_url = (upstream.base_url or DEFAULT_BASE_URL).rstrip("/")

    def supports(self, operation: Operation) -> bool:
        if self.dialect == "gpt-image":
            return operation != "vary"
        return operation == "generate" or not self.dalle3

    def generate(self, job: ImageJob) -> ProviderResult:
        return self._call(job, "generations", self._generation_fields(job), None)

    def edit(self, job: ImageJob) -> ProviderResult:
        return self._call(job, "edits", *self._edit_parts(job))

    def vary(self, job: ImageJob) -> ProviderResult:
        fields = {"model": self.model, "size": self._size(job), "response_format": "b64_json"}
        return self._call(job, "variations", fields, [_file("image", job.images[0])])

    def stream(self, job: ImageJob) -> Iterator[StreamItem]:
        """The upstream's own stream (GPT-image dialect): each partial image as it arrives, then the
        completed image with its usage. A DALL·E upstream cannot stream: its result alone."""
        if self.dialect == "dall-e":
            yield run(self, job)
            return
        if job.images:
            path, (fields, files) = "edits", self._edit_parts(job)
        else:
            path, fields, files = "generations", self._generation_fields(job), None
        fields |= {"n": 1, "stream": True, "partial_images": job.partial_images}
        made = 0
        # Closed as soon as this generator is (an abandoned stream): the upstream connection goes with it.
        with contextlib.closing(stream_events(self.client, **self._request(path, fields, files))) as events:
            for event in events:
                kind = str(event.get("type", ""))
                if kind.endswith(".partial_image"):
                    index = event.get("partial_image_index")
                    yield PartialImage(self._decode(job, event), index if isinstance(index, int) else made)
                    made += 1
                elif kind.endswith(".completed"):
                    yield ProviderResult(images=[self._decode(job, event)], usage=event.get("usage"))
                    return
        raise bad_response(self.name, "a stream that ended without its completed event")

    def _generation_fields(self, job: ImageJob) -> dict[str, Any]:
        fields = self._fields(job)
        if self.dialect == "gpt-image" and job.moderation != "auto":
            fields["moderation"] = job.moderation  # generations only: the edits form has no moderation
        if self.dalle3:
            fields["quality"] = "hd" if job.quality in ("hd", "high") else "standard"
            if job.style:
                fields["style"] = job.style
        return fields

    def _edit_parts(self, job: ImageJob) -> tuple[dict[str, Any], list[FilePart]]:
        fields = self._fields(job)
        if self.dialect == "dall-e":
            files = [_file("image", job.images[0])]  # dall-e-2 takes one file and rejects `image[]`
        else:
            files = [_file("image[]", img, f"image_{i}") for i, img in enumerate(job.images)]
            if job.input_fidelity and "mini" not in self.model:  # mini models reject input_fidelity
                fields["input_fidelity"] = job.input_fidelity
        mask = job.mask
        if mask is None and job.contract.id == "dall-e-2" and self.dialect == "gpt-image":
            # dall-e-2 edits where the image is transparent; only the mask's alpha counts, so the
            # (PNG, same-sized) image is its own mask.
            mask = job.images[0]
        if mask is not None:
            files.append(_file("mask", mask))
        return fields, files

    def _fields(self, job: ImageJob) -> dict[str, Any]:
        """Parameters that generations and edits share, in the upstream's dialect."""
        fields: dict[str, Any] = {"model": self.model, "prompt": self._prompt(job), "size": self._size(job)}
        if self.dialect == "dall-e":
            fields["response_format"] = "b64_json"
            return fields
        fields["quality"] = _gpt_quality(job, self.upstream.options)
        fields["output_format"] = job.output_format
        if job.background != "auto":
            fields["background"] = job.background
        if job.output_compression is not None:
            fields["output_compression"] = job.output_compression
        return fields

    def _prompt(self, job: ImageJob) -> str:
        if job.style and self.dialect == "gpt-image":
            return f"{job.prompt}\n\n{STYLE_HINTS[job.style]}"
        return job.prompt

    def _size(self, job: ImageJob) -> str:
        """The job's size when the upstream model makes it, else the upstream's nearest."""
        if self.dialect == "dall-e":
            sizes = DALLE3_SIZES if self.dalle3 else DALLE2_SIZES
        elif (
            self.model.startswith("gpt-image-2")
            and free_form_problem(FreeFormSizes(), job.width, job.height) is None
        ):
            return job.size
        else:
            sizes = GPT_SIZES
        if job.size in sizes:
            return job.size
        width, height = nearest_aspect(job.width, job.height, [parse_size(s) or (0, 0) for s in sizes])
        return f"{width}x{height}"

    def _request(self, path: str, fields: dict[str, Any], files: list[FilePart] | None) -> dict[str, Any]:
        """The arguments of a call to /images/{path}, for `post` and `stream_events`."""
        return {
            "url": self._url(path),
            "label": self.name,
            "timeout_s": self.upstream.timeout_s,
            "secret": self.upstream.api_key,
            "headers": self._auth(),
            **_payload(fields, files),
        }

    def _url(self, path: str) -> str:
        return f"{self.base_url}/images/{path}"

    def _auth(self) -> dict[str, str]:
        key = self.upstream.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _call(
        self, job: ImageJob, path: str, fields: dict[str, Any], files: list[FilePart] | None
    ) -> ProviderResult:
        """POST to /images/{path}: once for all n images, or once per image on dall-e-3 (n must be 1);
        JSON without `files`, multipart with them."""

        def once(n: int) -> dict[str, Any]:
            return post(self.client, **self._request(path, {**fields, "n": n}, files))

        bodies = gather([lambda: once(1)] * job.n) if self.dalle3 else [once(job.n)]
        items = [item for body in bodies for item in _data(body, self.name)][: job.n]
        images = [self._decode(job, item) for item in items]
        revised = items[0].get("revised_prompt") if job.contract.revised_prompt else None
        usage = bodies[0].get("usage")
        return ProviderResult(images=images, revised_prompt=revised or None, usage=usage)

    def _decode(self, job: ImageJob, item: dict[str, Any]) -> bytes:
        b64 = item.get("b64_json")
        if not isinstance(b64, str):
            raise bad_response(self.name, "an image without b64_json data")
        try:
            data = base64.b64decode(b64, validate=True)
            return fit(data, job.width, job.height, job.output_format, job.output_compression)
        except Exception as exc:  # binascii and Pillow's many decoder errors: the upstream sent no image
            raise bad_response(self.name, f"b64_json that is not an image ({type(exc).__name__})") from None


def create(upstream: Upstream, deps: Deps) -> OpenAIProvider:
    return OpenAIProvider(upstream, deps.http)


def _gpt_quality(job: ImageJob, options: Mapping[str, Any]) -> str:
    return upstream_quality(job.quality, options)


def _data(body: Any, label: str) -> list[dict[str, Any]]:
    data = body.get("data") if isinstance(body, dict) else None
    items = [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []
    if not items:
        raise bad_response(label, "no images")
    return items


FilePart = tuple[str, tuple[str, bytes, str]]


def _file(part: str, image: InputImage, stem: str | None = None) -> FilePart:
    ext = "jpg" if image.format == "JPEG" else image.format.lower()
    return part, (f"{stem or part}.{ext}", image.data, CONTENT_TYPES[image.format.lower()])


def _payload(fields: dict[str, Any], files: list[FilePart] | None) -> dict[str, Any]:
    """httpx arguments: a JSON body, or multipart/form-data (scalars as text parts, images as file parts,
    booleans as `true`/`false` as the SDKs send them)."""
    if files is None:
        return {"json": fields}
    text = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    return {"data": text, "files": files}

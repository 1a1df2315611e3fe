"""The hostile corpus (issue 8, "beyond the list"): requests built to break the three image endpoints.

Every case is refused with an OpenAI-shaped error naming the right `param` and `code`, carries an
`x-request-id`, moves no money and writes nothing to S3. None may be a 5xx.
"""

import base64
import functools
import io
import json

import pytest
from PIL import Image

from .conftest import BALANCE, BODY_LIMIT, mask, png

GEN, EDITS, VARIATIONS = "/v1/images/generations", "/v1/images/edits", "/v1/images/variations"
OK_KEY, NO_KEY, BROKE_KEY, REVOKED_KEY = "funded", "none", "broke", "revoked"


@functools.cache
def bomb(side=4096, mode="RGBA"):
    """A small PNG that decodes to side x side pixels."""
    return png(side, side, mode=mode)


@functools.cache
def jpeg():
    return png(64, 64, mode="RGB", fmt="JPEG")


@functools.cache
def gif():
    return png(64, 64, mode="P", fmt="GIF")


def b64(data):
    return base64.b64encode(data).decode()


def files(*parts):
    """Multipart file parts: (name, bytes) pairs."""
    return [(name, (f"f{i}.png", data, "image/png")) for i, (name, data) in enumerate(parts)]


class Case:
    def __init__(self, name, path, status, param, code, key=OK_KEY, method="POST", headers=None, **request):
        self.name, self.path, self.status, self.param, self.code = name, path, status, param, code
        self.key, self.method, self.headers, self.request = key, method, headers or {}, request

    def __repr__(self):
        return self.name


def gen(name, body, status, param, code, **kw):
    return Case(f"gen-{name}", GEN, status, param, code, json=body, **kw)


def gen_raw(name, content, status, param, code, content_type="application/json", **kw):
    headers = {"content-type": content_type} if content_type else {}
    return Case(f"gen-{name}", GEN, status, param, code, content=content, headers=headers, **kw)


def edit(name, data, parts, status, param, code, **kw):
    return Case(f"edit-{name}", EDITS, status, param, code, data=data, files=parts, **kw)


def vary(name, data, parts, status, param, code, **kw):
    return Case(f"vary-{name}", VARIATIONS, status, param, code, data=data, files=parts, **kw)


def raw_multipart(name, path, content, status, param, code, boundary="b0undary", content_type=None):
    ctype = f"multipart/form-data; boundary={boundary}" if content_type is None else content_type
    return Case(f"raw-{name}", path, status, param, code, content=content, headers={"content-type": ctype})


def form_body(*parts, boundary="b0undary", close=True):
    """A multipart body by hand: parts are (headers text, bytes)."""
    out = b""
    for headers, data in parts:
        out += f"--{boundary}\r\n{headers}\r\n\r\n".encode() + data + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def field(name, value):
    return (
        f'Content-Disposition: form-data; name="{name}"',
        value if isinstance(value, bytes) else value.encode(),
    )


def file_part(name, data, filename="a.png"):
    return (
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\nContent-Type: image/png',
        data,
    )


P = {"prompt": "a red fox"}
D2 = {"model": "dall-e-2", **P}
GPT = {"model": "gpt-image-1.5", **P}
IMG = lambda: files(("image", png()))  # noqa: E731
BAD_TYPE, RANGE, VALUE = "invalid_type", "integer_out_of_range", "invalid_value"
UNSUPPORTED, UNKNOWN = "unsupported_parameter", "unknown_parameter"

CASES = [
    # --- generations: types ----------------------------------------------------------------------------
    gen("prompt-int", {"prompt": 5}, 400, "prompt", BAD_TYPE),
    gen("prompt-list", {"prompt": ["x"]}, 400, "prompt", BAD_TYPE),
    gen("prompt-object", {"prompt": {"text": "x"}}, 400, "prompt", BAD_TYPE),
    gen("prompt-null", {"prompt": None}, 400, "prompt", BAD_TYPE),
    gen("prompt-bool", {"prompt": True}, 400, "prompt", BAD_TYPE),
    gen("prompt-missing", {"model": "dall-e-2"}, 400, "prompt", "missing_required_parameter"),
    gen("prompt-empty", {"prompt": ""}, 400, "prompt", "empty_string"),
    gen("prompt-blank", {"prompt": " \n\t "}, 400, "prompt", "empty_string"),
    gen("prompt-long-dalle2", {"prompt": "x" * 1001}, 400, "prompt", "string_above_max_length"),
    gen(
        "prompt-long-dalle3",
        {"model": "dall-e-3", "prompt": "x" * 4001},
        400,
        "prompt",
        "string_above_max_length",
    ),
    gen("prompt-long-gpt", {**GPT, "prompt": "x" * 32001}, 400, "prompt", "string_above_max_length"),
    gen("model-int", {**P, "model": 2}, 400, "model", BAD_TYPE),
    gen("model-empty", {**P, "model": ""}, 400, "model", "model_not_found"),
    gen("model-unknown", {**P, "model": "gpt-5"}, 400, "model", "model_not_found"),
    gen("model-case", {**P, "model": "DALL-E-2"}, 400, "model", "model_not_found"),
    gen("model-padded", {**P, "model": " dall-e-2"}, 400, "model", "model_not_found"),
    gen("model-list", {**P, "model": ["dall-e-2"]}, 400, "model", BAD_TYPE),
    gen("n-zero", {**P, "n": 0}, 400, "n", RANGE),
    gen("n-negative", {**P, "n": -1}, 400, "n", RANGE),
    gen("n-eleven", {**P, "n": 11}, 400, "n", RANGE),
    gen("n-huge", {**P, "n": 10**30}, 400, "n", RANGE),
    gen("n-float", {**P, "n": 1.5}, 400, "n", BAD_TYPE),
    gen("n-whole-float", {**P, "n": 2.0}, 400, "n", BAD_TYPE),
    gen("n-string", {**P, "n": "2"}, 400, "n", BAD_TYPE),
    gen("n-bool", {**P, "n": True}, 400, "n", BAD_TYPE),
    gen("n-list", {**P, "n": [1]}, 400, "n", BAD_TYPE),
    gen_raw("n-infinity", b'{"prompt": "x", "n": 1e999}', 400, "n", BAD_TYPE),
    gen_raw("n-nan", b'{"prompt": "x", "n": NaN}', 400, "n", BAD_TYPE),
    gen("n-two-dalle3", {"model": "dall-e-3", **P, "n": 2}, 400, "n", VALUE),
    gen("size-tiny", {**P, "size": "1x1"}, 400, "size", VALUE),
    gen("size-empty", {**P, "size": ""}, 400, "size", VALUE),
    gen("size-int", {**P, "size": 1024}, 400, "size", BAD_TYPE),
    gen("size-upper-x", {**P, "size": "1024X1024"}, 400, "size", VALUE),
    gen("size-dalle3-on-dalle2", {**P, "size": "1792x1024"}, 400, "size", VALUE),
    gen("size-256-on-gpt", {**GPT, "size": "256x256"}, 400, "size", VALUE),
    gen("size-huge-gpt2", {**P, "model": "gpt-image-2", "size": "99999x99999"}, 400, "size", VALUE),
    gen("size-negative-gpt2", {**P, "model": "gpt-image-2", "size": "-1024x1024"}, 400, "size", VALUE),
    gen("size-three-dims", {**P, "model": "gpt-image-2", "size": "1024x1024x1"}, 400, "size", VALUE),
    gen("size-not-16", {**P, "model": "gpt-image-2", "size": "1000x1000"}, 400, "size", VALUE),
    gen("size-aspect", {**P, "model": "gpt-image-2", "size": "3840x640"}, 400, "size", VALUE),
    gen("size-unicode-digits", {**P, "size": "２５６x２５６"}, 400, "size", VALUE),
    gen("quality-unknown", {**P, "quality": "ultra"}, 400, "quality", VALUE),
    gen("quality-hd-dalle2", {**P, "quality": "hd"}, 400, "quality", VALUE),
    gen("quality-standard-gpt", {**GPT, "quality": "standard"}, 400, "quality", VALUE),
    gen("quality-int", {**P, "quality": 1}, 400, "quality", VALUE),
    gen("response-format-png", {**P, "response_format": "png"}, 400, "response_format", VALUE),
    gen("style-on-dalle2", {**P, "style": "vivid"}, 400, "style", UNSUPPORTED),
    gen("style-unknown", {"model": "dall-e-3", **P, "style": "bold"}, 400, "style", VALUE),
    gen("background-on-dalle2", {**P, "background": "transparent"}, 400, "background", UNSUPPORTED),
    gen(
        "background-transparent-jpeg",
        {**GPT, "background": "transparent", "output_format": "jpeg"},
        400,
        "background",
        VALUE,
    ),
    gen(
        "background-transparent-gpt2",
        {**P, "model": "gpt-image-2", "background": "transparent"},
        400,
        "background",
        VALUE,
    ),
    gen("output-format-gif", {**GPT, "output_format": "gif"}, 400, "output_format", VALUE),
    gen(
        "output-format-on-dalle3",
        {"model": "dall-e-3", **P, "output_format": "png"},
        400,
        "output_format",
        UNSUPPORTED,
    ),
    gen("compression-101", {**GPT, "output_compression": 101}, 400, "output_compression", RANGE),
    gen("compression-negative", {**GPT, "output_compression": -1}, 400, "output_compression", RANGE),
    gen("compression-with-png", {**GPT, "output_compression": 50}, 400, "output_compression", VALUE),
    gen("compression-string", {**GPT, "output_compression": "50"}, 400, "output_compression", BAD_TYPE),
    gen("compression-float", {**GPT, "output_compression": 50.0}, 400, "output_compression", BAD_TYPE),
    gen("moderation-high", {**GPT, "moderation": "high"}, 400, "moderation", VALUE),
    gen("moderation-on-dalle2", {**P, "moderation": "low"}, 400, "moderation", UNSUPPORTED),
    gen("stream-on-dalle2", {**D2, "stream": True}, 400, "stream", UNSUPPORTED),
    gen("stream-n-2", {**GPT, "stream": True, "n": 2}, 400, "n", VALUE),
    gen("stream-url", {**GPT, "stream": True, "response_format": "url"}, 400, "response_format", UNSUPPORTED),
    gen("partial-images-on-dalle2", {**D2, "partial_images": 1}, 400, "partial_images", UNSUPPORTED),
    gen("stream-string", {**GPT, "stream": "true"}, 400, "stream", BAD_TYPE),
    gen("stream-int", {**GPT, "stream": 1}, 400, "stream", BAD_TYPE),
    gen("partial-images-4", {**GPT, "partial_images": 4}, 400, "partial_images", RANGE),
    gen("partial-images-string", {**GPT, "partial_images": "1"}, 400, "partial_images", BAD_TYPE),
    gen("input-fidelity-on-generations", {**GPT, "input_fidelity": "high"}, 400, "input_fidelity", UNKNOWN),
    gen("unknown-parameter", {**P, "foo": 1}, 400, "foo", UNKNOWN),
    gen("unknown-parameter-null", {**P, "foo": None}, 400, "foo", UNKNOWN),
    gen("user-int", {**P, "user": 5}, 400, "user", BAD_TYPE),
    gen("safety-identifier-list", {**P, "safety_identifier": ["x"]}, 400, "safety_identifier", BAD_TYPE),
    # --- generations: lone surrogates ------------------------------------------------------------------
    gen_raw("surrogate-prompt", b'{"prompt": "\\ud800"}', 400, "prompt", "invalid_unicode"),
    gen_raw("surrogate-low-prompt", b'{"prompt": "ok \\udc00 ok"}', 400, "prompt", "invalid_unicode"),
    gen_raw("surrogate-model", b'{"prompt": "x", "model": "\\ud800"}', 400, "model", "invalid_unicode"),
    gen_raw("surrogate-size", b'{"prompt": "x", "size": "\\ud800"}', 400, "size", "invalid_unicode"),
    gen_raw("surrogate-quality", b'{"prompt": "x", "quality": "\\ud800"}', 400, "quality", "invalid_unicode"),
    gen_raw("surrogate-user", b'{"prompt": "x", "user": "\\ud800"}', 400, "user", "invalid_unicode"),
    gen_raw("surrogate-key", b'{"prompt": "x", "\\ud800": "y"}', 400, "\\ud800", "invalid_unicode"),
    gen_raw("surrogate-image", b'{"prompt": "x", "image": ["\\udfff"]}', 400, "image", "invalid_unicode"),
    gen_raw("surrogate-nested", b'{"prompt": "x", "foo": {"\\ud800": 1}}', 400, "foo", "invalid_unicode"),
    gen_raw("cesu8-bytes", b'{"prompt": "\xed\xa0\x80"}', 400, None, "invalid_json"),
    gen_raw(
        "paired-surrogates-ok-but-unknown",
        b'{"prompt": "x", "\\ud83d\\ude00": 1}',
        400,
        "\U0001f600",
        UNKNOWN,
    ),
    # --- generations: input images ---------------------------------------------------------------------
    gen("image-on-dalle2", {**P, "image": b64(png())}, 400, "image", UNSUPPORTED),
    gen("image-not-base64", {**GPT, "image": "not base64!!"}, 400, "image", "invalid_base64"),
    gen("image-text", {**GPT, "image": b64(b"hello, world")}, 400, "image", "invalid_image_format"),
    gen("image-empty", {**GPT, "image": ""}, 400, "image", "invalid_image"),
    gen("image-int", {**GPT, "image": 5}, 400, "image", BAD_TYPE),
    gen("image-seventeen", {**GPT, "image": ["x"] * 17}, 400, "image", "too_many_images"),
    gen("image-bomb", {**GPT, "image": b64(bomb(8192, "L"))}, 400, "image", "image_too_large"),
    gen("image-bombs-total", {**GPT, "image": [b64(bomb())] * 5}, 400, "image", "image_too_large"),
    gen(
        "image-data-url-jpeg-as-gif",
        {**GPT, "image": "data:image/gif;base64," + b64(gif())},
        400,
        "image",
        "invalid_image_format",
    ),
    gen("image-list-second-bad", {**GPT, "image": [b64(png()), "!!"]}, 400, "image[1]", "invalid_base64"),
    # --- generations: bodies ---------------------------------------------------------------------------
    gen("body-array", ["prompt", "x"], 400, None, BAD_TYPE),
    gen("body-string", "prompt", 400, None, BAD_TYPE),
    gen("body-null", None, 400, None, BAD_TYPE),
    gen("body-number", 5, 400, None, BAD_TYPE),
    gen_raw("body-empty", b"", 400, None, BAD_TYPE),
    gen_raw("body-whitespace", b"  \n ", 400, None, BAD_TYPE),
    gen_raw("body-malformed", b'{"prompt": "x", ', 400, None, "invalid_json"),
    gen_raw("body-trailing-garbage", b'{"prompt": "x"} x', 400, None, "invalid_json"),
    gen_raw("body-deep-nesting", b"[" * 100_000 + b"]" * 100_000, 400, None, "invalid_json"),
    gen_raw("body-deep-object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000, 400, None, "invalid_json"),
    gen_raw("body-latin1", '{"prompt": "café"}'.encode("latin-1"), 400, None, "invalid_json"),
    gen_raw("body-utf16", '{"prompt": "x"}'.encode("utf-16"), 400, None, "invalid_json"),
    gen_raw("body-bom", b'\xef\xbb\xbf{"prompt": "x"}', 400, None, "invalid_json"),
    gen_raw("body-huge-integer", b'{"prompt": "x", "n": ' + b"9" * 5000 + b"}", 400, None, "invalid_json"),
    gen_raw("duplicate-key-last-wins", b'{"prompt": "x", "n": 1, "n": 20}', 400, "n", RANGE),
    gen_raw(
        "content-type-text", b'{"prompt": "x"}', 400, None, "invalid_content_type", content_type="text/plain"
    ),
    gen_raw(
        "content-type-form",
        b"prompt=x",
        400,
        None,
        "invalid_content_type",
        content_type="application/x-www-form-urlencoded",
    ),
    gen_raw(
        "content-type-multipart",
        form_body(field("prompt", "x")),
        400,
        None,
        "invalid_content_type",
        content_type="multipart/form-data; boundary=b0undary",
    ),
    gen_raw("body-over-limit", b'{"prompt": "' + b"x" * BODY_LIMIT + b'"}', 413, None, "payload_too_large"),
    Case(
        "gen-declared-length-over-limit",
        GEN,
        413,
        None,
        "payload_too_large",
        content=b"{}",
        headers={"content-length": str(BODY_LIMIT + 1), "content-type": "application/json"},
    ),
    # --- auth ------------------------------------------------------------------------------------------
    gen("auth-missing", P, 401, None, "missing_api_key", key=NO_KEY),
    gen("auth-missing-bad-json", None, 401, None, "missing_api_key", key=NO_KEY),
    gen_raw("auth-missing-malformed", b"{", 401, None, "missing_api_key", key=NO_KEY),
    gen("auth-bearer-only", P, 401, None, "missing_api_key", key=NO_KEY, headers={"authorization": "Bearer"}),
    gen(
        "auth-bearer-blank",
        P,
        401,
        None,
        "missing_api_key",
        key=NO_KEY,
        headers={"authorization": "Bearer    "},
    ),
    gen(
        "auth-basic",
        P,
        401,
        None,
        "missing_api_key",
        key=NO_KEY,
        headers={"authorization": "Basic dXNlcjpwYXNz"},
    ),
    gen(
        "auth-token-scheme",
        P,
        401,
        None,
        "missing_api_key",
        key=NO_KEY,
        headers={"authorization": "Token sk-x"},
    ),
    gen(
        "auth-wrong-key",
        P,
        401,
        None,
        "invalid_api_key",
        key=NO_KEY,
        headers={"authorization": "Bearer sk-wrong"},
    ),
    gen(
        "auth-long-key",
        P,
        401,
        None,
        "invalid_api_key",
        key=NO_KEY,
        headers={"authorization": "Bearer " + "k" * 8000},
    ),
    gen("auth-revoked", P, 401, None, "invalid_api_key", key=REVOKED_KEY),
    gen("auth-x-api-key-header", P, 401, None, "missing_api_key", key=NO_KEY, headers={"x-api-key": "sk-x"}),
    gen(
        "auth-latin1-key",
        P,
        401,
        None,
        "invalid_api_key",
        key=NO_KEY,
        headers={"authorization": "Bearer sk-\xe9\xe9".encode("latin-1")},
    ),
    gen("balance-zero", {**P, "size": "256x256"}, 402, None, "insufficient_balance", key=BROKE_KEY),
    gen("balance-zero-gpt", {**GPT, "quality": "high"}, 402, None, "insufficient_balance", key=BROKE_KEY),
    # --- routes ----------------------------------------------------------------------------------------
    Case("route-get-generations", GEN, 405, None, "method_not_allowed", method="GET"),
    Case("route-put-edits", EDITS, 405, None, "method_not_allowed", method="PUT"),
    Case("route-delete-variations", VARIATIONS, 405, None, "method_not_allowed", method="DELETE"),
    Case("route-trailing-slash", GEN + "/", 404, None, "not_found", json=P),
    Case("route-openapi", "/openapi.json", 404, None, "not_found", method="GET"),
    Case("route-docs", "/docs", 404, None, "not_found", method="GET"),
    Case("route-redoc", "/redoc", 404, None, "not_found", method="GET"),
    Case("route-images-root", "/v1/images", 404, None, "not_found", json=P),
    # /v1/models exists now (issue 18): an unknown model is a 404 naming it, and only GET is served.
    Case("route-models-unknown", "/v1/models/gpt-image-9", 404, "model", "model_not_found", method="GET"),
    Case("route-models-post", "/v1/models", 405, None, "method_not_allowed", json=P),
    Case("route-double-slash", "/v1//images/generations", 404, None, "not_found", json=P),
    Case("route-balance-days-zero", "/v1/balance?days=0", 400, "days", RANGE, method="GET"),
    Case("route-balance-days-huge", "/v1/balance?days=99999", 400, "days", RANGE, method="GET"),
    Case("route-balance-days-float", "/v1/balance?days=1.5", 400, "days", BAD_TYPE, method="GET"),
    Case("route-balance-no-key", "/v1/balance", 401, None, "missing_api_key", method="GET", key=NO_KEY),
    # --- edits: images and masks -----------------------------------------------------------------------
    raw_multipart(
        "edit-image-missing",
        EDITS,
        form_body(field("model", "dall-e-2"), field("prompt", "x")),
        400,
        "image",
        "missing_required_parameter",
    ),
    edit("image-empty", D2, files(("image", b"")), 400, "image", "invalid_image"),
    edit("image-text", GPT, files(("image", b"not an image")), 400, "image", "invalid_image_format"),
    raw_multipart(
        "edit-image-as-text-field",
        EDITS,
        form_body(field("model", "gpt-image-1.5"), field("prompt", "x"), field("image", "hello")),
        400,
        "image",
        "invalid_image_format",
    ),
    edit("image-truncated-png", GPT, files(("image", png()[:100])), 400, "image", "invalid_image_format"),
    edit("image-gif-on-gpt", GPT, files(("image", gif())), 400, "image", "invalid_image_format"),
    edit("image-jpeg-on-dalle2", D2, files(("image", jpeg())), 400, "image", "invalid_image_format"),
    edit("image-non-square-dalle2", D2, files(("image", png(64, 32))), 400, "image", "invalid_image_size"),
    edit(
        "image-rgb-no-mask-dalle2",
        D2,
        files(("image", png(mode="RGB"))),
        400,
        "image",
        "invalid_image_format",
    ),
    edit("image-bomb", GPT, files(("image", bomb(8192, "L"))), 400, "image", "image_too_large"),
    edit("image-bomb-dalle2", D2, files(("image", bomb(8192, "L"))), 400, "image", "image_too_large"),
    edit("images-seventeen-gpt", GPT, files(*[("image[]", png())] * 17), 400, "image", "too_many_images"),
    edit(
        "images-seventeen-bombs-dalle2", D2, files(*[("image[]", bomb())] * 17), 400, "image", "invalid_type"
    ),
    edit(
        "images-two-dalle2", D2, files(("image[]", png()), ("image[]", png())), 400, "image", "invalid_type"
    ),
    edit("images-sixteen-bombs", GPT, files(*[("image[]", bomb())] * 16), 400, "image", "image_too_large"),
    edit("images-five-bombs", GPT, files(*[("image[]", bomb())] * 5), 400, "image", "image_too_large"),
    edit(
        "images-four-bombs-and-mask",
        GPT,
        files(*[("image[]", bomb())] * 4, ("mask", bomb())),
        400,
        "mask",
        "image_too_large",
    ),
    edit(
        "images-second-bad",
        GPT,
        files(("image[]", png()), ("image[]", b"junk")),
        400,
        "image[1]",
        "invalid_image_format",
    ),
    edit(
        "images-indexed-bad",
        GPT,
        files(("image[0]", png()), ("image[1]", b"")),
        400,
        "image[1]",
        "invalid_image",
    ),
    edit(
        "images-gemini-five",
        {**P, "model": "gemini-3.1-flash-image"},
        files(*[("image[]", png())] * 5),
        400,
        "image",
        "too_many_images",
    ),
    edit("mask-empty", D2, files(("image", png()), ("mask", b"")), 400, "mask", "invalid_image"),
    edit("mask-text", D2, files(("image", png()), ("mask", b"nope")), 400, "mask", "invalid_image_format"),
    edit(
        "mask-size-differs",
        D2,
        files(("image", png()), ("mask", mask(32, 32))),
        400,
        "mask",
        "invalid_image_size",
    ),
    edit("mask-jpeg", GPT, files(("image", png()), ("mask", jpeg())), 400, "mask", "invalid_image_format"),
    edit(
        "mask-no-alpha",
        D2,
        files(("image", png()), ("mask", png(mode="RGB"))),
        400,
        "mask",
        "invalid_image_format",
    ),
    edit(
        "mask-twice",
        D2,
        files(("image", png()), ("mask", mask()), ("mask", mask())),
        400,
        "mask",
        "duplicate_parameter",
    ),
    edit("mask-as-text-field", {**D2, "mask": "x"}, IMG(), 400, "mask", "invalid_image_format"),
    edit(
        "mask-bomb", GPT, files(("image", png()), ("mask", bomb(8192, "L"))), 400, "mask", "image_too_large"
    ),
    # --- edits: parameters -----------------------------------------------------------------------------
    edit("prompt-missing", {"model": "dall-e-2"}, IMG(), 400, "prompt", "missing_required_parameter"),
    edit("prompt-long", {**D2, "prompt": "x" * 1001}, IMG(), 400, "prompt", "string_above_max_length"),
    edit("prompt-empty", {**D2, "prompt": ""}, IMG(), 400, "prompt", "empty_string"),
    edit("prompt-as-file", {"model": "dall-e-2"}, IMG() + files(("prompt", b"x")), 400, "prompt", BAD_TYPE),
    edit("prompt-not-utf8", {**D2, "prompt": b"\xff\xfe"}, IMG(), 400, "prompt", "invalid_unicode"),
    edit("prompt-cesu8", {**D2, "prompt": b"\xed\xa0\x80"}, IMG(), 400, "prompt", "invalid_unicode"),
    edit("n-float", {**D2, "n": "1.0"}, IMG(), 400, "n", BAD_TYPE),
    edit("n-exponent", {**D2, "n": "1e0"}, IMG(), 400, "n", BAD_TYPE),
    edit("n-spaced", {**D2, "n": " 1"}, IMG(), 400, "n", BAD_TYPE),
    edit("n-plus", {**D2, "n": "+1"}, IMG(), 400, "n", BAD_TYPE),
    edit("n-hex", {**D2, "n": "0x1"}, IMG(), 400, "n", BAD_TYPE),
    edit("n-word", {**D2, "n": "one"}, IMG(), 400, "n", BAD_TYPE),
    edit("n-empty", {**D2, "n": ""}, IMG(), 400, "n", BAD_TYPE),
    edit("n-arabic-digit", {**D2, "n": "٢"}, IMG(), 400, "n", BAD_TYPE),
    edit("n-zero", {**D2, "n": "0"}, IMG(), 400, "n", RANGE),
    edit("n-negative", {**D2, "n": "-1"}, IMG(), 400, "n", RANGE),
    edit("n-eleven", {**D2, "n": "11"}, IMG(), 400, "n", RANGE),
    edit("n-huge", {**D2, "n": "9" * 30}, IMG(), 400, "n", RANGE),
    edit("n-twice", {**D2, "n": ["1", "2"]}, IMG(), 400, "n", "duplicate_parameter"),
    edit("stream-yes", {**GPT, "stream": "yes"}, IMG(), 400, "stream", BAD_TYPE),
    edit("stream-on-dalle2", {**D2, "stream": "true"}, IMG(), 400, "stream", UNSUPPORTED),
    edit("stream-n-2", {**GPT, "stream": "true", "n": "2"}, IMG(), 400, "n", VALUE),
    edit(
        "compression-float", {**GPT, "output_compression": "50.5"}, IMG(), 400, "output_compression", BAD_TYPE
    ),
    edit("compression-101", {**GPT, "output_compression": "101"}, IMG(), 400, "output_compression", RANGE),
    edit("partial-images-word", {**GPT, "partial_images": "x"}, IMG(), 400, "partial_images", BAD_TYPE),
    edit("model-dalle3", {**P, "model": "dall-e-3"}, IMG(), 400, "model", VALUE),
    edit("model-unknown", {**P, "model": "sdxl"}, IMG(), 400, "model", "model_not_found"),
    edit("model-stability", {**P, "model": "stability.stable-image-core-v1:1"}, IMG(), 400, "model", VALUE),
    edit("style", {**D2, "style": "vivid"}, IMG(), 400, "style", UNKNOWN),
    edit("moderation", {**GPT, "moderation": "low"}, IMG(), 400, "moderation", UNKNOWN),
    edit("unknown-field", {**D2, "foo": "1"}, IMG(), 400, "foo", UNKNOWN),
    edit("size-tiny", {**D2, "size": "1x1"}, IMG(), 400, "size", VALUE),
    edit("quality-hd-gpt", {**GPT, "quality": "hd"}, IMG(), 400, "quality", VALUE),
    edit("response-format-xml", {**D2, "response_format": "xml"}, IMG(), 400, "response_format", VALUE),
    edit(
        "input-fidelity-mini",
        {**P, "model": "gpt-image-1-mini", "input_fidelity": "high"},
        IMG(),
        400,
        "input_fidelity",
        UNSUPPORTED,
    ),
    edit(
        "input-fidelity-dalle2", {**D2, "input_fidelity": "high"}, IMG(), 400, "input_fidelity", UNSUPPORTED
    ),
    edit("input-fidelity-bad", {**GPT, "input_fidelity": "max"}, IMG(), 400, "input_fidelity", VALUE),
    edit(
        "background-gpt2",
        {**P, "model": "gpt-image-2", "background": "transparent"},
        IMG(),
        400,
        "background",
        VALUE,
    ),
    edit("no-key", D2, IMG(), 401, None, "missing_api_key", key=NO_KEY),
    edit("revoked-key", D2, IMG(), 401, None, "invalid_api_key", key=REVOKED_KEY),
    edit(
        "zero-balance",
        {**D2, "size": "256x256"},
        files(("image", png())),
        402,
        None,
        "insufficient_balance",
        key=BROKE_KEY,
    ),
    # --- multipart framing -----------------------------------------------------------------------------
    raw_multipart(
        "no-boundary",
        EDITS,
        form_body(field("prompt", "x")),
        400,
        None,
        "invalid_multipart",
        content_type="multipart/form-data",
    ),
    raw_multipart("garbage", EDITS, b"this is not multipart at all", 400, None, "invalid_multipart"),
    raw_multipart(
        "wrong-boundary",
        EDITS,
        form_body(field("prompt", "x"), boundary="other"),
        400,
        None,
        "invalid_multipart",
    ),
    raw_multipart(
        "unclosed", EDITS, form_body(field("prompt", "x"), close=False), 400, None, "invalid_multipart"
    ),
    raw_multipart(
        "cut-mid-part", EDITS, form_body(file_part("image", png()))[:150], 400, None, "invalid_multipart"
    ),
    raw_multipart(
        "part-without-name",
        EDITS,
        form_body(("Content-Disposition: form-data", b"x")),
        400,
        None,
        "invalid_multipart",
    ),
    raw_multipart(
        "part-without-disposition",
        EDITS,
        form_body(("Content-Type: text/plain", b"x")),
        400,
        None,
        "invalid_multipart",
    ),
    raw_multipart("empty-body", EDITS, b"", 400, None, "invalid_multipart"),
    raw_multipart(
        "too-many-fields",
        EDITS,
        form_body(*[field(f"f{i}", "1") for i in range(65)]),
        400,
        None,
        "too_many_fields",
    ),
    raw_multipart(
        "too-many-files",
        EDITS,
        form_body(*[file_part("image[]", png())] * 18),
        400,
        "image",
        "too_many_images",
    ),
    raw_multipart(
        "field-over-a-megabyte",
        EDITS,
        form_body(field("prompt", "x" * (1024 * 1024 + 1))),
        400,
        "prompt",
        "string_above_max_length",
    ),
    raw_multipart(
        "only-image-no-prompt-variations-style",
        VARIATIONS,
        form_body(file_part("image", png()), field("style", "vivid")),
        400,
        "style",
        UNKNOWN,
    ),
    # JSON is the edits endpoint's other form (images by reference): one without `images` names it.
    raw_multipart(
        "json-to-edits",
        EDITS,
        json.dumps(D2).encode(),
        400,
        "images",
        "missing_required_parameter",
        content_type="application/json",
    ),
    raw_multipart(
        "form-urlencoded-to-edits",
        EDITS,
        b"prompt=x",
        400,
        None,
        "invalid_content_type",
        content_type="application/x-www-form-urlencoded",
    ),
    raw_multipart("no-content-type", VARIATIONS, b"x", 400, None, "invalid_content_type", content_type=""),
    raw_multipart(
        "over-limit",
        EDITS,
        form_body(file_part("image", b"\0" * (BODY_LIMIT + 1))),
        413,
        None,
        "payload_too_large",
    ),
    # --- variations ------------------------------------------------------------------------------------
    raw_multipart(
        "vary-image-missing",
        VARIATIONS,
        form_body(field("model", "dall-e-2")),
        400,
        "image",
        "missing_required_parameter",
    ),
    vary("prompt", {"prompt": "x"}, IMG(), 400, "prompt", UNKNOWN),
    vary("model-gpt", {"model": "gpt-image-1.5"}, IMG(), 400, "model", VALUE),
    vary("model-dalle3", {"model": "dall-e-3"}, IMG(), 400, "model", VALUE),
    vary("model-unknown", {"model": "x"}, IMG(), 400, "model", "model_not_found"),
    vary("size-1792", {"size": "1792x1024"}, IMG(), 400, "size", VALUE),
    vary("size-1536", {"size": "1024x1536"}, IMG(), 400, "size", VALUE),
    vary("n-eleven", {"n": "11"}, IMG(), 400, "n", RANGE),
    vary("n-float", {"n": "1.0"}, IMG(), 400, "n", BAD_TYPE),
    vary("two-images", {}, files(("image[]", png()), ("image[]", png())), 400, "image", "invalid_type"),
    vary("jpeg", {}, files(("image", jpeg())), 400, "image", "invalid_image_format"),
    vary("non-square", {}, files(("image", png(64, 48))), 400, "image", "invalid_image_size"),
    vary("bomb", {}, files(("image", bomb(8192, "L"))), 400, "image", "image_too_large"),
    vary("empty-image", {}, files(("image", b"")), 400, "image", "invalid_image"),
    vary("quality", {"quality": "hd"}, IMG(), 400, "quality", UNKNOWN),
    vary("style", {"style": "vivid"}, IMG(), 400, "style", UNKNOWN),
    vary("background", {"background": "opaque"}, IMG(), 400, "background", UNKNOWN),
    vary("output-format", {"output_format": "png"}, IMG(), 400, "output_format", UNKNOWN),
    vary("response-format-xml", {"response_format": "xml"}, IMG(), 400, "response_format", VALUE),
    vary("mask", {}, files(("image", png()), ("mask", mask())), 400, "mask", UNKNOWN),
    vary("user-not-utf8", {"user": b"\xc3\x28"}, IMG(), 400, "user", "invalid_unicode"),
    vary("user-as-file", {}, IMG() + files(("user", b"x")), 400, "user", BAD_TYPE),
    vary("no-key", {}, IMG(), 401, None, "missing_api_key", key=NO_KEY),
    vary("zero-balance", {"size": "256x256"}, IMG(), 402, None, "insufficient_balance", key=BROKE_KEY),
]


def test_the_corpus_is_large_and_spans_the_endpoints():
    assert len(CASES) >= 150
    paths = {c.path for c in CASES}
    assert {GEN, EDITS, VARIATIONS} <= paths
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_request_is_refused_cleanly(gate, case):
    keys = {OK_KEY: gate.key, BROKE_KEY: gate.broke_key, REVOKED_KEY: gate.revoked_key, NO_KEY: None}
    key = keys[case.key]
    headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **case.headers}
    if case.headers.get("content-type") == "":
        headers.pop("content-type")
    gate.writes.clear()

    response = gate.client.request(case.method, case.path, headers=headers, **case.request)

    assert response.status_code == case.status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert (error["param"], error["code"]) == (case.param, case.code), error
    assert error["message"]
    assert response.headers["x-request-id"].startswith("req_")
    assert not [w for w in gate.writes if w[0] == "s3"], gate.writes  # no image stored
    if gate.writes:  # the limiter's counters, or a refused reservation's neighbours: money must not move
        assert gate.balance() == BALANCE


def test_after_the_corpus_no_money_moved_and_the_bucket_is_empty(gate):
    """Direct reads, to back the write log: after whatever ran before this in this worker, nothing moved."""
    assert gate.balance() == BALANCE
    assert gate.outputs() == []


def test_a_decoded_bomb_is_what_it_claims():
    with Image.open(io.BytesIO(bomb())) as img:
        assert img.size == (4096, 4096)
    assert len(bomb()) < 100_000

"""validation.resolve: every default filled, every `auto` resolved, every broken rule a 400 naming `param`."""

import base64
import io
import os
import zlib

import pytest
from PIL import Image

from imagegate.errors import APIError
from imagegate.inputs.images import inspect

from .conftest import half_mask, image_bytes, upload


def rejected(make, **kw):
    with pytest.raises(APIError) as info:
        make(**kw)
    assert info.value.status == 400
    return info.value


# --- defaults -------------------------------------------------------------------------------------------


def test_dall_e_2_is_the_default_model(job):
    j = job(prompt="a red fox")
    assert j.contract.id == "dall-e-2"
    assert (j.width, j.height, j.size) == (1024, 1024, "1024x1024")
    assert (j.response_format, j.quality, j.n) == ("url", "standard", 1)
    assert j.style is None
    assert j.price == 20_000


@pytest.mark.parametrize("model", ["gpt-image-1.5", "gpt-image-1", "gpt-image-2", "imagegate-local"])
def test_gpt_defaults(job, model):
    j = job(prompt="a red fox", model=model)
    assert j.response_format == "b64_json"
    assert j.size == "1024x1024"
    assert j.quality == "medium"
    assert (j.output_format, j.background, j.moderation) == ("png", "auto", "auto")


def test_gpt_auto_values_resolve(job):
    j = job(prompt="a red fox", model="gpt-image-1.5", size="auto", quality="auto")
    assert (j.size, j.quality, j.price_per_image) == ("1024x1024", "medium", 34_000)


def test_response_format_url_is_accepted_for_gpt_models(job):
    # docs/models.md: a deliberate difference from OpenAI, which rejects response_format for GPT-image models.
    assert job(prompt="x", model="gpt-image-1.5", response_format="url").response_format == "url"
    assert job(prompt="x", model="dall-e-2", response_format="b64_json").response_format == "b64_json"


def test_dall_e_3_style_defaults_to_vivid(job):
    j = job(prompt="a red fox", model="dall-e-3")
    assert (j.style, j.quality, j.response_format, j.price) == ("vivid", "standard", "url", 40_000)
    assert job(prompt="a red fox", model="dall-e-3", style="natural").style == "natural"


def test_variations_default(job):
    j = job("variations", images=[upload(width=256, height=256)])
    assert (j.contract.id, j.size, j.prompt, j.response_format) == ("dall-e-2", "1024x1024", "", "url")


# --- which parameters each endpoint and model takes -----------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "params", "param"),
    [
        ("edits", {"prompt": "x", "model": "gpt-image-1.5", "moderation": "low"}, "moderation"),
        ("edits", {"prompt": "x", "model": "gpt-image-1.5", "style": "vivid"}, "style"),
        ("variations", {"prompt": "x"}, "prompt"),
        ("variations", {"quality": "standard"}, "quality"),
        ("variations", {"background": "opaque"}, "background"),
        (
            "generations",
            {"prompt": "x", "input_fidelity": "high", "model": "gpt-image-1.5"},
            "input_fidelity",
        ),
    ],
)
def test_endpoint_specific_params(job, endpoint, params, param):
    err = rejected(job, endpoint=endpoint, images=[upload(width=64, height=64)], **params)
    assert (err.param, err.code) == (param, "unknown_parameter")


@pytest.mark.parametrize("model", ["dall-e-2", "dall-e-3"])
@pytest.mark.parametrize(
    ("param", "value"),
    [("background", "opaque"), ("output_format", "png"), ("output_compression", 80), ("moderation", "low")],
)
def test_gpt_only_params_rejected_for_dall_e(job, model, param, value):
    err = rejected(job, prompt="a fox", model=model, **{param: value})
    assert (err.param, err.code) == (param, "unsupported_parameter")


def test_input_fidelity_rejected_for_dall_e_2_edits(job):
    err = rejected(
        job, endpoint="edits", images=[upload()], prompt="x", model="dall-e-2", input_fidelity="high"
    )
    assert err.param == "input_fidelity"


def test_input_fidelity_rejected_for_a_model_without_it(job):
    err = rejected(
        job, endpoint="edits", images=[upload()], prompt="x", model="gpt-image-1-mini", input_fidelity="high"
    )
    assert (err.param, err.code) == ("input_fidelity", "unsupported_parameter")


def test_style_rejected_for_models_other_than_dall_e_3(job):
    assert rejected(job, prompt="x", model="dall-e-2", style="vivid").param == "style"
    assert rejected(job, prompt="x", model="gpt-image-1.5", style="natural").param == "style"


def test_unknown_model(job):
    err = rejected(job, prompt="x", model="dall-e-9")
    assert (err.param, err.code) == ("model", "model_not_found")


def test_model_that_does_not_serve_the_endpoint(job):
    err = rejected(job, endpoint="edits", images=[upload()], prompt="x", model="dall-e-3")
    assert err.param == "model"
    assert "/v1/images/edits" in err.message
    assert rejected(job, endpoint="variations", images=[upload()], model="gpt-image-1.5").param == "model"


# --- prompt, n, size, quality ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "limit"), [("dall-e-2", 1000), ("dall-e-3", 4000), ("gpt-image-1.5", 32000)]
)
def test_prompt_length(job, model, limit):
    assert len(job(prompt="p" * limit, model=model).prompt) == limit
    err = rejected(job, prompt="p" * (limit + 1), model=model)
    assert (err.param, err.code) == ("prompt", "string_above_max_length")


def test_prompt_missing_or_blank(job):
    assert rejected(job, model="gpt-image-1.5").code == "missing_required_parameter"
    assert rejected(job, prompt="   ", model="gpt-image-1.5").param == "prompt"


def test_dall_e_3_takes_only_n_1(job):
    err = rejected(job, prompt="x", model="dall-e-3", n=2)
    assert err.param == "n"
    assert err.message == "You must provide n=1 for this model."


@pytest.mark.parametrize(
    ("model", "size"),
    [
        ("dall-e-2", "1536x1024"),
        ("dall-e-2", "auto"),
        ("dall-e-3", "512x512"),
        ("gpt-image-1.5", "512x512"),
        ("gpt-image-1.5", "1536x864"),
        ("gpt-image-2", "1000x1000"),
        ("gpt-image-2", "4000x2000"),
        ("gpt-image-2", "big"),
    ],
)
def test_size_not_allowed(job, model, size):
    err = rejected(job, prompt="x", model=model, size=size)
    assert err.param == "size"
    assert f"'{size}'" in err.message


def test_gpt_image_2_free_form_size(job):
    j = job(prompt="x", model="gpt-image-2", size="1536x864")
    assert (j.width, j.height, j.price_per_image) == (1536, 864, 67_079)


@pytest.mark.parametrize(
    ("model", "quality"), [("dall-e-2", "hd"), ("dall-e-3", "low"), ("gpt-image-1.5", "standard")]
)
def test_quality_not_allowed(job, model, quality):
    assert rejected(job, prompt="x", model=model, quality=quality).param == "quality"


def test_output_compression_needs_a_lossy_format(job):
    err = rejected(job, prompt="x", model="gpt-image-1.5", output_compression=50)
    assert err.param == "output_compression"
    assert job(prompt="x", model="gpt-image-1.5", output_format="webp", output_compression=50).n == 1


def test_transparent_background_rules(job):
    assert (
        rejected(job, prompt="x", model="gpt-image-1.5", background="transparent", output_format="jpeg").param
        == "background"
    )
    assert rejected(job, prompt="x", model="gpt-image-2", background="transparent").param == "background"
    assert job(prompt="x", model="gpt-image-1.5", background="transparent").background == "transparent"


# --- the price on the job -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "per_image", "total"),
    [
        ({"model": "dall-e-2", "size": "512x512", "n": 3}, 18_000, 54_000),
        ({"model": "dall-e-2", "size": "256x256", "n": 10}, 16_000, 160_000),
        ({"model": "dall-e-3", "size": "1024x1792", "quality": "hd"}, 120_000, 120_000),
        ({"model": "gpt-image-1.5", "size": "1536x1024", "quality": "high", "n": 2}, 200_000, 400_000),
        ({"model": "gpt-image-1.5", "size": "1024x1536", "quality": "low", "n": 4}, 13_000, 52_000),
        ({"model": "gpt-image-1.5", "quality": "auto", "n": 5}, 34_000, 170_000),
        ({"model": "imagegate-local", "n": 3}, 2_000, 6_000),
    ],
)
def test_price_is_per_image_times_n(job, params, per_image, total):
    j = job(prompt="x", **params)
    assert (j.price_per_image, j.price) == (per_image, total)


# --- `image` on /generations ----------------------------------------------------------------------------


def test_generation_image_as_base64(job):
    raw = image_bytes(300, 200, fmt="PNG")
    j = job(prompt="x", model="gpt-image-1.5", image=base64.b64encode(raw).decode())
    assert len(j.images) == 1
    assert (j.images[0].param, j.images[0].data, j.images[0].width, j.images[0].height) == (
        "image",
        raw,
        300,
        200,
    )
    # An input image makes `auto` keep its orientation, as on /edits.
    assert j.size == "1536x1024"


def test_generation_image_as_data_urls(job):
    png, jpeg = image_bytes(64, 64), image_bytes(64, 128, mode="RGB", fmt="JPEG")
    urls = [
        "data:image/png;base64," + base64.b64encode(png).decode(),
        "data:image/jpeg;base64," + base64.b64encode(jpeg).decode(),
    ]
    j = job(prompt="x", model="gpt-image-1.5", image=urls)
    assert [(i.param, i.format, i.data) for i in j.images] == [
        ("image[0]", "PNG", png),
        ("image[1]", "JPEG", jpeg),
    ]


def test_generation_image_rejected_for_dall_e_2(job):
    err = rejected(job, prompt="x", model="dall-e-2", image=base64.b64encode(image_bytes()).decode())
    assert (err.param, err.code) == ("image", "unsupported_parameter")


def test_generation_image_that_is_not_base64(job):
    err = rejected(job, prompt="x", model="gpt-image-1.5", image=["data:image/png;base64,@@@not-base64@@@"])
    assert (err.param, err.code) == ("image[0]", "invalid_base64")


def test_generation_image_that_is_not_an_image(job):
    err = rejected(job, prompt="x", model="gpt-image-1.5", image=base64.b64encode(b"hello world").decode())
    assert err.param == "image"


# --- edits: size auto and input-image rules -------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "size"), [(300, 200, "1536x1024"), (200, 300, "1024x1536"), (250, 250, "1024x1024")]
)
def test_edit_auto_size_keeps_orientation(job, width, height, size):
    j = job("edits", images=[upload(width=width, height=height)], prompt="x", model="gpt-image-1.5")
    assert j.size == size
    assert (
        job(
            "edits",
            images=[upload(width=width, height=height)],
            prompt="x",
            model="gpt-image-1.5",
            size="auto",
        ).size
        == size
    )


def test_edit_requires_an_image(job):
    err = rejected(job, endpoint="edits", prompt="x", model="gpt-image-1.5")
    assert (err.param, err.code) == ("image", "missing_required_parameter")


def test_dall_e_2_edit_takes_one_square_png(job):
    j = job("edits", images=[upload(width=256, height=256)], prompt="x", model="dall-e-2", size="256x256")
    assert (j.size, j.price, len(j.images)) == ("256x256", 16_000, 1)


def test_dall_e_2_rejects_more_than_one_image(job):
    images = [upload("image[]"), upload("image[]")]
    err = rejected(job, endpoint="edits", images=images, prompt="x", model="dall-e-2")
    assert (err.param, err.code) == ("image", "invalid_type")


def test_dall_e_2_rejects_non_square(job):
    err = rejected(job, endpoint="edits", images=[upload(width=256, height=128)], prompt="x")
    assert (err.param, err.code) == ("image", "invalid_image_size")
    err = rejected(job, endpoint="variations", images=[upload(width=128, height=256)])
    assert err.param == "image"


@pytest.mark.parametrize(("mode", "fmt"), [("RGB", "JPEG"), ("RGBA", "WEBP"), ("RGB", "GIF")])
def test_dall_e_2_rejects_non_png(job, mode, fmt):
    err = rejected(job, endpoint="variations", images=[upload(mode=mode, fmt=fmt)])
    assert (err.param, err.code) == ("image", "invalid_image_format")


def test_dall_e_2_rejects_a_png_of_4_mb_or_more(job):
    # Noise does not compress: a 1100x1100 RGBA PNG stored uncompressed is about 4.6 MiB.
    noise = Image.frombytes("RGBA", (1100, 1100), os.urandom(1100 * 1100 * 4))
    buf = io.BytesIO()
    noise.save(buf, "PNG", compress_level=0)
    big = inspect(buf.getvalue(), "image")
    assert len(big.data) >= 4 * 1024 * 1024
    err = rejected(job, endpoint="variations", images=[big])
    assert (err.param, err.code) == ("image", "invalid_image_format")
    # The same file is fine for a GPT model (limit 50 MB).
    assert job("edits", images=[big], prompt="x", model="gpt-image-1.5").size == "1024x1024"


def test_dall_e_2_edit_rgb_without_mask_rejected(job):
    rgb = upload(mode="RGB")
    err = rejected(job, endpoint="edits", images=[rgb], prompt="x", model="dall-e-2")
    assert (err.param, err.code) == ("image", "invalid_image_format")
    # With a mask the RGB image is fine, and variations never need alpha.
    assert job("edits", images=[rgb], mask=half_mask(64, 64), prompt="x").mask is not None
    assert job("variations", images=[rgb]).contract.id == "dall-e-2"


def test_gpt_takes_up_to_16_images(job):
    sixteen = [upload("image[]") for _ in range(16)]
    assert len(job("edits", images=sixteen, prompt="x", model="gpt-image-1.5").images) == 16
    err = rejected(
        job, endpoint="edits", images=[*sixteen, upload("image[]")], prompt="x", model="gpt-image-1.5"
    )
    assert (err.param, err.code) == ("image", "too_many_images")


def test_gpt_accepts_jpeg_and_webp(job):
    images = [upload(mode="RGB", fmt="JPEG"), upload(mode="RGB", fmt="WEBP"), upload(fmt="PNG")]
    j = job("edits", images=images, prompt="x", model="gpt-image-1.5")
    assert [i.format for i in j.images] == ["JPEG", "WEBP", "PNG"]


def test_gpt_rejects_other_formats(job):
    err = rejected(
        job, endpoint="edits", images=[upload(mode="RGB", fmt="GIF")], prompt="x", model="gpt-image-1.5"
    )
    assert (err.param, err.code) == ("image", "invalid_image_format")


def test_mask_size_mismatch(job):
    err = rejected(
        job, endpoint="edits", images=[upload(width=64, height=64)], mask=half_mask(32, 32), prompt="x"
    )
    assert (err.param, err.code) == ("mask", "invalid_image_size")
    assert "32x32" in err.message and "64x64" in err.message


def test_mask_without_alpha(job):
    mask = upload("mask", mode="RGB")
    for model in ("dall-e-2", "gpt-image-1.5"):
        err = rejected(job, endpoint="edits", images=[upload()], mask=mask, prompt="x", model=model)
        assert (err.param, err.code) == ("mask", "invalid_image_format")


def test_mask_must_be_png(job):
    mask = upload("mask", mode="RGBA", fmt="WEBP")
    err = rejected(job, endpoint="edits", images=[upload()], mask=mask, prompt="x", model="gpt-image-1.5")
    assert err.param == "mask"


def test_mask_is_checked_against_the_first_image(job):
    images = [upload("image[]", width=64, height=64), upload("image[]", width=32, height=32)]
    j = job("edits", images=images, mask=half_mask(64, 64), prompt="x", model="gpt-image-1.5")
    assert j.mask is not None


# --- hostile input (found in review) --------------------------------------------------------------------


@pytest.mark.parametrize(
    "size", ["²x²", "١٠٢٤x١٠٢٤", "9" * 5000 + "x16", "0x0", "1024X1024", " 1024x1024", ""]
)
def test_odd_sizes_are_400_naming_size(job, size):
    assert rejected(job, model="gpt-image-2", prompt="x", size=size).param == "size"


def test_empty_model_is_an_error_not_the_default(job):
    err = rejected(job, model="", prompt="x")
    assert (err.param, err.code) == ("model", "model_not_found")


def test_generation_image_may_be_larger_than_any_text_field(job):
    # ~300 KB of base64: far past any prompt, still an ordinary photo.
    noisy = Image.frombytes("RGB", (400, 300), os.urandom(400 * 300 * 3))
    buf = io.BytesIO()
    noisy.save(buf, "PNG")
    data = buf.getvalue()
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert len(url) > 300_000
    made = job(model="gpt-image-1.5", prompt="x", image=[url])
    assert (made.images[0].width, made.images[0].height) == (400, 300)


def test_an_image_claiming_a_huge_canvas_is_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, "PNG")  # a few KB on the wire, 25 megapixels decoded
    with pytest.raises(APIError) as info:
        inspect(buf.getvalue(), "image[2]")
    assert (info.value.status, info.value.param, info.value.code) == (400, "image[2]", "image_too_large")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


# A valid header and valid CRCs, but pixel data that is not zlib: only decoding the pixels finds that out.
CORRUPT_IDAT = (
    b"\x89PNG\r\n\x1a\n"
    + _png_chunk(b"IHDR", (64).to_bytes(4, "big") * 2 + bytes([8, 6, 0, 0, 0]))
    + _png_chunk(b"IDAT", b"garbage-not-zlib" * 10)
    + _png_chunk(b"IEND", b"")
)


@pytest.mark.parametrize(
    "data",
    [
        image_bytes(300, 300, mode="RGB", fmt="JPEG")[:400],  # a JPEG cut short
        image_bytes(64, 64)[:-30],  # a PNG cut short: its chunks no longer add up
        CORRUPT_IDAT[:-12] + b"\x00" * 12,  # IEND damaged: its CRC is wrong
    ],
    ids=["truncated-jpeg", "truncated-png", "png-bad-crc"],
)
def test_images_whose_structure_is_broken_are_400_without_decoding(data):
    with pytest.raises(APIError) as info:
        inspect(data, "image")
    assert (info.value.status, info.value.param, info.value.code) == (400, "image", "invalid_image_format")


def test_corrupt_pixel_data_behind_an_intact_structure_is_left_to_the_decoder():
    """Validation reads headers only (issue 8, item 7): the provider finds this one, after the money is
    reserved, and answers 400 (tests/hostile/test_boundary.py covers the refund)."""
    from imagegate.errors import ProviderError
    from imagegate.providers.local import LocalProvider

    img = inspect(CORRUPT_IDAT, "image")
    assert (img.format, img.width, img.height) == ("PNG", 64, 64)
    job = resolve_job(img)
    with pytest.raises(ProviderError) as info:
        LocalProvider().edit(job)
    assert (info.value.status, info.value.param, info.value.code) == (400, "image", "invalid_image_format")
    assert not (info.value.retry or info.value.fallover)


def test_every_provider_decodes_inputs_through_open_which_answers_400_for_bad_pixels():
    """Gemini (mask compositing) and Bedrock (inpainting, variations) decode uploads with `open()` too: a
    corrupt one is the client's 400 there as well, not a crash (a 500) inside the provider."""
    from pathlib import Path

    from imagegate.errors import ProviderError

    with pytest.raises(ProviderError) as info:
        inspect(CORRUPT_IDAT, "mask").open()
    assert (info.value.status, info.value.param, info.value.code) == (400, "mask", "invalid_image_format")
    providers = Path(__file__).resolve().parents[2] / "layers" / "imagegate" / "imagegate" / "providers"
    for module in providers.glob("*.py"):
        assert "BytesIO(image.data" not in module.read_text(), module.name  # no decode around open()


def resolve_job(img):
    from imagegate.catalog.loader import load_catalog
    from imagegate.config import Settings
    from imagegate.inputs.validation import ImageParams, resolve

    catalog = load_catalog(Settings()).contracts
    return resolve("edits", ImageParams(prompt="x", model="gpt-image-1.5"), catalog, [img])


# --- Gemini and Bedrock models under their own ids --------------------------------------------------------

OWN_PRICE_MODELS = [
    ("gemini-3.1-flash-image", 71_440),
    ("gemini-3-pro-image", 176_880),
    ("stability.stable-image-core-v1:1", 40_000),
]


@pytest.mark.parametrize(("model", "price"), OWN_PRICE_MODELS)
def test_own_price_model_defaults(job, model, price):
    j = job(prompt="a red fox", model=model)
    assert (j.size, j.quality, j.n, j.response_format, j.output_format) == (
        "1024x1024",
        "standard",
        1,
        "b64_json",
        "png",
    )
    assert (j.style, j.price_per_image) == (None, price)
    assert job(prompt="a red fox", model=model, quality="auto", size="auto").quality == "standard"
    assert job(prompt="a red fox", model=model, n=4).price == 4 * price


@pytest.mark.parametrize(("model", "price"), OWN_PRICE_MODELS)
def test_own_price_models_take_up_to_4_images_a_request(job, model, price):
    err = rejected(job, prompt="x", model=model, n=5)
    assert (err.param, err.message) == ("n", "5 is greater than the maximum of 4 - 'n'")


@pytest.mark.parametrize(
    ("model", "size"), [("gemini-3-pro-image", "848x1264"), ("gemini-3.1-flash-image", "1584x672")]
)
def test_gemini_serves_its_native_sizes(job, model, size):
    assert job(prompt="x", model=model, size=size).size == size


@pytest.mark.parametrize(
    ("model", "size"),
    [
        ("gemini-3.1-flash-image", "1536x1024"),
        ("gemini-3-pro-image", "2048x2048"),
        ("stability.stable-image-core-v1:1", "1376x768"),
        ("stability.stable-image-core-v1:1", "256x256"),
    ],
)
def test_own_price_models_refuse_other_sizes(job, model, size):
    err = rejected(job, prompt="x", model=model, size=size)
    assert err.param == "size"
    assert f"'{size}'" in err.message


@pytest.mark.parametrize(
    ("model", "limit"),
    [
        ("gemini-3.1-flash-image", 4000),
        ("gemini-3-pro-image", 4000),
        ("stability.stable-image-core-v1:1", 10000),
    ],
)
def test_own_price_model_prompt_length(job, model, limit):
    assert len(job(prompt="p" * limit, model=model).prompt) == limit
    err = rejected(job, prompt="p" * (limit + 1), model=model)
    assert (err.param, err.code) == ("prompt", "string_above_max_length")


@pytest.mark.parametrize("model", [m for m, _ in OWN_PRICE_MODELS])
@pytest.mark.parametrize(
    ("param", "value"),
    [("background", "opaque"), ("output_format", "webp"), ("moderation", "low"), ("style", "vivid")],
)
def test_own_price_models_refuse_gpt_and_dall_e_parameters(job, model, param, value):
    err = rejected(job, prompt="x", model=model, **{param: value})
    assert (err.param, err.code) == (param, "unsupported_parameter")
    assert rejected(job, prompt="x", model=model, quality="hd").param == "quality"


@pytest.mark.parametrize("model", ["gemini-3.1-flash-image", "gemini-3-pro-image"])
def test_gemini_edits_take_up_to_4_png_jpeg_or_webp_images(job, model):
    four = [
        upload("image[]"),
        upload("image[]", mode="RGB", fmt="JPEG"),
        upload("image[]", fmt="WEBP"),
        upload("image[]", width=96, height=64),
    ]
    j = job("edits", images=four, mask=half_mask(64, 64), prompt="add a moon", model=model)
    assert ([i.format for i in j.images], j.mask.format) == (["PNG", "JPEG", "WEBP", "PNG"], "PNG")
    assert (j.size, j.price) == ("1024x1024", j.price_per_image)
    err = rejected(job, endpoint="edits", images=[*four, upload("image[]")], prompt="x", model=model)
    assert (err.param, err.code) == ("image", "too_many_images")
    gif = upload(mode="RGB", fmt="GIF")
    err = rejected(job, endpoint="edits", images=[gif], prompt="x", model=model)
    assert (err.param, err.code) == ("image", "invalid_image_format")


@pytest.mark.parametrize("model", ["gemini-3.1-flash-image", "gemini-3-pro-image"])
def test_gemini_variations_take_any_one_image(job, model):
    j = job("variations", images=[upload(mode="RGB", fmt="JPEG", width=96, height=64)], model=model, n=2)
    assert (j.prompt, j.n, j.size, j.images[0].format) == ("", 2, "1024x1024", "JPEG")


def test_gemini_takes_no_image_on_generations(job):
    png = base64.b64encode(image_bytes()).decode()
    err = rejected(job, prompt="x", model="gemini-3.1-flash-image", image=png)
    assert (err.param, err.code) == ("image", "unsupported_parameter")


@pytest.mark.parametrize("endpoint", ["edits", "variations"])
def test_stable_image_core_only_generates(job, endpoint):
    prompt = {"prompt": "x"} if endpoint == "edits" else {}
    err = rejected(
        job, endpoint=endpoint, images=[upload()], model="stability.stable-image-core-v1:1", **prompt
    )
    assert err.param == "model"
    assert f"/v1/images/{endpoint}" in err.message


@pytest.mark.parametrize(
    ("model", "upload_size", "expected"),
    [
        ("gemini-3.1-flash-image", (60, 40), (1264, 848)),
        ("gemini-3.1-flash-image", (40, 80), (768, 1376)),
        ("gpt-image-1.5", (60, 40), (1536, 1024)),
        ("gpt-image-2", (40, 60), (1024, 1536)),
    ],
)
def test_auto_size_with_an_input_is_the_contracts_own_nearest_size(job, model, upload_size, expected):
    w, h = upload_size
    j = job("edits", images=[upload(width=w, height=h)], prompt="x", model=model, size="auto")
    assert (j.width, j.height) == expected
    assert j.size in j.contract.sizes or j.contract.free_form

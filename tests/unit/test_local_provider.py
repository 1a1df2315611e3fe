"""The offline renderer: deterministic, the right size and format, and edits that respect the mask."""

import io

import pytest
from PIL import Image, ImageChops

from imagegate.inputs.images import inspect
from imagegate.providers import run
from imagegate.providers.local import LocalProvider

from .conftest import half_mask, image_bytes

provider = LocalProvider()


def decode(data):
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def solid_png(width, height, colour=(10, 200, 30, 255)):
    return inspect(image_bytes(width, height, mode="RGBA", colour=colour), "image")


def test_same_job_same_bytes(job):
    j = job(prompt="a lighthouse at dusk", model="imagegate-local", size="256x256", n=2)
    first, second = provider.generate(j).images, LocalProvider().generate(j).images
    assert first == second


def test_each_index_is_a_different_image(job):
    images = provider.generate(
        job(prompt="a lighthouse", model="imagegate-local", size="256x256", n=3)
    ).images
    assert len(images) == 3
    assert len(set(images)) == 3


def test_prompt_changes_the_image(job):
    a = provider.generate(job(prompt="a lighthouse", model="imagegate-local", size="256x256")).images
    b = provider.generate(job(prompt="a windmill", model="imagegate-local", size="256x256")).images
    assert a != b


@pytest.mark.parametrize(
    ("model", "size", "expected"),
    [
        ("dall-e-2", "256x256", (256, 256)),
        ("dall-e-2", "512x512", (512, 512)),
        ("imagegate-local", "320x192", (320, 192)),
        ("imagegate-local", "192x320", (192, 320)),
        ("gpt-image-1.5", "1536x1024", (1536, 1024)),
    ],
)
def test_dimensions(job, model, size, expected):
    [data] = provider.generate(job(prompt="dimensions", model=model, size=size)).images
    img = decode(data)
    assert img.size == expected
    assert img.format == "PNG"


@pytest.mark.parametrize(("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_output_formats(job, fmt, pil_format):
    j = job(prompt="formats", model="imagegate-local", size="320x192", output_format=fmt, n=2)
    images = [decode(data) for data in provider.generate(j).images]
    assert [(i.format, i.size) for i in images] == [(pil_format, (320, 192))] * 2


def test_opaque_background_has_no_alpha(job):
    j = job(prompt="opaque", model="imagegate-local", size="256x256", background="opaque")
    [data] = provider.generate(j).images
    assert "A" not in decode(data).getbands()


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_transparent_background(job, fmt):
    j = job(
        prompt="a sticker",
        model="gpt-image-1.5",
        background="transparent",
        output_format=fmt,
        size="1024x1024",
    )
    [data] = provider.generate(j).images
    img = decode(data).convert("RGBA")
    w, h = img.size
    alpha = img.getchannel("A")
    for corner in ((0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1), (w // 16, h // 16)):
        assert alpha.getpixel(corner) == 0
    assert alpha.getpixel((w // 2, h // 2)) == 255
    lo, hi = alpha.getextrema()
    assert (lo, hi) == (0, 255)


def test_edit_changes_only_where_the_mask_is_transparent(job):
    source = solid_png(256, 256)
    j = job("edits", images=[source], mask=half_mask(256, 256), prompt="a red balloon", size="256x256")
    [data] = run(provider, j).images
    out = decode(data).convert("RGBA")
    assert out.size == (256, 256)
    original = source.open().convert("RGBA")
    kept = ImageChops.difference(out.crop((0, 0, 128, 256)), original.crop((0, 0, 128, 256)))
    assert kept.getbbox() is None, "pixels under the opaque half of the mask must be untouched"
    colours = dict((colour, count) for count, colour in out.crop((128, 0, 256, 256)).getcolors(128 * 256))
    assert colours.get((10, 200, 30, 255), 0) < 0.05 * 128 * 256


def test_edit_without_mask_uses_the_image_alpha(job):
    # dall-e-2 edits with no mask: the image's own transparent pixels mark the area to edit.
    img = Image.new("RGBA", (256, 256), (10, 200, 30, 255))
    img.paste((0, 0, 0, 0), (0, 128, 256, 256))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    j = job("edits", images=[inspect(buf.getvalue(), "image")], prompt="grass", size="256x256")
    out = decode(run(provider, j).images[0]).convert("RGBA")
    assert out.size == (256, 256)
    assert out.crop((0, 0, 256, 128)).getcolors() == [(256 * 128, (10, 200, 30, 255))]
    assert len(out.crop((0, 128, 256, 256)).getcolors(256 * 128)) > 1


def test_edit_is_deterministic(job):
    j = job("edits", images=[solid_png(128, 128)], mask=half_mask(128, 128), prompt="again", size="256x256")
    assert provider.edit(j).images == provider.edit(j).images


@pytest.mark.parametrize(("size", "expected"), [("256x256", (256, 256)), ("512x512", (512, 512))])
def test_variations_have_the_requested_dimensions(job, size, expected):
    j = job("variations", images=[solid_png(256, 256)], size=size, n=2)
    images = [decode(data) for data in run(provider, j).images]
    assert [i.size for i in images] == [expected, expected]


def test_variations_keep_a_non_square_input_orientation(job):
    # imagegate-local takes any input shape; `auto` keeps its orientation.
    src = Image.linear_gradient("L").resize((96, 64)).convert("RGBA")
    buf = io.BytesIO()
    src.save(buf, "PNG")
    j = job("variations", images=[inspect(buf.getvalue(), "image")], model="imagegate-local", n=2)
    images = [decode(data) for data in run(provider, j).images]
    assert [i.size for i in images] == [(1536, 1024)] * 2


def test_variations_differ_from_each_other_and_repeat(job):
    src = Image.new("RGBA", (64, 64), (250, 120, 10, 255))
    src.paste((20, 40, 220, 255), (0, 0, 32, 64))
    buf = io.BytesIO()
    src.save(buf, "PNG")
    j = job("variations", images=[inspect(buf.getvalue(), "image")], size="256x256", n=2)
    first = run(provider, j).images
    assert first == run(provider, j).images
    assert first[0] != first[1]


def test_local_reports_no_usage_so_the_per_image_price_applies(job):
    assert provider.generate(job(prompt="usage", model="imagegate-local", size="256x256")).usage is None


def test_dall_e_3_revised_prompt(job):
    result = provider.generate(job(prompt="a quiet harbour", model="dall-e-3"))
    assert result.revised_prompt == "a quiet harbour"

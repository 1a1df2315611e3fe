"""images.fit's shortcut: an upstream PNG already at the requested size is passed on as it is, read from its
header without Pillow (whose import would otherwise fall on a cold start's first request)."""

import io
import subprocess
import sys

from PIL import Image

from imagegate.inputs.images import fit, png_size


def png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_a_png_at_the_requested_size_is_passed_on_unchanged_without_importing_pillow():
    data = png(64, 32)
    code = (
        "import sys; from imagegate.inputs.images import fit;"
        f" data = {data!r}; assert fit(data, 64, 32, 'png', None) is data;"
        " assert 'PIL' not in sys.modules, 'Pillow was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_png_at_another_size_or_format_is_still_fitted():
    data = png(64, 32)
    with Image.open(io.BytesIO(fit(data, 32, 32, "png", None))) as img:
        assert img.size == (32, 32)
    with Image.open(io.BytesIO(fit(data, 64, 32, "jpeg", None))) as img:
        assert (img.format, img.size) == ("JPEG", (64, 32))


def test_png_size_reads_the_header_and_refuses_what_is_not_a_png():
    assert png_size(png(300, 7)) == (300, 7)
    assert png_size(b"GIF89a" + bytes(30)) is None
    assert png_size(png(3, 3)[:20]) is None

"""Server-side request forgery through the JSON form of edits: an `image_url` that names loopback, the
instance metadata service (in its decimal, octal, hex and IPv4-mapped IPv6 forms), a private address, or a
place that redirects to one, is a 400 naming `images[i].image_url` (or `mask.image_url`). Nothing is
connected to, nothing is charged, nothing is written.

Real servers on 127.0.0.1 stand in for the forbidden targets: with production's policy, a listener on
127.0.0.1 proves the forbidden forms are refused without a connection. With the test policy (production's
plus 127.0.0.1, tests/localservers.py), a local server stands in for a public image host, to prove the
redirect checks, the content-type check and the size cap, and that an allowed URL is fetched and used.
"""

import base64
import itertools

import pytest

from tests.localservers import connected, listener, local_outbound, serve

from .conftest import png

EDIT = {"model": "gpt-image-1.5", "prompt": "a lighthouse", "quality": "low", "size": "1024x1024"}
LOCAL_PRICE_LOW_SQUARE = 9_000  # gpt-image-1.5, low, 1024x1024 (docs/money.md, "Prices")

# Every spelling of loopback and of the metadata address that a URL parser, inet_aton or getaddrinfo reads.
LOOPBACK_FORMS = [
    "127.0.0.1",
    "localhost",
    "2130706433",  # decimal
    "0177.0.0.1",  # octal
    "0x7f.0.0.1",  # hex
    "127.1",  # short
    "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
    "[::ffff:7f00:1]",
    "[::1]",
    "0.0.0.0",
]
METADATA_FORMS = [
    "169.254.169.254",
    "2852039166",  # decimal
    "0251.0376.0251.0376",  # octal
    "0xa9.0xfe.0xa9.0xfe",  # hex
    "[::ffff:169.254.169.254]",  # IPv4-mapped IPv6
    "[::ffff:a9fe:a9fe]",
    "[fd00:ec2::254]",  # AWS's IPv6 metadata address
    "169.254.170.2",  # ECS task credentials
    "10.0.0.1",
    "192.168.1.1",
    "100.64.0.1",
]


@pytest.fixture
def test_policy(gate, monkeypatch):
    """The gate fetching through production's checks plus 127.0.0.1, where the local servers listen."""
    monkeypatch.setattr(gate.service, "outbound", local_outbound())


def post_edit(gate, images, **extra):
    return gate.client.post("/v1/images/edits", headers=gate.auth(), json={**EDIT, "images": images, **extra})


def assert_refused(gate, response, param, codes, before):
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["code"] in codes, error
    assert gate.balance() == before
    assert gate.writes == []  # no reservation, no image


@pytest.mark.parametrize("host", LOOPBACK_FORMS)
def test_loopback_in_any_form_is_refused_without_connecting(gate, host):
    gate.writes.clear()
    before = gate.balance()
    with listener() as sock:
        url = f"https://{host}:{sock.getsockname()[1]}/image.png"
        response = post_edit(gate, [{"image_url": url}])
        assert not connected(sock)
    assert_refused(gate, response, "images[0].image_url", {"address_forbidden"}, before)


@pytest.mark.parametrize("host", METADATA_FORMS)
def test_the_metadata_service_and_private_addresses_are_refused_in_any_form(gate, host):
    gate.writes.clear()
    before = gate.balance()
    response = post_edit(
        gate,
        [{"image_url": "data:image/png;base64," + base64.b64encode(png()).decode()}],
        mask={"image_url": f"https://{host}/latest/meta-data/iam/security-credentials/"},
    )
    assert_refused(gate, response, "mask.image_url", {"address_forbidden"}, before)


@pytest.mark.parametrize(
    "url",
    ["http://example.com/a.png", "file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO", "ftp://a/b.png"],
)
def test_only_https_urls_are_fetched(gate, url):
    gate.writes.clear()
    before = gate.balance()
    assert_refused(gate, post_edit(gate, [{"image_url": url}]), "images[0].image_url", {"url_scheme"}, before)


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://2852039166/latest/meta-data/",
        "http://0251.0376.0251.0376/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://10.0.0.1/",
        "file:///etc/passwd",
    ],
)
def test_a_redirect_to_a_forbidden_target_is_refused(gate, test_policy, location):
    gate.writes.clear()
    before = gate.balance()
    with serve(lambda seen: (302, {"Location": location}, b"")) as server:
        response = post_edit(gate, [{"image_url": server.url("/image.png")}])
    assert_refused(gate, response, "images[0].image_url", {"address_forbidden", "url_scheme"}, before)
    assert len(server.requests) == 1


def test_an_answer_that_is_not_an_image_type_is_refused_before_its_body(gate, test_policy):
    gate.writes.clear()
    before = gate.balance()
    with serve(lambda seen: (200, {"Content-Type": "text/html"}, b"<html>secrets</html>")) as server:
        response = post_edit(gate, [{"image_url": server.url("/image.png")}])
    assert_refused(gate, response, "images[0].image_url", {"content_type"}, before)
    assert "secrets" not in response.text


def test_an_endless_image_stops_at_50_mb(gate, test_policy):
    gate.writes.clear()
    before = gate.balance()
    chunk = b"\0" * (1024 * 1024)
    with serve(lambda seen: (200, {"Content-Type": "image/png"}, itertools.repeat(chunk))) as server:
        response = post_edit(gate, [{"image_url": server.url("/endless.png")}])
    assert_refused(gate, response, "images[0].image_url", {"too_large"}, before)


def test_an_allowed_image_url_is_fetched_once_and_edited_at_the_usual_price(gate, test_policy):
    image = png(96, 64)
    before = gate.balance()
    with serve(lambda seen: (200, {"Content-Type": "image/png"}, image)) as server:
        response = post_edit(gate, [{"image_url": server.url("/photo.png")}])

    assert response.status_code == 200, response.text
    assert [seen.path for seen in server.requests] == ["/photo.png"]
    assert server.requests[0].headers["Accept-Encoding"] == "identity"
    assert gate.balance() == before - LOCAL_PRICE_LOW_SQUARE

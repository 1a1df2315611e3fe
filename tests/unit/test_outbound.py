"""outbound.py: customer-chosen URLs reach only public https addresses, pinned, capped and without redirects
to anywhere the check would refuse. Real servers on 127.0.0.1 stand in for the forbidden targets."""

import ipaddress
import itertools
import threading

import pytest
from localservers import connected, listener, local_outbound, serve, tls_pair

from imagegate.inputs.outbound import Outbound, OutboundError, is_public

FORBIDDEN = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "169.254.170.2",
    "100.64.0.1",
    "100.100.100.200",
    "192.0.0.192",
    "168.63.129.16",
    "198.18.0.1",
    "192.0.2.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",
    "fd00:ec2::23",
    "fec0::1",
    "ff02::1",
    "ff0e::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::127.0.0.1",
    "::169.254.169.254",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::808:808",
    "2002:7f00:1::",
    "2002:a9fe:a9fe::1",
    "2001::1",
]
PUBLIC = [
    "8.8.8.8",
    "93.184.215.14",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::",
]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_the_default_policy_refuses_every_non_public_address(address):
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_the_default_policy_allows_public_unicast(address):
    assert is_public(ipaddress.ip_address(address))


# Hosts that all mean loopback or the metadata service, however they are written.
FORBIDDEN_HOSTS = [
    "127.0.0.1",
    "2130706433",
    "0177.0.0.1",
    "0x7f.0.0.1",
    "0x7f000001",
    "127.1",
    "0177.1",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:127.0.0.1]",
    "169.254.169.254",
    "2852039166",
    "0251.0376.0251.0376",
    "0xa9.0xfe.0xa9.0xfe",
    "[::ffff:169.254.169.254]",
    "[fd00:ec2::254]",
    "localhost",
    "localhost.",
    "metadata.google.internal",
    "rebind.test",
]
NAMES = {
    "localhost": ["127.0.0.1", "::1"],
    "metadata.google.internal": ["169.254.169.254"],
    # One public and one private answer: any forbidden address refuses the whole name.
    "rebind.test": ["93.184.215.14", "10.0.0.7"],
    "public.test": ["93.184.215.14"],
}


def _resolver(host, port):
    return NAMES[host]


@pytest.mark.parametrize("host", FORBIDDEN_HOSTS)
def test_the_default_outbound_refuses_forbidden_hosts_without_connecting(host):
    outbound = Outbound(resolver=_resolver)
    with listener() as sock:
        port = sock.getsockname()[1]
        url = f"https://{host}:{port}/latest/meta-data/"
        for call in (
            lambda: outbound.fetch(url, max_bytes=1000, timeout=5),
            lambda: outbound.post(url, b"{}", {}, timeout=5),
        ):
            with pytest.raises(OutboundError) as err:
                call()
            assert err.value.code == "address_forbidden"
        assert not connected(sock)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://public.test/", "url_scheme"),
        ("ftp://public.test/", "url_scheme"),
        ("file:///etc/passwd", "url_scheme"),
        ("gopher://127.0.0.1:6379/_INFO", "url_scheme"),
        ("//public.test/", "url_scheme"),
        ("https://user:pw@public.test/", "url_invalid"),
        ("https:///path", "url_invalid"),
        ("https://public.test:99999/", "url_invalid"),
        ("https://[::1/", "url_invalid"),
        ("https://nowhere.test/", "unresolvable"),
        ("https://public.test/" + "a" * 8200, "url_invalid"),
    ],
)
def test_urls_that_are_not_https_to_a_resolvable_name_are_refused(url, code):
    with pytest.raises(OutboundError) as err:
        Outbound(resolver=lambda host, port: NAMES.get(host) or []).check(url)
    assert err.value.code == code


def test_a_public_name_is_pinned_to_its_checked_address():
    target = Outbound(resolver=_resolver).check("https://Public.Test:8443/a/b.png?x=1#frag")
    assert (target.host, target.port, str(target.address)) == ("public.test", 8443, "93.184.215.14")
    assert target.pinned_url == "https://93.184.215.14:8443/a/b.png?x=1"
    assert target.host_header == "public.test:8443"


def test_the_request_goes_to_the_checked_address_even_if_dns_changes_its_answer():
    answers = iter(["127.0.0.1", "169.254.169.254"])  # a rebinding DNS server's two answers
    calls = []

    def rebinding(host, port):
        calls.append(host)
        return [next(answers)]

    outbound = local_outbound()
    outbound = Outbound(resolver=rebinding, allowed=outbound.allowed, schemes=outbound.schemes)
    with serve(lambda seen: (200, {"Content-Type": "image/png"}, b"PNG")) as server:
        got = outbound.fetch(server.url("/a.png", host="cdn.example.test"), max_bytes=10, timeout=5)
    assert got.body == b"PNG"
    assert calls == ["cdn.example.test"]
    assert server.requests[0].headers["Host"] == f"cdn.example.test:{server.port}"


def test_tls_is_verified_for_the_name_while_connecting_to_the_pinned_address():
    server_tls, client_tls = tls_pair("images.example.test")
    with serve(lambda seen: (200, {"Content-Type": "image/png"}, b"PNG"), tls=server_tls) as server:
        names = {"images.example.test": "127.0.0.1", "other.example.test": "127.0.0.1"}
        outbound = local_outbound(names, verify=client_tls)
        got = outbound.fetch(server.url("/x", "https", "images.example.test"), max_bytes=10, timeout=5)
        assert (got.body, got.content_type) == (b"PNG", "image/png")
        assert server.requests[0].headers["Host"] == f"images.example.test:{server.port}"
        # The same address under a name the certificate does not cover fails verification.
        with pytest.raises(OutboundError) as err:
            outbound.fetch(server.url("/x", "https", "other.example.test"), max_bytes=10, timeout=5)
    assert err.value.code == "tls_failed"
    assert len(server.requests) == 1


def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_read():
    with serve(lambda seen: (200, {}, b"x" * 5000)) as server:
        with pytest.raises(OutboundError) as err:
            local_outbound().fetch(server.url(), max_bytes=4999, timeout=5)
        assert err.value.code == "too_large"
        assert local_outbound().fetch(server.url(), max_bytes=5000, timeout=5).body == b"x" * 5000


def test_an_endless_stream_stops_at_the_cap():
    endless = (b"y" * 4096 for _ in itertools.count())
    with (
        serve(lambda seen: (200, {"Content-Type": "image/png"}, endless)) as server,
        pytest.raises(OutboundError) as err,
    ):
        local_outbound().fetch(server.url(), max_bytes=100_000, timeout=30)
    assert err.value.code == "too_large"


def test_a_body_that_keeps_coming_past_the_total_time_is_cut_off():
    ticks = itertools.count(step=1.0)  # every look at the clock is a second later
    endless = (b"z" * 16 for _ in itertools.count())
    with serve(lambda seen: (200, {}, endless)) as server:
        outbound = local_outbound(clock=lambda: next(ticks))
        with pytest.raises(OutboundError) as err:
            outbound.fetch(server.url(), max_bytes=10**9, timeout=5)
    assert err.value.code == "timeout"


def test_a_server_that_never_answers_times_out():
    release = threading.Event()

    def stall(seen):
        release.wait(10)
        return 200, {}, b""

    with serve(stall) as server:
        try:
            with pytest.raises(OutboundError) as err:
                local_outbound().post(server.url(), b"{}", {}, timeout=0.2)
        finally:
            release.set()
    assert err.value.code == "timeout"


def test_a_server_trickling_its_headers_is_cut_off_at_the_calls_timeout():
    # Each byte comes well within a read's timeout, so only a deadline for the whole call stops it: the
    # headers would take 40 x 0.05 s = 2 s, four times the call's 0.5 s.
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Pad: " + b"a" * 40 + b"\r\n\r\n"
    stop = threading.Event()

    def trickle(sock):
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:  # the accept's timeout, or the listener closed
                continue
            with conn:
                conn.recv(65536)
                for byte in answer:
                    if stop.wait(0.05):
                        break
                    try:
                        conn.send(bytes([byte]))
                    except OSError:
                        break

    with listener() as sock:
        sock.settimeout(0.1)
        threading.Thread(target=trickle, args=(sock,), daemon=True).start()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        try:
            for call in (
                lambda: local_outbound().fetch(f"{url}/x.png", max_bytes=1000, timeout=0.5),
                lambda: local_outbound().post(f"{url}/hook", b"{}", {}, timeout=0.5),
            ):
                with pytest.raises(OutboundError) as err:
                    call()
                assert err.value.code == "timeout"
        finally:
            stop.set()


def test_a_closed_port_is_unreachable():
    with listener() as sock:
        port = sock.getsockname()[1]
    with pytest.raises(OutboundError) as err:
        local_outbound().post(f"http://127.0.0.1:{port}/", b"{}", {}, timeout=5)
    assert err.value.code == "unreachable"


@pytest.mark.parametrize(
    ("sent", "allowed", "ok"),
    [
        ("image/png", {"image/png"}, True),
        ("IMAGE/PNG; charset=binary", {"image/png"}, True),
        ("image/webp", {"image/*"}, True),
        ("text/html", {"image/png", "image/*"}, False),
        ("", {"image/png"}, False),
        ("text/html", (), True),
    ],
)
def test_the_content_type_is_checked_before_the_body(sent, allowed, ok):
    headers = {"Content-Type": sent} if sent else {}
    with serve(lambda seen: (200, headers, b"body")) as server:
        fetch = lambda: local_outbound().fetch(server.url(), max_bytes=10, timeout=5, content_types=allowed)  # noqa: E731
        if ok:
            assert fetch().body == b"body"
        else:
            with pytest.raises(OutboundError) as err:
                fetch()
            assert err.value.code == "content_type"


def test_a_compressed_body_is_refused_rather_than_inflated():
    with serve(lambda seen: (200, {"Content-Encoding": "gzip"}, b"\x1f\x8b")) as server:
        with pytest.raises(OutboundError) as err:
            local_outbound().fetch(server.url(), max_bytes=10, timeout=5)
        assert server.requests[0].headers["Accept-Encoding"] == "identity"
    assert err.value.code == "content_encoding"


def test_a_non_success_answer_is_an_http_status_error():
    with serve(lambda seen: (404, {}, b"nope")) as server, pytest.raises(OutboundError) as err:
        local_outbound().fetch(server.url(), max_bytes=10, timeout=5)
    assert (err.value.code, err.value.status) == ("http_status", 404)


def test_fetch_follows_a_redirect_to_an_allowed_place():
    def respond(seen):
        if seen.path == "/start":
            return 302, {"Location": "/final.png"}, b""
        return 200, {"Content-Type": "image/png"}, b"final"

    with serve(respond) as server:
        assert local_outbound().fetch(server.url("/start"), max_bytes=10, timeout=5).body == b"final"
    assert [r.path for r in server.requests] == ["/start", "/final.png"]


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://2852039166/latest/meta-data/",
        "http://0251.0376.0251.0376/",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
        "http://10.0.0.1/",
        "file:///etc/passwd",
    ],
)
def test_fetch_refuses_a_redirect_to_a_forbidden_target(location):
    with (
        serve(lambda seen: (302, {"Location": location}, b"")) as server,
        pytest.raises(OutboundError) as err,
    ):
        local_outbound().fetch(server.url("/start"), max_bytes=10, timeout=5)
    assert err.value.code in ("address_forbidden", "url_scheme")
    assert len(server.requests) == 1


def test_fetch_stops_after_max_redirects():
    with (
        serve(lambda seen: (307, {"Location": "/again"}, b"")) as server,
        pytest.raises(OutboundError) as err,
    ):
        local_outbound().fetch(server.url("/"), max_bytes=10, timeout=5, max_redirects=2)
    assert err.value.code == "redirect"
    assert len(server.requests) == 3


def test_post_sends_the_body_and_never_follows_a_redirect():
    with serve(lambda seen: (200, {}, b"")) as elsewhere:
        target = elsewhere.url("/stolen")
        with serve(lambda seen: (307, {"Location": target}, b"")) as server:
            status = local_outbound().post(
                server.url("/hook"), b'{"a":1}', {"Content-Type": "application/json"}, timeout=5
            )
    assert status == 307
    assert [(r.method, r.path, r.body) for r in server.requests] == [("POST", "/hook", b'{"a":1}')]
    assert server.requests[0].headers["Content-Type"] == "application/json"
    assert elsewhere.requests == []

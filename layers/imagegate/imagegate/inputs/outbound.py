"""Outbound HTTP to URLs a customer chose (webhook endpoints, image URLs): only https to public addresses.

A customer's URL must never make imagegate reach what sits behind it: the VPC, localhost, or the instance
metadata service that hands out the function's own credentials. So `Outbound.check` resolves the host and
refuses the URL when ANY of its addresses is not public (`is_public`: private, loopback, link-local,
unspecified, multicast, reserved, shared 100.64/10, the clouds' metadata addresses, and those same
addresses inside IPv4-mapped, IPv4-compatible, 6to4 and NAT64 IPv6 forms). Numeric hosts are read the way
`inet_aton` reads them (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1` are all 127.0.0.1), because that is
how the system resolver would read them too.

The checked address is then pinned: the request connects to that IP, while the Host header, TLS SNI and
certificate verification keep the URL's name. A second DNS answer (rebinding) therefore never reaches the
socket. Every request uses a fresh connection, so a pooled connection verified for one name never carries
another name's request. Redirects are re-checked hop by hop when fetching (`max_redirects`) and never
followed when posting; proxies from the environment are ignored (`trust_env=False`), so the pinned
address is the one connected to. Time and size are capped, and the body is streamed and dropped at the cap.

Every refusal is one `OutboundError` with a machine `code`; callers turn it into their own error (a 400
naming the parameter, a failed webhook attempt). The resolver, the address policy, the TLS trust and the
clock are injectable, so tests run real servers on 127.0.0.1 instead of patching.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Iterable[str]]
Policy = Callable[[IPAddress], bool]

# Metadata and platform services that answer on addresses the range checks below might not all catch
# (the ECS and EKS agents are link-local, Alibaba's sits in 100.64/10, Oracle's in 192.0.0.0/24, Azure's
# wireserver on a public-looking address): named, so that no future change to the ranges lets them through.
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack instance metadata
        "169.254.170.2",  # ECS task metadata and credentials
        "169.254.170.23",  # EKS Pod Identity agent
        "fd00:ec2::254",  # AWS instance metadata over IPv6 (Nitro)
        "fd00:ec2::23",  # EKS Pod Identity agent over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
        "168.63.129.16",  # Azure wireserver
    )
)
# Ranges Python 3.11's `is_global` still calls global: shared address space (RFC 6598), the IETF protocol
# assignments block (RFC 6890) and NAT64's local-use prefix (RFC 8215).
NOT_PUBLIC = tuple(ipaddress.ip_network(n) for n in ("100.64.0.0/10", "192.0.0.0/24", "64:ff9b:1::/48"))
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052's well-known prefix: the IPv4 address is the tail
# What inet_aton would take for an IPv4 address: dotted parts in decimal, octal (leading 0) or hex (0x).
_NUMERIC_HOST = re.compile(r"[0-9a-fx.]+")
DEFAULT_PORTS = {"https": 443, "http": 80}
# What common servers and CDNs accept in a request line; a long presigned URL is well under it.
MAX_URL_CHARS = 8192


class OutboundError(Exception):
    """A URL we will not call, or a call that failed; `code` says which, for machines.

    Codes: url_invalid, url_scheme, unresolvable, address_forbidden, timeout, unreachable, tls_failed,
    redirect, http_status, content_type, content_encoding, too_large.
    """

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Target:
    """A checked URL: where it names (`host`, `port`) and the address it will connect to (`address`)."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) name, or the canonical address for a numeric host
    port: int
    address: IPAddress
    path: str  # path and query, as sent

    @property
    def pinned_url(self) -> str:
        """The URL with the checked address in place of the name, which is what the socket connects to."""
        literal = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{self.scheme}://{literal}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS.get(self.scheme) == self.port else f"{host}:{self.port}"

    @property
    def is_literal(self) -> bool:
        return self.host == str(self.address)


@dataclass(frozen=True)
class Fetched:
    body: bytes
    content_type: str  # the media type, lower case, without parameters


def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for `host` (A and AAAA)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and would route to, for the forms that do route there."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """The default policy: True only for a globally routable unicast address that is no metadata service."""
    if isinstance(address, ipaddress.IPv6Address):
        # A mapped, 6to4 or NAT64 address reaches its IPv4 address, so that one decides (the NAT64 prefix
        # itself sits in the reserved ::/8). IPv4-compatible ::a.b.c.d, :: and ::1 are refused as reserved.
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public(inner)
    if address in METADATA or any(address in net for net in NOT_PUBLIC if net.version == address.version):
        return False
    return address.is_global and not (
        address.is_multicast  # 3.11 calls 224.0.0.0/4 and ff0e::/16 global
        or address.is_reserved
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


def numeric_host(host: str) -> IPAddress | None:
    """The address a numeric host stands for, read as the resolver would (inet_aton's forms included)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not _NUMERIC_HOST.fullmatch(host) or not any(c.isdigit() for c in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


@dataclass(frozen=True)
class Outbound:
    """Calls to customer-chosen URLs. The defaults are production's; tests inject the rest."""

    resolver: Resolver = system_resolver
    allowed: Policy = is_public
    schemes: frozenset[str] = frozenset({"https"})
    verify: ssl.SSLContext | bool = True  # True: the system's trusted CAs (certifi)
    clock: Callable[[], float] = time.monotonic
    user_agent: str = "imagegate"

    def check(self, url: str) -> Target:
        """The URL's target with every resolved address allowed by the policy, or an `OutboundError`."""
        if len(url) > MAX_URL_CHARS:
            raise OutboundError("url_invalid", f"The URL is longer than {MAX_URL_CHARS} characters.")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise OutboundError("url_invalid", f"The URL cannot be parsed: {exc}.") from exc
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            allowed = " or ".join(sorted(self.schemes))
            raise OutboundError("url_scheme", f"The URL must use {allowed}, not '{scheme or 'none'}'.")
        if parts.username is not None or parts.password is not None:
            raise OutboundError("url_invalid", "The URL must not carry a user name or password.")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise OutboundError("url_invalid", "The URL has no host.")
        port = DEFAULT_PORTS[scheme] if port is None else port
        literal = numeric_host(host)
        if literal is not None:
            host, addresses = str(literal), [literal]
        else:
            host = _ascii_host(host)
            addresses = self._resolve(host, port)
        forbidden = [a for a in addresses if not self.allowed(a)]
        if forbidden:
            raise OutboundError(
                "address_forbidden",
                f"The host '{parts.hostname}' stands for {forbidden[0]}, which is not a public address.",
            )
        path = parts.path or "/"
        return Target(url, scheme, host, port, addresses[0], f"{path}?{parts.query}" if parts.query else path)

    def fetch(
        self,
        url: str,
        *,
        max_bytes: int,
        timeout: float,
        content_types: Collection[str] = (),
        max_redirects: int = 3,
    ) -> Fetched:
        """GET the URL's body (at most `max_bytes`), within `timeout` seconds in all.

        `content_types` (e.g. {"image/png", "image/*"}), when given, must hold the response's media type;
        it is checked before the body is read. Redirects are followed up to `max_redirects` times, each hop
        checked like the first URL. Any non-2xx answer is an `http_status` error.
        """
        deadline, hops = self.clock() + timeout, 0
        while True:
            target = self.check(url)
            headers = {"Accept-Encoding": "identity", "Accept": ", ".join(content_types) or "*/*"}
            with self._open("GET", target, timeout, headers) as response:
                location = response.headers.get("location")
                if response.is_redirect and location:
                    if hops == max_redirects:
                        raise OutboundError(
                            "redirect", f"'{target.host}' redirected more than {max_redirects} times."
                        )
                    hops, url = hops + 1, urljoin(url, location)
                    self._within(deadline, target)
                    continue
                if not response.is_success:
                    raise OutboundError(
                        "http_status",
                        f"'{target.host}' answered HTTP {response.status_code}.",
                        status=response.status_code,
                    )
                media = _media_type(response, target, content_types)
                return Fetched(self._read(response, target, max_bytes, deadline), media)

    def post(self, url: str, body: bytes, headers: Mapping[str, str], *, timeout: float) -> int:
        """POST `body` and return the answer's status. Redirects are not followed (a 3xx is returned), and
        the answer's body is not read."""
        target = self.check(url)
        with self._open("POST", target, timeout, dict(headers), body) as response:
            return response.status_code

    def _resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            found = [ipaddress.ip_address(str(a).split("%")[0]) for a in self.resolver(host, port)]
        except (OSError, UnicodeError, ValueError) as exc:
            raise OutboundError("unresolvable", f"The host '{host}' cannot be resolved.") from exc
        if not found:
            raise OutboundError("unresolvable", f"The host '{host}' has no address.")
        return found

    @contextmanager
    def _open(
        self, method: str, target: Target, timeout: float, headers: dict[str, str], body: bytes | None = None
    ) -> Iterator[httpx.Response]:
        """One request on a fresh connection to the pinned address.

        A bare transport, not a Client: a Client would parse the Location of a redirect it will not follow
        (failing on the numeric forms we read ourselves), and would add cookies and environment settings.
        """
        extensions: dict[str, object] = {"timeout": httpx.Timeout(timeout).as_dict()}
        if not target.is_literal:
            # SNI and certificate verification follow the name, while the socket goes to the checked address.
            extensions["sni_hostname"] = target.host
        request = httpx.Request(
            method,
            target.pinned_url,
            headers={"User-Agent": self.user_agent, **headers, "Host": target.host_header},
            content=body,
            extensions=extensions,
        )
        try:
            with _DeadlineTransport(time.monotonic() + timeout, verify=self.verify) as transport:
                response = transport.handle_request(request)
                try:
                    yield response
                finally:
                    response.close()
        except httpx.TimeoutException as exc:
            raise OutboundError("timeout", f"'{target.host}' did not answer within {timeout:g} s.") from exc
        except httpx.TransportError as exc:
            if _caused_by(exc, ssl.SSLError):
                raise OutboundError(
                    "tls_failed", f"The TLS handshake with '{target.host}' failed: {type(exc).__name__}."
                ) from exc
            raise OutboundError(
                "unreachable", f"Could not reach '{target.host}': {type(exc).__name__}."
            ) from exc

    def _read(self, response: httpx.Response, target: Target, max_bytes: int, deadline: float) -> bytes:
        encoding = response.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            # Compressed bodies would be inflated before the size cap could see them.
            raise OutboundError(
                "content_encoding", f"'{target.host}' sent a '{encoding}' body; only identity is accepted."
            )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise OutboundError("too_large", f"'{target.host}' sent more than {max_bytes} bytes.")
        chunks, size = [], 0
        for chunk in response.iter_raw():
            size += len(chunk)
            if size > max_bytes:
                raise OutboundError("too_large", f"'{target.host}' sent more than {max_bytes} bytes.")
            chunks.append(chunk)
            # httpx bounds each read; the whole answer's time is bounded here, between reads.
            self._within(deadline, target)
        return b"".join(chunks)

    def _within(self, deadline: float, target: Target) -> None:
        if self.clock() > deadline:
            raise OutboundError("timeout", f"'{target.host}' took too long to send its answer.")


class _DeadlineTransport(httpx.HTTPTransport):
    """A bare transport whose every socket operation is bounded by one deadline for the whole call.

    httpx's timeouts bound each read: a server that trickles its status line or headers a byte at a time
    never trips them, and could hold a call (and the function making it) up to the function's timeout. The
    pool is rebuilt over a network backend that gives each read, write and handshake only the time left.
    """

    def __init__(self, deadline: float, verify: ssl.SSLContext | bool) -> None:
        super().__init__(verify=verify, trust_env=False, retries=0)
        # The context httpx built from `verify`; the pool is httpx's own, but on the bounded backend.
        self._pool = httpcore.ConnectionPool(
            ssl_context=self._pool._ssl_context,
            retries=0,
            network_backend=_DeadlineBackend(deadline),
        )


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self._backend = httpcore.SyncBackend()

    def left(self, timeout: float | None) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("the call's deadline passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(host, port, self.left(timeout), local_address, socket_options)
        return _DeadlineStream(stream, self)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, backend: _DeadlineBackend) -> None:
        self._stream = stream
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._backend.left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._backend.left(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(ssl_context, server_hostname, self._backend.left(timeout))
        return _DeadlineStream(tls, self._backend)

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)


def _ascii_host(host: str) -> str:
    """The host's IDNA (ASCII) form, as DNS and SNI need it."""
    try:
        return httpx.URL(scheme="https", host=host).raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise OutboundError("url_invalid", f"The host '{host}' is not a valid name.") from exc


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is anywhere in the exception's chain (httpx wraps httpcore's, which wraps ssl's)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, kind):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _media_type(response: httpx.Response, target: Target, allowed: Collection[str]) -> str:
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if allowed and media not in allowed and f"{media.partition('/')[0]}/*" not in allowed:
        raise OutboundError(
            "content_type",
            f"'{target.host}' sent '{media or 'no content type'}', not one of: {', '.join(sorted(allowed))}.",
        )
    return media

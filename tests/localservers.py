"""Real servers on 127.0.0.1 (port 0) for tests of outbound calls: they stand in for the forbidden targets
(loopback, metadata) and, with `local_outbound`, for a public host whose address the test resolver pins.

`serve(respond)` runs an HTTP(S) server whose handler calls `respond(request) -> (status, headers, body)`,
where body may be bytes or an iterator of chunks (sent chunked, so a test can stream without end). Every
request it saw is in `server.requests`. `listener()` is a bare listening socket: after a call that must not
connect, `connected(sock)` is False.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from imagegate.inputs.outbound import IPAddress, Outbound, is_public

LOOPBACK = ipaddress.ip_address("127.0.0.1")


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    port: int
    requests: list[Seen] = field(default_factory=list)

    def url(self, path: str = "/", scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


Respond = Callable[[Seen], tuple[int, dict[str, str], bytes | Iterator[bytes]]]


def loopback_allowed(address: IPAddress) -> bool:
    """The test policy: production's, plus 127.0.0.1 where the test servers listen."""
    return address == LOOPBACK or is_public(address)


def local_outbound(names: dict[str, str] | None = None, **kwargs) -> Outbound:
    """An Outbound that may call the local servers over http or https; `names` resolves test host names."""
    names = names or {}

    def resolve(host: str, port: int) -> list[str]:
        if host not in names:
            raise socket.gaierror(f"no test name {host}")
        return [names[host]]

    return Outbound(
        resolver=resolve, allowed=loopback_allowed, schemes=frozenset({"http", "https"}), **kwargs
    )


@contextmanager
def serve(respond: Respond, tls: ssl.SSLContext | None = None) -> Iterator[Server]:
    server_state = Server(port=0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            seen = Seen(self.command, self.path, dict(self.headers.items()), self.rfile.read(length))
            server_state.requests.append(seen)
            status, headers, body = respond(seen)
            # The client may stop reading (which is what the caps are for): nothing to report then.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                self._answer(status, headers, body)
            self.close_connection = True

        def _answer(self, status: int, headers: dict[str, str], body: bytes | Iterator[bytes]) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if isinstance(body, bytes):
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in body:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

        do_GET = do_POST = _handle

        def log_message(self, *args) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    server_state.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        httpd.shutdown()
        httpd.server_close()


def tls_pair(name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for `name`, and a client context that trusts it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # load_cert_chain reads files only; an in-memory pair goes through a temporary directory.
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "cert.pem").write_bytes(cert_pem)
        (Path(tmp) / "key.pem").write_bytes(key_pem)
        server.load_cert_chain(Path(tmp) / "cert.pem", Path(tmp) / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


@contextmanager
def listener() -> Iterator[socket.socket]:
    """A listening socket nobody serves: a connection attempt completes in its backlog."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True

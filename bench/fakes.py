"""What the benchmarks put behind imagegate and the minimal apps: canned DynamoDB and one fake upstream.

The same fakes serve every candidate, so a ratio compares only the gateways' own work:
- AWS: a canned DynamoDB that answers by operation (GetItem: one active key; anything else: success),
  counting calls per operation. In process it replaces botocore's HTTP send (`install_fake_aws`): request
  building, serialisation, signing and response parsing all still run, as on Lambda, but no socket and no
  emulator work (moto deep-copies the table per transaction, which would swamp the comparison and grow
  with use). Over HTTP, `FakeServer` answers the same on loopback.
- Upstream: an OpenAI-compatible `POST /v1/images/generations` answering one small b64 PNG per image
  (httpx MockTransport in process, `FakeServer` on loopback).

Nothing checks conditions: money correctness is the test suite's job; this only measures what it costs.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KEY_PK = "KEY#bench"
ACCOUNT_ID = "acct_bench"
API_KEY = "sk-ig-bench-key-not-a-secret-0000000000000000"
UPSTREAM_HOST = "upstream.bench"
UPSTREAM_PATH = "/v1/images/generations"
MODEL = "dall-e-2"
# Per-key and per-account limits far above what the benchmarks send: limits stay in force (their
# conditions and slots are built as in production), but never refuse.
LIMITS = {
    "IMAGEGATE_IMAGES_PER_MINUTE": "1000000",
    "IMAGEGATE_MAX_CONCURRENT": "1000",
    "IMAGEGATE_ACCOUNT_IMAGES_PER_MINUTE": "1000000",
    "IMAGEGATE_ACCOUNT_MAX_CONCURRENT": "1000",
}


def routes_json(base_url: str) -> str:
    """IMAGEGATE_ROUTES sending dall-e-2 to the fake upstream (an OpenAI-compatible server, no key)."""
    route = {"provider": "openai_compatible", "model": MODEL, "base_url": base_url, "timeout_s": 10}
    return json.dumps({"routes": {MODEL: [route]}})


def request_body() -> bytes:
    return json.dumps(
        {"model": MODEL, "prompt": "a lighthouse at dusk", "size": "256x256", "response_format": "b64_json"}
    ).encode()


def _png(size: int = 256) -> str:
    # A flat PNG made by hand (zlib), so the fakes never import Pillow in a candidate's process.
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\x00" + bytes((20, 120, 200)) * size for _ in range(size))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(png).decode()


PNG_B64 = _png()


def upstream_answer(body: bytes) -> bytes:
    n = json.loads(body).get("n", 1) if body else 1
    return json.dumps({"created": 1, "data": [{"b64_json": PNG_B64}] * n}).encode()


def key_item() -> dict[str, Any]:
    return {
        "pk": {"S": KEY_PK},
        "sk": {"S": "KEY"},
        "account_id": {"S": ACCOUNT_ID},
        "key_id": {"S": "key_bench"},
        "status": {"S": "active"},
        "slots": {"M": {}},
    }


class FakeDynamoDB:
    """Canned DynamoDB JSON answers by X-Amz-Target, counted per operation."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        # The last two TransactWriteItems bodies (a request's reserve and settle), for bench/apps.py's floor.
        self.transactions: list[bytes] = []
        self._lock = threading.Lock()
        self._get = json.dumps({"Item": key_item()}).encode()

    def answer(self, target: str, body: bytes = b"") -> tuple[int, bytes]:
        operation = target.rpartition(".")[2]
        with self._lock:
            self.calls[operation] += 1
            if operation == "TransactWriteItems" and body:
                self.transactions = [*self.transactions[-1:], body]
        if operation == "GetItem":
            return 200, self._get
        if operation in ("TransactWriteItems", "PutItem", "UpdateItem", "DeleteItem"):
            return 200, b"{}"
        return 400, json.dumps({"__type": "UnknownOperationException", "message": operation}).encode()

    def s3(self, method: str) -> tuple[int, bytes]:
        """S3: every PUT (an idempotent request keeps its images) succeeds; nothing else is expected."""
        with self._lock:
            self.calls[f"S3 {method}"] += 1
        return (200, b"") if method == "PUT" else (501, b"")

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.calls)


def install_fake_aws(fake: FakeDynamoDB) -> None:
    """Answer every botocore HTTP request in process from `fake` (DynamoDB; S3 PUTs), after botocore has
    built, serialised and signed it; the response is parsed by botocore as usual."""
    from botocore.awsrequest import AWSResponse
    from botocore.httpsession import URLLib3Session

    class _Raw:
        def __init__(self, body: bytes) -> None:
            self._body = body

        def stream(self, *_args: Any, **_kwargs: Any) -> Any:
            yield self._body

    def send(self: Any, request: Any) -> AWSResponse:
        target = request.headers.get("X-Amz-Target", b"")
        target = target.decode() if isinstance(target, bytes) else target
        if target.startswith("DynamoDB_"):
            status, body = fake.answer(target, request.body)
            headers = {"Content-Type": "application/x-amz-json-1.0", "Content-Length": str(len(body))}
        else:
            status, body = fake.s3(request.method)
            headers = {"ETag": '"bench"', "Content-Length": str(len(body))}
        response = AWSResponse(request.url, status, headers, _Raw(body))
        response._content = body  # botocore reads .content; set it so the stream is not consumed
        return response

    URLLib3Session.send = send


def upstream_transport() -> Any:
    """An httpx transport answering the fake upstream's one route."""
    import httpx

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path != UPSTREAM_PATH:
            return httpx.Response(404, json={"error": {"message": "not here"}})
        return httpx.Response(
            200, content=upstream_answer(request.content), headers={"content-type": "application/json"}
        )

    return httpx.MockTransport(handle)


class FakeServer:
    """DynamoDB (by X-Amz-Target) and the upstream route on 127.0.0.1, for candidates in other processes."""

    def __init__(self) -> None:
        self.dynamodb = FakeDynamoDB()
        fake = self.dynamodb

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle on, the body waits for the client's
            # delayed ACK, ~40 ms per call.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                target = self.headers.get("x-amz-target")
                if target:
                    status, out = fake.answer(target)
                    kind = "application/x-amz-json-1.0"
                elif self.path.endswith(UPSTREAM_PATH):
                    status, out, kind = 200, upstream_answer(body), "application/json"
                else:
                    status, out, kind = 404, b"{}", "application/json"
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def png_size_check() -> tuple[int, int]:
    """The fake PNG's size, read back with Pillow (for a sanity test, never in a candidate)."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(PNG_B64))) as img:
        return img.size

"""The app in this process, AWS emulated by moto's in-process backend: what the benchmarks drive.

Not a test fixture: benchmarks report figures, they never gate a build.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "layers" / "imagegate"))

for _name in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
    os.environ.pop(_name, None)
os.environ.update(
    AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
)


@dataclass
class InProcess:
    client: object  # starlette.testclient.TestClient
    app: object  # the ASGI app itself
    accounts: object
    keys: dict[str, str]  # label -> API key

    def auth(self, label: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[label]}"}


@contextlib.contextmanager
def in_process(balances: dict[str, int], **settings: object) -> Iterator[InProcess]:
    """An app with one funded key per label (balance in micro-USD)."""
    from aws_lambda_powertools.logging import Logger
    from moto import mock_aws
    from starlette.testclient import TestClient

    from imagegate.aws import AWSClients
    from imagegate.config import Settings
    from imagegate.http.api import create_app
    from imagegate.local.devserver import provision
    from imagegate.money.accounts import Accounts
    from imagegate.service import Service

    with mock_aws():
        suffix = uuid.uuid4().hex[:12]
        config = Settings(table=f"bench-{suffix}", bucket=f"bench-{suffix}", region="us-east-1", **settings)
        aws = AWSClients(config)
        provision(aws, config)
        accounts = Accounts(aws.dynamodb, config.table)
        keys = {}
        for label, balance in balances.items():
            account_id = accounts.create_account(balance, label=label)
            keys[label] = f"sk-ig-bench-{label}-{uuid.uuid4().hex}"
            accounts.create_key(account_id, label=label, api_key=keys[label])
        service = Service(config, aws, Logger(service="imagegate-bench", level="ERROR"))
        app = create_app(service)
        with TestClient(app, raise_server_exceptions=False) as client:
            yield InProcess(client, app, accounts, keys)


def png(width: int, height: int, mode: str = "RGBA", noise: bool = False) -> bytes:
    from PIL import Image

    if noise:
        img = Image.frombytes(mode, (width, height), os.urandom(width * height * len(mode)))
    else:
        img = Image.new(mode, (width, height), (30, 60, 90, 255)[: len(mode)])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


async def post_chunked(
    app: object, path: str, headers: dict[str, str], body: bytes, chunk: int = 65536
) -> tuple[int, bytes]:
    """POST `body` straight to the ASGI app in `chunk`-byte messages, as uvicorn delivers a socket's reads
    (each a new bytes object, made only when the app asks for it). Returns (status, response body)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"content-length", str(len(body)).encode()), (b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    offset = 0
    status, parts = 0, []

    async def receive() -> dict:
        nonlocal offset
        if offset >= len(body) and offset:
            return {"type": "http.disconnect"}
        piece = body[offset : offset + (chunk or len(body))]
        offset += len(piece) or 1
        return {"type": "http.request", "body": piece, "more_body": offset < len(body)}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(parts)

"""Streaming over HTTP (issue 11 part 3): the OpenAI SDK's `stream=True` against the app under uvicorn, as
`make serve` runs it; events that arrive as they are made; a stream the client abandons, settled once; and
errors before the stream starts as ordinary JSON errors.

Charges: gpt-image-1.5 at low quality is $0.009 (1024x1024) and $0.013 (1536x1024) an image, and each partial
image 100 image output tokens at $32 per 1M, $0.0032.
"""

import base64
import shutil
import subprocess
import threading
import time
from urllib.parse import urlsplit

import httpx
import openai
import pytest
from openai.types import (
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
)
from shims import charges

from imagegate.errors import ProviderError
from imagegate.http.api import create_app
from imagegate.money import ledger
from imagegate.providers import Deps
from imagegate.providers.local import LocalProvider
from imagegate.providers.routing import Router

from .conftest import DEFAULT_BALANCE, _serve
from .helpers import DOCS, code_blocks, decode, png_bytes

LOW_SQUARE = 9_000
LOW_WIDE = 13_000
PARTIAL = 3_200
WAIT_S = 30  # a bound on waits for the server, never a timing assertion
STREAMING_PAGE = DOCS / "inputs.md"  # its Streaming section


def images(events):
    return [decode(base64.b64decode(e.b64_json)) for e in events]


def test_sdk_generate_stream_gets_two_partials_and_the_completed_image(user, validate_schema):
    before = user.balance()

    stream = user.client.images.generate(
        model="gpt-image-1.5",
        prompt="a lighthouse at dusk",
        size="1536x1024",
        quality="low",
        stream=True,
        partial_images=2,
    )
    assert stream.response.headers["content-type"].startswith("text/event-stream")
    assert stream.response.headers["x-imagegate-provider"] == "local"
    events = list(stream)

    assert [type(e) for e in events] == [
        ImageGenPartialImageEvent,
        ImageGenPartialImageEvent,
        ImageGenCompletedEvent,
    ]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert [(img.format, img.size) for img in images(events)] == [("PNG", (1536, 1024))] * 3
    completed = events[-1]
    assert (completed.size, completed.quality, completed.output_format) == ("1536x1024", "low", "png")
    assert completed.usage.output_tokens > 200
    for event in events:
        validate_schema(event.model_dump(exclude_none=True), type(event).__name__)  # the spec's schema names
    assert before - user.balance() == LOW_WIDE + 2 * PARTIAL
    assert ledger.reconcile(user.stack.aws.dynamodb, user.stack.settings.table, user.account_id).ok


def test_sdk_edit_stream_gets_image_edit_events(user):
    before = user.balance()
    stream = user.client.images.edit(
        model="gpt-image-1.5",
        image=[("photo.png", png_bytes(1024, 1024), "image/png")],
        prompt="add a full moon",
        quality="low",
        stream=True,
        partial_images=1,
    )
    events = list(stream)
    assert [type(e) for e in events] == [ImageEditPartialImageEvent, ImageEditCompletedEvent]
    assert [img.size for img in images(events)] == [(1024, 1024)] * 2
    assert before - user.balance() == LOW_SQUARE + PARTIAL


def test_stream_with_no_partial_images_is_one_completed_event(user):
    events = list(user.client.images.generate(model="gpt-image-1.5", prompt="x", quality="low", stream=True))
    assert [type(e) for e in events] == [ImageGenCompletedEvent]


def test_errors_before_the_stream_are_ordinary_json_errors_and_cost_nothing(user):
    before = user.balance()
    with pytest.raises(openai.BadRequestError) as info:
        user.client.images.generate(model="dall-e-2", prompt="x", stream=True)
    assert info.value.response.headers["content-type"] == "application/json"
    assert (info.value.body["param"], info.value.body["code"]) == ("stream", "unsupported_parameter")
    assert user.balance() == before


class Gated:
    """The local renderer, holding each item after the first until the test opens `gate`; records whether
    the gate was opened in time, and whether its stream was closed early."""

    name = "local"

    def __init__(self):
        self.gate = threading.Event()
        self.opened_in_time = None
        self.closed = threading.Event()

    def supports(self, operation):
        return True

    def stream(self, job):
        try:
            for i, item in enumerate(LocalProvider().stream(job)):
                if i:
                    self.opened_in_time = self.gate.wait(WAIT_S)
                    if not self.opened_in_time:
                        raise ProviderError("the test never saw the first event", code="upstream_error")
                yield item
        except GeneratorExit:
            self.closed.set()
            raise


@pytest.fixture
def gated(start_stack):
    """A stack whose every model is served by one `Gated` provider."""
    stack = start_stack()
    provider = Gated()
    service = stack.service
    service.router = Router(
        service.settings,
        {},
        {},
        Deps(stack.aws),
        service.logger,
        factories={"local": lambda up, deps: provider},
    )
    return stack, provider


def sse_lines(response):
    """Each event's `data:` line, as the server sends them."""
    return (line for line in response.iter_lines() if line.startswith("data: "))


def test_events_arrive_as_they_are_made(gated, new_user, http):
    stack, provider = gated
    user = new_user(stack)
    body = {"model": "gpt-image-1.5", "prompt": "x", "quality": "low", "stream": True, "partial_images": 1}
    headers = {"Authorization": f"Bearer {user.key}"}
    with http.stream(
        "POST", f"{stack.base_url}/v1/images/generations", json=body, headers=headers
    ) as response:
        lines = sse_lines(response)
        assert '"image_generation.partial_image"' in next(lines)
        # The completed image is not made until the first partial has reached us: were the body buffered,
        # the partial would not arrive and the gate would time out (an error event instead of the image).
        provider.gate.set()
        assert '"image_generation.completed"' in next(lines)
    assert provider.opened_in_time is True


class Watch:
    """ASGI middleware that tells when the server has seen the client disconnect."""

    def __init__(self, app):
        self.app = app
        self.disconnected = threading.Event()

    async def __call__(self, scope, receive, send):
        async def watched():
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected.set()
            return message

        await self.app(scope, watched, send)


def test_an_abandoned_stream_is_settled_once(gated, new_user):
    stack, provider = gated
    user = new_user(stack)
    watch = Watch(create_app(stack.service))
    base_url, stop = _serve(watch)
    try:
        body = {
            "model": "gpt-image-1.5",
            "prompt": "x",
            "quality": "low",
            "stream": True,
            "partial_images": 3,
        }
        with (
            httpx.Client(timeout=WAIT_S) as client,
            client.stream(
                "POST",
                f"{base_url}/v1/images/generations",
                json=body,
                headers={"Authorization": f"Bearer {user.key}"},
            ) as response,
        ):
            assert '"partial_image_index":0' in next(sse_lines(response))
        # Gone after the first partial; the server notices, then the second partial arrives from upstream.
        assert watch.disconnected.wait(WAIT_S)
        provider.gate.set()
        assert provider.closed.wait(WAIT_S)  # the upstream's stream was closed, not read to its end
        check = wait_until_settled(stack, user.account_id)
    finally:
        stop()

    # Charged the one partial the client had, not the second whose write failed (issue 20, item 5: it was
    # charged 2 x 3,200 µ$), never the final image.
    assert DEFAULT_BALANCE - user.balance() == PARTIAL
    assert check.ok
    assert charges(stack.aws.dynamodb, stack.settings.table, user.account_id) == [PARTIAL]


def wait_until_settled(stack, account_id):
    deadline = time.monotonic() + WAIT_S
    while True:
        check = ledger.reconcile(stack.aws.dynamodb, stack.settings.table, account_id)
        if check.in_flight == 0 or time.monotonic() > deadline:
            return check
        time.sleep(0.05)


def docs_block(language, marker):
    [block] = code_blocks(STREAMING_PAGE, language, marker)
    return block


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_docs_streaming_examples_run(stack, new_user, capsys, tmp_path):
    user = new_user(stack)
    exec(compile(docs_block("python", "stream=True"), "docs/inputs.md", "exec"), {"client": user.client})
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [row[0] for row in rows] == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [row[1] for row in rows[:2]] == ["0", "1"]

    result = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + docs_block("sh", '"stream": true')],
        cwd=tmp_path,
        env={"OPENAI_API_KEY": user.key, "PATH": "/usr/bin:/bin", "PORT": str(urlsplit(stack.base_url).port)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-1000:]
    events = [line for line in result.stdout.splitlines() if line.startswith("event: ")]
    assert events == ["event: image_generation.partial_image"] * 2 + ["event: image_generation.completed"]

"""Streamed image responses (`stream=true`): OpenAI's server-sent events, and a stream that settles once.

Events, as OpenAI's spec has them (ImageGenStreamEvent, ImageEditStreamEvent), each named twice: in the
`event:` line and in the data's `type`, on which the SDKs dispatch:

    event: image_generation.partial_image     (edits: image_edit.partial_image)
    data: {"type", "b64_json", "created_at", "size", "quality", "background", "output_format",
           "partial_image_index"}
    event: image_generation.completed         (edits: image_edit.completed)
    data: {... the same, "usage" in place of "partial_image_index"}

A failure once the stream has begun ends it with `event: error` and `{"type": "error", "error": {"message",
"type", "param", "code"}}`, OpenAI's error body, which the SDKs raise as an `APIError`. There is no `[DONE]`:
OpenAI documents none for images, and the stream simply ends.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagegate.errors import APIError
    from imagegate.inputs.request import ImageJob

EVENT_PREFIX = {"generations": "image_generation", "edits": "image_edit"}


class EventStream:
    """A started stream's events (dicts, each one event's data), its response headers, and the one way to
    end it: `close`, which the HTTP layer calls however the response ended (run to its end, failed, or
    abandoned by its client, even before the first event), so that its reservation is settled exactly once.
    """

    def __init__(
        self,
        events: Generator[dict[str, Any], None, None],
        abandon: Callable[[], None],
        headers: dict[str, str],
    ) -> None:
        self.headers = headers
        self._events = events
        self._abandon = abandon

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._events

    def close(self) -> None:
        try:
            self._events.close()  # settles through the events' own cleanup, when they had started
        finally:
            self._abandon()  # a no-op once settled; settles a stream that never started


def image_event(job: ImageJob, kind: str, b64_json: str, created_at: int, **extra: Any) -> dict[str, Any]:
    """A `partial_image` or `completed` event's data, echoing the request as the sync response does."""
    return {
        "type": f"{EVENT_PREFIX[job.endpoint]}.{kind}",
        "b64_json": b64_json,
        "created_at": created_at,
        "size": job.size,
        "quality": job.quality,
        "background": "transparent" if job.background == "transparent" else "opaque",
        "output_format": job.output_format,
        **extra,
    }


def error_event(error: APIError) -> dict[str, Any]:
    return {"type": "error", **error.body()}


def encode(event: dict[str, Any]) -> bytes:
    """One server-sent event on the wire."""
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()

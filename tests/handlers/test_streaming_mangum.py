"""A streamed request through the real Lambda handler (Mangum, as API Gateway's REST API invokes it): the
body is buffered, so every event arrives at the end, and it is still a valid stream that the OpenAI SDK's
decoders read, charged as under uvicorn."""

import json

import httpx
from httpx_sse import EventSource

from .test_lambda_handlers import set_header

PARTIAL = 3_200  # 100 image output tokens at gpt-image-1.5's $32 per 1M
LOW_SQUARE = 9_000


def test_a_stream_through_mangum_is_one_buffered_valid_event_stream(stack):
    event = stack.event("generations")
    body = {
        "model": "gpt-image-1.5",
        "prompt": "a fox",
        "quality": "low",
        "stream": True,
        "partial_images": 2,
    }
    event["body"] = json.dumps(body)
    event = set_header(event, "content-length", str(len(event["body"])))

    response = stack.invoke("generations", event)

    assert response["statusCode"] == 200
    assert response["headers"]["content-type"].startswith("text/event-stream")
    assert response["isBase64Encoded"] is False  # text, as API Gateway passes it on
    received = httpx.Response(200, headers=response["headers"], content=response["body"].encode())
    events = list(EventSource(received).iter_sse())
    assert [(e.event, e.json()["type"]) for e in events] == [
        ("image_generation.partial_image", "image_generation.partial_image"),
        ("image_generation.partial_image", "image_generation.partial_image"),
        ("image_generation.completed", "image_generation.completed"),
    ]
    assert stack.balance() == stack.start_balance - LOW_SQUARE - 2 * PARTIAL

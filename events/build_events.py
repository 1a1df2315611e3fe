"""Build the sample API Gateway REST API (Lambda proxy, payload 1.0) events in this folder.

Regenerate (output is byte-for-byte deterministic):

    .venv/bin/python events/build_events.py

Each request is made by the real OpenAI Python SDK against an httpx mock transport, so headers and multipart
bodies are exactly what the SDK puts on the wire; only the multipart boundary is pinned, and headers that
depend on the build machine (x-stainless-os, -arch, -runtime-version) are left out. The request is then
wrapped the way a REST API hands it to Lambda: multipart bodies base64-encoded (the API's binaryMediaTypes
list multipart/form-data), JSON bodies as text, headers both single- and multi-valued, stage `api`.
Use them with `sam local invoke GenerationsFunction -e events/generations.json`, and in tests/handlers/.
"""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
import warnings
from pathlib import Path

import httpx
import openai
from PIL import Image, ImageDraw

API_KEY = "sk-ig-events-0123456789abcdef0123456789abcdef"
API_ID = "a1b2c3d4e5"
DOMAIN = f"{API_ID}.execute-api.us-east-1.amazonaws.com"
BOUNDARY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # httpx draws 32 random hex digits; pinned for diffs
TIME_EPOCH_MS = 1_763_700_000_000
SOURCE_IP = "203.0.113.7"
STAGE = "api"
KEEP_HEADERS = (
    "accept",
    "accept-encoding",
    "authorization",
    "content-length",
    "content-type",
    "host",
    "prefer",
    "user-agent",
    "x-stainless-lang",
    "x-stainless-package-version",
    "x-stainless-retry-count",
)
OUT = Path(__file__).resolve().parent


def png(size: int, color: tuple[int, int, int], hole: bool = False) -> tuple[str, bytes, str]:
    """A small square RGBA PNG; `hole` makes a mask whose transparent centre marks the area to edit."""
    img = Image.new("RGBA", (size, size), (*color, 255))
    draw = ImageDraw.Draw(img)
    if hole:
        draw.rectangle((size // 4, size // 4, 3 * size // 4 - 1, 3 * size // 4 - 1), fill=(0, 0, 0, 0))
    else:
        draw.ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(255, 255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return ("mask.png" if hole else "image.png", buf.getvalue(), "image/png")


def capture(call: str, **kwargs: object) -> httpx.Request:
    """Send one SDK call to a transport that records it instead of going anywhere."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"created": 0, "data": []})

    client = openai.OpenAI(
        api_key=API_KEY,
        base_url=f"https://{DOMAIN}/{STAGE}/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(record)),
    )
    if call != "generate":
        kwargs["extra_headers"] = {
            **kwargs.get("extra_headers", {}),  # type: ignore[dict-item]
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # create_variation is deprecated upstream
        getattr(client.images, call)(**kwargs)
    seen[0].read()
    return seen[0]


def event(request: httpx.Request, index: int) -> dict:
    request_id = str(uuid.UUID(int=index + 1, version=4))
    headers = {k: v for k, v in request.headers.items() if k in KEEP_HEADERS}
    headers.update(
        {
            "x-amzn-trace-id": f"Root=1-691fe420-{index + 1:024x}",
            "x-forwarded-for": SOURCE_IP,
            "x-forwarded-port": "443",
            "x-forwarded-proto": "https",
        }
    )
    headers = dict(sorted(headers.items()))
    binary = not headers.get("content-type", "application/json").startswith("application/json")
    body = request.content
    path = request.url.path.removeprefix(f"/{STAGE}")  # the event's path leaves the stage out
    query = {k: v for k, v in request.url.params.multi_items()} or None
    multi_query = {k: request.url.params.get_list(k) for k in request.url.params} or None
    return {
        "resource": path,
        "path": path,
        "httpMethod": request.method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "resourceId": f"r{index}x7k2",
            "resourcePath": path,
            "httpMethod": request.method,
            "extendedRequestId": f"Ev{index}Tq8CIAMEbZw0=",
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(TIME_EPOCH_MS // 1000)),
            "path": f"/{STAGE}{path}",
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": STAGE,
            "domainPrefix": API_ID,
            "requestTimeEpoch": TIME_EPOCH_MS,
            "requestId": request_id,
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "sourceIp": SOURCE_IP,
                "principalOrgId": None,
                "accessKey": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": headers["user-agent"],
                "user": None,
            },
            "domainName": DOMAIN,
            "deploymentId": "d3p10y",
            "apiId": API_ID,
        },
        # A REST API sends null for a request without a body.
        "body": (base64.b64encode(body).decode() if binary else body.decode()) if body else None,
        "isBase64Encoded": binary,
    }


def main() -> None:
    image = png(64, (30, 90, 200))
    requests = {
        "generations": capture(
            "generate",
            model="dall-e-2",
            prompt="a lighthouse on a cliff at dusk",
            size="256x256",
            n=2,
            response_format="url",
        ),
        "edits": capture(
            "edit",
            model="dall-e-2",
            image=image,
            mask=png(64, (0, 0, 0), hole=True),
            prompt="a red kite in the clear centre",
            size="256x256",
            response_format="b64_json",
        ),
        # A list, even of files passed one by one, is what makes the SDK send `image[]` parts.
        "edits_two_images": capture(
            "edit",
            model="gpt-image-1.5",
            image=[image, ("second.png", png(48, (200, 120, 20))[1], "image/png")],
            prompt="put both objects on one table",
            size="1024x1024",
            quality="low",
        ),
        "variations": capture("create_variation", image=image, n=2, size="256x256"),
        # Not an SDK method: a key holder's GET, as curl sends it.
        "balance": httpx.Request(
            "GET",
            f"https://{DOMAIN}/{STAGE}/v1/balance?days=7",
            headers={"authorization": f"Bearer {API_KEY}", "user-agent": "curl/8.5.0", "accept": "*/*"},
        ),
        # An edit as a job (README, "Long jobs and AWS events"): 202 and the job; its images go to S3.
        "edits_async": capture(
            "edit",
            model="dall-e-2",
            image=image,
            mask=png(64, (0, 0, 0), hole=True),
            prompt="a red kite in the clear centre",
            size="256x256",
            extra_headers={"Prefer": "respond-async"},
        ),
        "jobs": httpx.Request(
            "GET",
            f"https://{DOMAIN}/{STAGE}/v1/images/jobs?limit=5",
            headers={"authorization": f"Bearer {API_KEY}", "user-agent": "curl/8.5.0", "accept": "*/*"},
        ),
    }
    for i, (name, request) in enumerate(requests.items()):
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(event(request, i), indent=2) + "\n")
        print(f"{path.relative_to(OUT.parent)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()

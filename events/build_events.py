"""Build the sample API Gateway REST API (Lambda proxy, payload 1.0) events in this folder.

Regenerate (output is byte-for-byte deterministic):

    .venv/bin/python events/build_events.py

Each request is made by the real OpenAI Python SDK against an httpx mock transport, so headers and multipart
bodies are exactly what the SDK puts on the wire; only the multipart boundary is pinned, and headers that
depend on the build machine (x-stainless-os, -arch, -runtime-version) are left out. The request is then
wrapped the way a REST API hands it to Lambda: multipart bodies base64-encoded (the API's binaryMediaTypes
list multipart/form-data), JSON bodies as text, headers both single- and multi-valued, stage `api`.
Use them with `sam local invoke GenerationsFunction -e events/generations.json`, and in tests/handlers/.

The `job_request_*` samples are what the AWS entry points receive (triggers.py): a direct invocation's
request (`invoke`, `task_token`: InvokeFunction), and batches from the requests queue holding a request sent
to SQS, an EventBridge `Image Job Requested` event, and S3's `Object Created` event for a manifest
(RequestsFunction); `job_request_manifest.json` is that manifest, the object an S3 caller writes.
`pretraffic.json` is CodeDeploy's call to the pre-traffic hook (PreTrafficCheck=true).
"""

from __future__ import annotations

import base64
import hashlib
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
    "stripe-signature",
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
    if call not in ("generate", "models.list"):
        kwargs["extra_headers"] = {
            **kwargs.get("extra_headers", {}),  # type: ignore[dict-item]
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        }
    resource, _, method = call.rpartition(".")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # create_variation is deprecated upstream
        getattr(getattr(client, resource or "images"), method)(**kwargs)
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
    # One edit, sent synchronously (b64_json) and as a job.
    kite: dict[str, object] = {
        "model": "dall-e-2",
        "image": image,
        "mask": png(64, (0, 0, 0), hole=True),
        "prompt": "a red kite in the clear centre",
        "size": "256x256",
    }
    requests = {
        "generations": capture(
            "generate",
            model="dall-e-2",
            prompt="a lighthouse on a cliff at dusk",
            size="256x256",
            n=2,
            response_format="url",
        ),
        "edits": capture("edit", **kite, response_format="b64_json"),
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
        # An edit as a job (docs/jobs.md): 202 and the job; its images go to S3.
        "edits_async": capture("edit", **kite, extra_headers={"Prefer": "respond-async"}),
        "jobs": httpx.Request(
            "GET",
            f"https://{DOMAIN}/{STAGE}/v1/images/jobs?limit=5",
            headers={"authorization": f"Bearer {API_KEY}", "user-agent": "curl/8.5.0", "accept": "*/*"},
        ),
        # Not SDK methods either: a file id and presigned POST for a large input, and the JSON form of an
        # edit, its image as a data URL, as curl sends them.
        "uploads": httpx.Request(
            "POST",
            f"https://{DOMAIN}/{STAGE}/v1/images/uploads",
            headers={"authorization": f"Bearer {API_KEY}", "user-agent": "curl/8.5.0", "accept": "*/*"},
        ),
        "edits_json": httpx.Request(
            "POST",
            f"https://{DOMAIN}/{STAGE}/v1/images/edits",
            headers={"authorization": f"Bearer {API_KEY}", "user-agent": "curl/8.5.0", "accept": "*/*"},
            json={
                "model": "gpt-image-1.5",
                "prompt": "a red kite over the sea",
                "images": [{"image_url": "data:image/png;base64," + base64.b64encode(image[1]).decode()}],
                "size": "1024x1024",
                "quality": "low",
            },
        ),
        # The key holder's endpoints (function `account`): the balance as chat clients read it.
        "account": httpx.Request(
            "GET",
            f"https://{DOMAIN}/{STAGE}/v1/dashboard/billing/subscription",
            headers={"authorization": f"Bearer {API_KEY}", "user-agent": "curl/8.5.0", "accept": "*/*"},
        ),
        "stripe_webhook": stripe_delivery(),
        # client.models.list(), as chat UIs and the SDKs ask which models a base URL serves.
        "models": capture("models.list"),
    }
    samples = {name: event(request, i) for i, (name, request) in enumerate(requests.items())}
    for name, sample in {**samples, **aws_events()}.items():
        path = OUT / f"{name}.json"
        path.write_text(json.dumps(sample, indent=2) + "\n")
        print(f"{path.relative_to(OUT.parent)}: {path.stat().st_size} bytes")


# --- Stripe (topups.py) ------------------------------------------------------------------------------------
# The endpoint's signing secret the sample is signed with, at the samples' fixed time: Stripe's 300 s
# tolerance refuses it as stale today, so tests sign its body again with their own secret
# (tests/deploy/test_packaging.py).
STRIPE_WEBHOOK_SECRET = "whsec_events_0123456789abcdef0123456789abcdef"


def stripe_delivery() -> httpx.Request:
    """Stripe's POST of a paid Checkout Session's `checkout.session.completed` ($20 for ACCOUNT, the
    `standard` pack), signed as Stripe signs."""
    import stripe

    session = {
        "id": "cs_test_a1b2c3d4e5f6a7b8c9d0e1f2",
        "object": "checkout.session",
        "mode": "payment",
        "status": "complete",
        "payment_status": "paid",
        "amount_total": 2000,
        "currency": "usd",
        "client_reference_id": ACCOUNT,
        "metadata": {"imagegate": "1", "pack": "standard", "credit_cents": "2000", "fee_cents": "0"},
        "payment_intent": "pi_test_a1b2c3d4e5f6a7b8c9d0e1f2",
        "livemode": False,
    }
    body = json.dumps(
        {
            "id": "evt_test_a1b2c3d4e5f6a7b8c9d0e1f2",
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": TIME_EPOCH_MS // 1000,
            "type": "checkout.session.completed",
            "data": {"object": session},
            "livemode": False,
            "pending_webhooks": 1,
        },
        indent=2,
    )
    signature = stripe.WebhookSignature.generate_signature_header(
        body, STRIPE_WEBHOOK_SECRET, TIME_EPOCH_MS // 1000
    )
    headers = {
        "content-type": "application/json; charset=utf-8",
        "user-agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        "accept": "*/*; q=0.5, application/xml",
        "stripe-signature": signature,
    }
    return httpx.Request(
        "POST", f"https://{DOMAIN}/{STAGE}/v1/billing/stripe/webhook", headers=headers, content=body
    )


# --- jobs from AWS services (triggers.py) ------------------------------------------------------------------
# The account and bucket they name; tests replace both with their own. Inputs and the manifest are objects the
# caller writes to the bucket first (tests/e2e/test_aws_entry.py writes them).
ACCOUNT = "acct_0123456789abcdef0123"
BUCKET = "imagegate-outputs"  # Settings' default bucket name
AWS_ACCOUNT = "123456789012"
REGION = "us-east-1"
TIME = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(TIME_EPOCH_MS // 1000))
# A Step Functions task token is opaque; this one has the shape of a real one, and no meaning.
TASK_TOKEN = "AQCEAAAAKgAAAAMAAAAAAAAAAY" + "x" * 40 + "==EXAMPLE"


def job_request(**fields: object) -> dict:
    """The one request shape of every AWS entry point."""
    return {"account_id": ACCOUNT, "client_reference_id": None, "inputs": [], **fields}


def sqs_batch(body: dict, index: int) -> dict:
    """A one-message batch from the requests queue, as Lambda's SQS event source delivers it."""
    text = json.dumps(body, separators=(",", ":"))
    return {
        "Records": [
            {
                "messageId": str(uuid.UUID(int=0x5A5 + index, version=4)),
                "receiptHandle": f"AQEB{index:04d}EXAMPLE",
                "body": text,
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": str(TIME_EPOCH_MS),
                    "SenderId": "AROAEXAMPLE:events",
                    "ApproximateFirstReceiveTimestamp": str(TIME_EPOCH_MS + 20),
                },
                "messageAttributes": {},
                "md5OfBody": hashlib.md5(text.encode()).hexdigest(),
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{REGION}:{AWS_ACCOUNT}:imagegate-requests",
                "awsRegion": REGION,
            }
        ]
    }


def eventbridge(detail_type: str, source: str, detail: dict, index: int, resources: list[str]) -> dict:
    return {
        "version": "0",
        "id": str(uuid.UUID(int=0xEB + index, version=4)),
        "detail-type": detail_type,
        "source": source,
        "account": AWS_ACCOUNT,
        "time": TIME,
        "region": REGION,
        "resources": resources,
        "detail": detail,
    }


def aws_events() -> dict[str, dict]:
    """Each AWS entry point's sample: what the function receives, and the manifest an S3 caller writes."""
    manifest_key = f"requests/{ACCOUNT}/lighthouse.json"
    manifest = job_request(
        endpoint="variations",
        request={"model": "dall-e-2", "n": 1, "size": "256x256"},
        inputs=[{"key": f"requests/{ACCOUNT}/lighthouse.png"}],
        client_reference_id="catalog-item-7",
    )
    object_created = {
        "version": "0",
        "bucket": {"name": BUCKET},
        "object": {
            "key": manifest_key,
            "size": 231,
            "etag": "0f343b0931126a20f133d67c2b018a3b",
            "sequencer": "0066A1B2C3D4E5F601",
        },
        "request-id": "N4N7GDK58NMKJ12R",
        "requester": AWS_ACCOUNT,
        "source-ip-address": "203.0.113.7",
        "reason": "PutObject",
    }
    generate = {"model": "dall-e-2", "prompt": "a lighthouse on a cliff at dusk", "size": "256x256"}
    return {
        # CodeDeploy's call to the pre-traffic hook (PreTrafficHookFunction): ids only, both opaque.
        "pretraffic": {
            "DeploymentId": "d-A1B2C3D4E",
            "LifecycleEventHookExecutionId": "eyJkZXBsb3ltZW50SWQiOiJkLUExQjJDM0Q0RSJ9EXAMPLE",
        },
        "job_request_invoke": job_request(
            endpoint="generations", request={**generate, "response_format": "url"}
        ),
        "job_request_task_token": job_request(
            endpoint="generations", request=generate, client_reference_id="order-1234", task_token=TASK_TOKEN
        ),
        "job_request_sqs": sqs_batch(
            job_request(
                endpoint="edits",
                request={"model": "dall-e-2", "prompt": "a red kite in the clear centre", "size": "256x256"},
                inputs=[
                    {"key": f"inputs/{ACCOUNT}/kite.png"},
                    {"key": f"inputs/{ACCOUNT}/kite-mask.png", "param": "mask"},
                ],
            ),
            0,
        ),
        "job_request_eventbridge": sqs_batch(
            eventbridge(
                "Image Job Requested",
                "com.example.catalog",
                job_request(endpoint="generations", request=generate),
                0,
                [],
            ),
            1,
        ),
        "job_request_s3": sqs_batch(
            eventbridge("Object Created", "aws.s3", object_created, 1, [f"arn:aws:s3:::{BUCKET}"]), 2
        ),
        "job_request_manifest": manifest,
    }


if __name__ == "__main__":
    main()

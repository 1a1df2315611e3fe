"""One measurement in a fresh interpreter; bench/cold_start.py runs this as `python -I -S _child.py ...`.

Only `sys` and `time` are imported before the clock starts, so nothing the candidate needs is preloaded.
argv: mode, target, front sys.path entries (":"-joined), site-packages dir. The result is one
line on stdout, prefixed with MARKER, since handlers log their own JSON lines to stdout too.
"""

import sys
import time

MARKER = "@@BENCH@@ "


def _set_path(front: str, site: str) -> None:
    # -S left only the stdlib on sys.path: put the function and layer dirs first and site-packages last,
    # the order Lambda uses (/var/task, /opt/python, runtime deps); -S also skips every .pth file.
    sys.path[:] = [p for p in front.split(":") if p] + [p for p in sys.path if p] + [site]


def _import(target: str) -> dict:
    started = time.perf_counter()
    __import__(target)
    return {"import_ms": (time.perf_counter() - started) * 1000}


def _baseline(_target: str) -> dict:
    started = time.perf_counter()
    import boto3
    import fastapi  # noqa: F401
    import mangum  # noqa: F401
    import pydantic  # noqa: F401

    imported = time.perf_counter()
    boto3.client("dynamodb", region_name="us-east-1")
    done = time.perf_counter()
    return {"import_ms": (done - started) * 1000, "client_ms": (done - imported) * 1000}


def _incremental(target: str) -> dict:
    """Time `target` imported after the handler: what a first request adds on top of the cold start."""
    __import__("app")
    return _import(target)


class _Context:
    function_name = "imagegate-bench"
    function_version = "$LATEST"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:imagegate-bench"
    aws_request_id = "00000000-0000-0000-0000-000000000000"


def _event(path: str, api_key: str) -> dict:
    """An API Gateway REST API (v1) proxy event, as the template's API sends it (bench/apps.py's too)."""
    import json

    body = json.dumps(
        {
            "model": "dall-e-2",
            "prompt": "a lighthouse at dusk",
            "size": "256x256",
            "response_format": "b64_json",
        }
    )
    headers = {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Host": "bench.execute-api.us-east-1.amazonaws.com",
        "User-Agent": "imagegate-bench",
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Port": "443",
    }
    return {
        "resource": path,
        "path": path,
        "httpMethod": "POST",
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": None,
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "bench",
            "resourcePath": path,
            "httpMethod": "POST",
            "path": f"/v1{path}",
            "stage": "v1",
            "requestId": "bench",
            "identity": {"sourceIp": "127.0.0.1", "userAgent": "imagegate-bench"},
            "requestTimeEpoch": 1735689600000,
        },
        "body": body,
        "isBase64Encoded": False,
    }


def _invoke(handler, event: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    response = handler(event, _Context())
    elapsed = (time.perf_counter() - started) * 1000
    return elapsed, {"status": response.get("statusCode"), "body": str(response.get("body"))[:300]}


def _request(_target: str) -> dict:
    """The generations handler: import, then two invocations against the moto server the parent runs."""
    import os

    result = _import("app")
    handler = sys.modules["app"].handler
    event = _event("/v1/images/generations", os.environ["BENCH_API_KEY"])
    result["first_ms"], result["first"] = _invoke(handler, event)
    result["warm_ms"], result["warm"] = _invoke(handler, event)
    return result


def _request_floor(_target: str) -> dict:
    """The least an image proxy on Lambda does for the same event: one DynamoDB GetItem for the key and
    the same upstream call (bench/apps.py's minimal app)."""
    import os

    started = time.perf_counter()
    import boto3
    import fastapi
    import httpx
    import mangum
    import pydantic

    table = os.environ["IMAGEGATE_TABLE"]
    upstream = os.environ["BENCH_UPSTREAM_BASE"] + "/images/generations"
    client = boto3.client("dynamodb", region_name="us-east-1")
    http = httpx.Client(timeout=10)

    class Body(pydantic.BaseModel):
        prompt: str
        model: str | None = None
        size: str | None = None
        n: int = 1
        response_format: str | None = None

    app = fastapi.FastAPI()

    @app.post("/v1/images/generations")
    def generations(body: Body, authorization: str = fastapi.Header()) -> fastapi.Response:
        key = {"pk": {"S": "KEY#" + authorization[7:]}, "sk": {"S": "KEY"}}
        if client.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item") is None:
            raise fastapi.HTTPException(401)
        answer = http.post(upstream, json=body.model_dump(exclude_none=True))
        return fastapi.Response(answer.content, media_type="application/json")

    handler = mangum.Mangum(app, lifespan="off")
    result = {"import_ms": (time.perf_counter() - started) * 1000}
    event = _event("/v1/images/generations", os.environ["BENCH_API_KEY"])
    result["first_ms"], result["first"] = _invoke(handler, event)
    result["warm_ms"], result["warm"] = _invoke(handler, event)
    return result


MODES = {
    "import": _import,
    "baseline": _baseline,
    "incremental": _incremental,
    "request": _request,
    "request_floor": _request_floor,
}

if __name__ == "__main__":
    mode, target, front, site = sys.argv[1:5]
    _set_path(front, site)
    measured = MODES[mode](target)
    import json

    sys.stdout.write(MARKER + json.dumps(measured) + "\n")

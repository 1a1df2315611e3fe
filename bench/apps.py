"""The benchmarked candidates, each as an ASGI app and a Mangum handler, on the fakes in bench/fakes.py.

- imagegate: the generations function exactly as Lambda builds it (`lambda_app.build_app`, settings from
  the environment as the template sets them: metrics on, Powertools logging at INFO), with the upstream's
  httpx client injected.
- minimal: the least an OpenAI-compatible image proxy on Lambda does: FastAPI + Mangum, a pydantic body,
  one DynamoDB GetItem for the key, and the same upstream call through httpx. No money moves.

`environment(...)` is what both run under; set it before building either.
"""

import json
import os
from typing import Any

from fakes import ACCOUNT_ID, API_KEY, LIMITS, UPSTREAM_HOST, UPSTREAM_PATH, request_body, routes_json

UPSTREAM_BASE = f"http://{UPSTREAM_HOST}/v1"
# Where AWS calls would go if the fake were not installed: nothing listens there.
DEAD_ENDPOINT = "http://127.0.0.1:9"


def environment(aws_endpoint: str = DEAD_ENDPOINT, upstream_base: str = UPSTREAM_BASE) -> dict[str, str]:
    """A deployed function's environment (template.yaml), pointed at the fakes."""
    return {
        "IMAGEGATE_TABLE": "imagegate-bench",
        "IMAGEGATE_BUCKET": "imagegate-bench-outputs",
        "IMAGEGATE_ROUTES": routes_json(upstream_base),
        "IMAGEGATE_METRICS": "on",
        "IMAGEGATE_TRACING": "off",
        "POWERTOOLS_SERVICE_NAME": "imagegate",
        "POWERTOOLS_LOG_LEVEL": "INFO",
        **LIMITS,
        "AWS_ENDPOINT_URL": aws_endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_LAMBDA_FUNCTION_NAME": "imagegate-bench",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "BENCH_UPSTREAM_BASE": upstream_base,
    }


def imagegate(http_client: Any = None) -> tuple[Any, Any]:
    from imagegate.http.lambda_app import build_app, lambda_handler

    app, _service = build_app("generations", http_client)
    return app, lambda_handler("generations", http_client)


def minimal(http_client: Any = None) -> tuple[Any, Any]:
    import boto3
    import fastapi
    import httpx
    import mangum
    import pydantic

    table = os.environ["IMAGEGATE_TABLE"]
    upstream = os.environ["BENCH_UPSTREAM_BASE"] + "/images/generations"
    client = boto3.client("dynamodb", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    http = http_client or httpx.Client(timeout=10)

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
        item = client.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
        if item is None:
            raise fastapi.HTTPException(401)
        answer = http.post(upstream, json=body.model_dump(exclude_none=True))
        return fastapi.Response(answer.content, media_type="application/json")

    return app, mangum.Mangum(app, lifespan="off")


def minimal_plus_transactions(http_client: Any, fake: Any) -> tuple[Any, Any]:
    """The minimal app plus imagegate's two transactions, verbatim (the last reserve and settle the fake
    saw): what imagegate's three DynamoDB calls cost with none of its own code. In process only."""
    import json

    import boto3
    import fastapi
    import mangum
    import pydantic

    table = os.environ["IMAGEGATE_TABLE"]
    upstream = os.environ["BENCH_UPSTREAM_BASE"] + "/images/generations"
    client = boto3.client("dynamodb", endpoint_url=os.environ.get("AWS_ENDPOINT_URL"))
    reserve, settle = (json.loads(body)["TransactItems"] for body in fake.transactions)

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
        client.transact_write_items(TransactItems=reserve)
        answer = http_client.post(upstream, json=body.model_dump(exclude_none=True))
        client.transact_write_items(TransactItems=settle)
        return fastapi.Response(answer.content, media_type="application/json")

    return app, mangum.Mangum(app, lifespan="off")


CANDIDATES = {"imagegate": imagegate, "minimal": minimal}


class Context:
    function_name = "imagegate-bench"
    function_version = "$LATEST"
    memory_limit_in_mb = 1024
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:imagegate-bench"
    aws_request_id = "00000000-0000-0000-0000-000000000000"


def rest_event(idempotency_key: str | None = None, path: str = UPSTREAM_PATH) -> dict[str, Any]:
    """An API Gateway REST API (v1) proxy event, as the template's API sends it."""
    body = request_body().decode()
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Host": "bench.execute-api.us-east-1.amazonaws.com",
        "User-Agent": "imagegate-bench",
        "X-Forwarded-For": "127.0.0.1",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Port": "443",
    }
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
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


def check(response: dict[str, Any]) -> None:
    """A bench request must succeed with one image, else its figures mean nothing."""
    status = response.get("statusCode")
    if status != 200:
        raise RuntimeError(f"status {status}: {str(response.get('body'))[:500]}")
    if len(json.loads(response["body"])["data"]) != 1:
        raise RuntimeError(f"expected one image: {str(response.get('body'))[:300]}")


__all__ = ["ACCOUNT_ID", "CANDIDATES", "Context", "check", "environment", "rest_event"]

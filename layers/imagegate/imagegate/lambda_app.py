"""Lambda entry points: one FastAPI app per function, adapted by Mangum (API Gateway REST API events)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools.logging import Logger
from mangum import Mangum

from .api import Route, create_app
from .aws import AWSClients
from .config import Settings
from .providers import Deps
from .service import Service

DEMO_HEADER = (b"x-imagegate-demo", b"local renderer, not AI")


def lambda_handler(route: Route, http_client: Any = None) -> Any:
    """Build the handler for one route. Nothing here touches the network: clients, credentials and
    routes come on the first request. `http_client`: the upstreams' httpx client (benchmarks inject one)."""
    app, service = build_app(route, http_client)
    # lifespan="off": there is nothing to start, and Mangum would otherwise run it on every invocation.
    handler = service.logger.inject_lambda_context(Mangum(app, lifespan="off"))
    return _traced(handler, service.settings)


def build_app(route: Route, http_client: Any = None) -> tuple[Any, Service]:
    """The ASGI app one function serves, from the environment, and its service."""
    settings = Settings.from_env()
    logger = Logger(service="imagegate")
    aws = AWSClients(settings, os.environ.get("AWS_ENDPOINT_URL"))
    deps = Deps(aws, http_client) if http_client is not None else None
    service = Service(settings, aws, logger, deps)
    return wrap(create_app(service, [route]), settings), service


def sweep_handler() -> Any:
    """The scheduled sweeper (EventBridge): refunds reservations left open by requests killed mid-way."""
    settings = Settings.from_env()
    logger = Logger(service="imagegate")
    service = Service(settings, AWSClients(settings, os.environ.get("AWS_ENDPOINT_URL")), logger)

    def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
        result = service.sweep()
        logger.info("sweep finished", extra=result)
        return result

    return _traced(logger.inject_lambda_context(handler), settings)


def wrap(app: Any, settings: Settings) -> Any:
    """What a deployment adds around the app: CORS for browser clients, and the demo mark."""
    if settings.demo_mode:
        app = _Marked(app)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app = CORSMiddleware(
            app,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type", "idempotency-key", "openai-organization"],
            expose_headers=["x-request-id", "x-imagegate-provider", "x-imagegate-demo", "retry-after"],
            max_age=600,
        )
    return app


class _Marked:
    """Every response of a demo deployment says that its images are the local renderer's, not AI."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        async def marked(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), DEMO_HEADER]}
            await send(message)

        await self.app(scope, receive, marked if scope["type"] == "http" else send)


def _traced(handler: Any, settings: Settings) -> Any:
    """X-Ray through the Powertools Tracer, only when the stack turns it on (the SDK costs cold start)."""
    if not settings.tracing:
        return handler
    from aws_lambda_powertools import Tracer

    return Tracer(service="imagegate").capture_lambda_handler(handler, capture_response=False)

"""Lambda entry points: one FastAPI app per function, adapted by Mangum."""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools.logging import Logger
from mangum import Mangum

from .api import Route, create_app
from .aws import AWSClients
from .config import Settings
from .service import Service


def lambda_handler(route: Route) -> Any:
    """Build the handler for one route. Nothing here touches the network: clients, credentials and
    routes come on the first request."""
    settings = Settings.from_env()
    logger = Logger(service="imagegate")
    service = Service(settings, AWSClients(settings, os.environ.get("AWS_ENDPOINT_URL")), logger)
    # lifespan="off": there is nothing to start, and Mangum would otherwise run it on every invocation.
    return logger.inject_lambda_context(Mangum(create_app(service, [route]), lifespan="off"))


def sweep_handler() -> Any:
    """The scheduled sweeper (EventBridge): refunds reservations left open by requests killed mid-way."""
    settings = Settings.from_env()
    logger = Logger(service="imagegate")
    service = Service(settings, AWSClients(settings, os.environ.get("AWS_ENDPOINT_URL")), logger)

    def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
        result = service.sweep()
        logger.info("sweep finished", extra=result)
        return result

    return logger.inject_lambda_context(handler)

"""AWS clients, created on first use (never at import: Lambda cold start) and shared per container."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from imagegate.config import Settings

# The variable the AWS SDKs and CLI read for DynamoDB's own endpoint: `make serve` runs DynamoDB apart.
DYNAMODB_ENDPOINT_ENV = "AWS_ENDPOINT_URL_DYNAMODB"


class AWSClients:
    def __init__(
        self, settings: Settings, endpoint_url: str | None = None, endpoints: Mapping[str, str] | None = None
    ) -> None:
        """`endpoint_url`: every service's endpoint (an emulator); `endpoints`: a service's own, by its
        boto3 name, over that (`make serve` serves DynamoDB from another emulator than the rest)."""
        self._settings = settings
        self._endpoint_url = endpoint_url
        self._endpoints = dict(endpoints or {})
        self._clients: dict[str, Any] = {}
        self._session: Any = None
        self._loader: Any = None  # botocore's service models, kept across `reset`
        # botocore sessions are not safe to build clients from concurrently; calls on a client are.
        self._lock = threading.Lock()

    def client(
        self,
        service: str,
        region: str | None = None,
        *,
        read_timeout: float | None = None,
        max_attempts: int = 3,
    ) -> Any:
        """A client for `service`, in `region` when given (Bedrock lives in fewer regions than the stack).

        Upstream calls pass their own read timeout and `max_attempts=1`: the router does their retries.
        """
        name = f"{service}@{region}/{read_timeout}/{max_attempts}"
        client = self._clients.get(name)
        if client is None:
            with self._lock:
                client = self._clients.get(name) or self._create(service, region, read_timeout, max_attempts)
                self._clients[name] = client
        return client

    def reset(self) -> None:
        """Forget every client, its connections and the session's credentials, keeping the service models
        botocore has loaded (SnapStart: nothing of one execution environment's identity goes into the
        snapshot, and a restored one makes its clients anew in milliseconds)."""
        with self._lock:
            if self._session is not None:
                self._loader = self._session.get_component("data_loader")
            for client in self._clients.values():
                client.close()
            self._clients.clear()
            self._session = None

    @property
    def dynamodb(self) -> Any:
        return self.client("dynamodb")

    @property
    def s3(self) -> Any:
        return self.client("s3")

    @property
    def sqs(self) -> Any:
        return self.client("sqs")

    def _create(self, service: str, region: str | None, read_timeout: float | None, max_attempts: int) -> Any:
        # botocore, not boto3: the clients are botocore's either way, and importing boto3 imports s3transfer
        # and its resource layer (~250 ms of a cold start), which nothing here uses.
        import botocore.session
        from botocore.config import Config

        # A table's stream is served where the table is (the emulators serve both on one endpoint).
        own = self._endpoints.get("dynamodb" if service == "dynamodbstreams" else service)
        endpoint_url = self._endpoints.get(service, own or self._endpoint_url)
        config = Config(
            signature_version="s3v4" if service == "s3" else None,
            s3=_s3_options(endpoint_url),
            retries={"mode": "standard", "max_attempts": max_attempts},
            read_timeout=read_timeout or 60,
            # A dead endpoint must not eat a request's whole upstream budget before the read even starts.
            connect_timeout=min(5, read_timeout or 60),
            max_pool_connections=50,
            # botocore re-validates every parameter against the service model on every call: about a third
            # of a DynamoDB call's CPU, for requests our own code builds (and the tests exercise). The
            # services validate them anyway, and a mistake still fails as a ValidationException.
            parameter_validation=False,
        )
        # One session for all clients: a second one reloads botocore's data (~90 ms for S3 after DynamoDB).
        if self._session is None:
            self._session = botocore.session.get_session()
            if self._loader is not None:
                self._session.register_component("data_loader", self._loader)
        return self._session.create_client(
            service,
            region_name=region or self._settings.region,
            endpoint_url=endpoint_url,
            config=config,
        )


def endpoints_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """The per-service endpoints `make serve` exports (DynamoDB's, when it runs apart), for AWSClients."""
    return {"dynamodb": env[DYNAMODB_ENDPOINT_ENV]} if env.get(DYNAMODB_ENDPOINT_ENV) else {}


def _s3_options(endpoint_url: str | None) -> dict[str, str]:
    """Emulators on 127.0.0.1 cannot serve virtual-hosted bucket names: path style there. On AWS, regional
    virtual-hosted URLs (`<bucket>.s3.<region>.amazonaws.com`): botocore's default, the legacy global host
    `<bucket>.s3.amazonaws.com`, fails for buckets in opt-in regions (af-south-1, ap-east-1, ...) and may
    redirect for new ones, which breaks a presigned URL's signature."""
    if endpoint_url:
        return {"addressing_style": "path"}
    return {"addressing_style": "virtual", "us_east_1_regional_endpoint": "regional"}

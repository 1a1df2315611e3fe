"""Where the running service gets its catalog: the packaged document, and the operator's override.

An override given as JSON text or a file path (IMAGEGATE_CATALOG) ships with the code and is read once. One
in S3 (`s3://bucket/key`) or SSM (`ssm:<name or ARN>`) changes without a redeploy (`imagegate catalog push`):
it is read on first use and again once `Settings.catalog_ttl_seconds` have passed, by whichever request comes
then (one GetObject or GetParameter per container per TTL; a warm request otherwise reads only the clock).

A document that cannot be read, is not JSON or fails validation is refused: an error log line saying why
and the `CatalogRefused` metric (an alarm in template.yaml), and the last good catalog keeps serving (the
packaged one when none was ever good: its prices cover its upstreams). It is tried again after the TTL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from imagegate.catalog.loader import Catalog, is_static, load_catalog

if TYPE_CHECKING:
    from aws_lambda_powertools.logging import Logger

    from imagegate.aws import AWSClients
    from imagegate.config import Settings

Fetch = Callable[[str], str]


def fetch_override(aws: AWSClients, source: str) -> str:
    """The text of an override in S3 (`s3://bucket/key`) or SSM (`ssm:<name or ARN>`, SecureString too)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if source.startswith("s3://"):
            bucket, _, key = source.removeprefix("s3://").partition("/")
            return aws.s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        name = source.removeprefix("ssm:")
        return aws.client("ssm").get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    except ClientError as exc:
        # AWS's error code (NoSuchKey, ParameterNotFound, AccessDenied) says what is wrong.
        code = exc.response.get("Error", {}).get("Code", "ClientError")
        raise ValueError(f"could not read {source}: {code}") from None
    except BotoCoreError as exc:
        raise ValueError(f"could not read {source}: {type(exc).__name__}") from None


class CatalogSource:
    def __init__(
        self,
        settings: Settings,
        fetch: Fetch,
        logger: Logger,
        refused: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`fetch`: reads a remote override's text; `refused`: counts a refused document (the metric)."""
        self._settings = settings
        self._fetch = fetch
        self._logger = logger
        self._refused = refused
        self._clock = clock
        self._remote = bool(settings.catalog.strip()) and not is_static(settings.catalog)
        self._catalog: Catalog | None = None
        self._due = 0.0

    def current(self) -> Catalog:
        if self._catalog is None:
            # JSON text or a file path is part of the deployment: a mistake in it fails loudly here.
            self._catalog = load_catalog(self._settings)
            if self._remote:
                self._refresh()
        elif self._remote and self._clock() >= self._due:
            self._refresh()
        return self._catalog

    def _refresh(self) -> None:
        self._due = self._clock() + self._settings.catalog_ttl_seconds
        source = self._settings.catalog.strip()
        try:
            document: Any = json.loads(self._fetch(source))
            self._catalog = load_catalog(self._settings, override=document)
        except ValueError as exc:  # json's errors, the loader's and fetch_override's are all ValueErrors
            self._refused()
            self._logger.error(
                "catalog override refused; the last good catalog keeps serving",
                extra={"source": source, "reason": str(exc)[:2000]},
            )

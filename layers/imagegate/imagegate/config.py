"""Settings, read once from the environment and passed explicitly to everything that needs them."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .money import usd_to_micros


@dataclass(frozen=True)
class Settings:
    table: str = "imagegate"
    bucket: str = "imagegate-outputs"
    region: str | None = None  # None: boto3 resolves it (AWS config profile), as the AWS CLI would
    url_ttl_seconds: int = 3600
    local_price_micros: int = 2_000
    max_body_bytes: int = 10 * 1024 * 1024
    # Lambda returns at most 6 MB; 0 means no ceiling (local server).
    max_response_bytes: int = 0
    output_prefix: str = "outputs"
    # Upstream credentials: a Secrets Manager secret or an SSM SecureString holding a JSON object of
    # credential name -> value; locally, environment variables of the same names.
    upstream_secret_arn: str = ""
    upstream_ssm_parameter: str = ""
    # Bedrock routes are live only when a region is given (Bedrock authenticates with the Lambda role).
    bedrock_region: str = ""
    # Operator overrides, each JSON text or a path to a JSON file; empty means the packaged defaults.
    routes: str = ""
    prices: str = ""
    # Seconds a whole request may spend on upstreams, retries and fallbacks included: under Lambda's 29 s
    # timeout with room to store the images and settle.
    upstream_budget_seconds: float = 24.0
    metrics: bool = False  # CloudWatch EMF lines on stdout; on in Lambda, off on a laptop
    # Per-key defaults; a key's own limits (imagegate keys limits) override them.
    images_per_minute: int = 50
    max_concurrent: int = 10
    # Per-account ceilings over all of an account's keys (0: none); an account's own limits override them.
    # They keep one tenant well under what a single DynamoDB partition takes (README: limits).
    account_images_per_minute: int = 600
    account_max_concurrent: int = 50

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            table=env.get("IMAGEGATE_TABLE", cls.table),
            bucket=env.get("IMAGEGATE_BUCKET", cls.bucket),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
            url_ttl_seconds=int(env.get("IMAGEGATE_URL_TTL", cls.url_ttl_seconds)),
            local_price_micros=usd_to_micros(env.get("IMAGEGATE_LOCAL_PRICE_USD", "0.002")),
            max_body_bytes=int(env.get("IMAGEGATE_MAX_BODY_BYTES", cls.max_body_bytes)),
            max_response_bytes=int(env.get("IMAGEGATE_MAX_RESPONSE_BYTES", cls.max_response_bytes)),
            upstream_secret_arn=env.get("IMAGEGATE_UPSTREAM_SECRET_ARN", ""),
            upstream_ssm_parameter=env.get("IMAGEGATE_UPSTREAM_SSM_PARAMETER", ""),
            bedrock_region=env.get("IMAGEGATE_BEDROCK_REGION", ""),
            routes=env.get("IMAGEGATE_ROUTES", ""),
            prices=env.get("IMAGEGATE_PRICES", ""),
            upstream_budget_seconds=float(
                env.get("IMAGEGATE_UPSTREAM_BUDGET_SECONDS", cls.upstream_budget_seconds)
            ),
            metrics=env.get("IMAGEGATE_METRICS", "") == "on",
            images_per_minute=int(env.get("IMAGEGATE_IMAGES_PER_MINUTE", cls.images_per_minute)),
            max_concurrent=int(env.get("IMAGEGATE_MAX_CONCURRENT", cls.max_concurrent)),
            account_images_per_minute=int(
                env.get("IMAGEGATE_ACCOUNT_IMAGES_PER_MINUTE", cls.account_images_per_minute)
            ),
            account_max_concurrent=int(
                env.get("IMAGEGATE_ACCOUNT_MAX_CONCURRENT", cls.account_max_concurrent)
            ),
        )


def load_document(source: str, default: Path) -> Any:
    """An operator's JSON document: inline JSON text, a path to a JSON file, or (when empty) the packaged
    default. A broken document fails loudly at startup rather than mispricing or misrouting requests."""
    if not source.strip():
        return json.loads(default.read_text())
    text = source if source.lstrip().startswith(("{", "[")) else Path(source).read_text()
    return json.loads(text)

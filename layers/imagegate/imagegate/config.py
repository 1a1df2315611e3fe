"""Settings, read once from the environment and passed explicitly to everything that needs them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

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
    upstream_secret_arn: str = ""
    output_prefix: str = "outputs"

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
        )

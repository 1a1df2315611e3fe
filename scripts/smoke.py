"""Smoke test against the real upstreams: one cheap generation through each provider that has credentials.

    python scripts/smoke.py [--stack NAME]

With --stack, it first checks the deployed stack (scripts/deploy.py check): each function's live alias must
run what the stack declares, which a plain `sam deploy` that changed only parameters leaves untrue.
OpenAI needs IMAGEGATE_OPENAI_API_KEY, Gemini IMAGEGATE_GEMINI_API_KEY, Bedrock IMAGEGATE_BEDROCK_REGION and
AWS credentials (the same variables `make serve` reads).
Each provider goes through `routing.Router` with a one-route table, so retries and error mapping are the
deployment's; timeouts are a generous 60 s, so that a slow upstream shows as slow rather than failed.
Prints `ok <provider> <model> <WxH> <format> <ms>`, `skipped <provider>: <reason>` or
`failed <provider> <model>: ...` per provider; exits 1 if any call was attempted and failed, else 0 (also
when everything was skipped, as in CI without keys). It spends a few cents when keys are present.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from aws_lambda_powertools.logging import Logger
from PIL import Image

from imagegate.aws import AWSClients
from imagegate.catalog.credentials import ENV_PREFIX
from imagegate.catalog.loader import load_catalog
from imagegate.config import Settings
from imagegate.errors import APIError, ProviderError
from imagegate.inputs.validation import ImageParams, resolve
from imagegate.providers import Deps
from imagegate.providers.routing import Router, RouteSpec

PROMPT = "A red apple on a white table, studio light"


def _key(name: str) -> Callable[[Mapping[str, str]], str | None]:
    return lambda env: None if env.get(ENV_PREFIX + name) else f"{ENV_PREFIX + name} is not set"


def _bedrock_reason(env: Mapping[str, str]) -> str | None:
    if not env.get("IMAGEGATE_BEDROCK_REGION"):
        return "IMAGEGATE_BEDROCK_REGION is not set"
    import boto3

    # Only asked once a region says Bedrock is wanted: without one, the lookup could probe instance metadata.
    if boto3.session.Session().get_credentials() is None:
        return "no AWS credentials found"
    return None


@dataclass(frozen=True)
class Check:
    route: RouteSpec
    contract: str  # the public model id whose contract shapes the job
    params: dict[str, Any]
    skip_reason: Callable[[Mapping[str, str]], str | None]


CHECKS = (
    Check(
        RouteSpec("openai", "gpt-image-1-mini", "OPENAI_API_KEY", 60.0),
        "gpt-image-1-mini",
        {"size": "1024x1024", "quality": "low"},
        _key("OPENAI_API_KEY"),
    ),
    Check(
        RouteSpec("gemini", "gemini-3.1-flash-image", "GEMINI_API_KEY", 60.0),
        "gpt-image-1-mini",
        {"size": "1024x1024", "quality": "low"},
        _key("GEMINI_API_KEY"),
    ),
    Check(
        RouteSpec("bedrock", "stability.stable-image-core-v1:1", timeout_s=60.0),
        "dall-e-2",
        {"size": "512x512"},
        _bedrock_reason,
    ),
)


def live_is_current(stack: str) -> bool:
    """scripts/deploy.py's check of a deployed stack (it prints what is stale)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import deploy

    return deploy.check({**deploy.samconfig(), "stack_name": stack}) == 0


def main(env: Mapping[str, str] = os.environ) -> int:
    settings = replace(Settings.from_env(env), upstream_budget_seconds=90.0)
    catalog = load_catalog(settings).contracts
    logger = Logger(service="imagegate-smoke", level="WARNING", stream=sys.stderr)
    deps = Deps(aws=AWSClients(settings))
    failed = False
    for check in CHECKS:
        spec = check.route
        reason = check.skip_reason(env)
        if reason:
            print(f"skipped {spec.provider}: {reason}")
            continue
        job = resolve(
            "generations", ImageParams(prompt=PROMPT, model=check.contract, **check.params), catalog
        )
        credentials = {spec.credential: env[ENV_PREFIX + spec.credential]} if spec.credential else {}
        router = Router(settings, {check.contract: [spec]}, credentials, deps, logger)
        started = time.perf_counter()
        try:
            served = router.run(job, f"smoke-{spec.provider}")
        except (APIError, ProviderError) as exc:
            failed = True
            print(f"failed {spec.provider} {spec.model}: {exc.status} {exc.code}: {exc}")
            continue
        ms = round((time.perf_counter() - started) * 1000)
        with Image.open(io.BytesIO(served.result.images[0])) as img:
            print(f"ok {spec.provider} {spec.model} {img.width}x{img.height} {img.format.lower()} {ms}")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="One cheap generation through each configured upstream.")
    parser.add_argument("--stack", help="first check that this stack's live aliases are current")
    stack = parser.parse_args().stack
    current = live_is_current(stack) if stack else True
    sys.exit(main() or (0 if current else 1))

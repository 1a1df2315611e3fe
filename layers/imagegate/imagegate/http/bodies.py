"""Reading a request as the routes of every function do: its whole body, a JSON object of parameters, and
the path the client reached it by."""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Request

from imagegate import errors
from imagegate.inputs.validation import check_unicode

JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]+\+)?json\s*(;|$)", re.IGNORECASE)


def public_path(request: Request, path: str) -> str:
    """`path` as the client reaches it: behind API Gateway, under the stage (or custom domain base path)
    the client's URL carries and the app does not see."""
    event = request.scope.get("aws.event") or {}
    public = (event.get("requestContext") or {}).get("path") or ""
    seen = event.get("path") or ""
    prefix = public[: -len(seen)] if seen and public.endswith(seen) else ""
    return prefix + path


async def read_body(request: Request) -> bytes:
    """The whole body (the Guard enforces its limit as it streams in), without a copy when it arrives in
    one message, as it does from Mangum."""
    chunks = [chunk async for chunk in request.stream() if chunk]
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_json(request: Request) -> dict[str, Any]:
    """A JSON object of parameters, every string in it valid Unicode; a 400 for anything else."""
    content_type = request.headers.get("content-type", "")
    if content_type and not JSON_TYPE.match(content_type):
        raise errors.invalid(
            f"This endpoint takes application/json, got '{content_type}'.", None, "invalid_content_type"
        )
    body = await read_body(request)
    if not body.strip():
        raise errors.invalid("The request body must be a JSON object of parameters.", None, "invalid_type")
    try:
        # Strict UTF-8 first: json.loads on bytes would decode UTF-8-encoded surrogates ("surrogatepass").
        document = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise errors.invalid(
            "We could not parse the JSON body of your request.", None, "invalid_json"
        ) from exc
    del body
    if not isinstance(document, dict):
        raise errors.invalid("The request body must be a JSON object of parameters.", None, "invalid_type")
    check_unicode(document)
    return document

"""OpenAI-shaped errors: every failure a client sees is one of these."""

from __future__ import annotations

import math
from typing import Any


class APIError(Exception):
    """An error with OpenAI's body `{"error": {"message", "type", "param", "code"}}` and an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        message = printable(message)
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = None if param is None else printable(param)
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def printable(text: str) -> str:
    """`text` as valid Unicode: a lone UTF-16 surrogate (which JSON's \\uXXXX escapes can carry) becomes
    its escape, so that messages quoting a client's input can always be encoded and logged."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def invalid(message: str, param: str | None, code: str | None = "invalid_value") -> APIError:
    """A 400 naming the offending parameter."""
    return APIError(400, message, param=param, code=code)


def invalid_choice(param: str, value: object, allowed: tuple[str, ...] | list[str]) -> APIError:
    choices = ", ".join(f"'{a}'" for a in allowed)
    return invalid(f"Invalid value: '{value}'. Supported values are: {choices}.", param)


def unknown_parameter(param: str, why: str = "") -> APIError:
    return invalid(f"Unknown parameter: '{param}'.{' ' + why if why else ''}", param, "unknown_parameter")


def from_pydantic(errors: list[dict[str, Any]]) -> APIError:
    """Turn pydantic's (and FastAPI's 422) error list into one 400 naming the first bad parameter."""
    if not errors:
        return invalid("Invalid request.", None)
    err = errors[0]
    # OpenAI names the top-level parameter; deeper parts of pydantic's location (union members, list
    # indexes) would only confuse a client.
    # FastAPI prefixes where the value came from ("body", "query", "header"); the name follows it.
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "header")]
    param = loc[0] if loc else None
    kind = err.get("type", "")
    if kind == "invalid_unicode":
        return invalid(str(err.get("msg", "")), param, "invalid_unicode")
    if kind == "json_invalid":
        return invalid("We could not parse the JSON body of your request.", None, "invalid_json")
    if param is None:  # the body itself: absent, or not an object
        return invalid("The request body must be a JSON object of parameters.", None, "invalid_type")
    if kind == "missing":
        return invalid(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    if kind == "extra_forbidden":
        return unknown_parameter(param or "")
    msg = err.get("msg", "Invalid value")
    return invalid(f"Invalid '{param}': {msg[:1].lower()}{msg[1:]}.", param, _pydantic_code(kind))


def _pydantic_code(kind: str) -> str:
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return "invalid_type"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return "integer_out_of_range"
    return "invalid_value"


class ProviderError(Exception):
    """An upstream failure, and what the router should do about it.

    `retry`: worth another attempt at the same upstream (429, 5xx, timeouts, dropped connections).
    `fallover`: worth trying the next route once retries are spent (also upstream auth/quota failures,
    which say nothing about the client's own key). Neither: the answer is final (a content-policy block is
    the same everywhere), and the client sees `status` with an OpenAI-shaped body.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        code: str = "upstream_error",
        type: str = "server_error",
        param: str | None = None,
        retry: bool = False,
        fallover: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.type = type
        self.param = param
        self.retry = retry
        self.fallover = fallover
        self.retry_after = retry_after

    def client_headers(self) -> dict[str, str]:
        """Headers for the client's answer: the upstream's Retry-After (whole seconds, rounded up) on a
        429, 502 or 503, so that a client paces itself as the upstream asked."""
        if self.retry_after is None or self.status not in (429, 502, 503):
            return {}
        return {"retry-after": str(math.ceil(self.retry_after))}

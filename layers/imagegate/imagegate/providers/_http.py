"""Shared plumbing for HTTP upstreams (OpenAI, OpenAI-compatible servers, Gemini).

One POST with the route's timeout, every failure mapped to a `ProviderError` the router understands, and
the n-parallel-calls helper for upstreams that make one image per call. Error bodies read here:
OpenAI `{"error": {"message", "type", "param", "code"}}` (openai-openapi `Error`) and Google's
`{"error": {"code", "message", "status", "details": [{"reason"}]}}`
(https://cloud.google.com/apis/design/errors; API_KEY_INVALID seen in public issues, e.g.
https://github.com/google/timesketch/pull/3703).
"""

from __future__ import annotations

import contextlib
import email.utils
import math
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC
from typing import Any, TypeVar

import httpx

from imagegate.errors import ProviderError
from imagegate.providers import content_policy

T = TypeVar("T")

# OpenAI's safety refusals: GPT image models say moderation_blocked, DALL·E content_policy_violation.
CONTENT_CODES = frozenset({"moderation_blocked", "content_policy_violation"})
# Refusals about imagegate's own upstream account: bad key, no quota left, no billing.
ACCOUNT_CODES = frozenset(
    {"invalid_api_key", "insufficient_quota", "billing_hard_limit_reached", "API_KEY_INVALID"}
)
MAX_MESSAGE = 500


def post(
    client: httpx.Client, url: str, *, label: str, timeout_s: float, secret: str = "", **kwargs: Any
) -> Any:
    """POST and return the JSON body of a 2xx answer; anything else raises a `ProviderError`.

    `label` names the upstream in messages; `secret` (its key) is scrubbed from any upstream text we quote.
    """
    return json_of(
        send(client, "POST", url, label=label, timeout_s=timeout_s, secret=secret, **kwargs), label
    )


def send(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    label: str,
    timeout_s: float,
    secret: str = "",
    **kwargs: Any,
) -> httpx.Response:
    """One request with the route's timeout: a 2xx answer, or a `ProviderError` for anything else."""
    with _transport_errors(label, timeout_s):
        response = client.request(method, url, timeout=timeout_s, **kwargs)
    if not response.is_success:
        raise error_for(response, label, secret)
    return response


def json_of(response: httpx.Response, label: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise bad_response(label, "a body that is not JSON") from exc


def stream_events(
    client: httpx.Client, url: str, *, label: str, timeout_s: float, secret: str = "", **kwargs: Any
) -> Iterator[dict[str, Any]]:
    """POST for server-sent events and yield each event's JSON data as it arrives (OpenAI's streams name
    the event in the data's `type`). Failures are `post`'s, and an `error` event is one too; `timeout_s`
    bounds each read, not the whole stream."""
    from httpx_sse import SSEError, connect_sse

    with (
        _transport_errors(label, timeout_s),
        connect_sse(client, "POST", url, timeout=timeout_s, **kwargs) as source,
    ):
        if not source.response.is_success:
            source.response.read()
            raise error_for(source.response, label, secret)
        try:
            for event in source.iter_sse():
                if event.data == "[DONE]":
                    return
                data = event.json()
                if not isinstance(data, dict):
                    raise bad_response(label, "an event that is not a JSON object")
                if event.event == "error" or data.get("type") == "error" or "error" in data:
                    raise stream_error(data, label, secret)
                yield data
        except SSEError as exc:
            raise bad_response(label, "a body that is not an event stream") from exc
        except ValueError as exc:  # JSONDecodeError
            raise bad_response(label, "an event whose data is not JSON") from exc


@contextlib.contextmanager
def _transport_errors(label: str, timeout_s: float) -> Iterator[None]:
    """Timeouts and dropped connections as retryable `ProviderError`s."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ProviderError(
            f"The upstream image service ({label}) did not answer within {timeout_s:g} s.",
            status=504,
            code="upstream_timeout",
            retry=True,
        ) from exc
    except httpx.TransportError as exc:
        raise ProviderError(
            f"Could not reach the upstream image service ({label}): {type(exc).__name__}.",
            code="upstream_unavailable",
            retry=True,
        ) from exc


def error_for(response: httpx.Response, label: str, secret: str = "") -> ProviderError:
    """Map an upstream's error answer to what the router should do and what the client may see."""
    status = response.status_code
    message, codes = _error_details(response)
    if status in (401, 403) or codes & ACCOUNT_CODES or status == 402:
        # Never the upstream's text: OpenAI's 401 quotes part of the key, Google's carries debug info.
        return ProviderError(
            f"The upstream image service ({label}) rejected imagegate's credentials or account "
            f"(HTTP {status}); this is not about your API key.",
            code="upstream_auth_failed",
        )
    if status == 429:
        return ProviderError(
            f"The upstream image service ({label}) is rate limiting imagegate (HTTP 429).",
            code="upstream_rate_limited",
            retry=True,
            retry_after=retry_after(response.headers.get("retry-after")),
        )
    if status >= 500 or status == 408:
        # A 503's Retry-After (RFC 9110 10.2.3) paces retries as a 429's does.
        return ProviderError(
            f"The upstream image service ({label}) failed (HTTP {status}).",
            code="upstream_error",
            retry=True,
            retry_after=retry_after(response.headers.get("retry-after")),
        )
    quoted = _redact(message, secret)
    if codes & CONTENT_CODES:
        return content_policy(quoted or "Your request was rejected by the upstream's safety system.")
    if status == 404:
        return ProviderError(
            f"The upstream image service ({label}) does not serve the model it was asked for (HTTP 404).",
            code="upstream_model_not_found",
        )
    # Our translation of the request disagreed with the upstream: its words help the operator fix the route.
    return ProviderError(
        f"The upstream image service ({label}) rejected the request (HTTP {status}): "
        f"{quoted or 'no details given'}",
        code="upstream_rejected",
    )


def stream_error(data: dict[str, Any], label: str, secret: str = "") -> ProviderError:
    """An `error` event in an upstream's stream: a safety refusal is final, anything else worth a retry
    (the upstream's words are quoted only for a refusal, as `error_for` does for 5xx answers)."""
    error = data["error"] if isinstance(data.get("error"), dict) else data
    codes = {str(error[k]) for k in ("code", "type") if error.get(k)}
    if codes & CONTENT_CODES:
        quoted = _redact(str(error.get("message") or ""), secret)
        return content_policy(quoted or "Your request was rejected by the upstream's safety system.")
    return ProviderError(
        f"The upstream image service ({label}) failed while streaming.", code="upstream_error", retry=True
    )


def bad_response(label: str, what: str) -> ProviderError:
    """A 2xx answer we cannot use: another route may do better, the same one probably not."""
    return ProviderError(
        f"The upstream image service ({label}) returned {what}.", code="upstream_bad_response"
    )


def retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def nearest_aspect(width: int, height: int, shapes: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The shape closest in aspect ratio (on a log scale, so 2:1 and 1:2 are equally far from 1:1), then
    in area."""
    aspect, area = math.log(width / height), math.log(width * height)
    return min(shapes, key=lambda s: (abs(math.log(s[0] / s[1]) - aspect), abs(math.log(s[0] * s[1]) - area)))


def _error_details(response: httpx.Response) -> tuple[str, set[str]]:
    """The upstream's error message and every machine-readable code in it (OpenAI or Google shape)."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return "", set()
    if not isinstance(error, dict):
        return (error if isinstance(error, str) else ""), set()
    codes = {str(error[k]) for k in ("code", "status", "type") if error.get(k)}
    codes |= {str(d["reason"]) for d in error.get("details") or () if isinstance(d, dict) and d.get("reason")}
    return str(error.get("message") or ""), codes


def _redact(text: str, secret: str) -> str:
    if secret:
        text = text.replace(secret, "[redacted]")
    return text[:MAX_MESSAGE]

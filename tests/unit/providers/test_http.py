"""The shared HTTP plumbing: timeouts, error mapping, Retry-After, parallel calls. Also the fake upstream
that the OpenAI and Gemini provider tests share."""

import base64
import email.parser
import email.policy
import io
import threading

import httpx
import pytest
from PIL import Image

from imagegate.errors import ProviderError
from imagegate.providers import Deps, content_policy, gather
from imagegate.providers._http import nearest_aspect, post, retry_after

SECRET = "sk-test-SECRET-0123456789"


class FakeUpstream:
    """An httpx transport handler: records every request, answers from a queue (the last answer repeats)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests = []
        self.lock = threading.Lock()

    def __call__(self, request):
        request.read()
        with self.lock:
            self.requests.append(request)
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    @property
    def request(self):
        assert len(self.requests) == 1, f"expected one upstream call, got {len(self.requests)}"
        return self.requests[0]

    def deps(self):
        return Deps(aws=None, http_client=httpx.Client(transport=httpx.MockTransport(self)))


def png_b64(width, height, colour=(10, 200, 30), fmt="PNG"):
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


def opened(data):
    img = Image.open(io.BytesIO(data))
    return img.format, img.size


def form_parts(request):
    """A multipart/form-data request body as [(name, filename, content_type, bytes)], in order."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.content)
    assert message.is_multipart()
    return [
        (
            part.get_param("name", header="content-disposition"),
            part.get_filename(),
            part.get_content_type() if part.get_filename() else None,
            part.get_payload(decode=True),
        )
        for part in message.iter_parts()
    ]


def form_fields(request):
    return {name: data.decode() for name, filename, _, data in form_parts(request) if filename is None}


def openai_error(status, message, code=None, type="invalid_request_error", headers=None):
    body = {"error": {"message": message, "type": type, "param": None, "code": code}}
    return httpx.Response(status, json=body, headers=headers)


def call(fake, timeout_s=7.0):
    client = fake.deps().http
    return post(
        client, "https://up.example/v1/x", label="openai", timeout_s=timeout_s, secret=SECRET, json={}
    )


def failure(fake):
    with pytest.raises(ProviderError) as info:
        call(fake)
    return info.value


def test_post_returns_json_and_sends_the_route_timeout():
    fake = FakeUpstream(httpx.Response(200, json={"ok": 1}))
    assert call(fake, timeout_s=7.5) == {"ok": 1}
    assert fake.request.extensions["timeout"] == {"connect": 7.5, "read": 7.5, "write": 7.5, "pool": 7.5}


def test_timeout_is_a_retryable_504():
    err = failure(FakeUpstream(httpx.ReadTimeout("slow")))
    assert (err.status, err.code, err.retry, err.fallover) == (504, "upstream_timeout", True, True)
    assert "7 s" in str(err)


def test_connection_error_is_a_retryable_502():
    err = failure(FakeUpstream(httpx.ConnectError("refused")))
    assert (err.status, err.code, err.retry) == (502, "upstream_unavailable", True)


def test_429_retries_after_the_upstreams_delay():
    err = failure(
        FakeUpstream(
            openai_error(429, "Rate limit reached", "rate_limit_exceeded", headers={"Retry-After": "7"})
        )
    )
    assert (err.status, err.code, err.retry, err.fallover, err.retry_after) == (
        502,
        "upstream_rate_limited",
        True,
        True,
        7.0,
    )


def test_429_without_retry_after_has_no_delay():
    assert failure(FakeUpstream(openai_error(429, "slow down"))).retry_after is None


def test_quota_exhausted_falls_over_without_retrying():
    err = failure(FakeUpstream(openai_error(429, "You exceeded your current quota", "insufficient_quota")))
    assert (err.status, err.code, err.retry, err.fallover) == (502, "upstream_auth_failed", False, True)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retryable(status):
    err = failure(FakeUpstream(openai_error(status, "The server had an error", type="server_error")))
    assert (err.status, err.code, err.retry, err.fallover) == (502, "upstream_error", True, True)


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_names_imagegates_credentials_never_the_key(status):
    raw = f"Incorrect API key provided: {SECRET[:8]}***{SECRET[-4:]}. You can find your API key at ..."
    err = failure(FakeUpstream(openai_error(status, raw, "invalid_api_key")))
    assert (err.status, err.retry, err.fallover) == (502, False, True)
    assert "imagegate's credentials" in str(err)
    assert "not about your API key" in str(err)
    assert SECRET[:8] not in str(err) and "Incorrect API key" not in str(err)


def test_googles_invalid_key_400_is_an_auth_failure_without_its_debug_text():
    body = {
        "error": {
            "code": 400,
            "message": "API key not valid. Please pass a valid API key.",
            "status": "INVALID_ARGUMENT",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"},
                {"@type": "type.googleapis.com/google.rpc.DebugInfo", "detail": f"Invalid API key: {SECRET}"},
            ],
        }
    }
    err = failure(FakeUpstream(httpx.Response(400, json=body)))
    assert (err.status, err.code, err.retry, err.fallover) == (502, "upstream_auth_failed", False, True)
    assert SECRET not in str(err) and "not valid" not in str(err)


def test_model_not_found_falls_over():
    err = failure(
        FakeUpstream(openai_error(404, "The model 'gpt-image-9' does not exist", "model_not_found"))
    )
    assert (err.status, err.code, err.retry, err.fallover) == (502, "upstream_model_not_found", False, True)


@pytest.mark.parametrize("code", ["moderation_blocked", "content_policy_violation"])
def test_safety_refusal_is_a_final_content_policy_400(code):
    message = "Your request was rejected by the safety system. safety_violations=[sexual]."
    err = failure(FakeUpstream(openai_error(400, message, code, type="image_generation_user_error")))
    expected = content_policy(message)
    assert (err.status, err.code, err.type, err.param, err.retry, err.fallover) == (
        400,
        "content_policy_violation",
        "invalid_request_error",
        "prompt",
        False,
        False,
    )
    assert (err.status, err.code) == (expected.status, expected.code)
    assert str(err) == message


def test_other_400_falls_over_quoting_the_upstream_with_the_key_scrubbed():
    err = failure(
        FakeUpstream(openai_error(400, f"Invalid value: '512x512' (key {SECRET})", "invalid_value"))
    )
    assert (err.status, err.code, err.retry, err.fallover) == (502, "upstream_rejected", False, True)
    assert "Invalid value: '512x512'" in str(err)
    assert SECRET not in str(err)


def test_non_json_success_is_a_bad_response():
    err = failure(FakeUpstream(httpx.Response(200, text="<html>proxy</html>")))
    assert (err.status, err.code, err.retry, err.fallover) == (502, "upstream_bad_response", False, True)


def test_error_without_a_json_body_still_maps_by_status():
    err = failure(FakeUpstream(httpx.Response(503, text="Service Unavailable")))
    assert (err.code, err.retry) == ("upstream_error", True)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # already past
        ("soon", None),
        ("inf", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_reads_seconds_or_an_http_date(value, expected):
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert retry_after(value, now=lambda: now) == expected


def test_gather_returns_the_successes_of_a_partial_failure():
    outcomes = iter([ProviderError("boom", retry=True), "a", "b"])
    lock = threading.Lock()

    def one():
        with lock:
            outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert sorted(gather([one] * 3)) == ["a", "b"]


def test_gather_raises_the_final_error_when_every_call_fails():
    errors = iter([ProviderError("timeout", status=504, retry=True), content_policy("blocked")])
    lock = threading.Lock()

    def one():
        with lock:
            raise next(errors)

    with pytest.raises(ProviderError) as info:
        gather([one] * 2)
    assert info.value.code == "content_policy_violation"


def test_gather_once_runs_inline():
    assert gather([lambda: threading.current_thread()]) == [threading.current_thread()]


def test_nearest_aspect_prefers_aspect_then_area():
    shapes = [(1024, 1024), (1536, 1024), (1024, 1536)]
    assert nearest_aspect(1792, 1024, shapes) == (1536, 1024)
    assert nearest_aspect(1024, 1792, shapes) == (1024, 1536)
    assert nearest_aspect(256, 256, shapes) == (1024, 1024)
    assert nearest_aspect(1536, 1024, [(256, 256), (512, 512), (1024, 1024)]) == (1024, 1024)

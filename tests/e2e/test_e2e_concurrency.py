"""Money under concurrency, over HTTP: real threads through uvicorn to moto's server, the SDK as client.

With the emulator serving requests concurrently (as moto's own ThreadedMotoServer does), the overdraw test
failed in about one run in five by letting an eleventh request through; it guards the emulator's
per-request isolation as much as the reservation itself.
"""

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from PIL import Image
from shims import charges

from imagegate.money.ledger import reconcile

DALLE2_256 = 16_000
REQUESTS = 50
AFFORDABLE = 10
# Per-key limits far above what these tests send: here only money decides.
UNLIMITED = {"images_per_minute": 10_000, "max_concurrent": 100}
UPSTREAM = "http://upstream.test/v1"


def status_of(call):
    try:
        call()
        return 200
    except openai.APIStatusError as exc:
        return exc.status_code


def generate(user, prompt="x", n=1):
    return user.client.images.generate(
        model="dall-e-2", prompt=prompt, size="256x256", n=n, response_format="b64_json"
    )


def assert_reconciles(user):
    stack = user.stack
    report = reconcile(stack.aws.dynamodb, stack.settings.table, user.account_id)
    assert report.ok, report.problems
    assert report.in_flight == 0
    assert report.balance == report.expected == user.balance()


def test_parallel_requests_never_overdraw_a_balance(stack, new_user):
    user = new_user(stack, balance=AFFORDABLE * DALLE2_256, **UNLIMITED)

    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        statuses = list(pool.map(lambda _: status_of(lambda: generate(user)), range(REQUESTS)))

    assert sorted(statuses) == [200] * AFFORDABLE + [402] * (REQUESTS - AFFORDABLE)
    assert user.balance() == 0
    assert_reconciles(user)
    assert charges(stack.aws.dynamodb, stack.settings.table, user.account_id) == [DALLE2_256] * AFFORDABLE


class FlakyUpstream:
    """An OpenAI-compatible server still offering dall-e-2: prompts starting "fail" get a 500 every time,
    "short" ones get one image fewer than asked."""

    def __init__(self):
        buf = io.BytesIO()
        Image.new("RGB", (256, 256), (20, 120, 200)).save(buf, "PNG")
        self.png = base64.b64encode(buf.getvalue()).decode()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["prompt"].startswith("fail"):
            return httpx.Response(500, json={"error": {"message": "upstream broke", "type": "server_error"}})
        n = body["n"] - 1 if body["prompt"].startswith("short") else body["n"]
        return httpx.Response(200, json={"created": 1, "data": [{"b64_json": self.png}] * n})


@pytest.fixture(scope="module")
def flaky_stack(start_stack):
    route = {"provider": "openai_compatible", "model": "dall-e-2", "base_url": UPSTREAM, "timeout_s": 5}
    # A short budget: a failing request is retried, then refunded, within a few seconds.
    return start_stack(
        upstream=FlakyUpstream(),
        routes=json.dumps({"routes": {"dall-e-2": [route]}}),
        upstream_budget_seconds=4,
    )


def test_parallel_requests_with_failing_upstreams_refund_exactly_and_never_overdraw(flaky_stack, new_user):
    user = new_user(flaky_stack, balance=AFFORDABLE * DALLE2_256, **UNLIMITED)
    prompts = ["fail" if i % 3 == 0 else f"ok {i}" for i in range(REQUESTS)]

    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        statuses = list(pool.map(lambda p: status_of(lambda: generate(user, p)), prompts))

    ok = statuses.count(200)
    assert set(statuses) <= {200, 402, 502}
    assert [s for p, s in zip(prompts, statuses, strict=True) if p == "fail"].count(200) == 0
    assert 1 <= ok <= AFFORDABLE
    # Every failed request was refunded in full, exactly once: only delivered images were paid for.
    assert user.balance() == (AFFORDABLE - ok) * DALLE2_256
    assert_reconciles(user)
    charged = charges(flaky_stack.aws.dynamodb, flaky_stack.settings.table, user.account_id)
    assert len(charged) == statuses.count(200) + statuses.count(502)
    assert sum(charged) == ok * DALLE2_256


def test_fewer_images_than_asked_are_charged_pro_rata(flaky_stack, new_user):
    user = new_user(flaky_stack, balance=1_000_000, **UNLIMITED)
    response = generate(user, "short of one", n=3)
    assert len(response.data) == 2
    assert user.balance() == 1_000_000 - 2 * DALLE2_256
    assert_reconciles(user)


def test_an_upstream_that_keeps_failing_is_a_502_and_costs_nothing(flaky_stack, new_user):
    user = new_user(flaky_stack, balance=1_000_000, **UNLIMITED)
    with pytest.raises(openai.InternalServerError) as info:
        generate(user, "fail now")
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_error"
    assert user.balance() == 1_000_000
    assert_reconciles(user)

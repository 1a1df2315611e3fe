"""What a key holder sees of money and limits, over HTTP with the OpenAI SDK: idempotent retries, rate
limits and the balance endpoint."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import openai
import pytest

from imagegate.money.ledger import reconcile

DALLE2_256 = 16_000
GENEROUS = {"images_per_minute": 10_000, "max_concurrent": 100}


def generate(user, key=None, prompt="a lighthouse", response_format="url", **kw):
    return user.client.images.generate(
        model="dall-e-2",
        prompt=prompt,
        size="256x256",
        response_format=response_format,
        extra_headers={"Idempotency-Key": key} if key else None,
        **kw,
    )


def test_a_retried_request_returns_the_first_response_and_charges_once(stack, new_user):
    user = new_user(stack, balance=1_000_000, **GENEROUS)
    first = generate(user, "retry-1", n=2)
    raw = user.client.images.with_raw_response.generate(
        model="dall-e-2",
        prompt="a lighthouse",
        size="256x256",
        n=2,
        response_format="url",
        extra_headers={"Idempotency-Key": "retry-1"},
    )
    again = raw.parse()

    assert [d.url for d in again.data] == [d.url for d in first.data]
    assert again.created == first.created
    assert raw.headers["idempotent-replayed"] == "true"
    assert "x-ratelimit-remaining-images" not in raw.headers
    assert user.balance() == 1_000_000 - 2 * DALLE2_256
    assert len(user.outputs()) == 2


def test_b64_json_retries_replay_the_same_images(stack, new_user):
    user = new_user(stack, balance=1_000_000, **GENEROUS)
    first = generate(user, "b64-1", response_format="b64_json")
    again = generate(user, "b64-1", response_format="b64_json")
    assert again.data[0].b64_json == first.data[0].b64_json
    assert user.balance() == 1_000_000 - DALLE2_256


def test_the_same_key_with_a_different_body_is_refused_and_costs_nothing(stack, new_user):
    user = new_user(stack, balance=1_000_000, **GENEROUS)
    generate(user, "reused-1")
    with pytest.raises(openai.BadRequestError) as info:
        generate(user, "reused-1", prompt="a different lighthouse")
    assert info.value.body["code"] == "idempotency_key_reused"
    assert user.balance() == 1_000_000 - DALLE2_256


def test_concurrent_retries_with_one_key_charge_once(stack, new_user):
    user = new_user(stack, balance=1_000_000, **GENEROUS)

    def attempt(_):
        try:
            return generate(user, "race-1", response_format="b64_json").data[0].b64_json
        except openai.ConflictError as exc:
            assert exc.body["code"] == "idempotency_key_in_use"
            assert int(exc.response.headers["retry-after"]) >= 1
            return 409

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(attempt, range(10)))

    images = {r for r in results if r != 409}
    assert len(images) == 1  # every 200 is the one response
    assert user.balance() == 1_000_000 - DALLE2_256
    report = reconcile(stack.aws.dynamodb, stack.settings.table, user.account_id)
    assert report.ok and report.balance == 1_000_000 - DALLE2_256


def test_a_failed_request_can_be_retried_with_the_same_key(stack, new_user):
    user = new_user(stack, balance=DALLE2_256 // 2, **GENEROUS)
    with pytest.raises(openai.APIStatusError) as info:
        generate(user, "after-402")
    assert info.value.status_code == 402
    stack.service.billing.credit(user.account_id, DALLE2_256, reason="top-up")
    generate(user, "after-402")
    assert user.balance() == DALLE2_256 // 2


class Clock:
    """Time that stands still unless a test moves it, so no limit depends on when the test runs."""

    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def clock():
    return Clock()


@pytest.fixture(scope="module")
def clocked_stack(start_stack, clock):
    return start_stack(clock=clock)


def test_images_per_minute_over_the_limit_is_a_429_with_openai_headers(clocked_stack, clock, new_user):
    """It once flaked at minute boundaries (a fixed window): now a token bucket on an injected clock."""
    stack = clocked_stack
    user = new_user(stack, balance=1_000_000, images_per_minute=3)
    raw = user.client.images.with_raw_response.generate(
        model="dall-e-2", prompt="x", size="256x256", n=2, response_format="b64_json"
    )
    assert raw.headers["x-ratelimit-limit-images"] == "3"
    assert raw.headers["x-ratelimit-remaining-images"] == "1"

    with pytest.raises(openai.RateLimitError) as info:
        user.client.images.generate(model="dall-e-2", prompt="x", size="256x256", n=2)
    error, headers = info.value.body, info.value.response.headers
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "Limit 3, Remaining 1, Requested 2" in error["message"]
    # A token bucket: one image refills every 20 s, so the second of two fits exactly 20 s from now.
    assert headers["retry-after"] == "20"
    assert headers["x-ratelimit-reset-images"] == "40s"
    assert headers["x-ratelimit-remaining-images"] == "1"
    assert headers["x-ratelimit-reset-images"].endswith("s")
    # Refused whole, and free: the one image left in this minute can still be had.
    assert user.balance() == 1_000_000 - 2 * DALLE2_256
    user.client.images.generate(model="dall-e-2", prompt="x", size="256x256", response_format="b64_json")
    assert user.balance() == 1_000_000 - 3 * DALLE2_256
    with pytest.raises(openai.RateLimitError):
        user.client.images.generate(model="dall-e-2", prompt="x", size="256x256")
    clock.now += 20  # one image's refill
    user.client.images.generate(model="dall-e-2", prompt="x", size="256x256", response_format="b64_json")
    assert user.balance() == 1_000_000 - 4 * DALLE2_256


def test_the_balance_endpoint_shows_balance_and_usage_by_day_and_model(stack, new_user, http):
    user = new_user(stack, balance=1_000_000, **GENEROUS)
    generate(user, n=2)
    generate(user)
    user.client.images.generate(model="imagegate-local", prompt="x", size="256x256")
    stack.drain()  # the usage counters follow the table's stream

    response = http.get(f"{stack.base_url}/v1/balance", headers={"Authorization": f"Bearer {user.key}"})

    assert response.status_code == 200
    body = response.json()
    local = stack.service.settings.local_price_micros
    assert body["object"] == "balance"
    assert body["balance_micros"] == user.balance() == 1_000_000 - 3 * DALLE2_256 - local
    assert body["balance_usd"] == f"{body['balance_micros'] / 1_000_000:.6f}"
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    rows = {(r["date"], r["model"]): r for r in body["usage"]["data"]}
    assert rows[(today, "dall-e-2")] == {
        "date": today,
        "model": "dall-e-2",
        "requests": 2,
        "images": 3,
        "charged_usd": "0.048000",
        "refunded_usd": "0.000000",
        "charged_micros": 3 * DALLE2_256,
        "refunded_micros": 0,
    }
    assert rows[(today, "imagegate-local")]["charged_micros"] == local


def test_the_balance_endpoint_needs_a_key(stack, http):
    response = http.get(f"{stack.base_url}/v1/balance")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"
    wrong = http.post(f"{stack.base_url}/v1/balance", headers={"Authorization": "Bearer x"})
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "GET")


def test_a_replay_after_the_urls_lifetime_is_signed_afresh_for_the_same_objects(start_stack, new_user, http):
    now = [1_790_000_000.0]
    stack = start_stack(clock=lambda: now[0])
    user = new_user(stack, balance=1_000_000, **GENEROUS)
    first = generate(user, "late-1")
    now[0] += 60
    soon = generate(user, "late-1")
    now[0] += stack.settings.url_ttl_seconds
    late = generate(user, "late-1")

    assert soon.data[0].url == first.data[0].url
    # Signed again at replay time (botocore signs with the real clock, so within one second the signature may
    # repeat): the same object, and a URL that works.
    assert late.data[0].url.split("?")[0] == first.data[0].url.split("?")[0]
    fetched = http.get(late.data[0].url)
    assert fetched.status_code == 200 and fetched.content.startswith(b"\x89PNG")
    assert late.created == first.created
    assert user.balance() == 1_000_000 - DALLE2_256


@pytest.mark.parametrize("days", ["0", "91", "seven"])
def test_a_bad_days_parameter_is_a_400_naming_it(stack, new_user, http, days):
    user = new_user(stack)
    response = http.get(
        f"{stack.base_url}/v1/balance", params={"days": days}, headers={"Authorization": f"Bearer {user.key}"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "days"


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9"])
def test_a_bad_idempotency_key_is_a_400_naming_the_header_and_costs_nothing(stack, new_user, http, key):
    user = new_user(stack)
    response = http.post(
        f"{stack.base_url}/v1/images/generations",
        headers={"Authorization": f"Bearer {user.key}", "Idempotency-Key": key.encode()},
        json={"model": "dall-e-2", "prompt": "x", "size": "256x256"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Idempotency-Key"
    assert user.balance() == 10_000_000


def test_a_request_refused_for_its_balance_does_not_use_the_minutes_images(stack, new_user):
    user = new_user(stack, balance=0, images_per_minute=1)
    with pytest.raises(openai.APIStatusError) as info:
        generate(user, response_format="b64_json")
    assert info.value.status_code == 402
    stack.service.billing.credit(user.account_id, DALLE2_256, reason="top-up")
    generate(user, response_format="b64_json")  # the one image of this minute is still there
    assert user.balance() == 0

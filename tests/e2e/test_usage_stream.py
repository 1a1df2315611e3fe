"""Issue 22: the usage counters follow the table's stream (money/usage.py), read here as `make serve` reads it
(local/streams.py) on whichever DynamoDB the stack runs: a request's usage shows in its balance once the
stream is drained, counted once, with the OpenAI SDK as the client."""

from imagegate.table import new_request_id

DALLE2_256 = 16_000


def usage_rows(http, user):
    answer = http.get(f"{user.stack.base_url}/v1/balance", headers={"Authorization": f"Bearer {user.key}"})
    assert answer.status_code == 200
    return [
        (r["model"], r["requests"], r["images"], r["charged_micros"]) for r in answer.json()["usage"]["data"]
    ]


def test_a_requests_usage_shows_once_after_the_stream_is_drained(stack, new_user, http):
    user = new_user(stack)
    user.client.images.generate(model="dall-e-2", prompt="a kite", size="256x256", response_format="b64_json")
    stack.drain()
    assert usage_rows(http, user) == [("dall-e-2", 1, 1, DALLE2_256)]
    stack.drain()  # a drain with nothing new counts nothing again
    assert usage_rows(http, user) == [("dall-e-2", 1, 1, DALLE2_256)]


def test_a_request_closed_on_its_own_partition_is_counted_by_the_stream(stack, new_user, http):
    """A request reserved and settled by billing (its item on a partition of its own, carrying its
    account_id): the settle writes no counter, only the stream counts it."""
    user = new_user(stack)
    billing = stack.service.billing
    account = stack.service.accounts.authenticate(f"Bearer {user.key}")
    reservation = billing.reserve(account, new_request_id(), 85_000, {"model": "gpt-image-1"}, images=2)
    assert billing.settle(reservation, 84_000, images=2)
    assert usage_rows(http, user) == []  # not before the stream is read
    stack.drain()
    assert usage_rows(http, user) == [("gpt-image-1", 1, 2, 84_000)]
    stack.drain()
    assert usage_rows(http, user) == [("gpt-image-1", 1, 2, 84_000)]

"""Per-key images per minute and concurrency, against moto's in-process DynamoDB and an injected clock."""

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from botocore.exceptions import ClientError

from imagegate.accounts import Account
from imagegate.errors import APIError
from imagegate.ratelimit import RateLimiter, duration

from .conftest import Clock, OneRequestAtATime

MINUTE = 28_333_333  # an epoch minute: it starts at 1_699_999_980
START = MINUTE * 60
KEY = Account("acct_a", "key_a")


@pytest.fixture
def clock():
    return Clock(START + 48)  # 12 s before the window closes


@pytest.fixture
def limiter(aws, settings, clock):
    return RateLimiter(aws.dynamodb, settings.table, clock=clock)


def rid():
    return "req_" + uuid.uuid4().hex


def rate_item(aws, settings, sk, key_id="key_a"):
    return aws.dynamodb.get_item(
        TableName=settings.table,
        Key={"pk": {"S": f"RATE#{key_id}"}, "sk": {"S": sk}},
        ConsistentRead=True,
    ).get("Item")


def counted(aws, settings, minute=MINUTE, key_id="key_a"):
    item = rate_item(aws, settings, f"MINUTE#{minute}", key_id)
    return int(item["images"]["N"]) if item else 0


def slots(aws, settings, key_id="key_a"):
    item = rate_item(aws, settings, "INFLIGHT", key_id)
    return {name: int(value["N"]) for name, value in item["slots"]["M"].items()} if item else {}


def refused(call, *args):
    with pytest.raises(APIError) as info:
        call(*args)
    err = info.value
    assert (err.status, err.type, err.code, err.param) == (429, "requests", "rate_limit_exceeded", None)
    return err


# --- images per minute ----------------------------------------------------------------------------------


def test_fifty_images_pass_and_the_51st_is_429(limiter):
    leases = [limiter.acquire(KEY, rid(), 1) for _ in range(10)]
    assert leases[0].headers == {
        "x-ratelimit-limit-images": "50",
        "x-ratelimit-remaining-images": "49",
        "x-ratelimit-reset-images": "12s",
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
    }
    assert leases[-1].headers["x-ratelimit-remaining-requests"] == "0"
    for lease in leases:
        assert limiter.release(lease) is True
    for _ in range(40):
        last = limiter.acquire(KEY, rid(), 1)
        limiter.release(last)
    assert last.headers["x-ratelimit-remaining-images"] == "0"

    err = refused(limiter.acquire, KEY, rid(), 1)
    assert err.message == (
        "Rate limit reached for images per minute on key key_a: Limit 50, Used 50, Requested 1. "
        "Please try again in 12s."
    )
    assert err.headers == {
        "retry-after": "12",
        "x-ratelimit-limit-images": "50",
        "x-ratelimit-remaining-images": "0",
        "x-ratelimit-reset-images": "12s",
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "10",
    }
    assert err.body() == {
        "error": {"message": err.message, "type": "requests", "param": None, "code": "rate_limit_exceeded"}
    }


def test_the_window_rolls_over_with_the_clock(aws, settings, limiter, clock):
    limiter.release(limiter.acquire(KEY, rid(), 10))
    for _ in range(4):
        limiter.release(limiter.acquire(KEY, rid(), 10))
    refused(limiter.acquire, KEY, rid(), 1)
    clock.now = START + 59.999
    assert refused(limiter.acquire, KEY, rid(), 1).headers["retry-after"] == "1"

    clock.now = START + 60
    lease = limiter.acquire(KEY, rid(), 1)
    assert lease.headers["x-ratelimit-remaining-images"] == "49"
    assert lease.headers["x-ratelimit-reset-images"] == "1m0s"
    assert (counted(aws, settings), counted(aws, settings, MINUTE + 1)) == (50, 1)
    # Each window's counter expires (TTL) two minutes after the window closes.
    assert rate_item(aws, settings, f"MINUTE#{MINUTE + 1}")["expires_at"] == {"N": str(START + 120 + 120)}


@pytest.mark.parametrize(
    ("offset", "retry_after", "reset"), [(0, "60", "1m0s"), (0.5, "60", "1m0s"), (48.2, "12", "12s")]
)
def test_retry_after_is_whole_seconds_until_the_window_closes(limiter, clock, offset, retry_after, reset):
    clock.now = START + offset
    small = Account("acct_a", "key_a", images_per_minute=1)
    limiter.acquire(small, rid(), 1)
    err = refused(limiter.acquire, small, rid(), 1)
    assert (err.headers["retry-after"], err.headers["x-ratelimit-reset-images"]) == (retry_after, reset)
    assert err.message.endswith(f"Please try again in {reset}.")


@pytest.mark.parametrize(
    ("seconds", "text"), [(1, "1s"), (12, "12s"), (59, "59s"), (60, "1m0s"), (75, "1m15s")]
)
def test_duration_is_openais_reset_format(seconds, text):
    assert duration(seconds) == text


def test_a_request_that_does_not_fit_is_refused_whole(aws, settings, limiter):
    for n in (10, 10, 10, 10, 8):
        limiter.release(limiter.acquire(KEY, rid(), n))
    err = refused(limiter.acquire, KEY, rid(), 3)
    assert "Limit 50, Used 48, Requested 3." in err.message
    assert err.headers["x-ratelimit-remaining-images"] == "2"
    assert counted(aws, settings) == 48
    assert slots(aws, settings) == {}

    lease = limiter.acquire(KEY, rid(), 2)  # the two that remain are still there to use
    assert lease.headers["x-ratelimit-remaining-images"] == "0"
    assert counted(aws, settings) == 50


def test_more_images_than_the_limit_can_never_pass(aws, settings, limiter):
    small = Account("acct_a", "key_a", images_per_minute=2)
    err = refused(limiter.acquire, small, rid(), 3)
    assert err.message == (
        "Request too large for images per minute on key key_a: Limit 2, Requested 3. "
        "This request can never fit the limit; ask for fewer images per request."
    )
    # No retry-after: waiting cannot help, and the OpenAI SDKs must not retry it.
    assert err.headers == {
        "x-should-retry": "false",
        "x-ratelimit-limit-images": "2",
        "x-ratelimit-reset-images": "12s",
        "x-ratelimit-limit-requests": "10",
    }
    assert counted(aws, settings) == 0
    assert limiter.acquire(small, rid(), 2).headers["x-ratelimit-remaining-images"] == "0"


def test_per_key_overrides_and_deployment_defaults(aws, settings, clock):
    limiter = RateLimiter(aws.dynamodb, settings.table, clock=clock, images_per_minute=4, max_concurrent=3)
    custom = Account("acct_a", "key_custom", images_per_minute=3, max_concurrent=1)
    lease = limiter.acquire(custom, rid(), 3)
    assert lease.headers == {
        "x-ratelimit-limit-images": "3",
        "x-ratelimit-remaining-images": "0",
        "x-ratelimit-reset-images": "12s",
        "x-ratelimit-limit-requests": "1",
        "x-ratelimit-remaining-requests": "0",
    }
    limiter.release(lease)
    assert "Limit 3, Used 3, Requested 1." in refused(limiter.acquire, custom, rid(), 1).message

    # Another key of the same account has its own counters, and the deployment's defaults.
    default = Account("acct_a", "key_default")
    lease = limiter.acquire(default, rid(), 4)
    assert lease.headers["x-ratelimit-limit-images"] == "4"
    assert lease.headers["x-ratelimit-limit-requests"] == "3"
    assert (counted(aws, settings, key_id="key_custom"), counted(aws, settings, key_id="key_default")) == (
        3,
        4,
    )


def test_a_key_limited_to_zero_images_is_refused_everything(limiter):
    err = refused(limiter.acquire, Account("acct_a", "key_a", images_per_minute=0), rid(), 1)
    assert err.headers["x-should-retry"] == "false"
    assert "Limit 0, Requested 1." in err.message


def test_items_and_their_expiry(aws, settings, limiter, clock):
    clock.now = START + 48.7
    first, second = rid(), rid()
    limiter.acquire(KEY, first, 2)
    limiter.acquire(KEY, second, 1)
    minute = rate_item(aws, settings, f"MINUTE#{MINUTE}")
    assert (minute["images"], minute["expires_at"]) == ({"N": "3"}, {"N": str(START + 60 + 120)})
    assert slots(aws, settings) == {first: START + 48 + 60, second: START + 48 + 60}


# --- concurrency ----------------------------------------------------------------------------------------


def test_concurrency_limit_and_release(aws, settings, limiter):
    pair = Account("acct_a", "key_a", max_concurrent=2)
    first = limiter.acquire(pair, rid(), 1)
    second = limiter.acquire(pair, rid(), 1)
    assert second.headers["x-ratelimit-remaining-requests"] == "0"

    err = refused(limiter.acquire, pair, rid(), 1)
    assert err.message == (
        "Rate limit reached for concurrent requests on key key_a: Limit 2, Used 2, Requested 1. "
        "Please try again in 1s."
    )
    assert err.headers == {
        "retry-after": "1",
        "x-ratelimit-limit-images": "50",
        "x-ratelimit-remaining-images": "48",
        "x-ratelimit-reset-images": "12s",
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
    }
    assert counted(aws, settings) == 2  # the refused request's image was given back

    assert limiter.release(first) is True
    third = limiter.acquire(pair, rid(), 1)
    assert set(slots(aws, settings)) == {second.request_id, third.request_id}
    assert limiter.release(first) is True  # releasing twice is harmless
    assert set(slots(aws, settings)) == {second.request_id, third.request_id}


def test_a_refused_slot_gives_its_images_back(aws, settings, limiter):
    single = Account("acct_a", "key_a", max_concurrent=1)
    held = limiter.acquire(single, rid(), 1)
    refused(limiter.acquire, single, rid(), 10)
    assert counted(aws, settings) == 1
    limiter.release(held)
    assert limiter.acquire(single, rid(), 49).headers["x-ratelimit-remaining-images"] == "0"


def test_a_refused_minute_leaves_no_slot_held(aws, settings, limiter):
    one = Account("acct_a", "key_a", images_per_minute=1)
    held = limiter.acquire(one, rid(), 1)
    err = refused(limiter.acquire, one, rid(), 1)
    assert "images per minute" in err.message
    assert err.headers["x-ratelimit-remaining-requests"] == "9"  # the held request only
    assert set(slots(aws, settings)) == {held.request_id}
    limiter.release(held)
    refused(limiter.acquire, one, rid(), 1)
    assert slots(aws, settings) == {}


def test_an_expired_slot_is_pruned_and_reused(aws, settings, limiter, clock):
    pair = Account("acct_a", "key_a", max_concurrent=2)
    killed = [limiter.acquire(pair, rid(), 1), limiter.acquire(pair, rid(), 1)]  # never released
    clock.now += 59
    assert "Used 2" in refused(limiter.acquire, pair, rid(), 1).message

    clock.now = START + 48 + 60  # both slots expire now
    lease = limiter.acquire(pair, rid(), 1)
    assert lease.headers["x-ratelimit-remaining-requests"] == "1"
    assert slots(aws, settings) == {lease.request_id: START + 108 + 60}
    # A late release from the killed request changes nothing.
    assert limiter.release(killed[0]) is True
    assert set(slots(aws, settings)) == {lease.request_id}


def test_an_expired_slot_is_not_counted_as_in_flight(aws, settings, limiter, clock):
    trio = Account("acct_a", "key_a", max_concurrent=3)
    killed = limiter.acquire(trio, rid(), 1)
    clock.now += 60
    # Pruning waits for contention, but the headers already count the dead request's slot as free.
    lease = limiter.acquire(trio, rid(), 1)
    assert lease.headers["x-ratelimit-remaining-requests"] == "2"
    assert set(slots(aws, settings)) == {killed.request_id, lease.request_id}


def test_only_expired_slots_are_pruned(aws, settings, limiter, clock):
    pair = Account("acct_a", "key_a", max_concurrent=2)
    old = limiter.acquire(pair, rid(), 1)
    clock.now += 30
    live = limiter.acquire(pair, rid(), 1)
    clock.now += 30  # `old` has expired, `live` has 30 s to go
    new = limiter.acquire(pair, rid(), 1)
    assert set(slots(aws, settings)) == {live.request_id, new.request_id}
    assert refused(limiter.acquire, pair, rid(), 1).headers["x-ratelimit-remaining-requests"] == "0"
    assert old.request_id not in slots(aws, settings)


def test_twenty_threads_never_hold_more_than_five(aws, settings, clock):
    limiter = RateLimiter(
        OneRequestAtATime(aws.dynamodb), settings.table, clock=clock, images_per_minute=1000, max_concurrent=5
    )
    start, attempted = threading.Barrier(20), threading.Barrier(20)
    lock = threading.Lock()
    held = peak = 0

    def attempt(_):
        nonlocal held, peak
        start.wait()
        try:
            lease = limiter.acquire(KEY, rid(), 1)
        except APIError as exc:
            attempted.wait()  # nobody releases until every thread has tried: the outcome is exact
            return exc.status
        with lock:
            held += 1
            peak = max(peak, held)
        attempted.wait()
        with lock:
            held -= 1
        assert limiter.release(lease) is True
        return 200

    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(pool.map(attempt, range(20)))
    assert (statuses.count(200), statuses.count(429), peak) == (5, 15, 5)
    assert slots(aws, settings) == {}
    assert counted(aws, settings) == 5  # refused requests gave their images back


def test_threads_churning_through_slots(aws, settings, clock):
    limiter = RateLimiter(
        OneRequestAtATime(aws.dynamodb), settings.table, clock=clock, images_per_minute=1000, max_concurrent=5
    )
    start = threading.Barrier(20)
    lock = threading.Lock()
    held = peak = 0

    def churn(_):
        nonlocal held, peak
        start.wait()
        served = 0
        for _ in range(8):
            try:
                lease = limiter.acquire(KEY, rid(), 1)
            except APIError as exc:
                assert exc.status == 429
                continue
            with lock:
                held += 1
                peak = max(peak, held)
            with lock:
                held -= 1
            limiter.release(lease)
            served += 1
        return served

    with ThreadPoolExecutor(max_workers=20) as pool:
        served = sum(pool.map(churn, range(20)))
    assert 1 <= peak <= 5
    assert served >= 1
    assert slots(aws, settings) == {}
    assert counted(aws, settings) == served


# --- DynamoDB trouble -----------------------------------------------------------------------------------


class Throttled:
    """The DynamoDB client, with writes to the slot item throttled as a hot key's would be."""

    def __init__(self, client):
        self._client = client
        self.exceptions = client.exceptions

    def update_item(self, **kwargs):
        if kwargs["Key"]["sk"]["S"] == "INFLIGHT":
            raise ClientError(
                {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "UpdateItem"
            )
        return self._client.update_item(**kwargs)

    def __getattr__(self, name):
        return getattr(self._client, name)


def test_throttling_is_a_429_and_gives_images_back(aws, settings, clock):
    limiter = RateLimiter(Throttled(aws.dynamodb), settings.table, clock=clock)
    err = refused(limiter.acquire, KEY, rid(), 4)
    assert err.message == "Too many requests at once on key key_a. Please try again in 1s."
    assert err.headers == {
        "retry-after": "1",
        "x-ratelimit-limit-images": "50",
        "x-ratelimit-reset-images": "12s",
        "x-ratelimit-limit-requests": "10",
    }
    assert counted(aws, settings) == 0


def test_other_dynamodb_errors_surface(aws, clock):
    limiter = RateLimiter(aws.dynamodb, "no-such-table", clock=clock)
    with pytest.raises(ClientError) as info:
        limiter.acquire(KEY, rid(), 1)
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_a_failed_release_reports_false_instead_of_raising(aws, settings, limiter, clock):
    lease = limiter.acquire(KEY, rid(), 1)
    assert RateLimiter(aws.dynamodb, "no-such-table", clock=clock).release(lease) is False
    assert RateLimiter(Throttled(aws.dynamodb), settings.table, clock=clock).release(lease) is False
    assert set(slots(aws, settings)) == {lease.request_id}  # it will expire by itself

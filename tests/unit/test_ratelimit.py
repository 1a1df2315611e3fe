"""Rate limits as conditions of the reserve transaction (ratelimit.py, billing.py), on moto's DynamoDB with
an injected clock: images per minute as a token bucket, requests in flight, per key and per account."""

import itertools
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from imagegate.config import Deadlines
from imagegate.errors import APIError
from imagegate.money import ledger
from imagegate.money.billing import Billing
from imagegate.money.ratelimit import Limits, duration

from .conftest import Clock, OneRequestAtATime

DETAILS = {"model": "dall-e-2", "endpoint": "generations"}
UNLIMITED = Limits(0, 0)


def rid():
    return "req_" + uuid.uuid4().hex


@pytest.fixture
def clock():
    return Clock(1_700_000_059.9)  # a tenth of a second before a minute boundary


def make(aws, settings, clock, key=None, account=UNLIMITED, client=None):
    client = client or aws.dynamodb
    return Billing(client, settings.table, clock, key_limits=key or Limits(5, 0), account_limits=account)


@pytest.fixture
def funded(accounts):
    account_id = accounts.create_account(10_000_000)
    api_key = accounts.create_key(account_id)
    return account_id, api_key


def auth(accounts, api_key):
    return accounts.authenticate(f"Bearer {api_key}")


def refused(billing, account, images=1):
    with pytest.raises(APIError) as info:
        billing.reserve(account, rid(), 1_000, DETAILS, images=images)
    return info.value


def test_images_per_minute_admit_the_limit_then_429_with_openai_headers(
    aws, settings, accounts, funded, clock
):
    billing = make(aws, settings, clock)
    account_id, api_key = funded
    first = billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS, images=3)
    assert first.headers["x-ratelimit-limit-images"] == "5"
    assert first.headers["x-ratelimit-remaining-images"] == "2"
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS, images=2)
    err = refused(billing, auth(accounts, api_key))
    assert (err.status, err.type, err.code) == (429, "requests", "rate_limit_exceeded")
    assert err.headers["retry-after"] == "12"  # one image refills every 60/5 s
    assert err.headers["x-ratelimit-remaining-images"] == "0"
    assert "images per minute" in err.message and "Limit 5" in err.message
    assert accounts.balance(account_id) == 10_000_000 - 2_000  # the refusal cost nothing


def test_no_minute_boundary_admits_twice_the_limit(aws, settings, accounts, funded, clock):
    """Issue 8, item 11: a fixed window admitted 5 at :59.9 and 5 more at :00.1."""
    billing = make(aws, settings, clock)
    _, api_key = funded
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS, images=5)
    clock.now += 0.2  # across the boundary
    assert refused(billing, auth(accounts, api_key)).status == 429
    clock.now += 12  # one image's worth of refill
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS, images=1)
    assert refused(billing, auth(accounts, api_key)).status == 429
    clock.now += 60  # idle a minute: the whole bucket again
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS, images=5)


def test_a_request_larger_than_the_minute_is_never_retried(aws, settings, accounts, funded, clock):
    billing = make(aws, settings, clock)
    err = refused(billing, auth(accounts, funded[1]), images=6)
    assert err.status == 429
    assert err.headers["x-should-retry"] == "false"
    assert "retry-after" not in err.headers


def test_an_account_limit_refuses_an_oversized_request_even_unseen(aws, settings, accounts, funded, clock):
    billing = make(aws, settings, clock, key=Limits(50, 0), account=Limits(4, 0))
    err = refused(billing, auth(accounts, funded[1]), images=5)
    assert err.headers["x-should-retry"] == "false"
    assert accounts.balance(funded[0]) == 10_000_000


def test_a_402_consumes_no_images(aws, settings, accounts, clock):
    billing = make(aws, settings, clock)
    account_id = accounts.create_account(1_500)
    api_key = accounts.create_key(account_id)
    with pytest.raises(APIError) as info:
        billing.reserve(auth(accounts, api_key), rid(), 2_000, DETAILS, images=5)
    assert info.value.status == 402
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS, images=5)  # the minute is intact


def test_concurrent_requests_are_limited_and_slots_come_back_on_settle(
    aws, settings, accounts, funded, clock
):
    billing = make(aws, settings, clock, key=Limits(0, 2))
    _, api_key = funded
    a = billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS)
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS)
    err = refused(billing, auth(accounts, api_key))
    assert (err.status, err.headers["retry-after"]) == (429, "1")
    assert "concurrent requests" in err.message
    assert billing.settle(a, 1_000, images=1)
    third = billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS)
    assert third.headers["x-ratelimit-remaining-requests"] == "0"


def test_a_killed_requests_slot_comes_back_when_the_sweeper_refunds_it(
    aws, settings, accounts, funded, clock
):
    """A slot is a counter whose lease is the reservation: held until the sweeper closes what a stopped
    Lambda left open, then given back in the same transaction as the refund."""
    billing = make(aws, settings, clock, key=Limits(0, 1))
    account_id, api_key = funded
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS)  # never settled: its Lambda died
    assert refused(billing, auth(accounts, api_key)).status == 429
    stale = Deadlines().stale_reservation_s
    clock.now += stale - 1
    assert billing.sweep(older_than_s=stale, account_id=account_id) == []  # it might still settle
    clock.now += 2
    assert [charged for _, charged in billing.sweep(older_than_s=stale, account_id=account_id)] == [0]
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS)
    account = aws.dynamodb.get_item(
        TableName=settings.table, Key={"pk": {"S": f"ACCOUNT#{account_id}"}, "sk": {"S": "ACCOUNT"}}
    )["Item"]
    assert account[f"kn_{auth(accounts, api_key).key_id}"] == {"N": "1"}  # the new one's, not two
    assert ledger.reconcile(aws.dynamodb, settings.table, account_id, clock=clock).problems == []


def test_account_limit_spans_its_keys(aws, settings, accounts, funded, clock):
    billing = make(aws, settings, clock, key=Limits(50, 0), account=Limits(6, 0))
    account_id, api_key = funded
    other = accounts.create_key(account_id)
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS, images=4)
    err = refused(billing, auth(accounts, other), images=3)
    assert err.status == 429 and f"account {account_id}" in err.message
    billing.reserve(auth(accounts, other), rid(), 1_000, DETAILS, images=2)


def test_an_accounts_own_limit_is_honoured_even_by_a_container_that_assumed_the_default(
    aws, settings, accounts, funded, clock
):
    billing = make(aws, settings, clock, key=Limits(50, 0), account=Limits(100, 0))
    account_id, api_key = funded
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS, images=1)  # the container learns 100
    accounts.set_account_limits(account_id, images_per_minute=3)
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS, images=1)  # 2 of 3: the override wins
    err = refused(billing, auth(accounts, api_key), images=2)
    assert "Limit 3" in err.message
    accounts.set_account_limits(account_id)  # back to the default
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS, images=2)


def test_a_keys_own_limits_override_the_default(aws, settings, accounts, funded, clock):
    billing = make(aws, settings, clock, key=Limits(5, 0))
    _, api_key = funded
    accounts.set_limits(auth(accounts, api_key).key_id, images_per_minute=2)
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS, images=2)
    assert "Limit 2" in refused(billing, auth(accounts, api_key)).message


def test_a_replay_is_counted_against_the_key(aws, settings, accounts, funded, clock):
    billing = make(aws, settings, clock)
    _, api_key = funded
    billing.count(auth(accounts, api_key), 4)
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS, images=1)
    with pytest.raises(APIError) as info:
        billing.count(auth(accounts, api_key), 1)
    assert info.value.status == 429


def test_stale_key_state_is_corrected_not_trusted(aws, settings, accounts, funded, clock):
    """An `Account` read before other requests took the bucket still cannot overshoot it."""
    billing = make(aws, settings, clock)
    _, api_key = funded
    stale = auth(accounts, api_key)
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS, images=4)
    err = refused(billing, stale, images=2)
    assert err.status == 429 and err.headers["x-ratelimit-remaining-images"] == "1"


def test_threads_never_exceed_images_or_slots(aws, settings, accounts, funded, clock):
    client = OneRequestAtATime(aws.dynamodb)
    billing = make(aws, settings, clock, key=Limits(10, 4), client=client)
    account_id, api_key = funded
    statuses = race(billing, accounts, api_key, 12)
    assert statuses.count(200) == 4  # four slots, none released
    assert statuses.count(429) == 8
    assert accounts.balance(account_id) == 10_000_000 - 4_000
    assert ledger.reconcile(aws.dynamodb, settings.table, account_id).ok


class Ticking:
    """A clock that moves 50 ms every time it is read, whichever thread reads it."""

    def __init__(self):
        self.ticks = itertools.count()

    def __call__(self):
        return 1_700_000_000.0 + next(self.ticks) * 0.05


def race(billing, accounts, api_key, n):
    """`n` threads reserving one image each at the same moment; their statuses."""
    start = threading.Barrier(n)

    def attempt(_):
        account = auth(accounts, api_key)
        start.wait()
        try:
            billing.reserve(account, rid(), 1_000, DETAILS, images=1)
        except APIError as exc:
            return exc.status
        return 200

    with ThreadPoolExecutor(max_workers=n) as pool:
        return list(pool.map(attempt, range(n)))


def test_duration_is_openais_reset_format():
    assert [duration(s) for s in (0, 7, 60, 61, 3600)] == ["0s", "7s", "1m0s", "1m1s", "60m0s"]


def test_a_burst_under_generous_limits_is_never_turned_away(aws, settings, accounts, funded, clock):
    """Racing requests on one busy key and account must not exhaust their retries on each other's writes
    (each computes `now` itself, and commits after the others' waits)."""
    client = OneRequestAtATime(aws.dynamodb)
    billing = make(aws, settings, Ticking(), key=Limits(10_000, 100), account=Limits(600, 50), client=client)
    statuses = race(billing, accounts, funded[1], 40)
    assert statuses == [200] * 40


# --- issue 20: items 1, 9 and 10 --------------------------------------------------------------------------


def test_an_accounts_own_limit_holds_after_an_idle_spell(aws, settings, accounts, funded, clock):
    """Item 1: an account limited to 5/min admitted 20 of 20 an hour after its last request, from one warm
    container and from 20 cold ones: a learned hour-old `tat` was built on as if a racer had just written it,
    and the container then cached now + cost, above what it wrote."""
    account_id, api_key = funded
    accounts.set_account_limits(account_id, images_per_minute=5)
    make(aws, settings, clock, key=UNLIMITED, account=Limits(600, 0)).reserve(
        auth(accounts, api_key), rid(), 1_000, DETAILS
    )
    clock.now += 3600
    for containers in ("warm", "cold"):
        warm = make(aws, settings, clock, key=UNLIMITED, account=Limits(600, 0))
        admitted = 0
        for _ in range(20):
            billing = warm if containers == "warm" else make(aws, settings, clock, UNLIMITED, Limits(600, 0))
            try:
                billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS)
                admitted += 1
            except APIError as exc:
                assert exc.status == 429
        assert admitted == 5, containers
        clock.now += 3600


def test_a_limit_that_does_not_divide_a_minute_admits_all_of_it(aws, settings, accounts, funded, clock):
    """Item 10: 7/min admitted 6 from a full bucket (7 x ceil(60000/7) ms is just over a minute)."""
    for limit in (7, 11, 13):
        billing = make(aws, settings, clock, key=Limits(limit, 0))
        account_id = accounts.create_account(10_000_000)
        account = auth(accounts, accounts.create_key(account_id))
        for i in range(limit):
            headers = billing.reserve(account, rid(), 1, DETAILS).headers
            assert headers["x-ratelimit-remaining-images"] == str(limit - i - 1)
        assert refused(billing, account).status == 429
        first = make(aws, settings, clock, key=Limits(limit, 0))  # a fresh bucket takes the whole burst
        account = auth(accounts, accounts.create_key(account_id))
        first.reserve(account, rid(), limit, DETAILS, images=limit)


def test_no_request_sends_an_empty_attribute_name(aws, settings, accounts, funded, clock):
    """Item 9: `admitted` cached a slot under "", and once it expired the next reserve sent
    ExpressionAttributeNames {"#a_x0": ""}, which DynamoDB refuses (tests/shims.py checks every call). Slots
    are counters now; a keyless (AWS service) request and a swept one name nothing empty either."""
    billing = make(aws, settings, clock, key=UNLIMITED, account=Limits(0, 5))
    account_id, api_key = funded
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS)  # never settled
    clock.now += Deadlines().stale_reservation_s + 1
    billing.sweep(older_than_s=Deadlines().stale_reservation_s, account_id=account_id)
    billing.reserve(auth(accounts, api_key), rid(), 1_000, DETAILS)
    billing.reserve(accounts.for_service(account_id), rid(), 1_000, DETAILS)


def test_the_expression_check_refuses_what_dynamodb_refuses():
    from shims import expression_problems

    assert expression_problems(
        {"UpdateExpression": "REMOVE slots.#a_x0", "ExpressionAttributeNames": {"#a_x0": ""}}
    ) == ["empty attribute name for #a_x0"]
    assert expression_problems(
        {"ConditionExpression": "a = :a", "ExpressionAttributeValues": {":a": {"N": "1"}, ":b": {"N": "2"}}}
    ) == ["unused :b"]
    assert expression_problems({"ConditionExpression": "#s = :a"}) == ["undefined #s", "undefined :a"]


def test_the_sweeper_forgets_idle_keys_so_the_account_item_does_not_grow_with_them(
    aws, settings, accounts, funded, clock
):
    """Review of issue 22 (F3): every key that ever made a request left 60 bytes on the ACCOUNT item; past
    16 keys every write of it cost more, and at about 6,700 it could no longer be written."""
    billing = make(aws, settings, clock, key=Limits(60, 2))
    account_id, _ = funded
    keys = [auth(accounts, accounts.create_key(account_id)) for _ in range(30)]
    held = billing.reserve(keys[0], rid(), 1_000, DETAILS)  # still in flight
    for key in keys[1:]:
        billing.settle(billing.reserve(key, rid(), 1_000, DETAILS), 1_000, images=1)
    account = {"pk": {"S": f"ACCOUNT#{account_id}"}, "sk": {"S": "ACCOUNT"}}

    def key_attributes():
        item = aws.dynamodb.get_item(TableName=settings.table, Key=account)["Item"]
        return {name for name in item if name.startswith(("kt_", "kn_"))}

    assert len(key_attributes()) == 60
    assert billing.prune_limiters(accounts.account_items()) == 0  # every bucket still refilling
    clock.now += 2  # a bucket of 60 a minute refills one image a second
    assert billing.prune_limiters(accounts.account_items()) == 29  # all but the key with a request in flight
    assert key_attributes() == {f"kt_{keys[0].key_id}", f"kn_{keys[0].key_id}"}
    billing.settle(held, 1_000, images=1)
    billing.reserve(keys[5], rid(), 1_000, DETAILS)  # a forgotten key starts again from a full bucket
    assert ledger.reconcile(aws.dynamodb, settings.table, account_id, clock=clock).problems == []

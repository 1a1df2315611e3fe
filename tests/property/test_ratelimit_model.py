"""Issue 20, item 1: the images-per-minute limiter (ratelimit.py through Billing.reserve on moto's DynamoDB)
against a reference model, for any interleaving of containers (warm and cold), clocks with skew, limits set
and unset on the key and the account, and idle gaps.

The model is the token bucket the module documents: `limit` images a full bucket, one more every
T = ceil(60000 / limit) ms. So within one stretch of constant limits, the images admitted between two
admissions w ms apart never exceed limit + (w + slack) / T, where slack covers the clock skew between
containers and the lag the module allows a racing or nearly-current `tat` (SLACK_MS, RACE_SLACK_MS).
"""

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shims import mocked_aws

from imagegate.aws import AWSClients
from imagegate.config import Settings
from imagegate.errors import APIError
from imagegate.local.devserver import provision
from imagegate.money.accounts import Accounts
from imagegate.money.billing import Billing
from imagegate.money.ratelimit import RACE_SLACK_MS, SLACK_MS, Limits, cost_ms

MAX_SKEW_MS = 500
DEFAULT = Limits(50, 0)
LIMIT = st.one_of(st.none(), st.integers(1, 12))
STEP = st.one_of(
    st.tuples(st.just("request"), st.integers(0, 3), st.integers(1, 3), st.integers(0, 4_000)),
    st.tuples(st.just("idle"), st.integers(60_000, 3 * 3_600_000)),
    st.tuples(st.just("limits"), st.sampled_from(["key", "account"]), LIMIT),
)


@pytest.fixture(scope="module")
def store():
    """One moto AWS and table for every example (each example has its own account and key)."""
    with mocked_aws():
        clients = AWSClients(Settings(region="us-east-1"))
        table = Settings(table=f"prop-{uuid.uuid4().hex[:12]}", bucket=f"prop-{uuid.uuid4().hex[:12]}")
        provision(clients, table)
        yield clients, table.table


class Clock:
    def __init__(self, true, skew_ms):
        self.true, self.skew = true, skew_ms

    def __call__(self):
        return self.true[0] + self.skew / 1000


def check(admissions, stretches):
    """Every pair of admissions within one stretch of constant limits keeps to the bucket's bound."""
    for stretch, limit in stretches.items():
        if not limit:
            continue
        seen = [(at, n) for at, n, s in admissions if s == stretch]
        per_image = cost_ms(1, limit)
        slack = 2 * MAX_SKEW_MS + max(SLACK_MS, RACE_SLACK_MS)
        for i, (start, _) in enumerate(seen):
            total = 0
            for at, n in seen[i:]:
                total += n
                bound = limit + (at - start + slack) // per_image
                assert total <= bound, (limit, start, at, total, bound, seen)


@settings(
    max_examples=25,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    skews=st.lists(st.integers(-MAX_SKEW_MS, MAX_SKEW_MS), min_size=4, max_size=4),
    key_limit=LIMIT,
    account_limit=LIMIT,
    steps=st.lists(STEP, min_size=1, max_size=40),
)
def test_no_window_admits_more_than_the_bucket_allows(store, skews, key_limit, account_limit, steps):
    clients, table = store
    accounts = Accounts(clients.dynamodb, table)
    account_id = accounts.create_account(10**12)
    api_key = accounts.create_key(account_id, images_per_minute=key_limit)
    key_id = accounts.authenticate(f"Bearer {api_key}").key_id
    accounts.set_account_limits(account_id, images_per_minute=account_limit)
    true = [1_700_000_000.0]
    warm = [
        Billing(clients.dynamodb, table, Clock(true, skew), lambda s: None, key_limits=DEFAULT)
        for skew in skews
    ]
    stretch, limits = 0, {"key": key_limit or DEFAULT.images_per_minute, "account": account_limit}
    stretches = {0: min(v for v in limits.values() if v) if any(limits.values()) else 0}
    admissions = []
    for step in steps:
        if step[0] == "idle":
            true[0] += step[1] / 1000
        elif step[0] == "limits":
            _, scope, value = step
            if scope == "key":
                accounts.set_limits(key_id, images_per_minute=value)
                limits["key"] = value or DEFAULT.images_per_minute
            else:
                accounts.set_account_limits(account_id, images_per_minute=value)
                limits["account"] = value
            stretch += 1
            stretches[stretch] = min(v for v in limits.values() if v)
        else:
            _, container, images, gap = step
            true[0] += gap / 1000
            # Container 0 is cold at every request: a new Billing with no memory of the account.
            billing = (
                Billing(clients.dynamodb, table, Clock(true, skews[0]), lambda s: None, key_limits=DEFAULT)
                if container == 0
                else warm[container]
            )
            try:
                billing.reserve(
                    accounts.authenticate(f"Bearer {api_key}"),
                    f"req_{uuid.uuid4().hex}",
                    1,
                    {"model": "dall-e-2", "endpoint": "generations"},
                    images=images,
                )
            except APIError as exc:
                assert exc.status == 429
            else:
                admissions.append((int(true[0] * 1000), images, stretch))
    check(admissions, stretches)

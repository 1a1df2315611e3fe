"""Issue 20, items 2 and 3: every lock, slot, lease and sweeper threshold follows the configured function
timeouts (config.Deadlines), at every timeout the template allows; a request still running is never run
again under its Idempotency-Key, nor pushed out of its concurrency slot."""

from dataclasses import replace

import pytest
import yaml
from aws_lambda_powertools.logging import Logger

from imagegate.config import (
    MAX_INTEGRATION_TIMEOUT_SECONDS,
    REQUESTS_FUNCTION_TIMEOUT_SECONDS,
    SWEEP_FUNCTION_TIMEOUT_SECONDS,
    SWEEP_INTERVAL_SECONDS,
    USAGE_BATCH_WINDOW_SECONDS,
    USAGE_FUNCTION_TIMEOUT_SECONDS,
    USAGE_MAX_RECORD_AGE_SECONDS,
    USAGE_MAX_RETRY_ATTEMPTS,
    Deadlines,
    Settings,
    visibility_timeout,
)
from imagegate.errors import APIError
from imagegate.inputs.validation import GenerationRequest, resolve
from imagegate.money import ledger
from imagegate.money.idempotency import Idempotency
from imagegate.service import Service

from .conftest import Clock

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def allowed(parameter):
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=_Loader)
    return [int(v) for v in template["Parameters"][parameter]["AllowedValues"]]


SYNC = allowed("IntegrationTimeoutSeconds")
WORKER = allowed("WorkerTimeout")


def test_the_largest_integration_timeout_is_the_templates():
    assert max(SYNC) == MAX_INTEGRATION_TIMEOUT_SECONDS


@pytest.mark.parametrize("sync", SYNC)
def test_a_synchronous_requests_holds_outlive_its_timeout(sync):
    d = Deadlines(sync_s=sync)
    assert d.request_lock_s > sync
    assert d.request_settle_s > sync
    # The sweeper refunds only what no running request can still settle, nor its key still guard.
    assert d.stale_reservation_s > max(d.request_settle_s, d.request_lock_s)


def test_the_usage_functions_stream_settings_are_the_ones_its_lag_derives_from():
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=_Loader)
    usage = template["Resources"]["UsageFunction"]["Properties"]
    stream = usage["Events"]["RequestsClosed"]["Properties"]
    assert usage["Timeout"] == USAGE_FUNCTION_TIMEOUT_SECONDS
    assert stream["MaximumBatchingWindowInSeconds"] == USAGE_BATCH_WINDOW_SECONDS
    assert stream["MaximumRetryAttempts"] == USAGE_MAX_RETRY_ATTEMPTS
    assert stream["MaximumRecordAgeInSeconds"] == USAGE_MAX_RECORD_AGE_SECONDS
    # Every retry of a batch that waited its window fits in the record age: the age, not the retries, is
    # what gives up, and the lag covers it and the last attempt.
    attempts = (USAGE_MAX_RETRY_ATTEMPTS + 1) * USAGE_FUNCTION_TIMEOUT_SECONDS
    assert USAGE_BATCH_WINDOW_SECONDS + attempts <= USAGE_MAX_RECORD_AGE_SECONDS
    assert Deadlines().usage_lag_s > USAGE_MAX_RECORD_AGE_SECONDS + USAGE_FUNCTION_TIMEOUT_SECONDS


@pytest.mark.parametrize("worker", WORKER)
def test_a_jobs_holds_outlive_its_queue_and_its_run(worker):
    d = Deadlines(worker_s=worker)
    assert d.visibility_s == visibility_timeout(worker)
    assert d.job_lease_s > worker
    assert d.job_start_s >= 3 * d.visibility_s + worker
    assert d.trigger_lock_s > worker


def test_the_sweepers_timeout_and_schedule_are_the_templates():
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=_Loader)
    sweep = template["Resources"]["SweepFunction"]["Properties"]
    assert sweep["Timeout"] == SWEEP_FUNCTION_TIMEOUT_SECONDS
    assert sweep["Events"]["EveryMinute"]["Properties"]["Schedule"] == "rate(1 minute)"
    assert SWEEP_INTERVAL_SECONDS == 60
    requests = template["Resources"]["RequestsFunction"]["Properties"]
    assert requests["Timeout"] == REQUESTS_FUNCTION_TIMEOUT_SECONDS


@pytest.mark.parametrize("worker", WORKER)
@pytest.mark.parametrize("sync", SYNC)
def test_announcements_are_retried_only_once_their_sender_is_over(sync, worker):
    """Every function that finishes a job (image, worker, requests, sweeper) is over before the sweeper
    sends its announcements again; reconcile's deadline leaves two sweeps to do it."""
    d = Deadlines(sync_s=sync, worker_s=worker)
    assert d.announce_grace_s > max(
        sync, worker, REQUESTS_FUNCTION_TIMEOUT_SECONDS, SWEEP_FUNCTION_TIMEOUT_SECONDS
    )
    assert d.announce_by_s >= d.announce_grace_s + 2 * SWEEP_INTERVAL_SECONDS


def test_settings_from_the_environment_carry_their_deadlines():
    settings = Settings.from_env(
        {"IMAGEGATE_INTEGRATION_TIMEOUT_SECONDS": "300", "IMAGEGATE_WORKER_TIMEOUT_SECONDS": "120"}
    )
    assert settings.deadlines == Deadlines(sync_s=300, worker_s=120)


# --- what a client sees, per allowed timeout ------------------------------------------------------------


@pytest.fixture
def funded(accounts):
    account_id = accounts.create_account(10_000_000)
    return account_id, accounts.create_key(account_id)


def service(aws, settings, clock, sync, **overrides):
    settings = replace(settings, integration_timeout_seconds=float(sync), **overrides)
    svc = Service(settings, aws, Logger(service="test", level="CRITICAL"), clock=clock)
    assert svc.idempotency._clock is clock  # the service's clock reaches its keys' locks
    return svc


def generation(svc):
    return resolve("generations", GenerationRequest(prompt="a red fox", model="dall-e-2"), svc.catalog)


@pytest.mark.parametrize("sync", SYNC)
def test_a_retry_while_the_first_request_may_still_run_is_409(aws, settings, funded, sync):
    clock = Clock()
    svc = service(aws, settings, clock, sync)
    assert svc.idempotency.begin(funded[0], "k", "fp", "req_first") is None
    clock.now += sync  # the first request's function may run this long
    with pytest.raises(APIError) as info:
        svc.idempotency.begin(funded[0], "k", "fp", "req_retry")
    assert (info.value.status, info.value.code) == (409, "idempotency_key_in_use")


@pytest.mark.parametrize("sync", SYNC)
def test_a_slot_is_held_while_its_request_may_still_run(aws, settings, funded, sync):
    clock = Clock()
    svc = service(aws, settings, clock, sync, max_concurrent=1)
    account = svc.accounts.authenticate(f"Bearer {funded[1]}")
    svc.reserve(account, generation(svc), "req_first", svc.check(generation(svc)))  # still running
    clock.now += sync
    with pytest.raises(APIError) as info:
        svc.reserve(
            svc.accounts.authenticate(f"Bearer {funded[1]}"),
            generation(svc),
            "req_second",
            svc.check(generation(svc)),
        )
    assert info.value.status == 429 and "concurrent requests" in info.value.message


def run_with_a_retry_70s_in(svc, accounts, funded, clock, key):
    """One request whose upstream takes 70 s; its client retries with the same key meanwhile."""
    original, retried = svc.router.run, []

    def slow_upstream(job, request_id):
        if not retried:
            retried.append(None)
            clock.now += 70
            try:
                retried[0] = svc.handle(accounts.authenticate(f"Bearer {funded[1]}"), job, key)
            except APIError as exc:
                retried[0] = exc
        return original(job, request_id)

    svc.router.run = slow_upstream
    first = svc.handle(accounts.authenticate(f"Bearer {funded[1]}"), generation(svc), key)
    return first, retried[0]


def test_one_idempotency_key_charges_once_at_a_300s_timeout(aws, settings, accounts, funded):
    """Item 2: a fixed 60 s lock let a retry 70 s into a 300 s request run, and charge, again."""
    clock = Clock()
    svc = service(aws, settings, clock, 300)
    price = svc.prices.quote(generation(svc)).reserve
    first, retry = run_with_a_retry_70s_in(svc, accounts, funded, clock, "one-key")
    assert first.body["data"]
    assert isinstance(retry, APIError) and (retry.status, retry.code) == (409, "idempotency_key_in_use")
    assert accounts.balance(funded[0]) == 10_000_000 - price
    assert ledger.reconcile(aws.dynamodb, settings.table, funded[0], clock=clock).ok


def test_reconcile_sees_one_key_charged_twice(aws, settings, accounts, funded):
    """The state a 60 s lock left: two charges under one key, which reconcile reports."""
    clock = Clock()
    svc = service(aws, settings, clock, 300)
    svc.idempotency = Idempotency(aws.dynamodb, settings.table, clock=clock, lock_s=60)  # the old lock
    price = svc.prices.quote(generation(svc)).reserve
    _, retry = run_with_a_retry_70s_in(svc, accounts, funded, clock, "one-key")
    assert retry.body["data"]  # ran again
    assert accounts.balance(funded[0]) == 10_000_000 - 2 * price
    result = ledger.reconcile(aws.dynamodb, settings.table, funded[0], clock=clock)
    assert not result.ok
    assert any("one Idempotency-Key charged 2 requests" in p for p in result.problems)


def test_four_in_flight_for_a_key_limited_to_two_never_happens(aws, settings, accounts, funded):
    """Item 3: slots expired at 120 s beside a 300 s timeout; a key limited to 2 had 4 in flight."""
    clock = Clock()
    svc = service(aws, settings, clock, 300, max_concurrent=2)
    admitted = []
    for i, at in enumerate((0, 0, 130, 299)):  # all four within one 300 s timeout, none settled
        clock.now = Clock().now + at
        try:
            account = svc.accounts.authenticate(f"Bearer {funded[1]}")
            svc.reserve(account, generation(svc), f"req_{i}", svc.check(generation(svc)))
            admitted.append(i)
        except APIError as exc:
            assert exc.status == 429
    assert admitted == [0, 1]


def test_the_sweeper_follows_the_timeout(aws, settings, accounts, funded):
    """A running request's reservation is not refunded under it by a sweep on a long-timeout stack."""
    clock = Clock()
    svc = service(aws, settings, clock, 300)
    svc.reserve(
        svc.accounts.authenticate(f"Bearer {funded[1]}"),
        generation(svc),
        "req_live",
        svc.check(generation(svc)),
    )
    clock.now += 300
    assert svc.sweep()["closed"] == 0
    clock.now += svc.settings.deadlines.stale_reservation_s
    assert svc.sweep()["closed"] == 1
    assert ledger.reconcile(aws.dynamodb, settings.table, funded[0], clock=clock).ok


@pytest.mark.parametrize("sync", SYNC)
def test_a_stopped_requests_slots_come_back_within_two_minutes_of_its_timeout(sync):
    """Review of issue 22 (F4): a slot's lease is its reservation, closed by the sweeper; at a 900 s floor
    and a 15-minute schedule a key limited to 2 answered 429 `retry-after: 1` for up to half an hour."""
    d = Deadlines(sync_s=sync)
    assert d.stale_reservation_s + SWEEP_INTERVAL_SECONDS <= sync + 120

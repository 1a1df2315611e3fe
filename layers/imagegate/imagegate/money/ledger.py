"""The money trail: the records of every balance change, daily usage counters, and the checks on both.

Every transaction that changes a balance writes, in it, the record of that change, so an account's balance
always equals the sum of its ledger: its LEDGER entries (credits, adjustments, top-ups, reversals: the
opening credit in accounts.py, billing.credit, topups.py) and its requests (billing.py: a REQUEST item
holds `-reserved` while reserved, `-charged` once closed, on partitions of its own). Requests reserved
before issue 22 moved their money with `reserve` and `settle` entries instead, and their record expires;
both kinds are read. Items (single table, `pk`/`sk`):

  ACCOUNT#<account_id> / LEDGER#<13-digit epoch ms>#<entry id>
      -> kind, amount (signed micro-USD, the balance change), created_at (epoch s), and per kind:
         reserve  amount = -reserved; request_id, model, key_id
         settle   amount = +refunded; request_id, charged, refunded (the request's final charge)
         credit   amount > 0; reason, actor
         adjust   amount of either sign (never taking the balance below zero); reason, actor
         topup    amount > 0, a Stripe payment's credit; reason, event_id, session_id, payment_intent
         reversal amount < 0, a refund or dispute of a top-up, or > 0, a won dispute giving it back;
                  reason (refund|dispute|dispute won), event_id, payment_intent. The only kind that may
                  take a balance below zero (topups.py)
  USAGE#<account_id> / <yyyy-mm-dd UTC>#<key_id>#<model>
      -> account_id, key_id, model, requests, images, charged, refunded (ADDed by every settle),
         expires_at (TTL, USAGE_TTL_DAYS after the day)
     One partition per account, sorted by day: any window of one account's usage is one Query (`sk BETWEEN`),
     and settles of different accounts write to different partitions. The report over every account reads
     the accounts index (ACCOUNTS, accounts.py) and then one Query per account: its cost follows the number
     of accounts, never the number of days. (Before, counters were kept per day, USAGE#<day> / <account>#…,
     and a window cost one Query per day; such items are no longer read and expire by their TTL.)

`reconcile` checks one account (requests a killed Lambda left `reserved` are listed as stale; Billing.sweep
refunds them). Every read is a GetItem or a Query on one partition.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from imagegate.config import Deadlines
from imagegate.table import (
    JOB_PREFIX,
    REQUEST_PREFIX,
    account_pk,
    item_key,
    job_items,
    partition_items,
    query,
    request_partitions,
)
from imagegate.units import micros_to_usd

LEDGER = "LEDGER#"
# How long the record of a request reserved before issue 22 is kept once closed (its LEDGER entries stay;
# billing.py writes its TTL).
REQUEST_RETENTION_DAYS = 35
USAGE = "USAGE#"
USAGE_TTL_DAYS = 400
# The longest usage window anyone may ask for: a leap year. (The API allows less: api.MAX_USAGE_DAYS.)
MAX_USAGE_DAYS = 366
# accounts.ACCOUNT_INDEX: the partition listing every account. The ledger sits below accounts.py (which
# imports it), so it names the partition itself; a test keeps the two names equal.
ACCOUNT_INDEX = "ACCOUNTS"
KINDS = ("reserve", "settle", "credit", "adjust", "topup", "reversal")
RECONCILE_ATTEMPTS = 4
# Between reads of an account that moved while it was read: doubled each time (0.25 s, 0.5 s, 1 s).
RECONCILE_BACKOFF_S = 0.25


@dataclass(frozen=True)
class LedgerEntry:
    at_ms: int
    entry_id: str
    kind: str
    amount: int
    request_id: str = ""
    charged: int | None = None
    reason: str = ""
    actor: str = ""


@dataclass(frozen=True)
class Reservation:
    """A request still in state `reserved`: running, or abandoned when old."""

    account_id: str
    request_id: str
    amount: int
    created_at: int
    model: str = ""


@dataclass(frozen=True)
class Reconciliation:
    ok: bool
    balance: int | None  # None: no such account
    expected: int  # the sum of the ledger: its entries and its requests
    in_flight: int  # requests still reserved
    in_flight_micros: int
    stale: list[Reservation] = field(default_factory=list)  # the in-flight ones older than the threshold
    problems: list[str] = field(default_factory=list)
    # The account moved while each read ran (steady traffic): no verdict; run it again.
    inconclusive: bool = False


@dataclass(frozen=True)
class UsageRow:
    day: str
    account_id: str
    key_id: str
    model: str
    requests: int
    images: int
    charged: int
    refunded: int


def entry(
    account_id: str, kind: str, amount: int, clock: Callable[[], float], *, table: str, **fields: str | int
) -> dict[str, Any]:
    """A TransactWriteItems Put writing one ledger entry; add it to the transaction that changes the balance
    by `amount`. `fields` are stored as given (str or int); empty strings are left out."""
    if kind not in KINDS:
        raise ValueError(f"unknown ledger entry kind {kind!r}")
    now = clock()
    sk = f"{LEDGER}{int(now * 1000):013d}#{secrets.token_hex(6)}"
    item = {
        **item_key(account_pk(account_id), sk),
        "kind": {"S": kind},
        "amount": {"N": str(amount)},
        "created_at": {"N": str(int(now))},
        **{name: _attr(value) for name, value in fields.items() if value != ""},
    }
    return {"Put": {"TableName": table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}}


def usage_key(account_id: str, day: date, key_id: str, model: str) -> dict[str, dict[str, str]]:
    """The key of one usage counter: an account's requests of one key and model on one UTC day."""
    return item_key(f"{USAGE}{account_id}", f"{day.isoformat()}#{key_id}#{model}")


def usage_update(
    table: str,
    day: date,
    account_id: str,
    key_id: str,
    model: str,
    *,
    images: int,
    charged: int,
    refunded: int,
    requests: int = 1,
) -> dict[str, Any]:
    """A TransactWriteItems Update adding `requests` settled requests (their images, charge and refund) to
    their day's counters. Its UpdateExpression ends in its SET clause (usage.py adds to it)."""
    expires = datetime.combine(day + timedelta(days=USAGE_TTL_DAYS), datetime.min.time(), UTC)
    return {
        "Update": {
            "TableName": table,
            "Key": usage_key(account_id, day, key_id, model),
            "UpdateExpression": (
                "ADD requests :requests, images :images, charged :charged, refunded :refunded "
                "SET account_id = :account, key_id = :key, model = :model, expires_at = :expires"
            ),
            "ExpressionAttributeValues": {
                ":requests": {"N": str(requests)},
                ":images": {"N": str(images)},
                ":charged": {"N": str(charged)},
                ":refunded": {"N": str(refunded)},
                ":account": {"S": account_id},
                ":key": {"S": key_id},
                ":model": {"S": model},
                ":expires": {"N": str(int(expires.timestamp()))},
            },
        }
    }


def entries(dynamodb: Any, table: str, account_id: str, since: float | None = None) -> list[LedgerEntry]:
    """An account's ledger, oldest first; from `since` (epoch seconds) on when given."""
    start = f"{LEDGER}{int(since * 1000):013d}" if since is not None else LEDGER
    return [_entry(item) for item in query(dynamodb, **_ledger_range(table, account_id, start))]


def reconcile(
    dynamodb: Any,
    table: str,
    account_id: str,
    *,
    stale_after_s: float = Deadlines().stale_reservation_s,
    usage_lag_s: float = Deadlines().usage_lag_s,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> Reconciliation:
    """Check one account: balance == sum of its ledger (entries and requests); every finished request
    reserved == charged + refunded (and, for one reserved before issue 22, the entries that moved that
    money); reserved requests listed as in flight, and the limiter's counters of requests in flight equal to
    them; jobs, Step Functions tasks, announcements, Idempotency-Keys and usage against them
    (docs/timeouts.md).

    Reads are not a snapshot: a transaction committing while the account's partitions are read (its
    ACCOUNT item, then its requests, then its jobs) can show half its items. That passes, a real
    discrepancy stays, so a failed check is read again, up to RECONCILE_ATTEMPTS times, before it is
    reported; backing off when the ACCOUNT item moved during the read (every reserve, refund and slot
    moves it; a settle that does not leaves the sum as it was). An account that moved during every read
    is reported `inconclusive`, not as a discrepancy.
    """
    moved = False
    for attempt in range(RECONCILE_ATTEMPTS):
        if moved:
            sleep(RECONCILE_BACKOFF_S * 2 ** (attempt - 1))
        items = list(
            query(
                dynamodb,
                TableName=table,
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": {"S": account_pk(account_id)}},
                ConsistentRead=True,
            )
        )
        requests = _requests(dynamodb, table, account_id, items)
        result = _check(account_id, items, requests, clock() - stale_after_s)
        jobs = job_items(dynamodb, table, account_id)
        before = next((i for i in items if i["sk"]["S"] == "ACCOUNT"), None)
        after = dynamodb.get_item(
            TableName=table, Key=item_key(account_pk(account_id), "ACCOUNT"), ConsistentRead=True
        ).get("Item")
        moved = before != after
        problems = [
            *_job_problems(jobs, requests),
            *_task_problems(jobs, requests),
            *_announcement_problems(jobs, clock()),
            *_idempotency_problems(dynamodb, table, account_id, requests),
            *_usage_problems(dynamodb, table, account_id, requests, clock(), usage_lag_s),
        ]
        if problems:
            result = replace(result, ok=False, problems=[*result.problems, *problems])
        if result.ok:
            return result
    if moved:
        result = replace(
            result,
            inconclusive=True,
            problems=[
                "the account changed during every read (requests in flight): run it again",
                *result.problems,
            ],
        )
    return result


USAGE_COUNTS = ("requests", "images", "charged", "refunded")


def group_usage(rows: Iterable[UsageRow], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """Usage rows summed per distinct value of `fields` (e.g. ("day", "model")), in ascending order."""
    totals: dict[tuple[str, ...], dict[str, int]] = {}
    for row in rows:
        sums = totals.setdefault(tuple(getattr(row, f) for f in fields), dict.fromkeys(USAGE_COUNTS, 0))
        for name in USAGE_COUNTS:
            sums[name] += getattr(row, name)
    return [{**dict(zip(fields, group, strict=True)), **sums} for group, sums in sorted(totals.items())]


def usage(
    dynamodb: Any, table: str, *, days: int, account_id: str | None = None, today: date | None = None
) -> list[UsageRow]:
    """Usage counters for the `days` UTC days ending `today` (default: now), newest day first; one
    account's only when `account_id` is given.

    One account: one Query (paged past 1 MB). Every account: the accounts index, then one Query each.
    """
    if not 1 <= days <= MAX_USAGE_DAYS:
        raise ValueError(f"days must be from 1 to {MAX_USAGE_DAYS}, got {days}")
    today = today or datetime.now(UTC).date()
    first = (today - timedelta(days=days - 1)).isoformat()
    if account_id is not None:
        return _account_usage(dynamodb, table, account_id, first, today.isoformat())
    ids = [
        item["sk"]["S"]
        for item in query(
            dynamodb,
            TableName=table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": ACCOUNT_INDEX}},
            ProjectionExpression="sk",
        )
    ]
    rows = [row for i in ids for row in _account_usage(dynamodb, table, i, first, today.isoformat())]
    rows.sort(key=lambda r: r.day, reverse=True)  # stable: each account's rows keep their order within a day
    return rows


def _account_usage(dynamodb: Any, table: str, account_id: str, first: str, last: str) -> list[UsageRow]:
    """One account's counters from day `first` to day `last` (ISO dates, inclusive), newest day first."""
    items = query(
        dynamodb,
        TableName=table,
        KeyConditionExpression="pk = :pk AND sk BETWEEN :first AND :last",
        ExpressionAttributeValues={
            ":pk": {"S": f"{USAGE}{account_id}"},
            ":first": {"S": f"{first}#"},
            ":last": {"S": f"{last}#\uffff"},
        },
        ScanIndexForward=False,
    )
    return [
        UsageRow(
            item["sk"]["S"].partition("#")[0],
            item["account_id"]["S"],
            item["key_id"]["S"],
            item["model"]["S"],
            *(_int(item, name) for name in USAGE_COUNTS),
        )
        for item in items
    ]


def latest_entries(dynamodb: Any, table: str, account_id: str, count: int) -> list[LedgerEntry]:
    """An account's last `count` ledger entries, oldest first: one Query reading only those, read from the
    newest end, however long the ledger has grown."""
    page = dynamodb.query(**_ledger_range(table, account_id), ScanIndexForward=False, Limit=count)
    return [_entry(item) for item in reversed(page.get("Items", []))]


def _ledger_range(table: str, account_id: str, start: str = LEDGER) -> dict[str, Any]:
    """Query arguments for an account's ledger entries from `start` (a sort key) to the newest."""
    return {
        "TableName": table,
        "KeyConditionExpression": "pk = :pk AND sk BETWEEN :start AND :end",
        "ExpressionAttributeValues": {
            ":pk": {"S": account_pk(account_id)},
            ":start": {"S": start},
            ":end": {"S": LEDGER + "\uffff"},
        },
        "ConsistentRead": True,
    }


# --- checks --------------------------------------------------------------------------------------------


def request_items(dynamodb: Any, table: str, account_id: str) -> list[dict[str, Any]]:
    """An account's request records (on their own partitions: those reserved since issue 22), oldest first."""
    items = partition_items(dynamodb, table, request_partitions(account_id), REQUEST_PREFIX)
    return sorted(items, key=lambda i: i["sk"]["S"])


def _requests(
    dynamodb: Any, table: str, account_id: str, items: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """An account's request records, request id -> item: those on its own partitions, and those written
    before issue 22 among the account partition's `items`."""
    legacy = [i for i in items if i["sk"]["S"].startswith(REQUEST_PREFIX)]
    return {
        i["sk"]["S"].removeprefix(REQUEST_PREFIX): i
        for i in legacy + request_items(dynamodb, table, account_id)
    }


def _held(item: dict[str, Any]) -> int:
    """What a request record holds of its account's balance (0 for one whose LEDGER entries do, written
    before issue 22): the reservation while reserved, the charge once closed."""
    if "account_id" not in item:
        return 0
    return _int(item, "reserved") if item["state"]["S"] == "reserved" else _int(item, "charged")


def _check(
    account_id: str, items: list[dict[str, Any]], requests: dict[str, dict[str, Any]], stale_before: float
) -> Reconciliation:
    account = next((i for i in items if i["sk"]["S"] == "ACCOUNT"), None)
    balance = int(account["balance"]["N"]) if account else None
    ledger = [_entry(i) for i in items if i["sk"]["S"].startswith(LEDGER)]
    expected = sum(e.amount for e in ledger) - sum(_held(i) for i in requests.values())
    problems = []
    if balance is None:
        problems.append(f"no account {account_id}")
    elif balance != expected:
        problems.append(
            f"balance {micros_to_usd(balance)} differs from the ledger's sum {micros_to_usd(expected)} "
            f"by {micros_to_usd(balance - expected)}"
        )
    # Only a refund or dispute of a top-up may take a balance below zero: without the reversals, a balance
    # (nothing else ever spends below zero) would still be at or above it.
    reversed_micros = sum(e.amount for e in ledger if e.kind == "reversal")
    if balance is not None and balance - reversed_micros < 0:
        problems.append(
            f"balance {micros_to_usd(balance)} is below zero"
            + (f" by more than its reversals ({micros_to_usd(reversed_micros)})" if reversed_micros else "")
        )
    by_request: dict[str, list[LedgerEntry]] = defaultdict(list)
    for e in ledger:
        if e.kind in ("reserve", "settle"):
            by_request[e.request_id].append(e)
        elif e.kind not in KINDS:
            problems.append(f"ledger entry {e.entry_id} has an unknown kind {e.kind!r}")
    for request_id in sorted(by_request.keys() - requests.keys()):
        if not _closed_and_expired(by_request[request_id]):
            problems.append(
                f"ledger entries for {request_id or '(no request id)'}, which has no request record"
            )
    in_flight, jobs = [], set()
    for request_id, item in sorted(requests.items()):
        problems += _request_problems(request_id, item, by_request.get(request_id, []))
        if item["state"]["S"] == "reserved":
            in_flight.append(_reservation(account_id, item))
            if "job" in item:
                jobs.add(request_id)
    if account is not None:
        problems += _counter_problems(account, requests)
    return Reconciliation(
        ok=not problems,
        balance=balance,
        expected=expected,
        in_flight=len(in_flight),
        in_flight_micros=sum(r.amount for r in in_flight),
        # A job's reservation may rightly stay open for hours (queued, then running up to the worker's
        # timeout): the job sweeper closes it on the job's own clock (jobs.py), so it is never abandoned here.
        stale=[r for r in in_flight if r.created_at < stale_before and r.request_id not in jobs],
        problems=problems,
    )


def _job_problems(items: list[dict[str, Any]], requests: dict[str, dict[str, Any]]) -> list[str]:
    """Every final job against its request: succeeded <=> charged, failed or cancelled <=> refunded."""
    problems = []
    for item in items:
        if not item["sk"]["S"].startswith(JOB_PREFIX) or "request_id" not in item:
            continue
        job_id, status = item["sk"]["S"].removeprefix(JOB_PREFIX), _str(item, "status")
        request = requests.get(_str(item, "request_id"))
        if request is None:
            problems.append(f"job {job_id} ({status}) has no request record")
            continue
        state = request["state"]["S"]
        if status in ("queued", "in_progress"):
            if state != "reserved":
                problems.append(f"job {job_id} is {status} but its request is already {state}")
        elif (status == "succeeded") != (state == "settled" and _int(request, "charged") > 0):
            problems.append(
                f"job {job_id} {status}, but its request is {state} with a charge of "
                f"{micros_to_usd(_int(request, 'charged'))}"
            )
    return problems


def _task_problems(items: list[dict[str, Any]], requests: dict[str, dict[str, Any]]) -> list[str]:
    """One Step Functions task, one charge: no two succeeded, charged jobs answer the same task token (a
    redelivered trigger once ran and charged a second job). Tokens are secrets: named by a digest prefix."""
    by_token: dict[str, list[str]] = defaultdict(list)
    for item in items:
        if not item["sk"]["S"].startswith(JOB_PREFIX) or not _str(item, "task_token"):
            continue
        request = requests.get(_str(item, "request_id"), {})
        if _str(item, "status") == "succeeded" and _int(request, "charged") > 0:
            digest = hashlib.sha256(item["task_token"]["S"].encode()).hexdigest()[:12]
            by_token[digest].append(item["sk"]["S"].removeprefix(JOB_PREFIX))
    return [
        f"{len(jobs)} charged jobs answer one Step Functions task (token sha256 {digest}…): "
        f"{', '.join(sorted(jobs))}"
        for digest, jobs in sorted(by_token.items())
        if len(jobs) > 1
    ]


def _announcement_problems(items: list[dict[str, Any]], now: float) -> list[str]:
    """No job's announcement (task answer, manifest result, event, webhook: its outbox, jobs/lifecycle.py)
    still owed past its deadline."""
    return [
        f"job {item['sk']['S'].removeprefix(JOB_PREFIX)} still owes its announcements "
        f"({', '.join(sorted(item['announce']['SS']))}), due by {_int(item, 'announce_by')}"
        for item in items
        if item["sk"]["S"].startswith(JOB_PREFIX) and "announce" in item and _int(item, "announce_by") < now
    ]


def _idempotency_problems(
    dynamodb: Any, table: str, account_id: str, requests: dict[str, dict[str, Any]]
) -> list[str]:
    """Every Idempotency-Key that charged: exactly one charged request, the one its record names."""
    from imagegate.money.idempotency import record_key

    charged: dict[str, list[str]] = defaultdict(list)
    for request_id, item in requests.items():
        if "idempotency" in item and _int(item, "charged") > 0:
            charged[item["idempotency"]["S"]].append(request_id)
    problems = []
    for hashed, ids in sorted(charged.items()):
        if len(ids) > 1:
            problems.append(f"one Idempotency-Key charged {len(ids)} requests: {', '.join(sorted(ids))}")
            continue
        record = dynamodb.get_item(TableName=table, Key=record_key(account_id, hashed), ConsistentRead=True)
        record = record.get("Item")
        if record is not None and _str(record, "request_id") != ids[0]:
            problems.append(
                f"{ids[0]} was charged under an Idempotency-Key whose record names "
                f"{_str(record, 'request_id')}: a retry would run again"
            )
    return problems


def _usage_problems(
    dynamodb: Any, table: str, account_id: str, requests: dict[str, dict[str, Any]], now: float, lag_s: float
) -> list[str]:
    """Each day's usage counters against the requests (request id -> REQUEST item) closed that day. The
    counters follow the requests through the table's stream (usage.py), up to `lag_s` later: a day counts
    at least every request closed longer ago than that (fewer: a settle lost) and at most every request
    closed that day (more: one counted twice). The upper bound holds for the days whose requests are all
    still kept: the records of requests reserved before issue 22 expire REQUEST_RETENTION_DAYS after they
    close, the counters outlive them (later requests are kept for good)."""
    first = datetime.fromtimestamp(now, UTC).date() - timedelta(days=USAGE_TTL_DAYS - 1)
    old: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    closed: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for item in requests.values():
        if item["state"]["S"] not in ("settled", "refunded"):
            continue
        settled = _int(item, "settled_at")
        day = datetime.fromtimestamp(settled, UTC).date().isoformat()
        counts = (1, _int(item, "images"), _int(item, "charged"), _int(item, "refunded"))
        for totals in (closed[day], old[day]) if settled < now - lag_s else (closed[day],):
            for i, value in enumerate(counts):
                totals[i] += value
    # The first day none of whose requests can have expired yet.
    whole = datetime.fromtimestamp(now, UTC).date() - timedelta(days=REQUEST_RETENTION_DAYS - 1)
    counted: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for row in _account_usage(dynamodb, table, account_id, first.isoformat(), "9999-12-31"):
        for i, name in enumerate(USAGE_COUNTS):
            counted[row.day][i] += getattr(row, name)
    problems = []
    for day in sorted(d for d in old.keys() | closed.keys() | counted.keys() if d >= first.isoformat()):
        have = counted[day]
        if any(c < o for c, o in zip(have, old[day], strict=True)):
            problems.append(
                f"usage of {day} counts {_counts(have)}: less than the requests closed more "
                f"than {lag_s:g} s ago ({_counts(old[day])})"
            )
        if day >= whole.isoformat() and any(c > a for c, a in zip(have, closed[day], strict=True)):
            problems.append(
                f"usage of {day} counts {_counts(have)}: more than every request closed that "
                f"day ({_counts(closed[day])})"
            )
    return problems


def _counts(counts: list[int]) -> str:
    requests, images, charged, refunded = counts
    return (
        f"{requests} requests, {images} images, charged {micros_to_usd(charged)}, "
        f"refunded {micros_to_usd(refunded)}"
    )


def _closed_and_expired(entries: list[LedgerEntry]) -> bool:
    """A request whose record expired (closed requests have a TTL, billing.py): its ledger alone must show one
    reserve and one settle that account for every micro-dollar reserved."""
    reserves = [e for e in entries if e.kind == "reserve"]
    settles = [e for e in entries if e.kind == "settle"]
    return (
        len(reserves) == 1
        and len(settles) == 1
        and settles[0].charged is not None
        and -reserves[0].amount == settles[0].amount + settles[0].charged
    )


def _counter_problems(account: dict[str, Any], requests: dict[str, dict[str, Any]]) -> list[str]:
    """The limiter's counters of requests in flight (ratelimit.py), the account's and each key's, against the
    open requests holding a slot: a slot given back twice, or never, shows here."""
    holding: dict[str, int] = defaultdict(int)
    for item in requests.values():
        if "account_id" in item and item["state"]["S"] == "reserved":
            slots = _str(item, "slots")
            if "a" in slots:
                holding["in_flight"] += 1
            if "k" in slots:
                holding[f"kn_{_str(item, 'key_id')}"] += 1
    counters = {n: _int(account, n) for n in account if n == "in_flight" or n.startswith("kn_")}
    return [
        f"{name} counts {counters.get(name, 0)} requests in flight, but {holding.get(name, 0)} open requests "
        "hold a slot"
        for name in sorted(counters.keys() | holding.keys())
        if counters.get(name, 0) != holding.get(name, 0)
    ]


def _request_problems(request_id: str, item: dict[str, Any], ledger: list[LedgerEntry]) -> list[str]:
    """What is wrong with one request: its amounts, or the ledger entries that should mirror them (only a
    request reserved before issue 22 has any; a later one is its own record and must have none)."""
    state = item["state"]["S"]
    if "account_id" not in item:
        problems = _mirror_problems(request_id, item, ledger)
    elif ledger:
        problems = [f"{request_id}: holds its own money, yet the ledger has entries for it"]
    else:
        problems = []
    if state == "reserved":
        return problems
    if state not in ("settled", "refunded"):
        return [*problems, f"{request_id}: unknown state {state!r}"]
    reserved, charged, refunded = _int(item, "reserved"), _int(item, "charged"), _int(item, "refunded")
    if charged + refunded != reserved:
        problems.append(
            f"{request_id}: reserved {micros_to_usd(reserved)} but charged {micros_to_usd(charged)} "
            f"+ refunded {micros_to_usd(refunded)}"
        )
    if (state == "settled") != (charged > 0):
        problems.append(f"{request_id}: state {state} with a charge of {micros_to_usd(charged)}")
    return problems + _partial_problems(request_id, item)


def _partial_problems(request_id: str, item: dict[str, Any]) -> list[str]:
    """A stream's partial images written to its client are charged, and nothing else: never less than
    they cost (capped, as every charge, at the reservation), and exactly that when no final image came."""
    partials = _int(item, "partials")
    if not partials:
        return []
    charged, owed = _int(item, "charged"), min(_int(item, "reserved"), _int(item, "partials_charge"))
    if charged < owed:
        return [
            f"{request_id}: {partials} streamed partial images cost {micros_to_usd(owed)}, "
            f"but it was charged {micros_to_usd(charged)}: given away"
        ]
    if not _int(item, "images") and charged != owed:
        return [
            f"{request_id}: charged {micros_to_usd(charged)} for {partials} streamed partial images and no "
            f"final image, which cost {micros_to_usd(owed)}"
        ]
    return []


def _mirror_problems(request_id: str, item: dict[str, Any], ledger: list[LedgerEntry]) -> list[str]:
    """A request reserved before issue 22: one `reserve` entry debiting what it reserved, and, once closed,
    one `settle` entry refunding what it refunded and naming what it charged."""
    reserved = _int(item, "reserved")
    reserves = [e for e in ledger if e.kind == "reserve"]
    settles = [e for e in ledger if e.kind == "settle"]
    problems = []
    if [e.amount for e in reserves] != [-reserved]:
        problems.append(
            f"{request_id}: reserved {micros_to_usd(reserved)} but its reserve entries debit "
            f"{', '.join(micros_to_usd(-e.amount) for e in reserves) or 'nothing'}"
        )
    if item["state"]["S"] == "reserved":
        if settles:
            problems.append(f"{request_id}: still reserved, yet the ledger settled it")
        return problems
    charged, refunded = _int(item, "charged"), _int(item, "refunded")
    if [(e.amount, e.charged) for e in settles] != [(refunded, charged)]:
        recorded = "; ".join(
            f"refund {micros_to_usd(e.amount)}, charge {micros_to_usd(e.charged or 0)}" for e in settles
        )
        problems.append(
            f"{request_id}: charged {micros_to_usd(charged)} and refunded {micros_to_usd(refunded)}, but its "
            f"settle entries say {recorded or 'nothing'}"
        )
    return problems


# --- items ---------------------------------------------------------------------------------------------


def _entry(item: dict[str, Any]) -> LedgerEntry:
    _, at_ms, entry_id = item["sk"]["S"].split("#", 2)
    return LedgerEntry(
        at_ms=int(at_ms),
        entry_id=entry_id,
        kind=item["kind"]["S"],
        amount=int(item["amount"]["N"]),
        request_id=_str(item, "request_id"),
        charged=int(item["charged"]["N"]) if "charged" in item else None,
        reason=_str(item, "reason"),
        actor=_str(item, "actor"),
    )


def _reservation(account_id: str, item: dict[str, Any]) -> Reservation:
    return Reservation(
        account_id=account_id,
        request_id=item["sk"]["S"].removeprefix(REQUEST_PREFIX),
        amount=_int(item, "reserved"),
        created_at=_int(item, "created_at"),
        model=_str(item, "model"),
    )


def _attr(value: str | int) -> dict[str, str]:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"ledger fields are strings or integers, not {value!r}")
    return {"N": str(value)} if isinstance(value, int) else {"S": value}


def _int(item: dict[str, Any], name: str) -> int:
    return int(item[name]["N"]) if name in item else 0


def _str(item: dict[str, Any], name: str) -> str:
    return item[name]["S"] if name in item else ""

"""What a key holder reads of their own account: the request log, and the legacy billing figures chat
clients show (OpenAI's `/v1/dashboard/billing/*`, in the shape one-api served).

Reads only: one account's request records (on their own partitions, billing.py), its ledger and its usage
counters (ledger.py).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from typing import Any

from imagegate.money.ledger import LEDGER, UsageRow
from imagegate.table import REQUEST_PREFIX, account_pk, request_partitions
from imagegate.units import micros_to_decimal

MICROS_PER_CENT = 10_000
MAX_LOG_LIMIT = 100
# OpenAI's legacy usage endpoint answered at most 100 days.
MAX_USAGE_RANGE_DAYS = 100
# "Recent" top-ups: read at most this many 1 MB pages of the ledger, however long it has grown.
TOPUP_PAGES = 4
_CURSOR = re.compile(r"^req_[0-9a-f]{32}$")
LOG_COLUMNS = (
    "created_at",
    "request_id",
    "model",
    "endpoint",
    "size",
    "quality",
    "images",
    "tokens",
    "cost_usd",
    "status",
    "job_id",
    "key_id",
)


def month_start(today: date) -> date:
    return today.replace(day=1)


def spent(rows: Iterable[UsageRow], first: date, end: date) -> int:
    """Micro-USD charged on the days from `first` up to `end`, exclusive (ISO days compare as dates)."""
    low, high = first.isoformat(), end.isoformat()
    return sum(r.charged for r in rows if low <= r.day < high)


def subscription(balance: int, spent_this_month: int) -> dict[str, Any]:
    """`GET /v1/dashboard/billing/subscription`: every limit is the balance plus this month's spend, so a
    client showing `hard_limit_usd - total_usage / 100` for this month shows the balance."""
    limit = (balance + spent_this_month) / 1_000_000
    return {
        "object": "billing_subscription",
        "has_payment_method": True,
        "soft_limit_usd": limit,
        "hard_limit_usd": limit,
        "system_hard_limit_usd": limit,
        "access_until": 0,
    }


def usage_range(start: str | None, end: str | None) -> tuple[date, date]:
    """The legacy usage endpoint's `start_date` and `end_date` (YYYY-MM-DD, the end exclusive, as OpenAI's);
    ValueError naming the parameter when either is missing, malformed or out of order."""
    days = []
    for name, value in (("start_date", start), ("end_date", end)):
        try:
            days.append(date.fromisoformat(value or ""))
        except ValueError:
            raise ValueError(name) from None
    first, last = days
    if not timedelta(0) < last - first <= timedelta(days=MAX_USAGE_RANGE_DAYS):
        raise ValueError("end_date")
    return first, last


def usage(charged_micros: int) -> dict[str, Any]:
    """`GET /v1/dashboard/billing/usage`: cents, as OpenAI answered (a float: a request can cost less)."""
    return {"object": "list", "total_usage": charged_micros / MICROS_PER_CENT}


def valid_cursor(after: str) -> bool:
    return bool(_CURSOR.match(after))


def request_log(
    dynamodb: Any, table: str, account_id: str, limit: int, after: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """An account's requests, newest first, `limit` at most, from after the request id `after`; and the
    cursor of the next page (None at the end). Request ids sort by time (table.new_request_id), so each of
    the account's request partitions is read newest first, `limit` items at most, and the pages merged.
    (Requests reserved before issue 22 are not listed: their records expire; the ledger keeps their money.)"""
    start = f"{REQUEST_PREFIX}{after}" if after else f"{REQUEST_PREFIX}\uffff"
    items: list[dict[str, Any]] = []
    for pk in request_partitions(account_id):  # partitions holding only requests: `sk <` bounds enough
        items += dynamodb.query(
            TableName=table,
            KeyConditionExpression="pk = :pk AND sk < :start",
            ExpressionAttributeValues={":pk": {"S": pk}, ":start": {"S": start}},
            ScanIndexForward=False,
            ConsistentRead=True,
            Limit=limit + 1,  # one more than a page: whether there is a next one
        ).get("Items", [])
    items.sort(key=lambda i: i["sk"]["S"], reverse=True)
    more = len(items) > limit
    rows = [_row(i) for i in items[:limit]]
    return rows, rows[-1]["request_id"] if rows and more else None


def _row(record: Mapping[str, Any]) -> dict[str, Any]:
    def text(name: str, default: str = "") -> str:
        return record[name]["S"] if name in record else default

    def number(name: str) -> int:
        return int(record[name]["N"]) if name in record else 0

    state = text("state")
    charged = number("charged")
    return {
        "request_id": record["sk"]["S"].removeprefix(REQUEST_PREFIX),
        "created_at": number("created_at"),
        "model": text("model"),
        "endpoint": text("endpoint"),
        "size": text("size"),
        "quality": text("quality"),
        "images": number("images"),
        "tokens": number("tokens"),
        "cost_usd": micros_to_decimal(charged),
        "charged_micros": charged,
        "status": {"settled": "succeeded", "refunded": "failed", "reserved": "in_progress"}.get(state, state),
        "job_id": text("job"),
        "key_id": text("key_id"),
        # What `image_urls` needs (service.py): where the images are, if they were kept.
        "_stored": text("response_format") == "url" and state == "settled",
        "_output_format": text("output_format", "png"),
    }


def log_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(LOG_COLUMNS)
    for row in rows:
        writer.writerow([row[c] for c in LOG_COLUMNS])
    return out.getvalue()


def last_used(rows: Iterable[UsageRow]) -> dict[str, str]:
    """Each key's last day (UTC) with a settled request, from the usage counters."""
    days: dict[str, str] = {}
    for r in rows:
        days[r.key_id] = max(days.get(r.key_id, ""), r.day)
    return days


def topups(dynamodb: Any, table: str, account_id: str, limit: int) -> list[dict[str, Any]]:
    """An account's latest top-ups and their reversals (refunds, disputes), newest first."""
    rows: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :ledger)",
        "FilterExpression": "kind IN (:topup, :reversal)",
        "ExpressionAttributeValues": {
            ":pk": {"S": account_pk(account_id)},
            ":ledger": {"S": LEDGER},
            ":topup": {"S": "topup"},
            ":reversal": {"S": "reversal"},
        },
        "ScanIndexForward": False,
    }
    for _ in range(TOPUP_PAGES):
        page = dynamodb.query(**kwargs)
        for item in page.get("Items", []):
            amount = int(item["amount"]["N"])
            rows.append(
                {
                    "created_at": int(item["created_at"]["N"]),
                    "kind": item["kind"]["S"],
                    "amount_usd": micros_to_decimal(amount),
                    "amount_micros": amount,
                    "reason": item["reason"]["S"] if "reason" in item else "",
                    "session_id": item["session_id"]["S"] if "session_id" in item else "",
                }
            )
        if len(rows) >= limit or "LastEvaluatedKey" not in page:
            break
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    return rows[:limit]

"""Read a key's balance the way chat clients do (ChatGPT-Next-Web, LobeChat, one-api's users): OpenAI's
legacy billing endpoints, this month's usage from its first day to tomorrow, and
`hard_limit_usd - total_usage / 100`.

    .venv/bin/python scripts/chat_balance.py http://127.0.0.1:8000/v1 "$OPENAI_API_KEY"

Prints one JSON line: {"hard_limit_usd", "total_usage_cents", "balance_usd"}.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta

import httpx


def balance(base_url: str, api_key: str, client: httpx.Client | None = None) -> dict[str, float]:
    client = client or httpx.Client(timeout=30)
    headers = {"authorization": f"Bearer {api_key}"}
    today = datetime.now(UTC).date()
    start, end = today.replace(day=1), today + timedelta(days=1)
    subscription = client.get(f"{base_url}/dashboard/billing/subscription", headers=headers)
    subscription.raise_for_status()
    usage = client.get(
        f"{base_url}/dashboard/billing/usage",
        params={"start_date": start.isoformat(), "end_date": end.isoformat()},
        headers=headers,
    )
    usage.raise_for_status()
    limit, cents = subscription.json()["hard_limit_usd"], usage.json()["total_usage"]
    return {"hard_limit_usd": limit, "total_usage_cents": cents, "balance_usd": round(limit - cents / 100, 6)}


if __name__ == "__main__":
    print(json.dumps(balance(sys.argv[1], sys.argv[2])))

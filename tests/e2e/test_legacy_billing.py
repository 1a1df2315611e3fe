"""OpenAI's legacy billing endpoints, read by a chat client (scripts/chat_balance.py, in its own process)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "chat_balance.py"


def chat_client_balance(user) -> dict:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), f"{user.stack.base_url}/v1", user.key],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def test_a_chat_client_shows_the_balance_after_spending(new_user, stack, http):
    user = new_user(stack, balance=3_000_000)
    before = chat_client_balance(user)
    assert before == {"hard_limit_usd": 3.0, "total_usage_cents": 0.0, "balance_usd": 3.0}

    user.client.images.generate(model="dall-e-2", prompt="a kite", size="256x256")
    user.client.images.generate(model="dall-e-2", prompt="a kite", size="256x256")
    spent = 3_000_000 - user.balance()
    assert spent > 0
    stack.drain()  # the usage counters follow the table's stream

    after = chat_client_balance(user)
    assert after["balance_usd"] == user.balance() / 1_000_000
    assert after["total_usage_cents"] == spent / 10_000
    assert after["hard_limit_usd"] == 3.0  # balance + this month's spend


def test_the_subscription_has_the_one_api_shape(user, http):
    answer = http.get(
        f"{user.stack.base_url}/v1/dashboard/billing/subscription",
        headers={"authorization": f"Bearer {user.key}"},
    )
    assert answer.status_code == 200
    body = answer.json()
    assert body["object"] == "billing_subscription"
    assert body["hard_limit_usd"] == body["soft_limit_usd"] == body["system_hard_limit_usd"]
    assert body["has_payment_method"] is True
    assert body["access_until"] == 0


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({}, "start_date"),
        ({"start_date": "2026-01-01"}, "end_date"),
        ({"start_date": "yesterday", "end_date": "2026-01-02"}, "start_date"),
        ({"start_date": "2026-01-02", "end_date": "2026-01-01"}, "end_date"),
        ({"start_date": "2025-01-01", "end_date": "2026-01-01"}, "end_date"),  # over 100 days
    ],
)
def test_bad_usage_dates_are_400s_naming_the_parameter(user, http, query, param):
    answer = http.get(
        f"{user.stack.base_url}/v1/dashboard/billing/usage",
        params=query,
        headers={"authorization": f"Bearer {user.key}"},
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param


def test_the_legacy_endpoints_need_a_key(stack, http):
    assert http.get(f"{stack.base_url}/v1/dashboard/billing/subscription").status_code == 401

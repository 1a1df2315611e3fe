"""The key holder's own JSON endpoints and the console's files, over HTTP: keys (admin keys only, own account
only), the request log (paged, CSV), the price book, and the console's CSP."""

import csv
import io

import pytest


@pytest.fixture
def admin(new_user, stack):
    user = new_user(stack)
    key = stack.service.accounts.create_key(user.account_id, label="admin", admin=True)
    return user, {"authorization": f"Bearer {key}"}


def test_only_an_admin_key_manages_keys(http, user):
    answer = http.get(f"{user.stack.base_url}/v1/keys", headers={"authorization": f"Bearer {user.key}"})
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "not_admin_key"
    created = http.post(
        f"{user.stack.base_url}/v1/keys", json={}, headers={"authorization": f"Bearer {user.key}"}
    )
    assert created.status_code == 403


def test_an_admin_key_creates_lists_and_revokes_its_accounts_keys(http, admin):
    user, headers = admin
    base = user.stack.base_url
    created = http.post(f"{base}/v1/keys", json={"label": "ci", "images_per_minute": 5}, headers=headers)

    assert created.status_code == 201, created.text
    body = created.json()
    assert body["key"].startswith("sk-ig-")
    assert (body["label"], body["images_per_minute"], body["admin"]) == ("ci", 5, False)
    listed = http.get(f"{base}/v1/keys", headers=headers).json()["data"]
    assert body["key"] not in str(listed)  # shown once: never listed
    assert {k["key_id"] for k in listed} >= {body["key_id"]}
    revoked = http.post(f"{base}/v1/keys/{body['key_id']}/revoke", json={}, headers=headers)
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    assert (
        http.get(f"{base}/v1/balance", headers={"authorization": f"Bearer {body['key']}"}).status_code == 401
    )


def test_an_admin_key_cannot_touch_another_accounts_key_or_revoke_itself(http, admin, new_user, stack):
    _, headers = admin
    other = new_user(stack)
    other_id = stack.service.accounts.authenticate(f"Bearer {other.key}").key_id
    answer = http.post(f"{stack.base_url}/v1/keys/{other_id}/revoke", json={}, headers=headers)
    assert answer.status_code == 404
    assert stack.service.accounts.get_key(other_id)["status"] == "active"
    own = stack.service.accounts.authenticate(headers["authorization"]).key_id
    assert http.post(f"{stack.base_url}/v1/keys/{own}/revoke", json={}, headers=headers).status_code == 400


@pytest.mark.parametrize(
    "body", [{"images_per_minute": 0}, {"images_per_minute": 601}, {"images_per_minute": "5"}, {"label": 7}]
)
def test_a_new_keys_limits_stay_under_the_accounts_own(http, admin, body):
    user, headers = admin
    answer = http.post(f"{user.stack.base_url}/v1/keys", json=body, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == next(iter(body))


def test_the_request_log_pages_newest_first_with_links_and_exports_csv(http, user):
    headers = {"authorization": f"Bearer {user.key}"}
    ids = []
    for _ in range(3):
        answer = user.client.images.with_raw_response.generate(
            model="dall-e-2", prompt="a kite", size="256x256", response_format="url"
        )
        ids.append(answer.headers["x-request-id"])
    base = user.stack.base_url

    first = http.get(f"{base}/v1/usage/requests?limit=2", headers=headers).json()
    assert [r["request_id"] for r in first["data"]] == ids[::-1][:2]
    assert first["has_more"] is True
    second = http.get(
        f"{base}/v1/usage/requests", params={"limit": 2, "after": first["next"]}, headers=headers
    )
    assert [r["request_id"] for r in second.json()["data"]] == ids[:1]
    row = first["data"][0]
    assert (row["model"], row["size"], row["status"], row["images"]) == (
        "dall-e-2",
        "256x256",
        "succeeded",
        1,
    )
    assert row["cost_usd"] == "0.016000"
    [url] = row["image_urls"]
    assert http.get(url).content.startswith(b"\x89PNG")
    exported = http.get(f"{base}/v1/usage/requests?format=csv&limit=10", headers=headers)
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["request_id"] for r in rows] == ids[::-1]
    assert 10_000_000 - user.balance() == sum(int(float(r["cost_usd"]) * 1_000_000) for r in rows)


@pytest.mark.parametrize(
    ("query", "param"), [({"after": "LEDGER#x"}, "after"), ({"format": "xml"}, "format")]
)
def test_a_bad_request_log_query_is_a_400(http, user, query, param):
    headers = {"authorization": f"Bearer {user.key}"}
    answer = http.get(f"{user.stack.base_url}/v1/usage/requests", params=query, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param


def test_the_price_book_is_readable_with_a_key(http, user):
    answer = http.get(f"{user.stack.base_url}/v1/prices", headers={"authorization": f"Bearer {user.key}"})
    prices = {p["model"]: p for p in answer.json()["data"]}
    assert {"quality": "standard", "size": "256x256", "usd": "0.016000"} in prices["dall-e-2"]["per_image"]


def test_the_console_is_served_under_a_strict_csp_with_only_its_own_files(http, stack):
    page = http.get(f"{stack.base_url}/console")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
    assert '<script src="console/console.js"' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no third-party URL anywhere
    script = http.get(f"{stack.base_url}/console/console.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "sessionStorage" in script.text and "localStorage" not in script.text
    assert http.get(f"{stack.base_url}/console/../v1/balance").status_code in (401, 404)
    assert http.get(f"{stack.base_url}/console/index.py").status_code == 404


def test_a_key_created_with_a_budget_stops_at_it_with_a_402(http, admin, sdk_http):
    import openai

    user, headers = admin
    base = user.stack.base_url
    created = http.post(f"{base}/v1/keys", json={"label": "capped", "budget_usd": "0.04"}, headers=headers)
    assert created.status_code == 201, created.text
    capped = openai.OpenAI(
        base_url=f"{base}/v1", api_key=created.json()["key"], max_retries=0, http_client=sdk_http
    )
    before = user.balance()
    capped.images.generate(model="dall-e-2", prompt="a kite", size="256x256")  # $0.016
    capped.images.generate(model="dall-e-2", prompt="a kite", size="256x256")  # $0.032 in all
    with pytest.raises(openai.APIStatusError) as refused:
        capped.images.generate(model="dall-e-2", prompt="a kite", size="256x256")
    assert refused.value.status_code == 402
    assert refused.value.body["code"] == "key_budget_exceeded"
    assert before - user.balance() == 32_000
    [row] = [k for k in http.get(f"{base}/v1/keys", headers=headers).json()["data"] if k["label"] == "capped"]
    assert (row["budget_usd"], row["spent_usd"]) == ("0.040000", "0.032000")


@pytest.mark.parametrize("budget", ["0", "-1", "lots", "0.0000001", True])
def test_a_bad_budget_is_a_400(http, admin, budget):
    user, headers = admin
    answer = http.post(f"{user.stack.base_url}/v1/keys", json={"budget_usd": budget}, headers=headers)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "budget_usd"


@pytest.fixture
def limited_admin(new_user, stack):
    """An account whose owner holds an unlimited admin key and hands out an admin key: $1, 1 image/min."""
    user = new_user(stack)
    owner = stack.service.accounts.create_key(user.account_id, label="owner", admin=True)
    limited = stack.service.accounts.create_key(
        user.account_id, label="deputy", admin=True, images_per_minute=1, budget=1_000_000
    )
    return user, {"authorization": f"Bearer {owner}"}, {"authorization": f"Bearer {limited}"}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"label": "x"}, "budget_usd"),  # no budget: the whole balance
        ({"budget_usd": "1.01"}, "budget_usd"),
        ({"budget_usd": "0.50", "images_per_minute": 5}, "images_per_minute"),
    ],
)
def test_a_limited_admin_key_creates_no_key_beyond_its_own_limits(http, limited_admin, body, param):
    user, _, headers = limited_admin
    answer = http.post(f"{user.stack.base_url}/v1/keys", json=body, headers=headers)
    assert answer.status_code in (400, 403), answer.text
    assert answer.json()["error"]["param"] == param
    assert len(user.stack.service.accounts.list_keys(user.account_id)) == 3  # user's own, owner, deputy


def test_a_limited_admin_keys_new_key_inherits_its_rate_and_fits_its_budget(http, limited_admin):
    user, _, headers = limited_admin
    answer = http.post(f"{user.stack.base_url}/v1/keys", json={"budget_usd": "1"}, headers=headers)
    assert answer.status_code == 201, answer.text
    assert (answer.json()["budget"], answer.json()["images_per_minute"]) == (1_000_000, 1)


def test_a_limited_admin_key_cannot_revoke_a_key_with_more_rights(http, limited_admin):
    user, owner, deputy = limited_admin
    base, accounts = user.stack.base_url, user.stack.service.accounts
    owner_id = accounts.authenticate(owner["authorization"]).key_id
    plain_id = accounts.authenticate(f"Bearer {user.key}").key_id  # no budget, no per-key limit
    for key_id in (owner_id, plain_id):
        answer = http.post(f"{base}/v1/keys/{key_id}/revoke", json={}, headers=deputy)
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "exceeds_own_rights"
        assert accounts.get_key(key_id)["status"] == "active"
    small = http.post(f"{base}/v1/keys", json={"budget_usd": "0.5"}, headers=deputy).json()
    assert http.post(f"{base}/v1/keys/{small['key_id']}/revoke", json={}, headers=deputy).status_code == 200
    deputy_id = accounts.authenticate(deputy["authorization"]).key_id
    assert http.post(f"{base}/v1/keys/{deputy_id}/revoke", json={}, headers=owner).status_code == 200


def test_the_csv_export_reads_more_requests_than_one_batch_holds(http, user):
    """DynamoDB's BatchGetItem takes at most 100 keys: 150 requests are read in two batches, not a 500."""
    billing, account = (
        user.stack.service.billing,
        user.stack.service.accounts.authenticate(f"Bearer {user.key}"),
    )
    for i in range(150):
        held = billing.reserve(account, f"req_batch_{i:03d}", 1_000, {"model": "dall-e-2"}, images=0)
        billing.settle(held, 1_000)
    exported = http.get(
        f"{user.stack.base_url}/v1/usage/requests?format=csv&limit=1000",
        headers={"authorization": f"Bearer {user.key}"},
    )
    assert exported.status_code == 200, exported.text
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["request_id"] for r in rows] == [f"req_batch_{i:03d}" for i in reversed(range(150))]
    assert {r["cost_usd"] for r in rows} == {"0.001000"}  # each row found its request record

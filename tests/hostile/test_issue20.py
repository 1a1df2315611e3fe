"""Issue 20's hostile cases: what a red team tried against limits, money and the contract, each answered as
documented, nothing charged that was not delivered, and `reconcile` clean after."""

import pytest

from tests.localservers import serve

from .conftest import png

EDIT = {"model": "gpt-image-1.5", "prompt": "a lighthouse", "quality": "low", "size": "1024x1024"}


def test_a_key_with_nothing_to_pay_makes_the_deployment_fetch_nothing(gate, monkeypatch):
    """Item 7: a $0 key made the deployment fetch 16 URLs per JSON edit, then answered 402: 10 requests meant
    160 fetches. The balance is checked before any fetch."""
    from tests.localservers import local_outbound

    monkeypatch.setattr(gate.service, "outbound", local_outbound())
    with serve(lambda seen: (200, {"Content-Type": "image/png"}, png())) as server:
        images = [{"image_url": server.url(f"/{i}.png")} for i in range(16)]
        for _ in range(10):
            response = gate.client.post(
                "/v1/images/edits",
                headers={"Authorization": f"Bearer {gate.broke_key}"},
                json={**EDIT, "images": images},
            )
            assert response.status_code == 402, response.text
            assert response.json()["error"]["code"] == "insufficient_balance"
    assert server.requests == []


GENERATE = {"model": "dall-e-2", "prompt": "a lighthouse", "size": "256x256"}


@pytest.mark.parametrize("days", ["1_0", "90.0", "+5", "٣", " 7"])
def test_days_that_are_not_digits_are_400_invalid_type(gate, days):
    """Item 13: `days=1_0` and `90.0` were accepted (pydantic's lax int)."""
    response = gate.client.get("/v1/balance", params={"days": days}, headers=gate.auth())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("days", "invalid_type")


def test_idempotency_errors_name_the_header(gate):
    """Item 13: idempotency_key_reused had `param: null`."""
    headers = {**gate.auth(), "Idempotency-Key": "hostile-reuse"}
    assert gate.client.post("/v1/images/generations", headers=headers, json=GENERATE).status_code == 200
    reused = gate.client.post("/v1/images/generations", headers=headers, json={**GENERATE, "prompt": "x"})
    assert reused.status_code == 400
    assert (reused.json()["error"]["param"], reused.json()["error"]["code"]) == (
        "Idempotency-Key",
        "idempotency_key_reused",
    )


def test_two_idempotency_key_headers_are_a_400(gate):
    """Item 13: two Idempotency-Key headers were silently first-wins."""
    before = gate.balance()
    response = gate.client.post(
        "/v1/images/generations",
        headers=[("Authorization", f"Bearer {gate.key}"), ("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
        json=GENERATE,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "Idempotency-Key"
    assert gate.balance() == before

"""The selling review's hostile cases that need no HTTP server of their own."""

from tests.localservers import serve

from .conftest import png
from .test_issue20 import EDIT


def test_a_key_with_its_budget_spent_makes_the_deployment_fetch_nothing(gate, monkeypatch):
    """A budgeted key with nothing left (on a funded account) fetched a JSON edit's 16 URLs, then got its
    402: the key's budget is checked before any fetch, as the balance is."""
    from tests.localservers import local_outbound

    capped = gate.accounts.create_key(gate.account_id, label="capped", budget=1_000)
    held = gate.service.billing.reserve(
        gate.accounts.authenticate(f"Bearer {capped}"),
        "req_spends_the_budget",
        1_000,
        {"model": "x"},
        images=0,
    )
    gate.service.billing.settle(held, 1_000)
    monkeypatch.setattr(gate.service, "outbound", local_outbound())
    with serve(lambda seen: (200, {"Content-Type": "image/png"}, png())) as server:
        images = [{"image_url": server.url(f"/{i}.png")} for i in range(16)]
        for _ in range(3):
            response = gate.client.post(
                "/v1/images/edits", headers=gate.auth(capped), json={**EDIT, "images": images}
            )
            assert response.status_code == 402, response.text
            assert response.json()["error"]["code"] == "key_budget_exceeded"
    assert server.requests == []

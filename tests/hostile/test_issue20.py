"""Issue 20's hostile cases: what a red team tried against limits, money and the contract, each answered as
documented, nothing charged that was not delivered, and `reconcile` clean after."""

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

"""Top-ups end to end: Checkout Sessions created with the stripe library against the fake Stripe, and the
fake's signed events delivered to the webhook over HTTP, where the real verification code runs. Balances are
checked to the micro-dollar and every account is reconciled."""

import json
import time

import pytest

from imagegate.money import ledger, topups

PACK_MICROS = {"starter": 5_000_000, "standard": 20_000_000, "large": 100_000_000}


@pytest.fixture
def buyer(new_user, stripe_stack):
    return new_user(stripe_stack, balance=1_000_000)


def checkout(http, user, body):
    return http.post(
        f"{user.stack.base_url}/v1/billing/checkout",
        json=body,
        headers={"authorization": f"Bearer {user.key}"},
    )


def reconciled(user):
    result = ledger.reconcile(user.stack.aws.dynamodb, user.stack.settings.table, user.account_id)
    assert result.ok, result.problems
    return result


def paid_session(http, user, fake_stripe, pack="standard", paid=True):
    answer = checkout(http, user, {"pack": pack})
    assert answer.status_code == 200, answer.text
    return fake_stripe.complete(answer.json()["id"], paid=paid)


def test_checkout_creates_a_payment_session_for_the_account_and_pack(http, buyer, fake_stripe):
    answer = checkout(http, buyer, {"pack": "standard"})

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"id", "url"}
    assert body["url"] == f"{fake_stripe.base_url}/pay/{body['id']}"
    session = fake_stripe.sessions[body["id"]]
    assert session["mode"] == "payment"
    assert session["client_reference_id"] == buyer.account_id
    assert session["metadata"]["pack"] == "standard"
    assert (session["amount_total"], session["currency"]) == (2000, "usd")
    assert session["success_url"].startswith(f"{buyer.stack.base_url}/console?checkout=success")
    assert buyer.balance() == 1_000_000  # nothing until Stripe says it is paid


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"pack": "gold"}, "pack"),
        ({}, "pack"),
        ({"pack": "starter", "amount_usd": "10"}, "pack"),
        ({"amount_usd": "4.99"}, "amount_usd"),  # under the minimum
        ({"amount_usd": "1000.01"}, "amount_usd"),  # over the maximum
        ({"amount_usd": "10.001"}, "amount_usd"),  # not whole cents
        ({"amount_usd": True}, "amount_usd"),
    ],
)
def test_bad_checkout_bodies_are_400s_naming_the_parameter(http, buyer, fake_stripe, body, param):
    sessions = len(fake_stripe.sessions)
    answer = checkout(http, buyer, body)

    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
    assert len(fake_stripe.sessions) == sessions


def test_checkout_needs_a_key(http, stripe_stack):
    answer = http.post(f"{stripe_stack.base_url}/v1/billing/checkout", json={"pack": "starter"})
    assert answer.status_code == 401


def test_a_paid_session_credits_exactly_its_pack_once_and_a_replay_changes_nothing(http, buyer, fake_stripe):
    paid_session(http, buyer, fake_stripe, "standard")

    assert fake_stripe.deliveries[-1] == ("checkout.session.completed", 200)
    assert buyer.balance() == 1_000_000 + PACK_MICROS["standard"]
    # Stripe delivers the same event again (a retry): the same body, freshly signed.
    answer = fake_stripe.deliver(fake_stripe.payloads[-1])
    assert answer.status_code == 200
    assert answer.json()["outcome"] == "duplicate"
    assert buyer.balance() == 1_000_000 + PACK_MICROS["standard"]
    entries = [
        e for e in ledger.entries(buyer.stack.aws.dynamodb, buyer.stack.settings.table, buyer.account_id)
    ]
    assert [e.amount for e in entries if e.kind == "topup"] == [PACK_MICROS["standard"]]
    reconciled(buyer)


def test_a_custom_amount_credits_that_amount(http, buyer, fake_stripe):
    answer = checkout(http, buyer, {"amount_usd": "12.34"})
    fake_stripe.complete(answer.json()["id"])

    assert buyer.balance() == 1_000_000 + 12_340_000
    reconciled(buyer)


@pytest.mark.parametrize(
    "signature",
    [
        None,  # missing
        "t=1,v1=" + "0" * 64,  # forged
        "garbage",
        "stale",  # a correct signature, made 301 s ago: past the 300 s tolerance
        "other-secret",
    ],
)
def test_a_forged_missing_or_stale_signature_is_a_400_and_changes_nothing(
    http, buyer, fake_stripe, signature
):
    answer = checkout(http, buyer, {"pack": "large"})
    session = dict(fake_stripe.sessions[answer.json()["id"]])
    session.update(payment_status="paid", status="complete", payment_intent=f"pi_forged_{session['id']}")
    payload = json.dumps(fake_stripe.event("checkout.session.completed", session))
    headers = {"content-type": "application/json"}
    if signature == "stale":
        signature = fake_stripe.sign(payload, int(time.time()) - 301)
    elif signature == "other-secret":
        import stripe

        signature = stripe.WebhookSignature.generate_signature_header(payload, "whsec_not_ours")
    if signature is not None:
        headers["stripe-signature"] = signature
    refused = http.post(fake_stripe.webhook_url, content=payload, headers=headers)

    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_signature"
    assert buyer.balance() == 1_000_000
    # The same body, correctly signed, is then accepted: the refusal recorded nothing.
    assert fake_stripe.deliver(payload).json()["outcome"] == "credit"
    assert buyer.balance() == 1_000_000 + PACK_MICROS["large"]


def test_a_tampered_body_with_the_original_signature_is_refused(http, buyer, fake_stripe):
    answer = checkout(http, buyer, {"pack": "starter"})
    session = dict(fake_stripe.sessions[answer.json()["id"]], payment_status="paid")
    payload = json.dumps(fake_stripe.event("checkout.session.completed", session))
    signature = fake_stripe.sign(payload)
    tampered = payload.replace('"amount_total": 500', '"amount_total": 500000')
    assert tampered != payload

    assert fake_stripe.deliver(tampered, signature).status_code == 400
    assert buyer.balance() == 1_000_000


def test_an_async_payment_credits_only_when_it_succeeds_and_only_once(http, buyer, fake_stripe):
    session = paid_session(http, buyer, fake_stripe, "starter", paid=False)

    assert fake_stripe.deliveries[-1] == ("checkout.session.completed", 200)
    assert buyer.balance() == 1_000_000  # unpaid: nothing yet, but Stripe got its 2xx
    fake_stripe.settle_async(session["id"])
    assert buyer.balance() == 1_000_000 + PACK_MICROS["starter"]
    # Another event of the same session (a second success event) credits nothing more.
    fake_stripe.settle_async(session["id"])
    assert fake_stripe.deliveries[-1] == ("checkout.session.async_payment_succeeded", 200)
    assert buyer.balance() == 1_000_000 + PACK_MICROS["starter"]
    reconciled(buyer)


def test_a_failed_async_payment_credits_nothing(http, buyer, fake_stripe):
    session = paid_session(http, buyer, fake_stripe, "starter", paid=False)
    fake_stripe.settle_async(session["id"], succeeded=False)

    assert fake_stripe.deliveries[-1] == ("checkout.session.async_payment_failed", 200)
    assert buyer.balance() == 1_000_000


def test_refunds_take_back_what_they_refund_below_zero_if_spent_and_the_account_gets_402s(
    http, buyer, fake_stripe
):
    session = paid_session(http, buyer, fake_stripe, "starter")
    assert buyer.balance() == 6_000_000
    # The key holder spends most of it, then the payment is refunded in two parts.
    buyer.stack.service.billing.credit(buyer.account_id, -5_500_000, reason="spent", kind="adjust")
    fake_stripe.refund(session["payment_intent"], 200)
    assert buyer.balance() == 500_000 - 2_000_000
    fake_stripe.refund(session["payment_intent"])  # the rest: cumulative $5.00
    assert buyer.balance() == 500_000 - 5_000_000
    assert fake_stripe.deliveries[-2:] == [("charge.refunded", 200)] * 2

    refused = buyer.client.images.with_raw_response
    with pytest.raises(Exception) as raised:
        refused.generate(model="dall-e-2", prompt="a kite", size="256x256")
    assert raised.value.status_code == 402
    reconciled(buyer)
    # A top-up brings it back above zero, and it spends again.
    paid_session(http, buyer, fake_stripe, "standard")
    assert buyer.balance() == 500_000 - 5_000_000 + 20_000_000
    buyer.client.images.generate(model="dall-e-2", prompt="a kite", size="256x256")
    reconciled(buyer)


def test_a_dispute_takes_back_the_disputed_amount_and_refunds_never_take_more_than_was_credited(
    http, buyer, fake_stripe
):
    session = paid_session(http, buyer, fake_stripe, "standard")
    fake_stripe.dispute(session["payment_intent"])

    assert fake_stripe.deliveries[-1] == ("charge.dispute.created", 200)
    assert buyer.balance() == 1_000_000
    fake_stripe.refund(session["payment_intent"])  # refunded after the dispute: nothing more to take
    assert buyer.balance() == 1_000_000
    kinds = [
        (e.kind, e.amount)
        for e in ledger.entries(buyer.stack.aws.dynamodb, buyer.stack.settings.table, buyer.account_id)
    ]
    assert ("reversal", -20_000_000) in kinds
    reconciled(buyer)


def test_a_refund_for_a_payment_never_credited_is_recorded_unapplied_with_a_2xx(
    http, stripe_stack, fake_stripe
):
    event = fake_stripe.event(
        "charge.refunded",
        {"id": "ch_x", "object": "charge", "amount_refunded": 500, "payment_intent": "pi_x"},
    )
    event["created"] -= topups.EARLY_REVERSAL_RETRY_S  # old enough that its credit is not merely late
    answer = fake_stripe.deliver(json.dumps(event))

    assert answer.status_code == 200
    assert answer.json()["outcome"] == "unapplied"
    [row] = [e for e in stripe_stack.service.topups.events() if e["id"] == event["id"]]
    assert row["outcome"] == "unapplied"
    assert row["reason"] == "no credited payment for it"


def test_event_types_we_ignore_get_a_2xx(fake_stripe):
    answer = fake_stripe.deliver(json.dumps(fake_stripe.event("customer.created", {"id": "cus_1"})))
    assert (answer.status_code, answer.json()["outcome"]) == (200, "ignored")


def test_packs_and_recent_topups_are_readable_with_the_key(http, buyer, fake_stripe):
    paid_session(http, buyer, fake_stripe, "starter")
    headers = {"authorization": f"Bearer {buyer.key}"}

    packs = http.get(f"{buyer.stack.base_url}/v1/billing/packs", headers=headers).json()
    assert [(p["id"], p["credit_usd"], p["price_usd"]) for p in packs["data"]] == [
        ("starter", "5.00", "5.00"),
        ("standard", "20.00", "20.00"),
        ("large", "100.00", "100.00"),
    ]
    recent = http.get(f"{buyer.stack.base_url}/v1/billing/topups", headers=headers).json()
    assert [(t["kind"], t["amount_micros"]) for t in recent["data"]] == [("topup", 5_000_000)]


@pytest.mark.parametrize(
    "metadata",
    [
        {},  # a Payment Link (or another product's Checkout) whose buyer typed the account's id
        {"fee_cents": "0"},  # a session shaped like an older imagegate one, without the marker
        {"imagegate": "1", "credit_cents": "100", "fee_cents": "0"},  # amount_total is not credit + fee
    ],
)
def test_a_paid_session_imagegate_did_not_sell_credits_nothing_and_is_recorded_unapplied(
    buyer, fake_stripe, metadata
):
    session = {
        "id": "cs_foreign_" + str(len(fake_stripe.deliveries)),
        "object": "checkout.session",
        "mode": "payment",
        "payment_status": "paid",
        "amount_total": 50_000,
        "currency": "usd",
        "client_reference_id": buyer.account_id,
        "metadata": metadata,
        "payment_intent": "pi_foreign_" + str(len(fake_stripe.deliveries)),
    }
    event = fake_stripe.event("checkout.session.completed", session)
    answer = fake_stripe.deliver(json.dumps(event))  # signed by the stripe library's own helper

    assert (answer.status_code, answer.json()["outcome"]) == (200, "unapplied")
    assert buyer.balance() == 1_000_000
    [row] = [e for e in buyer.stack.service.topups.events() if e["id"] == event["id"]]
    assert row["outcome"] == "unapplied" and row["reason"]
    reconciled(buyer)


def test_a_won_dispute_gives_the_money_back_once_whichever_events_say_so(http, buyer, fake_stripe):
    session = paid_session(http, buyer, fake_stripe, "standard")
    dispute = fake_stripe.dispute(session["payment_intent"])
    assert buyer.balance() == 1_000_000

    fake_stripe.send("charge.dispute.funds_reinstated", dict(dispute, status="won"))
    assert buyer.balance() == 1_000_000 + PACK_MICROS["standard"]
    fake_stripe.send("charge.dispute.closed", dict(dispute, status="won"))
    assert fake_stripe.deliveries[-2:] == [
        ("charge.dispute.funds_reinstated", 200),
        ("charge.dispute.closed", 200),
    ]
    assert buyer.balance() == 1_000_000 + PACK_MICROS["standard"]
    entries = ledger.entries(buyer.stack.aws.dynamodb, buyer.stack.settings.table, buyer.account_id)
    assert sorted(e.amount for e in entries if e.kind == "reversal") == [-20_000_000, 20_000_000]
    reconciled(buyer)


def test_a_lost_dispute_keeps_its_debit(http, buyer, fake_stripe):
    session = paid_session(http, buyer, fake_stripe, "starter")
    dispute = fake_stripe.dispute(session["payment_intent"])
    fake_stripe.send("charge.dispute.closed", dict(dispute, status="lost"))
    assert buyer.balance() == 1_000_000
    reconciled(buyer)


def test_a_refund_before_its_credit_is_retried_by_stripe_and_then_taken_back(http, buyer, fake_stripe):
    answer = checkout(http, buyer, {"pack": "starter"})
    session = dict(fake_stripe.sessions[answer.json()["id"]])
    session.update(payment_status="paid", status="complete", payment_intent="pi_early_" + session["id"])
    refund = fake_stripe.event(
        "charge.refunded",
        {
            "id": "ch_early",
            "object": "charge",
            "amount_refunded": 500,
            "payment_intent": session["payment_intent"],
        },
    )
    early = fake_stripe.deliver(json.dumps(refund))
    assert early.status_code == 503, early.text  # not recorded: Stripe delivers it again
    assert early.json()["error"]["code"] == "retry_later"
    assert buyer.balance() == 1_000_000

    credit = fake_stripe.deliver(json.dumps(fake_stripe.event("checkout.session.completed", session)))
    assert credit.json()["outcome"] == "credit"
    assert buyer.balance() == 1_000_000 + PACK_MICROS["starter"]
    again = fake_stripe.deliver(json.dumps(refund))  # Stripe's retry of the same event
    assert (again.status_code, again.json()["outcome"]) == (200, "reversal")
    assert buyer.balance() == 1_000_000
    reconciled(buyer)

"""The pure parts of top-ups: the operator's packs, what a checkout buys, and what a verified event does."""

import pytest

from imagegate.errors import APIError
from imagegate.money.topups import (
    DEFAULT_CONFIG,
    Payment,
    effect_of,
    parse_config,
    purchase,
    reversed_payment,
    session_params,
)

CONFIG = parse_config(
    {
        "packs": [{"id": "small", "credit_usd": "10"}, {"id": "big", "credit_usd": "100.50", "label": "Big"}],
        "minimum_usd": "5",
        "maximum_usd": "200",
        "fee_percent": "2.9",
        "fee_fixed_usd": "0.30",
    }
)


def test_the_default_packs_parse_and_cost_their_credit():
    config = parse_config(DEFAULT_CONFIG)
    assert [(p.id, p.credit_cents) for p in config.packs] == [
        ("starter", 500),
        ("standard", 2000),
        ("large", 10000),
    ]
    assert config.fee_cents(2000) == 0


def test_a_fee_is_a_percentage_rounded_half_up_plus_a_fixed_part():
    assert CONFIG.fee_cents(1000) == 29 + 30
    assert CONFIG.fee_cents(10050) == 291 + 30  # 291.45 -> 291
    assert CONFIG.public()["data"][1] == {
        "id": "big",
        "label": "Big",
        "credit_usd": "100.50",
        "price_usd": "103.71",
    }


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"currency": "eur"}, "sold in 'usd'"),
        ({"packs": [{"credit_usd": "5"}]}, r"packs\[0\] needs an id"),
        ({"packs": [{"id": "a", "credit_usd": "5"}, {"id": "a", "credit_usd": "6"}]}, "appears twice"),
        ({"packs": [{"id": "a", "credit_usd": "5.001"}]}, "whole cents"),
        ({"packs": [{"id": "a", "credit_usd": "0"}]}, "above zero"),
        ({"minimum_usd": "10", "maximum_usd": "5"}, "minimum_usd <= maximum_usd"),
        ({"fee_percent": "120"}, "from 0 to 100"),
        ({"fee_percent": "lots"}, "not a number"),
        ({"fee_fixed_usd": "-1"}, "not negative"),
    ],
)
def test_a_broken_config_is_refused_naming_the_field(document, message):
    with pytest.raises(ValueError, match=message):
        parse_config(document)


def test_a_pack_or_an_amount_within_bounds_is_what_a_checkout_buys():
    assert purchase(CONFIG, {"pack": "small"}).total_cents == 1000 + 59
    custom = purchase(CONFIG, {"amount_usd": "12.34"})
    assert (custom.pack, custom.credit_cents, custom.fee_cents) == ("", 1234, 36 + 30)
    assert purchase(CONFIG, {"amount_usd": 200}).credit_cents == 20000


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "pack"),
        ({"pack": "small", "amount_usd": "10"}, "pack"),
        ({"pack": "huge"}, "pack"),
        ({"amount_usd": "4.99"}, "amount_usd"),
        ({"amount_usd": "200.01"}, "amount_usd"),
        ({"amount_usd": "1e400"}, "amount_usd"),
        ({"amount_usd": "NaN"}, "amount_usd"),
        ({"amount_usd": [10]}, "amount_usd"),
        ({"amount_usd": False}, "amount_usd"),
    ],
)
def test_anything_else_is_a_400_naming_the_parameter(body, param):
    with pytest.raises(APIError) as raised:
        purchase(CONFIG, body)
    assert (raised.value.status, raised.value.param) == (400, param)


def test_the_session_names_the_account_pack_and_fee_and_charges_credit_plus_fee():
    params = session_params(purchase(CONFIG, {"pack": "small"}), "acct_1", "https://x/ok", "https://x/no")
    assert params["mode"] == "payment"
    assert params["client_reference_id"] == "acct_1"
    metadata = {"imagegate": "1", "pack": "small", "credit_cents": "1000", "fee_cents": "59"}
    assert params["metadata"] == metadata
    assert sum(line["price_data"]["unit_amount"] for line in params["line_items"]) == 1059


def session_event(kind="checkout.session.completed", **fields):
    session = {
        "id": "cs_1",
        "mode": "payment",
        "payment_status": "paid",
        "amount_total": 1059,
        "currency": "usd",
        "client_reference_id": "acct_1",
        "metadata": {"imagegate": "1", "credit_cents": "1000", "fee_cents": "59"},
        "payment_intent": "pi_1",
    } | fields
    return {"id": "evt_1", "type": kind, "data": {"object": session}}


def test_a_paid_session_credits_what_was_paid_less_the_fee():
    effect = effect_of(session_event())
    assert (effect.outcome, effect.account_id, effect.amount) == ("credit", "acct_1", 10_000_000)
    assert (effect.session_id, effect.payment_intent) == ("cs_1", "pi_1")
    async_paid = effect_of(session_event("checkout.session.async_payment_succeeded"))
    assert async_paid.outcome == "credit"


@pytest.mark.parametrize(
    ("fields", "outcome"),
    [
        ({"payment_status": "unpaid"}, "unpaid"),
        ({"payment_status": "no_payment_required"}, "ignored"),
        ({"mode": "subscription"}, "ignored"),
        ({"currency": "eur"}, "unapplied"),
        ({"client_reference_id": None}, "unapplied"),
        ({"amount_total": "1059"}, "unapplied"),
        ({"amount_total": 59}, "unapplied"),  # nothing left after the fee
        ({"metadata": {"imagegate": "1", "credit_cents": "1000", "fee_cents": "-1"}}, "unapplied"),
        # A session imagegate never created (a Payment Link naming an account), or one without its credit.
        ({"metadata": {"fee_cents": "59"}}, "unapplied"),
        ({"metadata": {}}, "unapplied"),
        ({"metadata": {"imagegate": "1", "fee_cents": "59"}}, "unapplied"),
        ({"amount_total": 2059}, "unapplied"),  # paid more than credit + fee: not what imagegate sold
    ],
)
def test_sessions_that_must_not_credit_do_not(fields, outcome):
    assert effect_of(session_event(**fields)).outcome == outcome


def test_refunds_and_disputes_name_their_payment_and_amount():
    refund = {
        "type": "charge.refunded",
        "data": {"object": {"amount_refunded": 300, "payment_intent": "pi_1"}},
    }
    assert effect_of(refund).amount == 3_000_000
    dispute = {
        "type": "charge.dispute.created",
        "data": {"object": {"amount": 1059, "payment_intent": "pi_1"}},
    }
    assert (effect_of(dispute).outcome, effect_of(dispute).payment_intent) == ("reversal", "pi_1")
    assert effect_of({"type": "charge.refunded", "data": {"object": {}}}).outcome == "unapplied"
    assert effect_of({"type": "invoice.paid", "data": {"object": {}}}).outcome == "ignored"


def test_reversals_take_back_the_new_part_only_and_never_more_than_was_credited():
    paid = Payment("pi_1", "acct_1", credited=10_000_000)
    after, debit = reversed_payment(paid, "charge.refunded", 3_000_000)
    assert debit == 3_000_000
    again, debit = reversed_payment(after, "charge.refunded", 3_000_000)  # the same figure again
    assert debit == 0
    more, debit = reversed_payment(again, "charge.refunded", 10_590_000)  # the fee refunded too
    assert debit == 7_000_000
    _, debit = reversed_payment(more, "charge.dispute.created", 10_590_000)
    assert debit == 0
    disputed, debit = reversed_payment(paid, "charge.dispute.created", 10_590_000)
    assert (debit, disputed.reversed) == (10_000_000, 10_000_000)


def test_a_won_dispute_gives_back_what_the_dispute_took_once_in_any_order():
    paid = Payment("pi_1", "acct_1", credited=10_000_000)
    disputed, debit = reversed_payment(paid, "charge.dispute.created", 10_590_000)
    assert debit == 10_000_000
    won, debit = reversed_payment(disputed, "charge.dispute.closed", 10_590_000)
    assert (debit, won.reversed) == (-10_000_000, 0)
    for kind in ("charge.dispute.funds_reinstated", "charge.dispute.created", "charge.dispute.closed"):
        won, debit = reversed_payment(won, kind, 10_590_000)  # the other events of that dispute, late
        assert debit == 0
    # Won before the dispute's own event arrived: neither takes anything.
    early, debit = reversed_payment(paid, "charge.dispute.funds_reinstated", 10_590_000)
    assert debit == 0
    assert reversed_payment(early, "charge.dispute.created", 10_590_000)[1] == 0
    # A refund after a won dispute still takes back what it refunds.
    assert reversed_payment(won, "charge.refunded", 3_000_000)[1] == 3_000_000


def test_a_closed_dispute_reinstates_only_when_won():
    closed = {"type": "charge.dispute.closed", "data": {"object": {"amount": 1059, "payment_intent": "pi_1"}}}
    assert effect_of(closed).outcome == "ignored"
    closed["data"]["object"]["status"] = "lost"
    assert effect_of(closed).outcome == "ignored"
    closed["data"]["object"]["status"] = "won"
    assert (effect_of(closed).outcome, effect_of(closed).amount) == ("reversal", 10_590_000)

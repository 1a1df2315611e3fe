"""Prepaid top-ups through Stripe Checkout, fulfilled from Stripe's signed webhook.

The operator sells credit packs (IMAGEGATE_TOPUPS, template parameter TopupPacks): a JSON document of packs,
bounds for a custom amount and an optional fee (`DEFAULT_CONFIG` shows the shape). Balances are micro-USD,
so packs are sold in USD; Stripe counts cents, 10,000 micro-USD each.

A key holder's `POST /v1/billing/checkout` creates a Checkout Session (mode=payment) whose
`client_reference_id` is the account and whose metadata names the pack and the fee. Only the webhook
credits, from the signed event's session, and only a session imagegate created (metadata `imagegate: "1"`,
which a Payment Link's buyer cannot set): the `credit_cents` our server wrote into its metadata, when
`amount_total` is exactly that plus `fee_cents` (the payer can change neither), in `currency`, to
`client_reference_id`. Every correctly signed event is
answered 2xx, credited or not, so that Stripe stops retrying it; one that should have moved money and could
not is recorded `unapplied` and counted (TopupsUnapplied, an alarm).

Items (single table, `pk`/`sk`):
  STRIPE#EVENTS   / <event id>          -> type, outcome, account_id, amount (signed micro-USD), session_id,
                                           payment_intent, reason, received_at: one per event, written with
                                           attribute_not_exists in the transaction that moves the money
  STRIPE#SESSIONS / <session id>        -> account_id, event_id: a session credits once, whichever of its
                                           events (completed, async_payment_succeeded) arrives first
  STRIPE#PAYMENTS / <payment intent id> -> account_id, session_id, credited, refunded, disputed, reinstated
                                           (micro-USD): what refunds and disputes may take back, and what a
                                           won dispute gave back
Money moves as ledger entries (ledger.py): `topup` (+credited) and `reversal` (-refunded or disputed, or
+reinstated: a won dispute, `charge.dispute.closed` with status won or `charge.dispute.funds_reinstated`,
once). A reversal may take a balance below zero; reserving then answers 402 until the account is topped up.
A refund or dispute that arrives before its payment's credit is answered 503 while it is young
(EARLY_REVERSAL_RETRY_S), so that Stripe delivers it again after the credit.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from imagegate import errors
from imagegate.money import ledger
from imagegate.money.billing import BUSY_CODES
from imagegate.table import account_pk, item_key, query, request_token, transact_or_reasons
from imagegate.units import micros_to_decimal, usd_to_micros

CURRENCY = "usd"
MICROS_PER_CENT = 10_000
# The API version these shapes were tested with (the stripe library's own pin when it was added).
STRIPE_API_VERSION = "2026-10-28.endive"
SIGNATURE_TOLERANCE_S = 300  # Stripe's default: an older signed event is refused as a replay
# Sends of one credit or reversal through lost responses and throttling before the event is answered 500
# (Stripe then redelivers it).
TRANSACT_ATTEMPTS = 4
EVENTS_PK, SESSIONS_PK, PAYMENTS_PK = "STRIPE#EVENTS", "STRIPE#SESSIONS", "STRIPE#PAYMENTS"
CREDIT_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
REVERSAL_EVENTS = ("charge.refunded", "charge.dispute.created")
# A dispute the seller won gives its amount back; Stripe may send either event, or both, in any order.
REINSTATE_EVENTS = ("charge.dispute.closed", "charge.dispute.funds_reinstated")
# A refund or dispute may arrive before its payment's credit: while it is younger than this, it is answered
# 503 (and not recorded), so Stripe retries it after the credit; older, it is recorded `unapplied`.
EARLY_REVERSAL_RETRY_S = 3600
SESSION_MARKER = "imagegate"  # metadata key of the sessions checkout() creates: the only ones that credit
REVERSAL_REASONS = {"charge.refunded": "refund", "charge.dispute.created": "dispute"}
CREDENTIAL_NAMES = ("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET")
REVERSAL_ATTEMPTS = 5  # a refund racing another event of the same payment re-reads it and tries again
DEFAULT_CONFIG: dict[str, Any] = {
    "currency": CURRENCY,
    "minimum_usd": "5",
    "maximum_usd": "1000",
    "fee_percent": "0",
    "fee_fixed_usd": "0",
    "packs": [
        {"id": "starter", "credit_usd": "5", "label": "$5 of credit"},
        {"id": "standard", "credit_usd": "20", "label": "$20 of credit"},
        {"id": "large", "credit_usd": "100", "label": "$100 of credit"},
    ],
}


@dataclass(frozen=True)
class Pack:
    id: str
    credit_cents: int
    label: str


@dataclass(frozen=True)
class TopupConfig:
    packs: tuple[Pack, ...]
    minimum_cents: int  # bounds of a custom amount (`amount_usd`), in credit
    maximum_cents: int
    fee_percent: Decimal = Decimal(0)  # of the credit, rounded half up to the cent
    fee_fixed_cents: int = 0
    currency: str = CURRENCY

    def fee_cents(self, credit_cents: int) -> int:
        percent = (Decimal(credit_cents) * self.fee_percent / 100).quantize(Decimal(1), ROUND_HALF_UP)
        return int(percent) + self.fee_fixed_cents

    def public(self) -> dict[str, Any]:
        """What a key holder sees (`GET /v1/billing/packs`, `imagegate billing packs`)."""
        return {
            "object": "list",
            "currency": self.currency,
            "minimum_usd": _cents_usd(self.minimum_cents),
            "maximum_usd": _cents_usd(self.maximum_cents),
            "fee_percent": str(self.fee_percent),
            "fee_fixed_usd": _cents_usd(self.fee_fixed_cents),
            "data": [
                {
                    "id": p.id,
                    "label": p.label,
                    "credit_usd": _cents_usd(p.credit_cents),
                    "price_usd": _cents_usd(p.credit_cents + self.fee_cents(p.credit_cents)),
                }
                for p in self.packs
            ],
        }


def parse_config(document: Mapping[str, Any]) -> TopupConfig:
    """An operator's top-up document; ValueError naming the field for anything wrong (at startup, loudly)."""
    currency = str(document.get("currency", CURRENCY)).lower()
    if currency != CURRENCY:
        raise ValueError(f"top-ups: balances are in USD, so packs are sold in 'usd', not {currency!r}")

    def cents(name: str, value: Any) -> int:
        try:
            micros = usd_to_micros(str(value))
        except ValueError as exc:
            raise ValueError(f"top-ups: {name} is not a USD amount: {value!r}") from exc
        if micros < 0 or micros % MICROS_PER_CENT:
            raise ValueError(f"top-ups: {name} must be whole cents and not negative, got {value!r}")
        return micros // MICROS_PER_CENT

    packs, seen = [], set()
    for i, raw in enumerate(document.get("packs", [])):
        if not isinstance(raw, Mapping) or not str(raw.get("id", "")).strip():
            raise ValueError(f"top-ups: packs[{i}] needs an id")
        pack_id = str(raw["id"])
        if pack_id in seen:
            raise ValueError(f"top-ups: pack id {pack_id!r} appears twice")
        seen.add(pack_id)
        credit = cents(f"packs[{i}].credit_usd", raw.get("credit_usd"))
        if credit <= 0:
            raise ValueError(f"top-ups: packs[{i}].credit_usd must be above zero")
        packs.append(Pack(pack_id, credit, str(raw.get("label") or f"${_cents_usd(credit)} of credit")))
    minimum = cents("minimum_usd", document.get("minimum_usd", DEFAULT_CONFIG["minimum_usd"]))
    maximum = cents("maximum_usd", document.get("maximum_usd", DEFAULT_CONFIG["maximum_usd"]))
    if not 0 < minimum <= maximum:
        raise ValueError("top-ups: 0 < minimum_usd <= maximum_usd is required")
    try:
        percent = Decimal(str(document.get("fee_percent", "0")))
    except ArithmeticError as exc:
        raise ValueError("top-ups: fee_percent is not a number") from exc
    if not percent.is_finite() or not 0 <= percent <= 100:
        raise ValueError("top-ups: fee_percent must be from 0 to 100")
    fixed = cents("fee_fixed_usd", document.get("fee_fixed_usd", "0"))
    return TopupConfig(tuple(packs), minimum, maximum, percent, fixed, currency)


def load_config(source: str) -> TopupConfig:
    """IMAGEGATE_TOPUPS: JSON text, a path to a JSON file, or empty for DEFAULT_CONFIG."""
    if not source.strip():
        return parse_config(DEFAULT_CONFIG)
    text = source if source.lstrip().startswith("{") else Path(source).read_text()
    return parse_config(json.loads(text))


@dataclass(frozen=True)
class Purchase:
    """What one Checkout Session sells: `credit_cents` of credit for `credit_cents + fee_cents`."""

    pack: str  # "" for a custom amount
    credit_cents: int
    fee_cents: int
    currency: str = CURRENCY

    @property
    def total_cents(self) -> int:
        return self.credit_cents + self.fee_cents


def purchase(config: TopupConfig, body: Mapping[str, Any]) -> Purchase:
    """The body of `POST /v1/billing/checkout`: `{"pack": id}` or `{"amount_usd": "12.50"}` within the
    operator's bounds; a 400 naming the parameter otherwise."""
    pack_id, amount = body.get("pack"), body.get("amount_usd")
    if (pack_id is None) == (amount is None):
        raise errors.invalid("Send either 'pack' or 'amount_usd'.", "pack", "missing_required_parameter")
    if pack_id is not None:
        pack = next((p for p in config.packs if p.id == pack_id), None)
        if pack is None:
            known = ", ".join(p.id for p in config.packs) or "none"
            raise errors.invalid(f"Unknown pack {pack_id!r}; packs: {known}.", "pack", "invalid_value")
        return Purchase(pack.id, pack.credit_cents, config.fee_cents(pack.credit_cents), config.currency)
    if isinstance(amount, bool) or not isinstance(amount, str | int | float):
        raise errors.invalid("'amount_usd' must be a number of dollars.", "amount_usd", "invalid_type")
    try:
        micros = usd_to_micros(str(amount))
    except ValueError:
        micros = -1
    bounds = f"from {_cents_usd(config.minimum_cents)} to {_cents_usd(config.maximum_cents)} USD"
    if micros < 0 or micros % MICROS_PER_CENT:
        raise errors.invalid(f"'amount_usd' must be whole cents, {bounds}.", "amount_usd", "invalid_value")
    credit = micros // MICROS_PER_CENT
    if not config.minimum_cents <= credit <= config.maximum_cents:
        raise errors.invalid(f"'amount_usd' must be {bounds}.", "amount_usd", "invalid_value")
    return Purchase("", credit, config.fee_cents(credit), config.currency)


def session_params(p: Purchase, account_id: str, success_url: str, cancel_url: str) -> dict[str, Any]:
    """The Checkout Session for a purchase: one line for the credit, one for the fee if any."""
    name = f"imagegate credit: {_cents_usd(p.credit_cents)} USD" + (f" ({p.pack})" if p.pack else "")
    lines = [_line(name, p.credit_cents, p.currency)]
    if p.fee_cents:
        lines.append(_line("Payment fee", p.fee_cents, p.currency))
    return {
        "mode": "payment",
        "client_reference_id": account_id,
        "line_items": lines,
        "metadata": {
            SESSION_MARKER: "1",
            "pack": p.pack or "custom",
            "credit_cents": str(p.credit_cents),
            "fee_cents": str(p.fee_cents),
        },
        "payment_intent_data": {"metadata": {"account_id": account_id}},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }


def _line(name: str, cents: int, currency: str) -> dict[str, Any]:
    return {
        "quantity": 1,
        "price_data": {"currency": currency, "unit_amount": cents, "product_data": {"name": name}},
    }


# --- events ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Effect:
    """What one verified event does. `outcome`: credit, reversal (refund or dispute), or a no-op that is
    still recorded: ignored (a type we do not act on), unpaid (a session awaiting its async payment),
    unapplied (should have moved money and could not: counted and alarmed)."""

    outcome: str
    account_id: str = ""
    amount: int = 0  # micro-USD: the credit, or for a reversal the cumulative amount Stripe reports
    session_id: str = ""
    payment_intent: str = ""
    reason: str = ""


def effect_of(event: Mapping[str, Any], currency: str = CURRENCY) -> Effect:
    """A verified event's effect, from the event alone (no call back to Stripe)."""
    kind = event.get("type", "")
    obj = (event.get("data") or {}).get("object") or {}
    if kind in CREDIT_EVENTS:
        session_id = str(obj.get("id", ""))
        intent = _id(obj.get("payment_intent"))
        if obj.get("mode") not in (None, "payment"):
            return Effect("ignored", session_id=session_id, reason=f"mode {obj.get('mode')}")
        if kind == "checkout.session.completed" and obj.get("payment_status") != "paid":
            status = obj.get("payment_status")
            if status == "unpaid":
                return Effect(
                    "unpaid", session_id=session_id, payment_intent=intent, reason="awaiting payment"
                )
            return Effect("ignored", session_id=session_id, reason=f"payment_status {status}")
        account = str(obj.get("client_reference_id") or "")
        paid, got = obj.get("amount_total"), str(obj.get("currency", "")).lower()
        metadata = obj.get("metadata") or {}
        credit, fee = str(metadata.get("credit_cents", "")), str(metadata.get("fee_cents", ""))
        why = ""
        if metadata.get(SESSION_MARKER) != "1":
            # A session imagegate did not create (a Payment Link, another product's Checkout): its
            # client_reference_id may be whatever the buyer typed.
            why = "not a session imagegate created"
        elif not account:
            why = "the session names no client_reference_id"
        elif got != currency:
            why = f"paid in {got!r}, balances are {currency!r}"
        elif isinstance(paid, bool) or not isinstance(paid, int) or not credit.isdigit() or not fee.isdigit():
            why = "the session's amount_total or credit and fee metadata is not a whole number of cents"
        elif int(credit) <= 0 or paid != int(credit) + int(fee):
            why = f"amount_total {paid} is not the credit {credit} plus the fee {fee}"
        if why:
            return Effect("unapplied", account, 0, session_id, intent, why)
        return Effect("credit", account, int(credit) * MICROS_PER_CENT, session_id, intent)
    if kind == "charge.dispute.closed" and obj.get("status") != "won":  # lost: the dispute's debit stands
        return Effect(
            "ignored", payment_intent=_id(obj.get("payment_intent")), reason=f"dispute {obj.get('status')}"
        )
    if kind in REVERSAL_EVENTS + REINSTATE_EVENTS:
        intent = _id(obj.get("payment_intent"))
        # A refund event carries the charge's cumulative amount refunded; a dispute, the amount disputed.
        cents = obj.get("amount_refunded") if kind == "charge.refunded" else obj.get("amount")
        if not intent or isinstance(cents, bool) or not isinstance(cents, int) or cents < 0:
            return Effect(
                "unapplied", payment_intent=intent, reason=f"{kind} without a payment_intent or amount"
            )
        return Effect("reversal", amount=cents * MICROS_PER_CENT, payment_intent=intent)
    return Effect("ignored", reason=f"type {kind}")


@dataclass(frozen=True)
class Payment:
    """A credited payment, as STRIPE#PAYMENTS holds it."""

    payment_intent: str
    account_id: str
    credited: int
    refunded: int = 0
    disputed: int = 0
    reinstated: int = 0  # of the disputed amount, what a won dispute gave back

    @property
    def reversed(self) -> int:
        return min(self.credited, self.refunded + self.disputed - self.reinstated)


def reversed_payment(payment: Payment, kind: str, amount: int) -> tuple[Payment, int]:
    """The payment after a refund or dispute event, and what to debit now: refunds and disputes together
    never take back more than the payment credited, and a repeated figure takes nothing more. A won dispute
    (a negative debit) gives its amount back once, whichever of its events comes first, even before the
    dispute's own `charge.dispute.created`."""
    if kind == "charge.refunded":
        after = Payment(**{**payment.__dict__, "refunded": max(payment.refunded, amount)})
    elif kind in REINSTATE_EVENTS:
        after = Payment(
            **{
                **payment.__dict__,
                "disputed": max(payment.disputed, amount),
                "reinstated": max(payment.reinstated, amount),
            }
        )
    else:
        after = Payment(**{**payment.__dict__, "disputed": max(payment.disputed, amount)})
    return after, after.reversed - payment.reversed


def _id(value: Any) -> str:
    """A Stripe reference, expanded (an object) or not (its id)."""
    return str(value.get("id", "")) if isinstance(value, Mapping) else str(value or "")


def _cents_usd(cents: int) -> str:
    return micros_to_decimal(cents * MICROS_PER_CENT)[:-4]


# --- I/O ---------------------------------------------------------------------------------------------------


class SignatureError(ValueError):
    """A webhook whose Stripe-Signature does not verify (missing, forged, too old), or not an event."""


class RetryLater(Exception):
    """A verified event that cannot be applied yet (a refund ahead of its payment's credit): answer 5xx
    without recording it, so that Stripe delivers it again."""


@dataclass
class Topups:
    """Checkout Sessions out, signed events in. `credentials` gives STRIPE_SECRET_KEY and
    STRIPE_WEBHOOK_SECRET (credentials.py: the upstream secret on AWS, IMAGEGATE_* variables locally);
    `api_base`: another Stripe API to talk to (make serve's fake, local/fake_stripe.py)."""

    dynamodb: Any
    table: str
    config: TopupConfig
    credentials: Callable[[], Mapping[str, str]]
    api_base: str = ""
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    _client: Any = field(default=None, init=False, repr=False)

    def checkout(self, account_id: str, body: Mapping[str, Any], return_url: str) -> dict[str, str]:
        p = purchase(self.config, body)
        secret = self.credentials().get("STRIPE_SECRET_KEY")
        if not secret:
            raise errors.APIError(
                503,
                "Top-ups are not configured on this deployment.",
                type="server_error",
                code="topups_disabled",
            )
        params = session_params(
            p,
            account_id,
            success_url=f"{return_url}?checkout=success&session_id={{CHECKOUT_SESSION_ID}}",
            cancel_url=f"{return_url}?checkout=cancelled",
        )
        import stripe  # only the checkout and webhook paths pay for it

        try:
            session = self._stripe(secret).v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]
        except stripe.StripeError as exc:
            # Stripe's own message may name the account's settings; the client gets the code only.
            raise errors.APIError(
                502,
                f"Stripe refused the Checkout Session ({exc.code or type(exc).__name__}).",
                type="server_error",
                code="stripe_error",
            ) from exc
        return {"id": session.id, "url": session.url}

    def _stripe(self, secret: str) -> Any:
        if self._client is None:
            import stripe

            self._client = stripe.StripeClient(
                secret,
                stripe_version=STRIPE_API_VERSION,
                base_addresses={"api": self.api_base} if self.api_base else None,  # type: ignore[arg-type]
                http_client=stripe.HTTPXClient(timeout=10, allow_sync_methods=True),
                max_network_retries=2,
            )
        return self._client

    def verify(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """The event, once its signature over the raw body verifies; SignatureError otherwise."""
        import stripe

        secret = self.credentials().get("STRIPE_WEBHOOK_SECRET")
        if not secret:
            raise SignatureError("no STRIPE_WEBHOOK_SECRET is configured")
        try:
            event = stripe.Webhook.construct_event(
                payload, signature, secret, tolerance=SIGNATURE_TOLERANCE_S
            )
        except stripe.SignatureVerificationError as exc:
            raise SignatureError("the Stripe-Signature header does not verify") from exc
        except ValueError as exc:  # a verified body that is not JSON: Stripe never sends one
            raise SignatureError("the body is not a JSON event") from exc
        return event.to_dict()

    def apply(self, event: Mapping[str, Any]) -> Effect:
        """Apply a verified event exactly once; its effect (a replay: `duplicate`)."""
        effect = effect_of(event, self.config.currency)
        event_id, kind = str(event["id"]), str(event.get("type", ""))
        if effect.outcome == "credit":
            return self._credit(event_id, kind, effect)
        if effect.outcome == "reversal":
            created = event.get("created")
            young = isinstance(created, int) and self.clock() - created < EARLY_REVERSAL_RETRY_S
            return self._reverse(event_id, kind, effect, retry=young)
        return self._record(event_id, kind, effect)

    def _event_put(self, event_id: str, kind: str, effect: Effect, amount: int) -> dict[str, Any]:
        item = {
            **item_key(EVENTS_PK, event_id),
            "type": {"S": kind},
            "outcome": {"S": effect.outcome},
            "amount": {"N": str(amount)},
            "received_at": {"N": str(int(self.clock()))},
            **{
                name: {"S": value}
                for name, value in (
                    ("account_id", effect.account_id),
                    ("session_id", effect.session_id),
                    ("payment_intent", effect.payment_intent),
                    ("reason", effect.reason),
                )
                if value
            },
        }
        return {
            "Put": {"TableName": self.table, "Item": item, "ConditionExpression": "attribute_not_exists(pk)"}
        }

    def _record(self, event_id: str, kind: str, effect: Effect) -> Effect:
        failed = transact_or_reasons(self.dynamodb, [self._event_put(event_id, kind, effect, 0)])
        return Effect("duplicate") if failed is not None else effect

    def _credit(self, event_id: str, kind: str, effect: Effect) -> Effect:
        now = self.clock()
        actions = [
            self._event_put(event_id, kind, effect, effect.amount),
            {
                "Put": {
                    "TableName": self.table,
                    "Item": {
                        **item_key(SESSIONS_PK, effect.session_id),
                        "account_id": {"S": effect.account_id},
                        "event_id": {"S": event_id},
                    },
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
            {
                "Update": {
                    "TableName": self.table,
                    "Key": item_key(account_pk(effect.account_id), "ACCOUNT"),
                    "UpdateExpression": "ADD balance :amount",
                    "ConditionExpression": "attribute_exists(pk)",
                    "ExpressionAttributeValues": {":amount": {"N": str(effect.amount)}},
                }
            },
            ledger.entry(
                effect.account_id,
                "topup",
                effect.amount,
                lambda: now,
                table=self.table,
                reason=f"Stripe {effect.session_id}",
                event_id=event_id,
                session_id=effect.session_id,
                payment_intent=effect.payment_intent,
            ),
        ]
        if effect.payment_intent:
            actions.append(
                {
                    "Put": {
                        "TableName": self.table,
                        "Item": {
                            **item_key(PAYMENTS_PK, effect.payment_intent),
                            "account_id": {"S": effect.account_id},
                            "session_id": {"S": effect.session_id},
                            "credited": {"N": str(effect.amount)},
                            "refunded": {"N": "0"},
                            "disputed": {"N": "0"},
                            "reinstated": {"N": "0"},
                        },
                        "ConditionExpression": "attribute_not_exists(pk)",
                    }
                }
            )
        failed = self._transact(actions, event_id, "credit")
        if failed is None:
            return effect
        if 0 in failed or 1 in failed:  # this event, or another event of the same session, credited it
            return self._record(event_id, kind, Effect("duplicate", effect.account_id, 0, effect.session_id))
        reason = "no such account" if 2 in failed else "the payment was credited by another session"
        return self._record(event_id, kind, _unapplied(effect, reason))

    def _reverse(self, event_id: str, kind: str, effect: Effect, retry: bool = False) -> Effect:
        for _ in range(REVERSAL_ATTEMPTS):
            item = self.dynamodb.get_item(
                TableName=self.table, Key=item_key(PAYMENTS_PK, effect.payment_intent), ConsistentRead=True
            ).get("Item")
            if item is None:
                # Ahead of its session's event (Stripe does not order deliveries): Stripe retries it. Still
                # none after EARLY_REVERSAL_RETRY_S (another product's payment): recorded and alarmed for
                # the operator, never guessed at. A retry, unlike a pending reversal, leaves no state to
                # keep consistent: the credit and then the reversal each apply as they always do.
                if retry:
                    raise RetryLater("no credited payment for it yet")
                return self._record(event_id, kind, _unapplied(effect, "no credited payment for it"))
            payment = Payment(
                effect.payment_intent,
                item["account_id"]["S"],
                *(int(item[n]["N"]) for n in ("credited", "refunded", "disputed")),
                int(item.get("reinstated", {"N": "0"})["N"]),
            )
            after, debit = reversed_payment(payment, kind, effect.amount)
            done = Effect(
                "reversal", payment.account_id, -debit, item["session_id"]["S"], effect.payment_intent
            )
            actions = [
                self._event_put(event_id, kind, done, -debit),
                {
                    "Update": {
                        "TableName": self.table,
                        "Key": item_key(PAYMENTS_PK, effect.payment_intent),
                        "UpdateExpression": "SET refunded = :r, disputed = :d, reinstated = :i",
                        "ConditionExpression": "refunded = :r0 AND disputed = :d0 AND "
                        "(reinstated = :i0 OR attribute_not_exists(reinstated))",
                        "ExpressionAttributeValues": {
                            ":r": {"N": str(after.refunded)},
                            ":d": {"N": str(after.disputed)},
                            ":i": {"N": str(after.reinstated)},
                            ":r0": {"N": str(payment.refunded)},
                            ":d0": {"N": str(payment.disputed)},
                            ":i0": {"N": str(payment.reinstated)},
                        },
                    }
                },
            ]
            if debit:
                now = self.clock()
                actions += [
                    {
                        "Update": {
                            "TableName": self.table,
                            "Key": item_key(account_pk(payment.account_id), "ACCOUNT"),
                            "UpdateExpression": "ADD balance :amount",
                            "ConditionExpression": "attribute_exists(pk)",
                            "ExpressionAttributeValues": {":amount": {"N": str(-debit)}},
                        }
                    },
                    ledger.entry(
                        payment.account_id,
                        "reversal",
                        -debit,
                        lambda now=now: now,
                        table=self.table,
                        reason=REVERSAL_REASONS.get(kind, "dispute won"),
                        event_id=event_id,
                        payment_intent=effect.payment_intent,
                    ),
                ]
            failed = self._transact(actions, event_id, "reversal")
            if failed is None:
                return done
            if 0 in failed:
                return Effect("duplicate")
            if 2 in failed:
                return self._record(event_id, kind, _unapplied(done, "no such account"))
            # 1: another event of this payment moved it meanwhile; read it again
        return self._record(event_id, kind, _unapplied(effect, "the payment kept changing"))

    def _transact(self, actions: list[dict[str, Any]], *name: str) -> dict[int, Any] | None:
        """A transaction that moves money, sent unchanged under one ClientRequestToken until it answers: one
        that committed behind a lost response is then found committed, not refused as a duplicate. The token
        names the parameter set (a reversal re-read after a race builds other actions, so another token):
        DynamoDB refuses one token with other parameters."""
        digest = hashlib.sha256(json.dumps(actions, sort_keys=True).encode()).hexdigest()
        token = request_token("topups", *name, digest)
        attempt = 1
        while True:
            try:
                return transact_or_reasons(self.dynamodb, actions, self.sleep, token)
            except (ClientError, BotoCoreError) as exc:
                busy = isinstance(exc, BotoCoreError) or exc.response["Error"]["Code"] in BUSY_CODES
                if not busy or attempt == TRANSACT_ATTEMPTS:
                    raise
                self.sleep(0.05 * 2**attempt)
                attempt += 1

    def events(self, account_id: str | None = None) -> list[dict[str, Any]]:
        """Every recorded event (one account's), newest first: what arrived and what it did."""
        rows = []
        for item in query(
            self.dynamodb,
            TableName=self.table,
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": EVENTS_PK}},
        ):
            row = {
                "id": item["sk"]["S"],
                "type": item["type"]["S"],
                "outcome": item["outcome"]["S"],
                "amount_micros": int(item["amount"]["N"]),
                "received_at": int(item["received_at"]["N"]),
                **{
                    name: item[name]["S"] if name in item else ""
                    for name in ("account_id", "session_id", "payment_intent", "reason")
                },
            }
            if account_id is None or row["account_id"] == account_id:
                rows.append(row)
        return sorted(rows, key=lambda r: (r["received_at"], r["id"]), reverse=True)


def _unapplied(effect: Effect, reason: str) -> Effect:
    return Effect("unapplied", effect.account_id, 0, effect.session_id, effect.payment_intent, reason)

"""A small fake of Stripe for `make serve` and the tests: Checkout Sessions, a hosted payment page, refunds,
and signed webhook events. localstripe (PyPI) fakes charges, customers, payment intents and refunds but has
no Checkout Sessions, which is all top-ups use, so this fake covers just that much, on Stripe's documented
request and response shapes:

  POST /v1/checkout/sessions          (form-encoded, as the stripe library sends it) -> a session, `url` here
  GET  /v1/checkout/sessions/{id}
  GET  /pay/{id}                      the hosted page: pay by card (paid at once) or by bank transfer
                                      (completed unpaid, then `async_payment_succeeded`)
  POST /v1/checkout/sessions/{id}/settle  (not Stripe's API: a bank transfer arriving; `failed=true` for one
                                      that does not) -> checkout.session.async_payment_succeeded (_failed)
  POST /v1/refunds                    (payment_intent, amount) -> charge.refunded
  POST /v1/disputes                   (payment_intent, amount; not Stripe's API: a buyer's bank opens those)
                                      -> charge.dispute.created

Each event is signed as Stripe signs (`Stripe-Signature: t=...,v1=HMAC-SHA256("<t>.<body>")`, the stripe
library's own helper) and POSTed to the webhook URL at once; `deliveries` keeps what it answered.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import anyio.to_thread
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

_ITEM = re.compile(r"^line_items\[(\d+)\]\[(quantity|price_data\]\[(currency|unit_amount))\]?$")
_METADATA = re.compile(r"^metadata\[([^\]]+)\]$")


@dataclass
class FakeStripe:
    secret_key: str
    webhook_secret: str
    webhook_url: str = ""  # where events go; set once the API's address is known
    base_url: str = ""  # this fake's own address, for sessions' `url`
    clock: Callable[[], float] = time.time
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)  # by payment intent
    deliveries: list[tuple[str, int]] = field(default_factory=list)  # (event type, status answered)
    payloads: list[str] = field(default_factory=list)  # every event body delivered, to replay
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/checkout/sessions", self._create_session, methods=["POST"]),
                Route("/v1/checkout/sessions/{id}", self._get_session, methods=["GET"]),
                Route("/v1/checkout/sessions/{id}/settle", self._settle_route, methods=["POST"]),
                Route("/pay/{id}", self._page, methods=["GET"]),
                Route("/pay/{id}", self._pay, methods=["POST"]),
                Route("/v1/refunds", self._payment_route(self.refund), methods=["POST"]),
                Route("/v1/disputes", self._payment_route(self.dispute), methods=["POST"]),
            ]
        )

    # --- the API ---------------------------------------------------------------------------------------

    async def _form(self, request: Request) -> dict[str, str] | Response:
        if request.headers.get("authorization") != f"Bearer {self.secret_key}":
            return _error(401, "Invalid API Key provided.", "api_key_invalid")
        return dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))

    async def _create_session(self, request: Request) -> Response:
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        items: dict[int, dict[str, str]] = {}
        metadata = {}
        for name, value in form.items():
            if match := _ITEM.match(name):
                items.setdefault(int(match[1]), {})[match[3] or match[2]] = value
            elif match := _METADATA.match(name):
                metadata[match[1]] = value
        if form.get("mode") != "payment" or not items:
            return _error(400, "This fake takes mode=payment sessions with line_items.", "parameter_missing")
        currencies = {item.get("currency", "") for item in items.values()}
        if len(currencies) != 1:
            return _error(400, "Line items must share one currency.", "parameter_invalid")
        session_id = "cs_test_" + secrets.token_hex(12)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": "payment",
            "status": "open",
            "payment_status": "unpaid",
            "amount_total": sum(int(i["unit_amount"]) * int(i.get("quantity", "1")) for i in items.values()),
            "currency": currencies.pop(),
            "client_reference_id": form.get("client_reference_id"),
            "metadata": metadata,
            "payment_intent": None,
            "success_url": form.get("success_url"),
            "cancel_url": form.get("cancel_url"),
            "url": f"{self.base_url}/pay/{session_id}",
            "created": int(self.clock()),
            "livemode": False,
        }
        with self._lock:
            self.sessions[session_id] = session
        return JSONResponse(session)

    async def _get_session(self, request: Request) -> Response:
        session = self.sessions.get(request.path_params["id"])
        if session is None:
            return _error(404, "No such checkout.session.", "resource_missing")
        return JSONResponse(session)

    async def _settle_route(self, request: Request) -> Response:
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        session_id = request.path_params["id"]
        if self.sessions.get(session_id, {}).get("status") != "complete":
            return _error(404, "No completed checkout.session with that id.", "resource_missing")
        await anyio.to_thread.run_sync(self.settle_async, session_id, form.get("failed") != "true")
        return JSONResponse(self.sessions[session_id])

    def _payment_route(self, act: Callable[[str, int | None], dict[str, Any] | None]) -> Callable[..., Any]:
        """A route that refunds or disputes (`act`) the form's `payment_intent`, by its `amount` or whole."""

        async def route(request: Request) -> Response:
            form = await self._form(request)
            if isinstance(form, Response):
                return form
            amount = int(form["amount"]) if "amount" in form else None
            # In a thread, as every route that sends an event: the webhook may be served by this server.
            done = await anyio.to_thread.run_sync(act, form.get("payment_intent", ""), amount)
            return JSONResponse(done) if done else _error(404, "No such payment_intent.", "resource_missing")

        return route

    # --- the hosted page -------------------------------------------------------------------------------

    async def _page(self, request: Request) -> Response:
        session = self.sessions.get(request.path_params["id"])
        if session is None or session["status"] != "open":
            return HTMLResponse("<h1>This checkout is no longer open.</h1>", status_code=404)
        amount = f"${session['amount_total'] // 100}.{session['amount_total'] % 100:02d}"
        return HTMLResponse(
            f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Fake Stripe Checkout</title></head>
<body><h1>Fake Stripe Checkout (test mode)</h1>
<p>Pay <strong id="amount">{amount}</strong> {html.escape(session["currency"].upper())}
for {html.escape(session["metadata"].get("pack", ""))} credit.</p>
<form method="post"><button id="pay-card" name="method" value="card">Pay by card</button>
<button id="pay-bank" name="method" value="bank">Pay by bank transfer (confirms later)</button></form>
<p><a href="{html.escape(session["cancel_url"] or "")}">Cancel</a></p></body></html>"""
        )

    async def _pay(self, request: Request) -> Response:
        session = self.sessions.get(request.path_params["id"])
        if session is None or session["status"] != "open":
            return HTMLResponse("<h1>This checkout is no longer open.</h1>", status_code=404)
        form = dict(parse_qsl((await request.body()).decode()))
        await anyio.to_thread.run_sync(self.complete, session["id"], form.get("method") != "bank")
        target = (session["success_url"] or "").replace("{CHECKOUT_SESSION_ID}", session["id"])
        return RedirectResponse(target, status_code=303)

    # --- what a payment does (also called directly by tests) ---------------------------------------------

    def complete(self, session_id: str, paid: bool = True) -> dict[str, Any]:
        """The payer finished checkout: paid at once (card), or unpaid until `settle_async` (bank)."""
        with self._lock:
            session = self.sessions[session_id]
            intent = "pi_test_" + secrets.token_hex(12)
            session.update(
                status="complete", payment_intent=intent, payment_status="paid" if paid else "unpaid"
            )
            self.charges[intent] = {
                "id": "ch_test_" + secrets.token_hex(12),
                "object": "charge",
                "amount": session["amount_total"],
                "amount_refunded": 0,
                "currency": session["currency"],
                "payment_intent": intent,
                "refunded": False,
            }
            snapshot = dict(session)
        self.send("checkout.session.completed", snapshot)
        return snapshot

    def settle_async(self, session_id: str, succeeded: bool = True) -> None:
        with self._lock:
            session = self.sessions[session_id]
            if succeeded:
                session["payment_status"] = "paid"
            snapshot = dict(session)
        kind = "succeeded" if succeeded else "failed"
        self.send(f"checkout.session.async_payment_{kind}", snapshot)

    def refund(self, payment_intent: str, amount: int | None = None) -> dict[str, Any] | None:
        with self._lock:
            charge = self.charges.get(payment_intent)
            if charge is None:
                return None
            left = charge["amount"] - charge["amount_refunded"]
            charge["amount_refunded"] += min(left, amount if amount is not None else left)
            charge["refunded"] = charge["amount_refunded"] == charge["amount"]
            snapshot = dict(charge)
        self.send("charge.refunded", snapshot)
        return {
            "id": "re_test_" + secrets.token_hex(12),
            "object": "refund",
            "payment_intent": payment_intent,
        }

    def dispute(self, payment_intent: str, amount: int | None = None) -> dict[str, Any] | None:
        charge = self.charges.get(payment_intent)
        if charge is None:
            return None
        dispute = {
            "id": "dp_test_" + secrets.token_hex(12),
            "object": "dispute",
            "amount": charge["amount"] if amount is None else amount,
            "charge": charge["id"],
            "currency": charge["currency"],
            "payment_intent": payment_intent,
            "reason": "fraudulent",
            "status": "needs_response",
        }
        self.send("charge.dispute.created", dispute)
        return dispute

    def event(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "evt_test_" + secrets.token_hex(12),
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": int(self.clock()),
            "type": kind,
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1,
        }

    def sign(self, payload: str, timestamp: int | None = None) -> str:
        """The Stripe-Signature header for a body, by the stripe library's own helper."""
        import stripe

        return stripe.WebhookSignature.generate_signature_header(
            payload, self.webhook_secret, int(self.clock()) if timestamp is None else timestamp
        )

    def send(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Deliver one signed event to the webhook URL (as Stripe does: POST, raw JSON body)."""
        event = self.event(kind, obj)
        self.deliver(json.dumps(event))
        return event

    def deliver(self, payload: str, signature: str | None = None) -> httpx.Response:
        headers = {"content-type": "application/json; charset=utf-8", "user-agent": "Stripe/1.0 (fake)"}
        headers["stripe-signature"] = signature or self.sign(payload)
        response = httpx.post(self.webhook_url, content=payload.encode(), headers=headers, timeout=30)
        self.deliveries.append((json.loads(payload).get("type", ""), response.status_code))
        self.payloads.append(payload)
        return response


def _error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}}, status
    )

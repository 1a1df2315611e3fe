"""What a key holder does with their own key: buy credit (Stripe Checkout), read their balance the way chat
clients do, their request log, their keys (admin keys only), the price book; and the console page that
shows all of it. Also Stripe's webhook, which credits the top-ups (its own function: no key, a signature).
"""

import sys
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from imagegate import errors
from imagegate.errors import APIError
from imagegate.http.bodies import public_path, read_body, read_json
from imagegate.money import statements
from imagegate.money.accounts import Account, KeyInfo, NotFound
from imagegate.money.ledger import MAX_USAGE_DAYS
from imagegate.service import Service
from imagegate.units import micros_to_decimal, usd_to_micros

CHECKOUT_ROUTE = "/v1/billing/checkout"
STRIPE_WEBHOOK_ROUTE = "/v1/billing/stripe/webhook"
SUBSCRIPTION_ROUTE = "/v1/dashboard/billing/subscription"
CONSOLE_ROUTE = "/console"
# Every account route the `account` function serves, with its method (api.METHODS: 405s).
ACCOUNT_ROUTES = {
    "/v1/billing/packs": "GET",
    CHECKOUT_ROUTE: "POST",
    "/v1/billing/topups": "GET",
    SUBSCRIPTION_ROUTE: "GET",
    "/v1/dashboard/billing/usage": "GET",
    "/v1/usage/requests": "GET",
    "/v1/keys": "GET, POST",
    "/v1/prices": "GET",
}
# The console's own files (http/console/), and nothing else: no third-party origin, no inline script.
CONSOLE_FILES = {"console.css": "text/css", "console.js": "text/javascript"}
CONSOLE_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        # Images: the playground's b64_json (data:) and stored images (the outputs bucket's presigned URLs).
        "img-src 'self' data: https:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
MAX_CSV_ROWS = 1000
RECENT_TOPUPS = 20


def add_account_routes(app: FastAPI, service: Service, account_dep: Any) -> None:
    """The key holder's JSON endpoints (function `account`)."""

    @app.get("/v1/billing/packs")
    def packs(acct: account_dep) -> JSONResponse:  # type: ignore[valid-type]
        return JSONResponse(service.topups.config.public())

    @app.post(CHECKOUT_ROUTE)
    async def checkout(request: Request, acct: account_dep) -> JSONResponse:  # type: ignore[valid-type]
        body = await read_json(request)
        console = f"{_origin(request)}{public_path(request, CONSOLE_ROUTE)}"
        return JSONResponse(await run_in_threadpool(service.topups.checkout, acct.account_id, body, console))

    @app.get("/v1/billing/topups")
    def topups(acct: account_dep) -> JSONResponse:  # type: ignore[valid-type]
        rows = statements.topups(service.aws.dynamodb, service.settings.table, acct.account_id, RECENT_TOPUPS)
        return JSONResponse({"object": "list", "data": rows})

    @app.get(SUBSCRIPTION_ROUTE)
    def subscription(acct: account_dep) -> JSONResponse:  # type: ignore[valid-type]
        today = _today(service)
        first = statements.month_start(today)
        rows = _usage(service, acct, (today - first).days + 1)
        balance = service.accounts.balance(acct.account_id) or 0
        spent = statements.spent(rows, first, today + timedelta(days=1))
        return JSONResponse(statements.subscription(balance, spent))

    @app.get("/v1/dashboard/billing/usage")
    def legacy_usage(
        acct: account_dep,  # type: ignore[valid-type]
        start_date: str | None = None,
        end_date: str | None = None,
    ) -> JSONResponse:
        try:
            first, end = statements.usage_range(start_date, end_date)
        except ValueError as exc:
            raise errors.invalid(
                f"'{exc}' must be a date (YYYY-MM-DD); end_date after start_date, at most "
                f"{statements.MAX_USAGE_RANGE_DAYS} days later.",
                str(exc),
            ) from None
        days = min((_today(service) - first).days + 1, MAX_USAGE_DAYS)
        rows = _usage(service, acct, days) if days >= 1 else []
        return JSONResponse(statements.usage(statements.spent(rows, first, end)))

    @app.get("/v1/usage/requests")
    def requests_log(
        acct: account_dep,  # type: ignore[valid-type]
        limit: Annotated[int, Query(ge=1, le=MAX_CSV_ROWS)] = 20,
        after: str | None = None,
        format: str = "json",
    ) -> Response:
        if after is not None and not statements.valid_cursor(after):
            raise errors.invalid("'after' is not a cursor this endpoint returned.", "after")
        if format not in ("json", "csv"):
            raise errors.invalid_choice("format", format, ("json", "csv"))
        if format == "json" and limit > statements.MAX_LOG_LIMIT:
            raise errors.invalid(f"'limit' is at most {statements.MAX_LOG_LIMIT} for JSON pages.", "limit")
        rows, cursor = statements.request_log(
            service.aws.dynamodb, service.settings.table, acct.account_id, limit, after
        )
        for row in rows:
            row["image_urls"] = _image_urls(service, acct.account_id, row)
            del row["_stored"], row["_output_format"]
        if format == "csv":
            return Response(
                statements.log_csv(rows),
                media_type="text/csv",
                headers={"content-disposition": 'attachment; filename="imagegate-requests.csv"'},
            )
        return JSONResponse({"object": "list", "data": rows, "has_more": cursor is not None, "next": cursor})

    @app.get("/v1/keys")
    def list_keys(acct: account_dep) -> JSONResponse:  # type: ignore[valid-type]
        _admin(acct)
        used = statements.last_used(_usage(service, acct, 90))
        keys = [
            {
                **key,
                "budget_usd": None if key["budget"] is None else micros_to_decimal(key["budget"]),
                "spent_usd": micros_to_decimal(key["spent"]),
                "last_used": used.get(key["key_id"]),
                "current": key["key_id"] == acct.key_id,
            }
            for key in service.accounts.list_keys(acct.account_id)
        ]
        return JSONResponse({"object": "list", "data": keys})

    @app.post("/v1/keys")
    async def create_key(request: Request, acct: account_dep) -> JSONResponse:  # type: ignore[valid-type]
        _admin(acct)
        body = await read_json(request)
        label, ipm = body.get("label", ""), body.get("images_per_minute")
        if not isinstance(label, str) or len(label) > 100:
            raise errors.invalid("'label' must be text of at most 100 characters.", "label")
        own = service.accounts.get_key(acct.key_id)
        ceiling = min(_account_ipm(service, acct.account_id), own["images_per_minute"] or sys.maxsize)
        if ipm is not None and (isinstance(ipm, bool) or not isinstance(ipm, int) or not 1 <= ipm <= ceiling):
            raise errors.invalid(
                f"'images_per_minute' must be a whole number from 1 to this key's and its account's limit, "
                f"{ceiling}.",
                "images_per_minute",
            )
        # A key never hands out more than it holds: a rate-limited key's new keys inherit its limit,
        # a budgeted key's new keys need a budget within what it has left.
        ipm = ipm if ipm is not None else own["images_per_minute"]
        budget = _budget(body.get("budget_usd"))
        left = _left(own)
        if left is not None and (budget is None or budget > left):
            raise APIError(
                403,
                f"This key has a budget: a key it creates needs 'budget_usd' of at most what it has left, "
                f"{micros_to_decimal(max(left, 0))} USD.",
                type="permission_error",
                param="budget_usd",
                code="exceeds_own_budget",
            )
        key = await run_in_threadpool(
            service.accounts.create_key, acct.account_id, label, images_per_minute=ipm, budget=budget
        )
        info = service.accounts.get_key(_key_id(key))
        return JSONResponse({**info, "key": key}, status_code=201)

    @app.post("/v1/keys/{key_id}/revoke")
    def revoke_key(acct: account_dep, key_id: str) -> JSONResponse:  # type: ignore[valid-type]
        _admin(acct)
        try:
            key = service.accounts.get_key(key_id)
        except NotFound:
            key = None
        if key is None or key["account_id"] != acct.account_id:
            raise APIError(404, f"No key '{key_id}' in this account.", param="key_id", code="key_not_found")
        if key_id == acct.key_id:
            raise errors.invalid("A key cannot revoke itself here; use another admin key.", "key_id")
        if not _covers(service.accounts.get_key(acct.key_id), key):
            raise APIError(
                403,
                "This key cannot revoke a key with more rights than its own (no budget or a larger one left, "
                "no images_per_minute limit or a higher one, or admin); use an admin key without limits.",
                type="permission_error",
                param="key_id",
                code="exceeds_own_rights",
            )
        service.accounts.revoke_key(key_id)
        return JSONResponse({**service.accounts.get_key(key_id)})

    @app.get("/v1/prices")
    def prices(acct: account_dep) -> JSONResponse:  # type: ignore[valid-type]
        data = []
        for model_id, price in sorted(service.prices.models.items()):
            per_image = [
                {"quality": quality, "size": size, "usd": micros_to_decimal(price.marked_up(micros))}
                for (quality, size), micros in sorted(price.per_image_micros.items())
            ]
            data.append({"model": model_id, "per_image": per_image, "token_priced": price.tokens is not None})
        return JSONResponse({"object": "list", "data": data})


def add_console_routes(app: FastAPI) -> None:
    """The console (function `account`): static files from the layer, under a strict CSP."""

    @app.get(CONSOLE_ROUTE)
    def console() -> Response:
        return _console_file("index.html", "text/html; charset=utf-8")

    @app.get(CONSOLE_ROUTE + "/{name}")
    def console_file(name: str) -> Response:
        if name not in CONSOLE_FILES:
            raise APIError(404, f"Invalid URL (GET {CONSOLE_ROUTE}/{name}).", code="not_found")
        return _console_file(name, CONSOLE_FILES[name] + "; charset=utf-8")


def add_webhook_route(app: FastAPI, service: Service) -> None:
    """Stripe's webhook (function `stripe_webhook`): the raw body, verified before anything is parsed."""
    from imagegate.money.topups import RetryLater, SignatureError

    @app.post(STRIPE_WEBHOOK_ROUTE)
    async def stripe_webhook(request: Request) -> JSONResponse:
        payload = await read_body(request)
        signature = request.headers.get("stripe-signature")

        def work() -> JSONResponse:
            try:
                event = service.topups.verify(payload, signature)
            except SignatureError as exc:
                service.logger.warning("stripe webhook refused", extra={"reason": str(exc)})
                service.metrics.record(model="-", provider="stripe", StripeSignatureFailures=1)
                raise APIError(400, f"Webhook refused: {exc}.", code="invalid_signature") from None
            try:
                effect = service.topups.apply(event)
            except RetryLater as exc:
                service.logger.info(
                    "stripe event deferred", extra={"event_id": event.get("id"), "reason": str(exc)}
                )
                raise APIError(
                    503,
                    f"Not applied yet: {exc}; Stripe retries it.",
                    type="server_error",
                    code="retry_later",
                ) from None
            log = {"event_id": event.get("id"), "type": event.get("type"), "outcome": effect.outcome}
            log |= {"account_id": effect.account_id, "amount_micros": effect.amount, "reason": effect.reason}
            if effect.outcome == "unapplied":
                service.logger.error("stripe event not applied", extra=log)
                service.metrics.record(model="-", provider="stripe", TopupsUnapplied=1)
            else:
                service.logger.info("stripe event", extra=log)
                if effect.outcome in ("credit", "reversal"):
                    service.metrics.record(model="-", provider="stripe", TopupMicroUSD=effect.amount)
            return JSONResponse({"received": True, "outcome": effect.outcome})

        return await run_in_threadpool(work)


# --- helpers ---------------------------------------------------------------------------------------------


def _console_file(name: str, media_type: str) -> Response:
    body = resources.files("imagegate.http").joinpath("console", name).read_bytes()
    return Response(body, media_type=media_type, headers=CONSOLE_HEADERS)


def _origin(request: Request) -> str:
    """The scheme and host the client reached: API Gateway's forwarded scheme, else the request's own."""
    scheme = request.headers.get("x-forwarded-proto") or request.url.scheme
    return f"{scheme}://{request.headers.get('host') or request.url.netloc}"


def _admin(acct: Account) -> None:
    if not acct.admin:
        raise APIError(
            403,
            "This key cannot manage keys: only an admin key of the account can "
            "(imagegate keys create --admin).",
            type="permission_error",
            code="not_admin_key",
        )


def _left(key: KeyInfo) -> int | None:
    """What a key may still spend, micro-USD; None: no budget of its own."""
    return None if key["budget"] is None else key["budget"] - key["spent"]


def _covers(caller: KeyInfo, target: KeyInfo) -> bool:
    """Whether the caller's rights include the target's: its budget left, its rate limit, admin."""
    mine, theirs = _left(caller), _left(target)
    budget = mine is None or (theirs is not None and theirs <= mine)
    ipm, their_ipm = caller["images_per_minute"], target["images_per_minute"]
    rate = ipm is None or (their_ipm is not None and their_ipm <= ipm)
    admin = caller["admin"] or not target["admin"]
    return budget and rate and admin


def _budget(value: Any) -> int | None:
    """A new key's optional `budget_usd`: what its requests may spend in all, in micro-USD."""
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(value)
        micros = usd_to_micros(str(value))
    except ValueError:
        micros = 0
    if micros <= 0:
        raise errors.invalid("'budget_usd' must be a positive USD amount (at most 6 decimals).", "budget_usd")
    return micros


def _key_id(api_key: str) -> str:
    from imagegate.money.accounts import key_id_for

    return key_id_for(api_key)


def _account_ipm(service: Service, account_id: str) -> int:
    own = service.accounts.show_account(account_id).images_per_minute
    return own or service.settings.account_images_per_minute or service.settings.images_per_minute


def _today(service: Service) -> date:
    return datetime.fromtimestamp(service.clock(), UTC).date()


def _usage(service: Service, acct: Account, days: int) -> list[Any]:
    from imagegate.money.ledger import usage

    table, today = service.settings.table, _today(service)
    return usage(service.aws.dynamodb, table, days=days, account_id=acct.account_id, today=today)


def _image_urls(service: Service, account_id: str, row: dict[str, Any]) -> list[str]:
    """Presigned URLs of a request's stored images while the outputs' lifecycle keeps them."""
    kept_s = service.settings.job_retention_days * 86_400
    if not row["_stored"] or service.clock() - row["created_at"] >= kept_s:
        return []
    day = datetime.fromtimestamp(row["created_at"], UTC).date().isoformat()
    prefix = f"{service.settings.output_prefix}/{account_id}/{day}/{row['request_id']}"
    return [service.storage.presign(f"{prefix}/{i}.{row['_output_format']}") for i in range(row["images"])]

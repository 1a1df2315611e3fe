"""The HTTP surface: a FastAPI app serving any subset of the three image endpoints.

Lambda functions each build an app with their one route; the dev server builds one with all three.
"""

import json
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import errors
from .accounts import Account
from .catalog import Endpoint
from .errors import APIError
from .images import inspect
from .service import ImageResponse, Service
from .validation import GenerationRequest, ImageParams, resolve

ROUTES: dict[Endpoint, str] = {
    "generations": "/v1/images/generations",
    "edits": "/v1/images/edits",
    "variations": "/v1/images/variations",
}
BALANCE_ROUTE = "/v1/balance"
Route = Endpoint | Literal["balance"]  # what one Lambda function (or the dev server) may serve
METHODS = {**dict.fromkeys(ROUTES.values(), "POST"), BALANCE_ROUTE: "GET"}
MAX_USAGE_DAYS = 90
# The client's retry key (Stripe's and OpenAI's SDK header name); validated by the idempotency store.
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]
_IMAGE_PART = re.compile(r"^image(\[\d*\])?$")
MAX_FORM_FILES = 17  # 16 images and a mask


def create_app(service: Service, endpoints: Iterable[Route] = (*ROUTES, "balance")) -> FastAPI:
    app = FastAPI(title="imagegate", version="0.1.0", docs_url=None, redoc_url=None, redirect_slashes=False)
    app.add_middleware(Guard, max_body_bytes=service.settings.max_body_bytes, logger=service.logger)
    _add_error_handlers(app)

    def account(authorization: Annotated[str | None, Header()] = None) -> Account:
        return service.accounts.authenticate(authorization)

    AccountDep = Annotated[Account, Depends(account)]

    def respond(result: ImageResponse) -> JSONResponse:
        return JSONResponse(result.body, headers=result.headers)

    endpoints = set(endpoints)
    if "generations" in endpoints:

        @app.post(ROUTES["generations"])
        def generations(
            body: GenerationRequest, acct: AccountDep, key: IdempotencyKey = None
        ) -> JSONResponse:
            job = resolve("generations", body, service.catalog)
            return respond(service.handle(acct, job, key, body.user))

    for endpoint in ("edits", "variations"):
        if endpoint in endpoints:
            app.add_api_route(
                ROUTES[endpoint],
                _multipart_route(service, endpoint, respond, AccountDep),
                methods=["POST"],
                name=endpoint,
            )
    if "balance" in endpoints:

        @app.get(BALANCE_ROUTE)
        def balance(
            acct: AccountDep, days: Annotated[int, Query(ge=1, le=MAX_USAGE_DAYS)] = 30
        ) -> JSONResponse:
            return JSONResponse(service.balance(acct, days))

    return app


def _multipart_route(
    service: Service, endpoint: Endpoint, respond: Callable[[ImageResponse], JSONResponse], account_dep: Any
) -> Callable[..., Awaitable[JSONResponse]]:
    async def route(
        request: Request,
        acct: account_dep,  # type: ignore[valid-type]
        key: IdempotencyKey = None,
    ) -> JSONResponse:
        fields, images, mask = await _read_form(request)

        def work() -> ImageResponse:
            try:
                params = ImageParams.model_validate(fields)
            except ValidationError as exc:
                raise errors.from_pydantic(exc.errors()) from exc
            inputs = [inspect(data, param) for param, data in images]
            job = resolve(endpoint, params, service.catalog, inputs, inspect(mask, "mask") if mask else None)
            return service.handle(acct, job, key, params.user)

        return respond(await run_in_threadpool(work))

    return route


async def _read_form(request: Request) -> tuple[dict[str, str], list[tuple[str, bytes]], bytes | None]:
    """Split a multipart body into text fields, `image`/`image[]` files (in order) and the mask."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise errors.invalid(
            f"This endpoint takes multipart/form-data, got '{content_type or 'nothing'}'.",
            None,
            "invalid_content_type",
        )
    form = await request.form(max_files=MAX_FORM_FILES, max_fields=64)
    fields: dict[str, str] = {}
    images: list[tuple[str, bytes]] = []
    mask: bytes | None = None
    for key, value in form.multi_items():
        is_image = bool(_IMAGE_PART.match(key))
        if is_image or key == "mask":
            if not isinstance(value, UploadFile):
                raise errors.invalid(
                    f"Invalid type for '{key}': expected a file, but got a text field.",
                    "image" if is_image else "mask",
                    "invalid_type",
                )
            data = await value.read()
            if is_image:
                images.append(("image" if key == "image" else f"image[{len(images)}]", data))
            else:
                mask = data
        elif isinstance(value, UploadFile):
            raise errors.invalid(
                f"Invalid type for '{key}': expected a value, but got a file.", key, "invalid_type"
            )
        else:
            fields[key] = value
    return fields, images, mask


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = errors.from_pydantic(list(exc.errors()))
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        route = f"{request.method} {request.url.path}"
        method = METHODS.get(request.url.path)
        if status == 404 and method:
            status = 405  # a known route reached with the wrong method, in an app that lacks it
        if status == 405:
            err = APIError(
                405,
                f"Method not allowed ({route}); use {method}.",
                code="method_not_allowed",
                headers={"Allow": method or "POST"},
            )
        elif status == 404:
            err = APIError(404, f"Invalid URL ({route}).", code="not_found")
        else:
            err = APIError(status, str(exc.detail), code=None)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class Guard:
    """Outermost ASGI middleware: 413 for oversized bodies, and an OpenAI-shaped 500 for anything unexpected.

    The body is buffered here (Mangum hands it over whole anyway) so the limit holds for chunked uploads.
    """

    def __init__(self, app: Any, max_body_bytes: int, logger: Any) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.logger = logger

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = APIError(
            413,
            f"Request body too large: the limit is {self.max_body_bytes} bytes.",
            code="payload_too_large",
        )
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _send_error(send, too_large)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                await _send_error(send, too_large)
                return
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        started = False

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, replay, tracking_send)
        except Exception:
            self.logger.exception("unhandled error", extra={"path": scope.get("path")})
            if not started:
                await _send_error(
                    send,
                    APIError(
                        500,
                        "The server had an error while processing your request.",
                        type="server_error",
                        code="internal_error",
                    ),
                )


async def _send_error(send: Callable, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

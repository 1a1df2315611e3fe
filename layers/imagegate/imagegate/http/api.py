"""The HTTP surface: a FastAPI app serving any subset of the three image endpoints.

Lambda functions each build an app with their one route; the dev server builds one with all three.
"""

import dataclasses
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any, Literal

import anyio
from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, BeforeValidator, ValidationError
from pydantic_core import PydanticCustomError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Send

from imagegate import errors, streaming
from imagegate.catalog.contracts import Endpoint
from imagegate.errors import APIError, ProviderError
from imagegate.http import selfserve
from imagegate.http.bodies import JSON_TYPE, public_path, read_json
from imagegate.inputs import references
from imagegate.inputs.images import Upload
from imagegate.inputs.request import ImageJob
from imagegate.inputs.validation import (
    GenerationRequest,
    ImageParams,
    form_values,
    json_edit_params,
    resolve,
)
from imagegate.jobs.lifecycle import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, Jobs
from imagegate.money.accounts import Account
from imagegate.service import ImageResponse, Service
from imagegate.streaming import EventStream
from imagegate.table import new_request_id

ROUTES: dict[Endpoint, str] = {
    "generations": "/v1/images/generations",
    "edits": "/v1/images/edits",
    "variations": "/v1/images/variations",
}
BALANCE_ROUTE = "/v1/balance"
MODELS_ROUTE = "/v1/models"
# AIGNE Hub's clients post generations here (the seed's path); the same route answers.
AIGNE_GENERATIONS_ROUTE = "/api/images/generations"
UPLOADS_ROUTE = "/v1/images/uploads"
JOBS_ROUTE = "/v1/images/jobs"
# What one Lambda function (or the dev server) may serve: `account` is the key holder's own endpoints and
# the console (selfserve.py), `stripe_webhook` Stripe's signed events.
Route = Endpoint | Literal["balance", "uploads", "jobs", "models", "account", "stripe_webhook"]
PATHS: dict[Route, str] = {
    **ROUTES,
    "balance": BALANCE_ROUTE,
    "uploads": UPLOADS_ROUTE,
    "jobs": JOBS_ROUTE,
    "models": MODELS_ROUTE,
    "account": selfserve.SUBSCRIPTION_ROUTE,
    "stripe_webhook": selfserve.STRIPE_WEBHOOK_ROUTE,
}
METHODS = {
    **dict.fromkeys(ROUTES.values(), "POST"),
    AIGNE_GENERATIONS_ROUTE: "POST",
    BALANCE_ROUTE: "GET",
    MODELS_ROUTE: "GET",
    UPLOADS_ROUTE: "POST",
    JOBS_ROUTE: "GET",
    **selfserve.ACCOUNT_ROUTES,
    selfserve.CONSOLE_ROUTE: "GET",
    selfserve.STRIPE_WEBHOOK_ROUTE: "POST",
}
MAX_USAGE_DAYS = 90
# The client's retry key (Stripe's and OpenAI's SDK header name); validated by the idempotency store.
IDEMPOTENCY_HEADER = "idempotency-key"


def _digits(value: Any) -> Any:
    """A query integer is ASCII digits only: pydantic's lax int takes '1_0' and '90.0' too."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise PydanticCustomError("int_parsing", "Input should be a whole number written in digits")
    return value


QueryInt = Annotated[int, BeforeValidator(_digits)]


def _idempotency_key(request: Request) -> str | None:
    """The `Idempotency-Key` header: one at most (two would leave which one counts to chance)."""
    keys = request.headers.getlist(IDEMPOTENCY_HEADER)
    if len(keys) > 1:
        raise errors.invalid(
            "Send one 'Idempotency-Key' header, not several.", "Idempotency-Key", "duplicate_parameter"
        )
    return keys[0] if keys else None


_IMAGE_PART = re.compile(r"image(\[\d*\])?")  # fullmatch
MAX_FORM_FILES = 17  # 16 images and a mask
MAX_FORM_FIELDS = 64
MAX_FIELD_BYTES = 1024 * 1024  # one text field: a 32,000-character prompt is at most 128 KB of UTF-8


def create_app(
    service: Service, endpoints: Iterable[Route] = tuple(PATHS), jobs: Jobs | None = None
) -> FastAPI:
    """`jobs`: the job system; without it `Prefer: respond-async` is ignored (RFC 7240 allows it) and the
    jobs routes are absent."""
    # No schema or docs routes: the contract is OpenAI's published spec, and unmatched routes are 404s.
    app = FastAPI(
        title="imagegate",
        version="0.1.0",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    app.add_middleware(
        Guard, max_body_bytes=service.settings.max_body_bytes, logger=service.logger, clock=service.clock
    )
    _add_error_handlers(app)

    # Headers are read from the request, never declared as FastAPI parameters: a declared header makes
    # FastAPI build a pydantic field for it, and its compatibility check imports pydantic.v1 (~100 ms of an
    # image function's cold start) and validates the value on every request.
    def account(request: Request) -> Account:
        return service.accounts.authenticate(request.headers.get("authorization"))

    AccountDep = Annotated[Account, Depends(account)]

    def respond(request: Request, acct: Account, job: ImageJob, user: str | None) -> Response | ImageResponse:
        """Stream the request (`stream=true`), run it now, or as a job when the client prefers
        (`Prefer: respond-async`; a stream has no job form, so `stream=true` wins). A request run now
        answers its result, which the route renders (`_rendered`) once the job and its inputs are gone."""
        request_id = request_id_of(request)
        key = _idempotency_key(request)
        if job.stream:
            return EventStreamResponse(service.stream(acct, job, key, request_id=request_id))
        asynchronous, wait = _preferences(request.headers.getlist("prefer"))
        if jobs is None or not asynchronous:
            return service.handle(acct, job, key, user, request_id=request_id)
        return _job_answer(service, jobs, request, acct, job, key, user, request_id, wait)

    endpoints = set(endpoints)
    if "generations" in endpoints:
        # The body is read in the route, after the key is checked (a dependency): a request without a
        # valid key is a 401 whatever its body, as OpenAI answers.
        @app.post(ROUTES["generations"])
        @app.post(AIGNE_GENERATIONS_ROUTE)
        async def generations(request: Request, acct: AccountDep) -> Response:
            document = await read_json(request)

            def work() -> Response | ImageResponse:
                params = _validated(GenerationRequest, document)
                job = resolve("generations", params, service.catalog)
                return respond(request, acct, job, params.user)

            return _rendered(await run_in_threadpool(work))

    for endpoint in ("edits", "variations"):
        if endpoint in endpoints:
            app.add_api_route(
                ROUTES[endpoint],
                _multipart_route(service, endpoint, respond, AccountDep),
                methods=["POST"],
                name=endpoint,
            )
    if "uploads" in endpoints:

        @app.post(UPLOADS_ROUTE)
        def uploads(acct: AccountDep) -> JSONResponse:
            return JSONResponse(service.create_upload(acct))

    if "balance" in endpoints:

        @app.get(BALANCE_ROUTE)
        def balance(
            acct: AccountDep, days: Annotated[QueryInt, Query(ge=1, le=MAX_USAGE_DAYS)] = 30
        ) -> JSONResponse:
            return JSONResponse(service.balance(acct, days))

    if "models" in endpoints:
        # A key is needed (the SDKs send one) and nothing is charged: listing models is free.
        @app.get(MODELS_ROUTE)
        def list_models(acct: AccountDep) -> JSONResponse:
            return JSONResponse(service.list_models())

        @app.get(MODELS_ROUTE + "/{model_id:path}")
        def get_model(acct: AccountDep, model_id: str) -> JSONResponse:
            model = service.model_object(model_id)
            if model is None:
                raise APIError(
                    404,
                    f"The model '{model_id}' does not exist or you do not have access to it.",
                    param="model",
                    code="model_not_found",
                )
            return JSONResponse(model)

    if "jobs" in endpoints and jobs is not None:
        _add_job_routes(app, jobs, AccountDep)
    if "account" in endpoints:
        selfserve.add_account_routes(app, service, AccountDep)
        selfserve.add_console_routes(app)
    if "stripe_webhook" in endpoints:
        selfserve.add_webhook_route(app, service)
    return app


def _add_job_routes(app: FastAPI, jobs: Jobs, account_dep: Any) -> None:
    @app.get(JOBS_ROUTE)
    def list_jobs(
        acct: account_dep,  # type: ignore[valid-type]
        limit: Annotated[QueryInt, Query(ge=1, le=MAX_LIST_LIMIT)] = DEFAULT_LIST_LIMIT,
        after: str | None = None,
    ) -> JSONResponse:
        return JSONResponse(jobs.list(acct.account_id, limit, after))

    @app.get(JOBS_ROUTE + "/{job_id}")
    def get_job(acct: account_dep, job_id: str) -> JSONResponse:  # type: ignore[valid-type]
        return JSONResponse(jobs.get(acct.account_id, job_id))

    @app.post(JOBS_ROUTE + "/{job_id}/cancel")
    def cancel_job(acct: account_dep, job_id: str) -> JSONResponse:  # type: ignore[valid-type]
        return JSONResponse(jobs.cancel(acct.account_id, job_id))


# ASCII digits only (`str.isdigit` admits '²', which int() refuses), and no more than a gateway allows anyway.
_WAIT = re.compile(r"[0-9]{1,6}")  # fullmatch


def _preferences(values: list[str]) -> tuple[bool, int | None]:
    """RFC 7240 `Prefer` headers: whether the client prefers an asynchronous answer, and how many seconds
    (`wait=N`) it would wait for the finished result first. Preferences not understood are ignored."""
    asynchronous, wait = False, None
    for value in values:
        for preference in value.split(","):
            name, _, rest = preference.split(";")[0].strip().partition("=")
            name, rest = name.strip().lower(), rest.strip().strip('"')
            if name == "respond-async":
                asynchronous = True
            elif name == "wait" and _WAIT.fullmatch(rest):
                wait = int(rest)
    return asynchronous, wait


def _job_answer(
    service: Service,
    jobs: Jobs,
    request: Request,
    acct: Account,
    job: ImageJob,
    key: str | None,
    user: str | None,
    request_id: str | None,
    wait: int | None,
) -> JSONResponse:
    """202 with the job, or, when the client would wait (`wait=N`, capped under the gateway's budget) and
    the job ends in time, the answer the synchronous path would have given."""
    answer: dict[str, str] = {}
    obj = jobs.submit(
        acct, job, request_id=request_id or new_request_id(), user=user, idempotency_key=key, answer=answer
    )
    applied = ["respond-async"]
    if wait is not None:
        # The budget runs from the request's arrival: the submit (fetching inputs, writing them to S3) spent
        # part of it, and a client cut off by the gateway would never learn its job's id.
        now = service.clock()
        spent = now - request.scope.get("state", {}).get("arrived", now)
        waited = max(0, min(wait, int(service.settings.upstream_budget_seconds - spent)))
        applied.append(f"wait={waited}")
        obj = jobs.wait(acct.account_id, obj["id"], waited)
        if obj["status"] == "succeeded":
            return JSONResponse(obj["result"], headers={**answer, "preference-applied": f"wait={waited}"})
        failure = jobs.failure(acct.account_id, obj["id"]) if obj["status"] == "failed" else None
        if failure is not None:
            raise failure
    location = public_path(request, f"{JOBS_ROUTE}/{obj['id']}")
    return JSONResponse(
        obj,
        status_code=202,
        headers={**answer, "location": location, "preference-applied": ", ".join(applied)},
    )


def _multipart_route(
    service: Service, endpoint: Endpoint, respond: Callable[..., Response | ImageResponse], account_dep: Any
) -> Callable[..., Awaitable[Response]]:
    async def route(request: Request, acct: account_dep) -> Response:  # type: ignore[valid-type]
        if endpoint == "edits" and JSON_TYPE.match(request.headers.get("content-type", "")):
            document = await read_json(request)

            def json_work() -> Response | ImageResponse:
                job, user = _json_edit(service, acct, document)
                return respond(request, acct, job, user)

            return _rendered(await run_in_threadpool(json_work))
        form = await _read_form(request)

        def work() -> Response | ImageResponse:
            # Taken out of the form, so the uploads die with this call, before the response is rendered.
            images, mask = form.images, form.mask
            form.images, form.mask = [], None
            params = _validated(ImageParams, form_values(form.fields))
            # Not opened yet: `resolve` reads their headers once the cheap checks have passed.
            job = resolve(endpoint, params, service.catalog, images, mask)
            return respond(request, acct, job, params.user)

        return _rendered(await run_in_threadpool(work))

    return route


def _rendered(answer: Response | ImageResponse) -> Response:
    """A request's result as JSON, rendered by the route after the call that ran it has returned: by then
    its inputs (up to 50 MB of uploads) are garbage, and the response's copies (the base64 text, the JSON
    text, its bytes) need not live beside them."""
    if isinstance(answer, Response):
        return answer
    return JSONResponse(answer.body, headers=answer.headers)


def _json_edit(service: Service, acct: Account, document: dict[str, Any]) -> tuple[ImageJob, str | None]:
    """The JSON form of an edit, as a job and its `user`: images as references (data URLs, https URLs,
    uploaded file ids), fetched once the cheap checks have passed, then judged as multipart parts are."""
    refs, mask_ref = references.parse(document)
    params = json_edit_params(_validated(ImageParams, document), service.catalog)
    # Fetching costs the deployment (and a URL's owner sees the traffic): a key its rate limit already
    # refuses gets its 429, and an account or a key's budget with nothing to pay its 402, before anything is
    # fetched.
    fetches = any(r.kind == "image_url" and not r.value.startswith("data:") for r in [*refs, mask_ref] if r)
    balance = service.accounts.balance(acct.account_id) if fetches else None
    service.billing.precheck(acct, params.n or 1, balance=balance)
    images, mask = service.references(acct).inputs(refs, mask_ref)
    started = time.monotonic()
    job = resolve("edits", params, service.catalog, images, mask)
    return dataclasses.replace(job, input_seconds=time.monotonic() - started), params.user


class EventStreamResponse(StreamingResponse):
    """`text/event-stream`: each event as it is made (under uvicorn; Mangum buffers the whole body).

    However the response ends (its last event, the client gone, before or after the first event), the
    stream is closed, which settles its reservation exactly once.
    """

    media_type = "text/event-stream"

    def __init__(self, events: EventStream) -> None:
        super().__init__(
            map(streaming.encode, events), headers={**events.headers, "cache-control": "no-store"}
        )
        self.events = events

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            # Shielded: a disconnect arrives as a cancellation, which must not cancel the settlement too.
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(self.events.close)


def request_id_of(request: Request) -> str | None:
    """The id the Guard gave this request (None when the app runs without it)."""
    return request.scope.get("state", {}).get("request_id")


def _validated(model: type[BaseModel], document: dict[str, Any]) -> Any:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise errors.from_pydantic(exc.errors()) from exc


class _Form:
    """A multipart/form-data body, parsed as it streams in.

    Text fields are decoded as strict UTF-8; `image`, `image[]`, `image[<n>]` and `mask` parts are kept as
    the bytes they are (with or without a filename: files are judged by their bytes), each copied once out
    of the body as its part ends. Nothing is spooled and nothing is read back.
    """

    def __init__(self) -> None:
        self.fields: dict[str, str] = {}
        self.images: list[Upload] = []
        self.mask: Upload | None = None
        self.ended = False
        self._files = 0
        self._header = [b"", b""]
        self._disposition = b""
        self._name = ""
        self._kind = "field"  # field, image, mask, stray file
        self._pieces: list[bytes | memoryview] = []
        self._size = 0

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._append_header(0, data[start:end]),
            "on_header_value": lambda data, start, end: self._append_header(1, data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
            "on_end": self._finished,
        }

    def _begin(self) -> None:
        self._disposition, self._pieces, self._size = b"", [], 0

    def _append_header(self, which: int, data: bytes) -> None:
        self._header[which] += data

    def _header_end(self) -> None:
        name, value = self._header
        if name.strip().lower() == b"content-disposition":
            self._disposition = value
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise _malformed("a part has no name in its Content-Disposition header")
        self._name = options[b"name"].decode("utf-8", "replace")
        has_filename = b"filename" in options
        if _IMAGE_PART.fullmatch(self._name) or self._name == "mask":
            self._kind = "mask" if self._name == "mask" else "image"
        elif has_filename:
            self._kind = "stray"
        else:
            self._kind = "field"
        if self._kind == "field":
            if len(self.fields) >= MAX_FORM_FIELDS:
                raise errors.invalid(
                    f"Too many form fields: at most {MAX_FORM_FIELDS}.", None, "too_many_fields"
                )
        else:
            self._files += 1
            if self._files > MAX_FORM_FILES:
                raise errors.invalid(
                    f"Too many files: at most {MAX_FORM_FILES - 1} images and a mask.",
                    "image",
                    "too_many_images",
                )

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._kind == "field" and self._size > MAX_FIELD_BYTES:
            raise errors.invalid(
                f"Invalid '{self._name}': longer than {MAX_FIELD_BYTES} bytes.",
                self._name,
                "string_above_max_length",
            )
        # A view, not a copy, of the received chunk (kept alive until the part ends); the parser may also
        # hand over its own boundary constants, which are bytes too.
        self._pieces.append(
            memoryview(data)[start:end] if isinstance(data, bytes) else bytes(data[start:end])
        )

    def _end(self) -> None:
        data = b"".join(self._pieces)
        self._pieces = []
        name = self._name
        if self._kind == "stray":
            raise errors.invalid(
                f"Invalid type for '{name}': expected a value, but got a file.", name, "invalid_type"
            )
        if self._kind == "image":
            self.images.append(Upload("image" if name == "image" else f"image[{len(self.images)}]", data))
        elif self._kind == "mask":
            if self.mask is not None:
                raise errors.invalid(
                    "Invalid 'mask': send one mask, not several.", "mask", "duplicate_parameter"
                )
            self.mask = Upload("mask", data)
        else:
            if name in self.fields:
                raise errors.invalid(
                    f"Invalid '{name}': the parameter was sent more than once.", name, "duplicate_parameter"
                )
            try:
                self.fields[name] = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise errors.invalid(
                    f"Invalid '{name}': the value is not valid UTF-8 text.", name, "invalid_unicode"
                ) from exc

    def _finished(self) -> None:
        self.ended = True


def _malformed(why: str) -> APIError:
    return errors.invalid(f"Malformed multipart/form-data body: {why}.", None, "invalid_multipart")


async def _read_form(request: Request) -> _Form:
    """Parse a multipart body into text fields, image uploads (in order) and the mask."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise errors.invalid(
            f"This endpoint takes multipart/form-data, got '{content_type or 'nothing'}'.",
            None,
            "invalid_content_type",
        )
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise _malformed("the Content-Type header names no boundary")
    form = _Form()
    try:
        parser = MultipartParser(boundary, form.callbacks())  # type: ignore[arg-type]
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise _malformed("it does not follow its boundaries") from exc
    if not form.ended:
        raise _malformed("it ends before its closing boundary")
    return form


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = dict(exc.headers)
        cause = exc.__cause__
        if isinstance(cause, ProviderError) and exc.status == cause.status:
            # The upstream's pacing (its Retry-After on a 429 or 5xx), passed on to the client.
            headers = {**cause.client_headers(), **headers}
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

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
            # A route with a path parameter (/v1/images/jobs/{id}) is not in METHODS: the router says.
            method = method or (exc.headers or {}).get("Allow") or "POST"
            err = APIError(
                405,
                f"Method not allowed ({route}); use {method}.",
                code="method_not_allowed",
                headers={"Allow": method},
            )
        elif status == 404:
            err = APIError(404, f"Invalid URL ({route}).", code="not_found")
        else:
            err = APIError(status, str(exc.detail), code=None)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


class Guard:
    """Outermost ASGI middleware: a request id on every answer, 413 for oversized bodies, and an
    OpenAI-shaped 500 for anything unexpected.

    The id (`req_<32 hex>`) goes on the ASGI scope's state, where routes pass it to the service, so the
    `x-request-id` a client quotes is the id in the logs and the billing records. The body limit holds as
    the body streams (chunked uploads included): nothing is buffered here, so the body exists once.
    """

    def __init__(
        self, app: Any, max_body_bytes: int, logger: Any, clock: Callable[[], float] = time.time
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.logger = logger
        self.clock = clock  # the arrival time, from which a `Prefer: wait` budget runs

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = new_request_id(self.clock)
        scope.setdefault("state", {}).update(request_id=request_id, arrived=self.clock())
        id_header = (b"x-request-id", request_id.encode())
        started = False

        async def send_with_id(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                # The service sets this id itself, except on an idempotent replay, which is the first
                # response again and keeps the first request's id (the one the ledger knows).
                if not any(k.lower() == b"x-request-id" for k, _ in headers):
                    message = {**message, "headers": [*headers, id_header]}
            await send(message)

        too_large = APIError(
            413,
            f"Request body too large: the limit is {self.max_body_bytes} bytes. Larger images go through "
            "POST /v1/images/uploads and the JSON form of /v1/images/edits (file_id).",
            code="payload_too_large",
        )
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _send_error(send_with_id, too_large)
            return
        received = 0

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise too_large  # inside whatever reads the body: answered by the APIError handler
            return message

        try:
            await self.app(scope, counted_receive, send_with_id)
        except ClientDisconnect:
            return  # nobody left to answer
        except Exception as exc:
            if isinstance(exc, APIError) and exc.status == 413:
                err = exc
            else:
                self.logger.exception(
                    "unhandled error", extra={"path": scope.get("path"), "request_id": request_id}
                )
                err = APIError(
                    500,
                    "The server had an error while processing your request.",
                    type="server_error",
                    code="internal_error",
                )
            if not started:
                await _send_error(send_with_id, err)


async def _send_error(send: Callable, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

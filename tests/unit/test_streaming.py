"""Streaming (`stream=true`, issue 11 part 3): what validation accepts, what a stream reserves and costs, and
`Service.stream` end to end on moto with the local renderer: its events, and its settlement exactly once
however the stream ends (to the end, failed upstream, abandoned by the client before or after an event)."""

import base64
import io
from dataclasses import replace

import pytest
from aws_lambda_powertools.logging import Logger
from PIL import Image, ImageChops, ImageStat
from pydantic import ValidationError
from shims import charges

from imagegate import errors
from imagegate.catalog.loader import load_prices
from imagegate.catalog.prices import PARTIAL_IMAGE_TOKENS
from imagegate.errors import APIError, ProviderError
from imagegate.inputs.validation import GenerationRequest, ImageParams, resolve
from imagegate.money import ledger
from imagegate.providers import Deps, content_policy
from imagegate.providers.local import LocalProvider
from imagegate.providers.routing import Router
from imagegate.service import Service
from imagegate.streaming import encode

from .conftest import LOCAL_PRICE, Clock, upload

BALANCE = 10_000_000
# gpt-image-1.5 at low quality, 1024x1024: $0.009 an image, and image output tokens at $32 per 1M.
LOW_1024 = 9_000
PARTIAL = PARTIAL_IMAGE_TOKENS * 32  # micro-USD: 100 tokens at 32 micro-USD a token


def rejected(make, **kw):
    with pytest.raises(APIError) as info:
        make(**kw)
    assert info.value.status == 400
    return info.value


# --- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-image-1.5", "gpt-image-1-mini", "gpt-image-2", "imagegate-local"])
def test_stream_is_accepted_on_gpt_image_models(job, model):
    j = job(prompt="x", model=model, stream=True, partial_images=3)
    assert (j.stream, j.partial_images) == (True, 3)


def test_stream_on_edits_is_accepted(job):
    j = job(
        endpoint="edits", images=[upload()], prompt="x", model="gpt-image-1.5", stream=True, partial_images=1
    )
    assert (j.endpoint, j.stream, j.partial_images) == ("edits", True, 1)


@pytest.mark.parametrize("model", ["dall-e-2", "dall-e-3", "gemini-3.1-flash-image"])
def test_stream_on_other_models_is_a_400_naming_stream(job, model):
    err = rejected(job, prompt="x", model=model, stream=True)
    assert (err.param, err.code) == ("stream", "unsupported_parameter")
    assert model in err.message


@pytest.mark.parametrize("value", [-1, 4])
def test_partial_images_is_0_to_3(value):
    with pytest.raises(ValidationError) as info:
        ImageParams(prompt="x", model="gpt-image-1.5", stream=True, partial_images=value)
    err = errors.from_pydantic(info.value.errors())
    assert (err.status, err.param) == (400, "partial_images")


def test_partial_images_is_for_gpt_image_models(job):
    err = rejected(job, prompt="x", model="dall-e-2", partial_images=1)
    assert (err.param, err.code) == ("partial_images", "unsupported_parameter")


def test_partial_images_without_stream_asks_for_none(job):
    j = job(prompt="x", model="gpt-image-1.5", partial_images=2)
    assert (j.stream, j.partial_images) == (False, 0)


def test_stream_false_is_the_ordinary_response(job):
    assert job(prompt="x", model="dall-e-2", stream=False).stream is False


def test_a_stream_makes_one_image(job):
    assert rejected(job, prompt="x", model="gpt-image-1.5", stream=True, n=2).param == "n"


def test_a_stream_answers_b64_json_only(job):
    err = rejected(job, prompt="x", model="gpt-image-1.5", stream=True, response_format="url")
    assert (err.param, err.code) == ("response_format", "unsupported_parameter")


def test_variations_do_not_stream(job):
    err = rejected(job, endpoint="variations", images=[upload()], model="dall-e-2", stream=True)
    assert (err.param, err.code) == ("stream", "unknown_parameter")


# --- price ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prices():
    return load_prices(replace_settings())


def replace_settings(**kw):
    from imagegate.config import Settings

    return Settings(local_price_micros=LOCAL_PRICE, **kw)


def test_each_partial_image_costs_100_output_tokens(job, prices):
    quote = prices.quote(job(prompt="x", model="gpt-image-1.5", quality="low", stream=True, partial_images=3))
    assert prices.charge(quote, 1, 1, None, partials=3) == LOW_1024 + 3 * PARTIAL
    assert prices.charge(quote, 1, 1, None) == LOW_1024
    assert prices.charge(quote, 0, 1, None, partials=2) == 2 * PARTIAL  # abandoned after two partials


def test_the_reservation_covers_the_partial_images(job, prices):
    plain = prices.quote(job(prompt="x", model="gpt-image-1.5", quality="low", stream=True))
    streamed = prices.quote(
        job(prompt="x", model="gpt-image-1.5", quality="low", stream=True, partial_images=3)
    )
    assert streamed.reserve - plain.reserve == 3 * PARTIAL
    assert streamed.reserve >= prices.charge(streamed, 1, 1, None, partials=3)


def test_partial_images_are_marked_up_like_tokens(job):
    marked = load_prices(replace_settings(prices='{"markup_percent": "50"}'))
    quote = marked.quote(job(prompt="x", model="gpt-image-1.5", quality="low", stream=True, partial_images=1))
    assert quote.partials(1) == PARTIAL * 3 // 2


def test_partials_cost_nothing_on_a_model_priced_per_image(job, prices):
    quote = prices.quote(job(prompt="x", model="imagegate-local", stream=True, partial_images=3))
    assert prices.charge(quote, 1, 1, None, partials=3) == LOCAL_PRICE


# --- Service.stream -----------------------------------------------------------------------------------------


class Scripted:
    """The local renderer's stream, failing with `error` instead of its item number `fail_at`, or closed
    (abandoned) from the outside; `closed` says whether its generator was closed."""

    name = "local"

    def __init__(self, fail_at=None, error=None):
        self.fail_at = fail_at
        self.error = error
        self.closed = False

    def supports(self, operation):
        return True

    def stream(self, job):
        try:
            for i, item in enumerate(LocalProvider().stream(job)):
                if i == self.fail_at:
                    raise self.error
                yield item
        except GeneratorExit:
            self.closed = True
            raise


@pytest.fixture
def funded(accounts):
    account_id = accounts.create_account(BALANCE)
    return account_id, accounts.create_key(account_id)


def make_service(aws, settings, provider=None, **overrides):
    svc = Service(
        replace(settings, **overrides), aws, Logger(service="test", level="CRITICAL"), clock=Clock()
    )
    if provider is not None:
        # No routes and no credentials: local serves every model, here the scripted one.
        svc.router = Router(
            svc.settings,
            {},
            {},
            Deps(aws),
            svc.logger,
            factories={"local": lambda upstream, deps: provider},
            clock=svc.clock,
        )
    return svc


def streamed_job(svc, **params):
    params = {"prompt": "a red fox", "model": "gpt-image-1.5", "quality": "low", "stream": True, **params}
    return resolve("generations", GenerationRequest(**params), svc.catalog)


def charged(accounts, funded):
    return BALANCE - accounts.balance(funded[0])


def reconciled(aws, settings, funded):
    check = ledger.reconcile(aws.dynamodb, settings.table, funded[0])
    return check.ok and check.in_flight == 0


def rewritten_charge(aws, settings, funded, request, charge):
    """Reconcile's problems once a closed request's charge is rewritten to `charge` as an older settle
    would have written it: its record and the balance moved together, so only the partials can tell."""
    reserved, was = int(request["reserved"]["N"]), int(request["charged"]["N"])
    aws.dynamodb.transact_write_items(
        TransactItems=[
            {
                "Update": {
                    "TableName": settings.table,
                    "Key": {"pk": request["pk"], "sk": request["sk"]},
                    "UpdateExpression": "SET charged = :c, refunded = :r, #s = :s",
                    "ExpressionAttributeNames": {"#s": "state"},
                    "ExpressionAttributeValues": {
                        ":c": {"N": str(charge)},
                        ":r": {"N": str(reserved - charge)},
                        ":s": {"S": "settled" if charge else "refunded"},
                    },
                }
            },
            {
                "Update": {
                    "TableName": settings.table,
                    "Key": {"pk": {"S": f"ACCOUNT#{funded[0]}"}, "sk": {"S": "ACCOUNT"}},
                    "UpdateExpression": "ADD balance :d",
                    "ExpressionAttributeValues": {":d": {"N": str(was - charge)}},
                }
            },
        ]
    )
    return ledger.reconcile(aws.dynamodb, settings.table, funded[0]).problems


def decoded(event):
    img = Image.open(io.BytesIO(base64.b64decode(event["b64_json"])))
    img.load()
    return img


def test_two_partials_then_the_completed_image_charged_exactly(aws, settings, accounts, funded):
    svc = make_service(aws, settings)
    account = accounts.authenticate(f"Bearer {funded[1]}")
    stream = svc.stream(account, streamed_job(svc, partial_images=2, size="1536x1024"), request_id="req_s1")
    assert charged(accounts, funded) > 0  # reserved before the first event
    events = list(stream)
    stream.close()

    assert [e["type"] for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [e.get("partial_image_index") for e in events] == [0, 1, None]
    for event in events:
        assert decoded(event).size == (1536, 1024)
        assert (event["size"], event["quality"], event["output_format"]) == ("1536x1024", "low", "png")
    completed = events[-1]
    # Coarse to fine: each partial is closer to the final image than the one before.
    final = decoded(completed).convert("RGB")
    distances = [
        sum(ImageStat.Stat(ImageChops.difference(decoded(e).convert("RGB"), final)).mean) for e in events
    ]
    assert distances[0] > distances[1] > distances[2] == 0
    usage = completed["usage"]
    assert usage["output_tokens"] == usage["output_tokens_details"]["image_tokens"] > 2 * PARTIAL_IMAGE_TOKENS
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert stream.headers["x-imagegate-provider"] == "local"
    assert stream.headers["x-request-id"] == "req_s1"
    assert charged(accounts, funded) == 13_000 + 2 * PARTIAL  # 1536x1024 low: $0.013
    assert reconciled(aws, settings, funded)


def test_edits_stream_image_edit_events(aws, settings, accounts, funded):
    svc = make_service(aws, settings)
    account = accounts.authenticate(f"Bearer {funded[1]}")
    params = GenerationRequest(
        prompt="x", model="gpt-image-1.5", quality="low", stream=True, partial_images=1
    )
    job = resolve("edits", params, svc.catalog, [upload(width=1024, height=1024)])
    stream = svc.stream(account, job)
    events = list(stream)
    assert [e["type"] for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert decoded(events[-1]).size == (1024, 1024)


def test_the_wire_format_is_openais(aws, settings):
    event = {"type": "image_generation.partial_image", "b64_json": "AAAA", "partial_image_index": 0}
    assert encode(event) == (
        b'event: image_generation.partial_image\ndata: {"type":"image_generation.partial_image",'
        b'"b64_json":"AAAA","partial_image_index":0}\n\n'
    )


def test_a_stream_abandoned_after_a_partial_is_charged_that_partial_once(aws, settings, accounts, funded):
    """Issue 20, item 5: the counter moved before the write, so one partial delivered cost two."""
    provider = Scripted()
    svc = make_service(aws, settings, provider)
    stream = svc.stream(accounts.authenticate(f"Bearer {funded[1]}"), streamed_job(svc, partial_images=3))
    events = iter(stream)
    first = next(events)
    assert first["partial_image_index"] == 0
    assert next(events)["partial_image_index"] == 1  # the first was written; the second's write fails
    stream.close()
    stream.close()  # the HTTP layer may close it again: still one settlement

    assert provider.closed  # the upstream's stream was closed, not read to its end
    assert charged(accounts, funded) == PARTIAL
    assert charges(aws.dynamodb, settings.table, funded[0]) == [PARTIAL]
    assert reconciled(aws, settings, funded)
    # The state the old code left (charged one partial more than written) makes reconcile fail.
    [request] = ledger.request_items(aws.dynamodb, settings.table, funded[0])
    problems = rewritten_charge(aws, settings, funded, request, 2 * PARTIAL)
    assert problems == [
        f"{request['sk']['S'].removeprefix('REQUEST#')}: charged $0.006400 for 1 streamed partial images "
        "and no final image, which cost $0.003200"
    ]


def test_a_stream_abandoned_before_its_first_event_is_refunded(aws, settings, accounts, funded):
    svc = make_service(aws, settings, Scripted())
    stream = svc.stream(accounts.authenticate(f"Bearer {funded[1]}"), streamed_job(svc, partial_images=2))
    stream.close()
    assert charged(accounts, funded) == 0
    assert reconciled(aws, settings, funded)


def test_an_upstream_failure_mid_stream_ends_it_with_an_error_event_and_charges_the_partials_sent(
    aws, settings, accounts, funded
):
    """Issue 20, item 5: one rule on every path, the partial images written are charged."""
    failure = ProviderError("The upstream image service (local) failed.", code="upstream_error", retry=True)
    svc = make_service(aws, settings, Scripted(fail_at=1, error=failure))
    stream = svc.stream(accounts.authenticate(f"Bearer {funded[1]}"), streamed_job(svc, partial_images=2))
    events = list(stream)
    stream.close()
    assert [e["type"] for e in events] == ["image_generation.partial_image", "error"]
    assert events[-1]["error"] == {
        "message": "The upstream image service (local) failed.",
        "type": "server_error",
        "param": None,
        "code": "upstream_error",
    }
    assert charged(accounts, funded) == PARTIAL
    assert reconciled(aws, settings, funded)


class Slow(Scripted):
    """Its completed image arrives `seconds` after its first partial (on the service's clock)."""

    def __init__(self, clock, seconds):
        super().__init__()
        self.clock, self.seconds = clock, seconds

    def stream(self, job):
        for i, item in enumerate(super().stream(job)):
            if i == 1:
                self.clock.now += self.seconds
            yield item


def test_an_image_finished_past_the_budget_is_an_error_event_and_refunded(aws, settings, accounts, funded):
    # Behind API Gateway the body is buffered: past the budget the client already had the gateway's 504.
    slow = Slow(None, settings.upstream_budget_seconds + 1)
    svc = make_service(aws, settings, slow)
    slow.clock = svc.clock
    stream = svc.stream(accounts.authenticate(f"Bearer {funded[1]}"), streamed_job(svc, partial_images=1))
    events = list(stream)
    stream.close()
    assert [e["type"] for e in events] == ["image_generation.partial_image", "error"]
    assert events[-1]["error"]["code"] == "upstream_timeout"
    assert charged(accounts, funded) == 0
    assert reconciled(aws, settings, funded)


def test_a_failure_before_the_first_event_is_an_ordinary_error(aws, settings, accounts, funded):
    svc = make_service(aws, settings, Scripted(fail_at=0, error=content_policy("Rejected by safety.")))
    with pytest.raises(APIError) as info:
        svc.stream(accounts.authenticate(f"Bearer {funded[1]}"), streamed_job(svc, partial_images=2))
    assert (info.value.status, info.value.code) == (400, "content_policy_violation")
    assert charged(accounts, funded) == 0
    assert reconciled(aws, settings, funded)


def test_idempotency_keys_do_not_stream(aws, settings, accounts, funded):
    svc = make_service(aws, settings)
    with pytest.raises(APIError) as info:
        svc.stream(accounts.authenticate(f"Bearer {funded[1]}"), streamed_job(svc), "key-1")
    assert (info.value.status, info.value.param) == (400, "Idempotency-Key")
    assert [e.kind for e in ledger.entries(aws.dynamodb, settings.table, funded[0])] == ["credit"]


def test_partials_that_would_crowd_out_the_final_image_are_not_sent(aws, settings, accounts, funded):
    job_params = {"partial_images": 3, "size": "1024x1024", "output_format": "jpeg"}
    unlimited = make_service(aws, settings)
    account = accounts.authenticate(f"Bearer {funded[1]}")
    sizes = [len(e["b64_json"]) for e in unlimited.stream(account, streamed_job(unlimited, **job_params))]
    before = charged(accounts, funded)
    # Room for the first two partials and the final image, not for the third partial as well.
    ceiling = sizes[0] + sizes[1] + sizes[3] + 1
    assert 2 * sizes[2] > ceiling - sizes[0] - sizes[1]  # the premise: the third would leave too little room

    svc = make_service(aws, settings, max_response_bytes=ceiling)
    events = list(svc.stream(account, streamed_job(svc, **job_params)))
    assert [e.get("partial_image_index") for e in events] == [0, 1, None]
    assert charged(accounts, funded) - before == LOW_1024 + 2 * PARTIAL  # the unsent partial is not charged


def test_a_final_image_past_the_response_limit_ends_with_an_error_and_a_refund(
    aws, settings, accounts, funded
):
    # Just above the up-front estimate for one 1024x1024 JPEG (0.05 bytes a pixel), below the real image.
    svc = make_service(aws, settings, max_response_bytes=70_000)
    events = list(
        svc.stream(accounts.authenticate(f"Bearer {funded[1]}"), streamed_job(svc, output_format="jpeg"))
    )
    assert [e["type"] for e in events] == ["error"]
    assert (events[0]["error"]["code"], events[0]["error"]["param"]) == ("response_too_large", "stream")
    assert charged(accounts, funded) == 0
    assert reconciled(aws, settings, funded)


def test_partials_sent_before_a_final_image_too_large_are_charged(
    aws, settings, accounts, funded, monkeypatch
):
    """Issue 20, item 5: two partials delivered, then a final image too large for the response: the
    partials were refunded with the rest (0 µ$ for two delivered partials)."""
    from imagegate.service import _StreamRun

    completed = _StreamRun._completed
    # The final image no longer fits once the partials took their room.
    monkeypatch.setattr(_StreamRun, "_completed", lambda run, result, room: completed(run, result, 0))
    svc = make_service(aws, settings, Scripted())
    stream = svc.stream(accounts.authenticate(f"Bearer {funded[1]}"), streamed_job(svc, partial_images=2))
    events = list(stream)
    stream.close()
    assert [e["type"] for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "error",
    ]
    assert events[-1]["error"]["code"] == "response_too_large"
    assert charged(accounts, funded) == 2 * PARTIAL
    assert reconciled(aws, settings, funded)
    # The state the old code left (everything refunded) makes reconcile fail.
    [request] = ledger.request_items(aws.dynamodb, settings.table, funded[0])
    assert (request["partials"], request["partials_charge"]) == ({"N": "2"}, {"N": str(2 * PARTIAL)})
    problems = rewritten_charge(aws, settings, funded, request, 0)
    assert problems == [
        f"{request['sk']['S'].removeprefix('REQUEST#')}: 2 streamed partial images cost $0.006400, but it "
        "was charged $0.000000: given away"
    ]

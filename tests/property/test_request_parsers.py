"""Property tests of the request parsers (validation.py): whatever a client sends, the parser answers with a
valid, priced job or a 400 naming the parameter, and the answer renders as OpenAI's error body.

Each property runs a fixed number of examples, derandomized, so a run is the same on every machine.
"""

import base64
import io
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydantic import ValidationError
from starlette.responses import JSONResponse

from imagegate import errors
from imagegate.catalog.contracts import parse_size
from imagegate.catalog.loader import load_catalog
from imagegate.config import Settings
from imagegate.errors import APIError
from imagegate.inputs.images import inspect
from imagegate.inputs.validation import ENDPOINT_PARAMS, GenerationRequest, ImageParams, resolve

CATALOG = load_catalog(Settings(local_price_micros=2000)).contracts
MODELS = sorted(CATALOG)
PARAMS = sorted(ImageParams.model_fields)
BUDGET = settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Text a JSON body can carry, lone UTF-16 surrogates aside (they have their own test below).
texts = st.text(st.characters(codec="utf-8"), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
# Values near what the parameters take, so that many examples get past the first check.
plausible = {
    "model": st.sampled_from([*MODELS, "", "dall-e-4", "DALL-E-2"]),
    "n": st.integers(-2, 12),
    "size": st.sampled_from(["256x256", "1024x1024", "1536x1024", "auto", "1x1", "0x0", "1024X1024", ""])
    | st.builds(lambda w, h: f"{w}x{h}", st.integers(0, 5000), st.integers(0, 5000)),
    "quality": st.sampled_from(["standard", "hd", "low", "medium", "high", "auto", "best"]),
    "response_format": st.sampled_from(["url", "b64_json", "json"]),
    "style": st.sampled_from(["vivid", "natural", "anime"]),
    "background": st.sampled_from(["transparent", "opaque", "auto", "none"]),
    "output_format": st.sampled_from(["png", "jpeg", "webp", "gif"]),
    "output_compression": st.integers(-5, 105),
    "moderation": st.sampled_from(["low", "auto", "high"]),
    "input_fidelity": st.sampled_from(["high", "low", "medium"]),
    "stream": st.booleans(),
    "partial_images": st.integers(-1, 4),
    "prompt": st.sampled_from(["a red fox", " ", "", "x" * 1001, "y" * 4001]),
}
bodies = st.dictionaries(
    st.sampled_from([*PARAMS, "unknown", "images"]),
    st.one_of(json_values, *(v for v in plausible.values())),
    max_size=7,
) | st.fixed_dictionaries({}, optional={name: s for name, s in plausible.items()})


def renders(err: APIError) -> dict:
    """The error as the app sends it (JSONResponse: UTF-8 JSON), read back."""
    body = json.loads(JSONResponse(err.body(), status_code=err.status).body)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body


def assert_bad_request(err: APIError, sent: dict) -> None:
    assert err.status == 400, err.body()
    assert err.param, err.body()
    # the parameter named is one the client sent, or one it must send
    name = err.param.split("[")[0]
    assert name in sent or name in ("prompt", "image"), (err.param, sent)
    renders(err)


def parse(endpoint: str, body: dict, images=(), mask=None):
    """What the app does with a body: the wire model, then the contract; the job, or the APIError."""
    model = GenerationRequest if endpoint == "generations" else ImageParams
    try:
        params = model.model_validate(body)
    except ValidationError as exc:
        return errors.from_pydantic(exc.errors())
    try:
        return resolve(endpoint, params, CATALOG, list(images), mask)
    except APIError as err:
        return err


def assert_valid_job(job, endpoint: str, body: dict) -> None:
    contract = job.contract
    assert job.endpoint == endpoint and contract.serves(endpoint)
    assert set(body) - {k for k, v in body.items() if v is None} <= ENDPOINT_PARAMS[endpoint]
    assert 1 <= job.n <= contract.n_max
    assert job.quality in contract.qualities and job.quality != "auto"
    assert parse_size(job.size) == (job.width, job.height)
    assert job.size in contract.sizes or contract.free_form is not None
    assert job.price_per_image >= 0 and job.price == job.price_per_image * job.n
    if body.get("model") is not None:
        assert contract.id == body["model"]


@BUDGET
@given(body=bodies)
@example(body={"prompt": "a fox", "n": 2})
@example(body={"prompt": "a fox", "n": True})
@example(body={"prompt": "a fox", "size": 1024})
@example(body={"prompt": ["a fox"]})
@example(body={"prompt": "a fox", "model": None, "size": None})
def test_any_generations_body_is_a_job_or_a_400_naming_the_parameter(body):
    result = parse("generations", body)
    if isinstance(result, APIError):
        assert_bad_request(result, body)
    else:
        assert_valid_job(result, "generations", body)


form_values = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(
    ["1", "2", "10", "11", "0", "-1", "1.0", "true", "", "256x256", "auto", "url", "b64_json", "high"]
)


def square_png(side: int = 256) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (side, side), (0, 0, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


PNG = inspect(square_png(), "image")


@BUDGET
@given(
    endpoint=st.sampled_from(["edits", "variations"]),
    fields=st.dictionaries(st.sampled_from([*PARAMS, "unknown"]), form_values, max_size=6),
)
@example(endpoint="edits", fields={"prompt": "x", "model": "dall-e-2", "n": "2"})
@example(endpoint="variations", fields={"model": "dall-e-2", "n": "1.0"})
def test_any_multipart_fields_are_a_job_or_a_400_naming_the_parameter(endpoint, fields):
    """Form fields arrive as text; with one valid square PNG the parser still never fails another way."""
    result = parse(endpoint, fields, [PNG])
    if isinstance(result, APIError):
        assert_bad_request(result, fields)
    else:
        assert_valid_job(result, endpoint, fields)


@BUDGET
@given(model=st.sampled_from(MODELS), n=st.integers(-(2**70), 2**70) | st.integers(-3, 13))
def test_n_inside_the_contracts_range_is_kept_and_outside_it_is_a_400_on_n(model, n):
    contract = CATALOG[model]
    endpoint = next(e for e in ("generations", "variations", "edits") if contract.serves(e))
    images = [] if endpoint == "generations" else [PNG]
    body = {"model": model, "n": n, **({"prompt": "a fox"} if endpoint != "variations" else {})}
    result = parse(endpoint, body, images)
    if 1 <= n <= min(contract.n_max, 10):
        assert not isinstance(result, APIError), result.body()
        assert result.n == n and result.price == result.price_per_image * n
    else:
        assert isinstance(result, APIError) and (result.status, result.param) == (400, "n")
        renders(result)


@BUDGET
@given(width=st.integers(1, 99_999), height=st.integers(1, 99_999))
def test_sizes_round_trip(width, height):
    """`WxH` parses back to (W, H); a free-form contract serves exactly the sizes its rules allow, at that
    size, and every listed size of every contract is served as itself."""
    size = f"{width}x{height}"
    assert parse_size(size) == (width, height)
    for model in MODELS:
        contract = CATALOG[model]
        if not contract.serves("generations"):
            continue
        result = parse("generations", {"model": model, "prompt": "a fox", "size": size})
        if isinstance(result, APIError):
            assert (result.status, result.param) == (400, "size")
            assert size not in contract.sizes
        else:
            assert (result.width, result.height) == (width, height)
            assert size in contract.sizes or contract.free_form is not None


@pytest.mark.parametrize("model", MODELS)
def test_every_listed_size_of_every_contract_is_served_as_itself(model):
    contract = CATALOG[model]
    endpoint = next(e for e in ("generations", "variations", "edits") if contract.serves(e))
    for size in contract.sizes:
        body = {"model": model, "size": size, **({"prompt": "a fox"} if endpoint != "variations" else {})}
        job = parse(endpoint, body, [] if endpoint == "generations" else [PNG])
        assert not isinstance(job, APIError), (size, job.body())
        if size != "auto":
            assert job.size == size


@BUDGET
@given(data=st.binary(max_size=64) | st.builds(lambda b: square_png(16)[: len(b)], st.binary(max_size=80)))
def test_any_base64_image_on_generations_is_decoded_or_a_400_naming_it(data):
    model = next(m for m in MODELS if CATALOG[m].gpt_params and CATALOG[m].serves("edits"))
    for image in (
        base64.b64encode(data).decode(),
        "data:image/png;base64," + base64.b64encode(data).decode(),
    ):
        result = parse("generations", {"model": model, "prompt": "a fox", "image": [image]})
        if isinstance(result, APIError):
            assert result.status == 400 and result.param == "image[0]", result.body()
            renders(result)


# Lone UTF-16 surrogates: JSON allows "\ud800", and Python's json gives back a str that UTF-8 cannot encode.
SURROGATE_BUGS = {
    # accepted: the job carries a prompt that pricing and the local provider then `.encode()` (a 500)
    "prompt": {"prompt": "a \ud800 fox"},
    # refused, but the 400's message echoes the value, and rendering it raises UnicodeEncodeError (a 500)
    "model": {"prompt": "a fox", "model": "\ud800"},
    "size": {"prompt": "a fox", "size": "\udfff"},
}


@pytest.mark.parametrize("body", SURROGATE_BUGS.values(), ids=SURROGATE_BUGS.keys())
def test_a_lone_surrogate_is_a_400_naming_the_parameter(body):
    result = parse("generations", body)
    assert isinstance(result, APIError), "accepted a prompt that UTF-8 cannot encode"
    assert_bad_request(result, body)


@pytest.mark.parametrize("name", ["quality", "response_format", "style", "background", "output_format"])
def test_a_lone_surrogate_in_a_choice_is_already_a_400_naming_it(name):
    body = {"prompt": "a fox", "model": "gpt-image-1", name: "\ud800"}
    result = parse("generations", body)
    assert isinstance(result, APIError)
    assert_bad_request(result, body)

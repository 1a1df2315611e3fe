"""Property tests on the request parsers (issue 8, beyond the list): whatever arrives, the answer is an
OpenAI-shaped 4xx (or a 200 for a request that happens to be valid), never a 5xx.

Examples are derandomized, so a run is the same run every time: a property test must not be flaky.
"""

import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagegate.inputs.validation import BOOL_FIELDS, INT_FIELDS, ImageParams, check_unicode, form_values

GEN, EDITS, VARIATIONS = "/v1/images/generations", "/v1/images/edits", "/v1/images/variations"
PARAMS = sorted(
    {"prompt", "model", "n", "size", "quality", "response_format", "style", "user", "background", "stream"}
    | {"output_format", "output_compression", "moderation", "input_fidelity", "partial_images", "image"}
)
CHECKS = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Text that includes lone surrogates (JSON can carry them as \uXXXX escapes) and every other plane.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40) | st.sampled_from(
    ["dall-e-2", "gpt-image-1.5", "imagegate-local", "256x256", "auto", "low", "url", "b64_json", "\ud800"]
)
json_scalar = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | any_text
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)
json_body = st.dictionaries(st.sampled_from(PARAMS) | any_text, json_value, max_size=6)


def assert_clean(response):
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] is None or isinstance(error["param"], str)
    assert response.headers["x-request-id"].startswith("req_")


@CHECKS
@given(body=json_body)
def test_any_json_object_gets_a_clean_answer(gate, body):
    text = json.dumps(body, allow_nan=True)  # ensure_ascii: surrogates travel as \uXXXX escapes
    response = gate.client.post(
        GEN, headers={**gate.auth(), "content-type": "application/json"}, content=text
    )
    assert_clean(response)


@CHECKS
@given(data=st.binary(max_size=300))
def test_any_bytes_as_json_get_a_clean_answer(gate, data):
    response = gate.client.post(
        GEN, headers={**gate.auth(), "content-type": "application/json"}, content=data
    )
    assert_clean(response)
    assert response.status_code in (200, 400)


field_name = st.sampled_from([*PARAMS, "image[]", "image[0]", "mask"]) | st.text(max_size=12)
field_value = st.binary(max_size=64) | st.sampled_from([b"1", b"2", b"1.0", b"-1", b"dall-e-2", b"true"])


@CHECKS
@given(
    path=st.sampled_from([EDITS, VARIATIONS]),
    fields=st.lists(st.tuples(field_name, field_value), max_size=6),
    with_file=st.booleans(),
)
def test_any_multipart_form_gets_a_clean_answer(gate, path, fields, with_file):
    boundary = "hyp0thesis"
    parts = b""
    for i, (name, value) in enumerate(fields):
        filename = f'; filename="f{i}"' if with_file and i % 2 else ""
        quoted = name.replace('"', "").replace("\r", "").replace("\n", "").encode("utf-8", "surrogatepass")
        parts += b"--" + boundary.encode() + b'\r\nContent-Disposition: form-data; name="' + quoted + b'"'
        parts += filename.encode() + b"\r\n\r\n" + value + b"\r\n"
    body = parts + f"--{boundary}--\r\n".encode()
    headers = {**gate.auth(), "content-type": f"multipart/form-data; boundary={boundary}"}
    assert_clean(gate.client.post(path, headers=headers, content=body))


@given(text=st.text(max_size=30))
def test_a_form_integer_is_exactly_the_decimal_digit_strings(text):
    value = form_values({"n": text})["n"]
    if re.fullmatch(r"-?[0-9]+", text, re.ASCII):
        assert isinstance(value, int) and (value == int(text) or abs(value) == 10**20)
    else:
        assert value == text  # left as text: the strict model refuses it as invalid_type


def test_the_form_conversions_cover_every_typed_field_of_the_model():
    typed = {name: field.annotation for name, field in ImageParams.model_fields.items()}
    assert {name for name, kind in typed.items() if kind == int | None} == INT_FIELDS
    assert {name for name, kind in typed.items() if kind == bool | None} == BOOL_FIELDS


@given(document=st.dictionaries(any_text, json_value, max_size=4))
def test_check_unicode_passes_exactly_the_encodable_documents(document):
    encodable = True
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        encodable = False
    try:
        check_unicode(document)
        passed = True
    except Exception as exc:
        assert getattr(exc, "code", None) == "invalid_unicode"
        passed = False
    assert passed == encodable

"""pydantic's validation errors become one OpenAI-shaped 400 that names the parameter."""

import pytest
from pydantic import ValidationError

from imagegate.errors import APIError, from_pydantic, invalid_choice
from imagegate.inputs.validation import GenerationRequest, ImageParams


def pydantic_errors(model, data):
    with pytest.raises(ValidationError) as info:
        model.model_validate(data) if not isinstance(data, str) else model.model_validate_json(data)
    return info.value.errors()


def test_missing_parameter():
    err = from_pydantic(pydantic_errors(GenerationRequest, {"model": "dall-e-2"}))
    assert err.status == 400
    assert err.body() == {
        "error": {
            "message": "Missing required parameter: 'prompt'.",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": "missing_required_parameter",
        }
    }


def test_extra_parameter_is_unknown_parameter():
    err = from_pydantic(pydantic_errors(ImageParams, {"prompt": "a cat", "colour": "red"}))
    assert (err.status, err.param, err.code) == (400, "colour", "unknown_parameter")
    assert err.message == "Unknown parameter: 'colour'."


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("quality", "ultra"),
        ("response_format", "jpeg"),
        ("style", "moody"),
        ("background", "green"),
        ("output_format", "gif"),
        ("moderation", "high"),
        ("input_fidelity", "medium"),
    ],
)
def test_literal_error_names_the_parameter(param, value):
    err = from_pydantic(pydantic_errors(ImageParams, {"prompt": "a cat", param: value}))
    assert (err.status, err.param, err.code) == (400, param, "invalid_value")
    assert err.message.startswith(f"Invalid '{param}': ")


def test_json_invalid():
    err = from_pydantic(pydantic_errors(ImageParams, '{"prompt": "a cat",'))
    assert (err.status, err.param, err.code) == (400, None, "invalid_json")
    assert "could not parse the JSON body" in err.message


def test_fastapi_body_prefix_is_dropped():
    # FastAPI reports locations as ("body", <field>, ...); the client only knows the field.
    errs = [{"type": "missing", "loc": ("body", "prompt"), "msg": "Field required"}]
    assert from_pydantic(errs).param == "prompt"


def test_union_location_is_reduced_to_the_top_level_parameter():
    errs = pydantic_errors(ImageParams, {"prompt": "a cat", "image": [1]})
    err = from_pydantic(errs)
    assert err.param == "image"
    assert err.code == "invalid_type"


@pytest.mark.parametrize(
    ("data", "param", "code"),
    [
        ({"n": 11}, "n", "integer_out_of_range"),
        ({"n": 0}, "n", "integer_out_of_range"),
        ({"n": "two"}, "n", "invalid_type"),
        ({"output_compression": 101}, "output_compression", "integer_out_of_range"),
        ({"partial_images": 4}, "partial_images", "integer_out_of_range"),
        ({"stream": "maybe"}, "stream", "invalid_type"),
    ],
)
def test_other_kinds_map_to_codes(data, param, code):
    err = from_pydantic(pydantic_errors(ImageParams, data))
    assert (err.status, err.param, err.code) == (400, param, code)


def test_body_that_is_not_an_object():
    err = from_pydantic(pydantic_errors(ImageParams, ["a cat"]))
    assert (err.status, err.param, err.code) == (400, None, "invalid_type")


def test_empty_error_list_is_still_a_400():
    err = from_pydantic([])
    assert isinstance(err, APIError)
    assert (err.status, err.param) == (400, None)


def test_invalid_choice_lists_the_allowed_values():
    err = invalid_choice("size", "512x512", ("1024x1024", "auto"))
    assert err.message == "Invalid value: '512x512'. Supported values are: '1024x1024', 'auto'."
    assert (err.param, err.code) == ("size", "invalid_value")

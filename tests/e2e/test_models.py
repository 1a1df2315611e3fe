"""The catalog as a customer and an operator see it (issue 18's "done when"): the OpenAI SDK lists the models
`make serve` serves, the 2.5 family's new qualities work where they exist and are refused where they do not,
and `imagegate models` shows no active route past its shutdown date. The seeds' two differences (AIGNE Hub's
path, ModelMax's `imagen-3`) are tested directly: their documents are not in this repository."""

import base64
import json
from datetime import UTC, date, datetime

import openai
import pytest

from imagegate.cli import main as cli

from .helpers import decode, png_bytes

FAMILY_2_5 = {
    "gpt-image-2.5-flare",
    "gpt-image-2.5-sunburst",
    "gpt-image-2.5-flare-2026-09-08",
    "gpt-image-2.5-sunburst-2026-09-08",
}


def test_the_sdk_lists_the_2_5_family_and_retrieves_a_model_for_free(user):
    before = user.balance()
    models = {model.id: model for model in user.client.models.list()}
    assert set(models) >= FAMILY_2_5
    flare = models["gpt-image-2.5-flare"]
    assert (flare.object, flare.owned_by) == ("model", "openai")
    assert flare.created == int(datetime(2026, 9, 8, tzinfo=UTC).timestamp())
    # Retired upstream models are listed while a successor serves them.
    assert {"dall-e-3", "gpt-image-1.5"} <= set(models)
    assert user.client.models.retrieve("gpt-image-2.5-sunburst").id == "gpt-image-2.5-sunburst"
    with pytest.raises(openai.NotFoundError) as info:
        user.client.models.retrieve("gpt-image-9")
    assert info.value.body["code"] == "model_not_found"
    assert user.balance() == before  # listing costs nothing


def test_models_need_a_key(stack, sdk_http):
    anonymous = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="sk-none", http_client=sdk_http)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()


def test_gpt_image_2_5_flare_makes_an_xhigh_image_at_a_free_form_size(user):
    before = user.balance()
    result = user.client.images.generate(
        model="gpt-image-2.5-flare", prompt="a lighthouse at dusk", quality="xhigh", size="2048x1152"
    )
    assert decode(base64.b64decode(result.data[0].b64_json)).size == (2048, 1152)
    assert user.balance() < before


def test_gpt_image_2_refuses_xhigh_naming_quality(user):
    before = user.balance()
    with pytest.raises(openai.BadRequestError) as info:
        user.client.images.generate(model="gpt-image-2", prompt="a fox", quality="xhigh", size="1024x1024")
    assert info.value.body["param"] == "quality"
    assert "'xhigh'" in info.value.body["message"]
    assert user.balance() == before


def test_imagegate_models_json_shows_no_active_route_past_its_shutdown_date(capsys):
    assert cli(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    today = datetime.now(UTC).date()
    assert {model["id"] for model in listed} >= FAMILY_2_5
    for model in listed:
        assert set(model) <= {"id", "status", "routes", "alias_of"}
        assert model["status"] in ("active", "deprecated", "retired")
        if model["status"] == "retired":
            continue
        for route in model["routes"]:
            assert set(route) == {"provider", "model", "shutdown_at"}
            assert route["shutdown_at"] is None or date.fromisoformat(route["shutdown_at"]) > today, model


def test_aigne_hubs_path_answers_as_generations_with_its_image_parameter(user, http):
    image = "data:image/png;base64," + base64.b64encode(png_bytes(64, 64)).decode()
    response = http.post(
        f"{user.stack.base_url}/api/images/generations",
        headers={"Authorization": f"Bearer {user.key}"},
        json={"model": "gpt-image-2", "prompt": "the same fox, in snow", "image": image, "size": "1024x1024"},
    )
    assert response.status_code == 200, response.text
    assert decode(base64.b64decode(response.json()["data"][0]["b64_json"])).size == (1024, 1024)


def test_an_alias_in_an_override_runs_modelmaxs_imagen_3_unchanged(start_stack, new_user):
    override = {"aliases": {"imagen-3": "gemini-3.1-flash-image"}}
    aliased = new_user(start_stack(catalog=json.dumps(override)))
    assert "imagen-3" in {model.id for model in aliased.client.models.list()}
    result = aliased.client.images.generate(model="imagen-3", prompt="a red kite", n=1, size="1024x1024")
    assert decode(base64.b64decode(result.data[0].b64_json)).size == (1024, 1024)

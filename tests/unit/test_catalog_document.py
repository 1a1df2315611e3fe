"""The catalog document: its loader, operator overrides with `like`, aliases, dates, the runtime source
(S3/SSM, cached, refusing a bad document) and the example of docs/catalog.md."""

import importlib
import io
import json
import re
from pathlib import Path

import httpx
import pytest
from aws_lambda_powertools.logging import Logger

from imagegate.catalog.contracts import price_per_image
from imagegate.catalog.loader import load_catalog, validate_document
from imagegate.catalog.routes import check_options
from imagegate.catalog.sources import CatalogSource
from imagegate.config import CATALOG_TTL_SECONDS, Settings
from imagegate.errors import APIError
from imagegate.inputs.outbound import Outbound
from imagegate.inputs.validation import ImageParams, resolve
from imagegate.providers import Deps, Upstream

DOCS = Path(__file__).resolve().parents[2] / "docs" / "catalog.md"


@pytest.fixture
def log_stream():
    return io.StringIO()


def docs_example():
    """The override document of docs/catalog.md's "Adding a model", exactly as the page shows it."""
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(), re.DOTALL)
    return json.loads(next(b for b in blocks if "gpt-image-2.6-flare" in b))


def test_the_packaged_document_loads_and_cites_its_sources():
    catalog = load_catalog(Settings())
    assert {"gpt-image-2.5-flare", "gpt-image-2.5-sunburst", "gemini-3.1-flash-lite-image"} <= set(
        catalog.models
    )
    document = json.loads(
        (Path(__file__).resolve().parents[2] / "layers/imagegate/imagegate/catalog/catalog.json").read_text()
    )
    for name, fields in document["models"].items():
        assert "_source" in fields, name
    for provider, dated in document["upstreams"].items():
        assert all("_source" in d for d in dated.values()), provider


def test_the_2_5_family_has_xhigh_and_max_at_free_form_sizes_and_gpt_image_2_does_not():
    catalog = load_catalog(Settings()).contracts
    job = resolve(
        "generations",
        ImageParams(prompt="x", model="gpt-image-2.5-sunburst-2026-09-08", quality="max", size="3840x2160"),
        catalog,
    )
    assert (job.quality, job.size) == ("max", "3840x2160")
    assert price_per_image(catalog["gpt-image-2.5-flare"], "xhigh", "1024x1024") == 94_000
    with pytest.raises(APIError) as info:
        resolve("generations", ImageParams(prompt="x", model="gpt-image-2", quality="xhigh"), catalog)
    assert (info.value.status, info.value.param) == (400, "quality")


def test_the_docs_example_adds_a_model_like_another_an_openai_compatible_service_and_an_alias():
    catalog = load_catalog(Settings(catalog=json.dumps(docs_example())))
    new, flare = catalog.contracts["gpt-image-2.6-flare"], catalog.contracts["gpt-image-2.5-flare"]
    # Borrowed: every rule and price; its own: the id, the release date and the routes.
    assert (new.qualities, new.free_form, new.pricing.tokens) == (
        flare.qualities,
        flare.free_form,
        flare.pricing.tokens,
    )
    assert [(r.provider, r.model) for r in catalog.routes["gpt-image-2.6-flare"]] == [
        ("openai", "gpt-image-2.6-flare")
    ]
    grok = catalog.contracts["grok-imagine-image-2.0"]
    # null removed what `like` would have borrowed: a per-image price only.
    assert grok.pricing.tokens is None and grok.free_form is None
    assert price_per_image(grok, "standard", "1024x1024") == 70_000
    assert catalog.routes["grok-imagine-image-2.0"][0].base_url == "https://api.x.ai/v1"
    assert catalog.contracts["imagen-3"] is catalog.contracts["gemini-3.1-flash-image"]
    assert catalog.models[-2:] == ["gpt-image-2.6-flare", "grok-imagine-image-2.0"]


def test_an_override_from_a_file_replaces_fields_and_keeps_the_rest(tmp_path):
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"markup_percent": "10", "models": {"gpt-image-2": {"n_max": 4}}}))
    catalog = load_catalog(Settings.from_env({"IMAGEGATE_CATALOG": str(path)}))
    assert catalog.contracts["gpt-image-2"].n_max == 4
    assert price_per_image(catalog.contracts["gpt-image-2"], "low", "1024x1024") == 6_600


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ({"models": {"gpt-image-9": {"routes": []}}}, "unknown model 'gpt-image-9'"),
        ({"models": {"x": {"like": "nothing"}}}, "'like' names no model"),
        ({"models": {"a": {"like": "b"}, "b": {"like": "a"}}}, "goes round in a circle"),
        (
            {"models": {"gpt-image-2": {"qualities": ["low", "medium", "high", "ultra", "auto"]}}},
            "no per_image price for quality 'ultra'",
        ),
        ({"models": {"gpt-image-2": {"endpoints": ["paint"]}}}, "endpoints.0"),
        ({"models": {"gpt-image-2": {"n_max": "4"}}}, "n_max"),
        ({"models": {"gpt-image-2": {"colour": "red"}}}, "unknown field colour"),
        ({"aliases": {"imagen-3": "imagen-9"}}, "alias 'imagen-3' names no model"),
        ({"aliases": {"dall-e-2": "gpt-image-2"}}, "alias 'dall-e-2' is a model already"),
        (
            {"upstreams": {"openai": {"gpt-image-2": {"shutdown_at": "soon"}}}},
            "upstreams.openai.gpt-image-2: shutdown_at",
        ),
        (
            {"upstreams": {"openai": {"x": {"deprecated_at": "2027-02-01", "shutdown_at": "2027-01-01"}}}},
            "deprecated_at is after",
        ),
        ({"routes": {}}, "unknown field routes"),
    ],
)
def test_a_bad_override_is_refused_naming_the_problem(override, problem):
    with pytest.raises(ValueError, match=re.escape(problem)):
        validate_document(override)


def flux_route(**options):
    route = {"provider": "bfl", "model": "flux-2-pro", "credential": "BFL_API_KEY", "options": options}
    return {"models": {"flux-2-pro": {"routes": [route]}}}


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        (flux_route(region="zz"), "'options.region' must be one of 'global', 'eu', 'us', not 'zz'"),
        (flux_route(poll_seconds="abc"), "'options.poll_seconds' must be a number"),
        (flux_route(poll_seconds=0), "'options.poll_seconds' must be a number"),
        (
            {"models": {"dall-e-3": {"routes": [{"provider": "openai", "model": "dall-e-3",
             "credential": "OPENAI_API_KEY", "options": {"dialect": "dalle"}}]}}},
            "'options.dialect' must be one of 'gpt-image', 'dall-e'",
        ),
        (
            {"models": {"dall-e-3": {"routes": [{"provider": "bedrock", "model": "amazon.nova-canvas-v1:0",
             "options": {"cfg_scale": "high"}}]}}},
            "'options.cfg_scale' must be a number",
        ),
    ],
)  # fmt: skip
def test_a_route_with_options_its_provider_would_refuse_is_refused_when_the_catalog_loads(override, problem):
    with pytest.raises(ValueError, match=re.escape(problem)) as info:
        validate_document(override)
    assert "flux-2-pro" in str(info.value) or "dall-e-3" in str(info.value)


def test_every_packaged_route_builds_its_provider():
    """The packaged routes' options pass the loader's check, and each provider builds from them."""
    catalog = load_catalog(Settings())
    deps = Deps(aws=None, http_client=httpx.Client(), outbound_client=Outbound())
    built = 0
    for model_id, specs in catalog.routes.items():
        for spec in specs:
            check_options(spec.provider, spec.options, model_id)
            upstream = Upstream(
                spec.provider, spec.model, spec.base_url or "https://upstream.example", "key", "us-east-1",
                spec.timeout_s, spec.options,
            )  # fmt: skip
            importlib.import_module(f"imagegate.providers.{spec.provider}").create(upstream, deps)
            built += 1
    assert built >= len(catalog.models)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_remote_override_is_cached_refreshed_and_a_bad_one_refused_keeping_the_last_good(log_stream):
    documents = [
        json.dumps({"aliases": {"imagen-3": "gemini-3.1-flash-image"}}),
        "{not json",
        json.dumps({"models": {"gpt-image-9": {}}}),
        json.dumps({"aliases": {"imagen-4": "gemini-3-pro-image"}}),
    ]
    fetched, refused, clock = [], [], Clock()

    def fetch(source):
        fetched.append(source)
        return documents[len(fetched) - 1]

    settings = Settings(catalog="s3://ops/catalog.json")
    logger = Logger(service="catalog-source-test", stream=log_stream)
    source = CatalogSource(settings, fetch, logger, lambda: refused.append(1), clock)
    first = source.current()
    assert "imagen-3" in first.contracts
    clock.now += CATALOG_TTL_SECONDS - 1
    assert source.current() is first and len(fetched) == 1  # cached: a warm request reads only the clock
    for _ in range(2):  # not JSON, then invalid: each refused, the last good one serves
        clock.now += CATALOG_TTL_SECONDS
        assert source.current() is first
    assert len(refused) == 2
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == [
        "catalog override refused; the last good catalog keeps serving"
    ] * 2
    assert "unknown model 'gpt-image-9'" in lines[1]["reason"] and lines[1]["level"] == "ERROR"
    clock.now += CATALOG_TTL_SECONDS
    assert "imagen-4" in source.current().contracts and "imagen-3" not in source.current().contracts


def test_a_remote_override_with_bad_route_options_is_refused_and_the_last_good_serves(log_stream):
    documents = [json.dumps({"aliases": {"flux": "flux-2-pro"}}), json.dumps(flux_route(region="zz"))]
    refused, clock = [], Clock()
    source = CatalogSource(
        Settings(catalog="s3://ops/catalog.json"),
        lambda _: documents.pop(0),
        Logger(service="catalog-bad-options", stream=log_stream),
        lambda: refused.append(1),
        clock,
    )
    first = source.current()
    clock.now += CATALOG_TTL_SECONDS
    assert source.current() is first and refused == [1]
    [line] = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert "options.region" in line["reason"] and "flux-2-pro" in line["reason"]


def test_with_no_good_remote_override_the_packaged_catalog_serves(log_stream):
    def fetch(source):
        raise ValueError(f"could not read {source}: NoSuchKey")

    refused = []
    source = CatalogSource(
        Settings(catalog="ssm:/imagegate/catalog"),
        fetch,
        Logger(service="cs2", stream=log_stream),
        lambda: refused.append(1),
    )
    assert source.current().models == load_catalog(Settings()).models
    assert refused == [1] and "NoSuchKey" in log_stream.getvalue()


def test_a_static_override_that_is_wrong_stops_the_start():
    with pytest.raises(ValueError, match="IMAGEGATE_CATALOG could not be read"):
        CatalogSource(Settings(catalog="{oops"), lambda s: "", Logger(service="cs3"), lambda: None).current()

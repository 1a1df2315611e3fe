"""Routing: the route table, availability, retries with backoff, fallover, the time budget and the logs.

Upstreams are scripted fakes built through the router's `factories` seam; time is a fake clock that the
fakes and the injected sleep advance, so nothing here waits.
"""

import importlib
import importlib.util
import io
import json
import math
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path

import httpx
import pytest
from aws_lambda_powertools.logging import Logger
from PIL import Image

from imagegate.catalog.lifecycle import midnight, plan
from imagegate.catalog.loader import load_catalog
from imagegate.catalog.routes import PROVIDERS
from imagegate.config import Settings
from imagegate.errors import APIError, ProviderError
from imagegate.providers import Deps, ProviderResult, Upstream, content_policy
from imagegate.providers.routing import (
    MAX_ATTEMPTS_PER_ROUTE,
    Router,
    RouteSpec,
    credential_names,
    load_routes,
)

from .conftest import upload

REPO = Path(__file__).resolve().parents[2]
OPENAI = {"OPENAI_API_KEY": "sk-test-openai-secret"}
GEMINI = {"GEMINI_API_KEY": "gm-test-gemini-secret"}
BOTH = {**OPENAI, **GEMINI}
ALL_OPERATIONS = frozenset({"generate", "edit", "vary"})
OPERATIONS = {"generations": "generate", "edits": "edit", "variations": "vary"}
# An operator's table that falls over from OpenAI to Gemini: the packaged table has no such fallbacks
# (a Gemini image costs more than these contracts sell for), so the fallover tests bring their own.
FALLBACK = Settings(
    routes=json.dumps(
        {
            "routes": {
                model_id: [
                    {
                        "provider": "openai",
                        "model": upstream,
                        "credential": "OPENAI_API_KEY",
                        "timeout_s": timeout,
                    },
                    {
                        "provider": "gemini",
                        "model": "gemini-3.1-flash-image",
                        "credential": "GEMINI_API_KEY",
                        "timeout_s": 15,
                    },
                ]
                for model_id, upstream, timeout in (
                    ("dall-e-2", "gpt-image-1-mini", 15),
                    ("gpt-image-1.5", "gpt-image-1.5", 20),
                )
            }
        }
    )
)


class Clock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


class Upstreams:
    """Fake provider modules. `script[provider]` lists what successive calls do: "ok", an exception to
    raise, or ("timeout", error) to spend the call's whole timeout and then raise."""

    def __init__(self, clock, seconds_per_call=2.0):
        self.clock = clock
        self.seconds_per_call = seconds_per_call
        self.script = {}
        self.supports = {}
        self.built = []  # every Upstream a provider was built with
        self.calls = []  # (provider, model, timeout_s, operation)

    def factories(self):
        return {name: self._factory(name) for name in PROVIDERS}

    def _factory(self, name):
        def create(upstream, deps):
            assert upstream.provider == name
            self.built.append(upstream)
            return FakeProvider(upstream, self)

        return create

    def call(self, provider, operation, job):
        upstream = provider.upstream
        self.calls.append((upstream.provider, upstream.model, upstream.timeout_s, operation))
        steps = self.script.get(upstream.provider, [])
        step = steps.pop(0) if steps else "ok"
        if isinstance(step, tuple):
            self.clock.now += upstream.timeout_s
            raise step[1]
        self.clock.now += self.seconds_per_call
        if isinstance(step, BaseException):
            raise step
        return ProviderResult(images=[upstream.provider.encode()] * job.n)


class FakeProvider:
    def __init__(self, upstream, upstreams):
        self.name = upstream.provider
        self.upstream = upstream
        self.upstreams = upstreams

    def supports(self, operation):
        return operation in self.upstreams.supports.get(self.name, ALL_OPERATIONS)

    def generate(self, job):
        return self.upstreams.call(self, "generate", job)

    def edit(self, job):
        return self.upstreams.call(self, "edit", job)

    def vary(self, job):
        return self.upstreams.call(self, "vary", job)


def retryable(status=502, retry_after=None):
    return ProviderError("The upstream is overloaded.", status=status, retry=True, retry_after=retry_after)


def timeout():
    return (
        "timeout",
        ProviderError("The upstream timed out.", status=504, code="upstream_timeout", retry=True),
    )


def auth_failure():
    return ProviderError("The upstream rejected this deployment's credentials.", code="upstream_auth")


@pytest.fixture
def catalog_ids(catalog):
    return list(catalog)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def upstreams(clock):
    return Upstreams(clock)


@pytest.fixture
def log_stream():
    return io.StringIO()


@pytest.fixture
def logger(log_stream, request):
    # A service name per test: Powertools loggers of one name share their handlers.
    return Logger(service=f"routing-{request.node.name}", stream=log_stream)


@pytest.fixture
def router(catalog_ids, upstreams, clock, logger):
    def make(credentials=(), settings=None, routes=None, factories=None, dated=False):
        settings = settings or Settings()
        return Router(
            settings,
            routes if routes is not None else load_routes(settings, catalog_ids),
            dict(credentials),
            Deps(aws=None),
            logger,
            clock=clock,
            sleep=clock.sleep,
            factories=factories if factories is not None else upstreams.factories(),
            # Dated: the lifecycle of the catalog, at noon on TODAY. Undated, the table's routes as written.
            catalog=load_catalog(settings) if dated else None,
            now=lambda: NOW,
        )

    return make


def log_records(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def outcomes(served_or_attempts):
    attempts = getattr(served_or_attempts, "attempts", served_or_attempts)
    return [(a.provider, a.attempt, a.outcome) for a in attempts]


# --- the route table ---


PACKAGED = load_catalog(Settings())
OPENAI_IDS = [m for m in PACKAGED.models if PACKAGED.contracts[m].owned_by == "openai"]
UPSTREAM_IDS = [m for m in PACKAGED.models if PACKAGED.contracts[m].owned_by in ("google", "stability")]
TODAY = date(2026, 12, 6)
NOW = midnight(TODAY) + 12 * 3600  # noon, UTC


def test_every_public_model_has_a_packaged_route(catalog_ids):
    routes = load_routes(Settings(), catalog_ids)
    assert sorted(routes) == sorted(PACKAGED.models)
    assert all(routes[model_id] for model_id in PACKAGED.models)
    assert routes["imagegate-local"] == [RouteSpec("local", "imagegate-local")]
    assert credential_names(routes) == {
        "OPENAI_API_KEY",
        "GEMINI_API_KEY",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_ENDPOINT",
        "BFL_API_KEY",
    }


def test_the_packaged_table_sends_openai_contracts_to_their_own_openai_model():
    # A Gemini or Bedrock image costs more than most OpenAI contracts sell for: no fallback by default.
    # Retired models keep their own route; the lifecycle dates hand it to a successor (catalog.json).
    served = {m: [(r.provider, r.model) for r in PACKAGED.routes[m]] for m in OPENAI_IDS}
    assert served == {m: [("openai", m)] for m in OPENAI_IDS if m != "gpt-image-1.5"} | {
        "gpt-image-1.5": [("openai", "gpt-image-1.5"), ("azure_openai", "gpt-image-1.5")]
    }
    assert {r.credential for m in OPENAI_IDS for r in PACKAGED.routes[m] if r.provider == "openai"} == {
        "OPENAI_API_KEY"
    }


def test_on_2026_12_06_every_retired_openai_contract_is_served_by_gpt_image_2():
    today = {
        m: [(r.provider, r.model) for r in plan(PACKAGED.routes[m], PACKAGED.lifecycles, TODAY).routes]
        for m in OPENAI_IDS
    }
    retired = ["dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "chatgpt-image-latest"]
    assert {m: today[m] for m in retired} == {m: [("openai", "gpt-image-2")] for m in retired}
    # Azure keeps gpt-image-1.5 until 2026-12-16: the dated fallback is the live route.
    assert today["gpt-image-1.5"] == [("azure_openai", "gpt-image-1.5")]
    live = [m for m in OPENAI_IDS if m not in (*retired, "gpt-image-1.5")]
    assert all(today[m] == [("openai", m)] for m in live)


def test_gemini_and_bedrock_models_are_served_by_their_own_upstream_model():
    assert {m: PACKAGED.routes[m] for m in UPSTREAM_IDS} == {
        "gemini-3.1-flash-image": [RouteSpec("gemini", "gemini-3.1-flash-image", "GEMINI_API_KEY", 20.0)],
        "gemini-3.1-flash-lite-image": [
            RouteSpec("gemini", "gemini-3.1-flash-lite-image", "GEMINI_API_KEY", 20.0)
        ],
        "gemini-3-pro-image": [RouteSpec("gemini", "gemini-3-pro-image", "GEMINI_API_KEY", 20.0)],
        # No region on the route: Bedrock stays off until the operator sets IMAGEGATE_BEDROCK_REGION.
        "stability.stable-image-core-v1:1": [
            RouteSpec("bedrock", "stability.stable-image-core-v1:1", timeout_s=15.0)
        ],
    }


# Contract endpoints no route serves today, on purpose: OpenAI has no variations upstream any more (it went
# with dall-e-2 on 2026-05-12), and every other upstream costs more than dall-e-2 sells for. An operator
# route with its price serves them.
UNSERVED_TODAY = {("dall-e-2", "variations")}


def test_every_packaged_route_supports_its_contracts_endpoints(catalog):
    """The real provider modules, built as the router builds them (no I/O: Bedrock's client is lazy), on the
    routes that serve each model today."""
    client = httpx.Client(transport=httpx.MockTransport(lambda request: None))  # never called
    deps = Deps(aws=None, http_client=client)
    unserved = set()
    for model_id in PACKAGED.models:
        contract = catalog[model_id]
        providers = [
            importlib.import_module(f"imagegate.providers.{spec.provider}").create(
                Upstream(spec.provider, spec.model, spec.base_url or "https://x.test", "key", "us-west-2"),
                deps,
            )
            for spec in plan(PACKAGED.routes[model_id], PACKAGED.lifecycles, TODAY).routes
        ]
        for endpoint in sorted(contract.endpoints):
            supporting = [p.name for p in providers if p.supports(OPERATIONS[endpoint])]
            if len(supporting) < len(providers):
                unserved.add((model_id, endpoint))
                # An endpoint is served by all of a model's routes or, listed above, by none of them.
                assert not supporting, (model_id, endpoint, supporting)
    client.close()
    assert unserved == UNSERVED_TODAY


def test_operator_override_replaces_only_the_models_it_lists(catalog_ids):
    override = {
        "_comment": "ours",
        "routes": {
            "dall-e-3": [
                {
                    "provider": "bedrock",
                    "model": "amazon.nova-canvas-v1:0",
                    "region": "us-west-2",
                    "timeout_s": 12,
                },
                {
                    "provider": "openai_compatible",
                    "model": "flux-dev",
                    "base_url": "https://images.example.net/v1",
                    "credential": "EXAMPLE_KEY",
                    "options": {"steps": 4},
                },
            ]
        },
    }
    packaged = load_routes(Settings(), catalog_ids)
    routes = load_routes(Settings(routes=json.dumps(override)), catalog_ids)
    assert routes["dall-e-3"] == [
        RouteSpec("bedrock", "amazon.nova-canvas-v1:0", timeout_s=12.0, region="us-west-2"),
        RouteSpec(
            "openai_compatible",
            "flux-dev",
            "EXAMPLE_KEY",
            15.0,
            base_url="https://images.example.net/v1",
            options={"steps": 4},
        ),
    ]
    assert {k: v for k, v in routes.items() if k != "dall-e-3"} == {
        k: v for k, v in packaged.items() if k != "dall-e-3"
    }
    assert "EXAMPLE_KEY" in credential_names(routes)


def test_operator_override_from_a_file(tmp_path, catalog_ids):
    path = tmp_path / "routes.json"
    path.write_text(json.dumps({"routes": {"gpt-image-1.5": [{"provider": "local"}]}}))
    routes = load_routes(Settings(routes=str(path)), catalog_ids)
    assert routes["gpt-image-1.5"] == [RouteSpec("local", "imagegate-local")]


def test_an_empty_list_withdraws_a_model(catalog_ids, router, job):
    r = router(OPENAI, settings=Settings(routes='{"routes": {"dall-e-3": []}}'))
    with pytest.raises(APIError) as info:
        r.check(job(prompt="x", model="dall-e-3"))
    assert info.value.code == "model_not_available"


def route(**fields):
    return json.dumps({"routes": {"dall-e-2": [fields]}})


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ('{"routes": {"dall-e-9": []}}', "model 'dall-e-9' is not a model of this deployment"),
        ('{"routes": {"dall-e-2": {"provider": "openai"}}}', "model 'dall-e-2' must map to a list of routes"),
        ('{"routes": {"dall-e-2": ["openai"]}}', "model 'dall-e-2' route 1 must be a JSON object"),
        ('{"dall-e-2": []}', 'must be a JSON object {"routes"'),
        ('{"routes": {}, "prices": {}}', "unknown top-level key(s) prices"),
        (
            route(provider="midjourney", model="v7"),
            "'provider' must be one of azure_openai, bedrock, bfl,",
        ),
        (route(model="gpt-image-1.5"), "'provider' must be one of"),
        (
            route(provider="gemini", credential="GEMINI_API_KEY"),
            "'model' (the upstream's model id) is required",
        ),
        (route(provider="openai", model="gpt-image-1.5"), "'credential' (the name of the upstream key"),
        (route(provider="bedrock", model="m", credential="X"), "bedrock takes no 'credential'"),
        (route(provider="openai_compatible", model="m"), "'base_url' is required for openai_compatible"),
        (
            route(provider="openai_compatible", model="m", base_url="ftp://x"),
            "'base_url' must be an http(s) URL",
        ),
        (route(provider="local", timeout="20"), "unknown field(s) timeout"),
        (route(provider="local", timeout_s=0), "'timeout_s' must be a number of seconds above 0"),
        (route(provider="local", timeout_s="20"), "'timeout_s' must be a number"),
        (route(provider="local", timeout_s=True), "'timeout_s' must be a number"),
        (route(provider="local", timeout_s=301), "at most 300"),
        (route(provider="local", model=7), "'model' must be a string"),
        (route(provider="local", options=[]), "'options' must be a JSON object"),
        ('{"routes": {"dall-e-2": [}}', "IMAGEGATE_ROUTES could not be read as JSON"),
        ("/nonexistent/routes.json", "IMAGEGATE_ROUTES could not be read as JSON"),
    ],
)
def test_bad_overrides_fail_at_startup_naming_the_problem(catalog_ids, override, problem):
    with pytest.raises(ValueError) as info:
        load_routes(Settings(routes=override), catalog_ids)
    message = str(info.value)
    assert message.startswith("IMAGEGATE_ROUTES")
    assert problem in message


# --- availability ---


def test_nothing_configured_means_local_serves_every_model(router, job, upstreams):
    r = router({"UNRELATED": "x"})
    assert r.local_only
    served = r.run(job(prompt="a fox", model="gpt-image-1.5", size="1024x1024"), "req_1")
    assert (served.provider, served.model) == ("local", "imagegate-local")
    assert upstreams.calls == [("local", "imagegate-local", 15.0, "generate")]


def test_local_only_by_default_imports_the_real_local_provider(catalog_ids, job, logger):
    settings = Settings()
    r = Router(settings, load_routes(settings, catalog_ids), {}, Deps(aws=None), logger)
    assert r.local_only
    served = r.run(job(prompt="a fox", model="dall-e-2", size="256x256", n=2), "req_1")
    assert served.provider == "local"
    assert len(served.result.images) == 2
    img = Image.open(io.BytesIO(served.result.images[0]))
    assert (img.format, img.size) == ("PNG", (256, 256))


def test_an_upstream_key_turns_local_off_except_where_listed(router, job, upstreams):
    r = router(OPENAI, dated=True)
    assert not r.local_only
    served = r.run(job(prompt="a fox", model="dall-e-2", size="256x256"), "req_1")
    # dall-e-2's route, dated: dall-e-2 and its successor gpt-image-1-mini are gone, gpt-image-2 serves.
    assert (served.provider, served.model) == ("openai", "gpt-image-2")
    assert r.run(job(prompt="a fox", model="imagegate-local"), "req_2").provider == "local"
    openai = [u for u in upstreams.built if u.provider == "openai"]
    assert [(u.model, u.api_key, u.timeout_s, u.region) for u in openai] == [
        ("gpt-image-2", "sk-test-openai-secret", 15.0, "")
    ]
    assert "sk-test" not in repr(openai[0])


def test_a_model_with_no_configured_upstream_is_not_available(router, job, upstreams):
    r = router(
        OPENAI,
        settings=Settings(routes='{"routes": {"gpt-image-1.5": [{"provider": "bedrock", "model": "m"}]}}'),
    )
    with pytest.raises(APIError) as info:
        r.check(job(prompt="a fox", model="gpt-image-1.5"))
    assert info.value.status == 400
    assert info.value.body() == {
        "error": {
            "message": "The model 'gpt-image-1.5' is not available on this deployment: none of its upstreams "
            "is configured.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_available",
        }
    }
    with pytest.raises(APIError):
        r.run(job(prompt="a fox", model="gpt-image-1.5"), "req_1")
    assert upstreams.calls == []


def test_bedrock_is_available_with_a_region_from_settings_or_the_route(router, job, upstreams):
    r = router(settings=Settings(bedrock_region="us-west-2"))
    assert not r.local_only
    served = r.run(job(prompt="a fox", model="stability.stable-image-core-v1:1", size="1344x768"), "req_1")
    assert (served.provider, served.model) == ("bedrock", "stability.stable-image-core-v1:1")
    assert upstreams.built[-1].region == "us-west-2"
    # Bedrock never stands in for an OpenAI contract by default.
    for model_id in ("gpt-image-1.5", "dall-e-2"):
        with pytest.raises(APIError, match=rf"'{model_id}' is not available"):
            r.check(job(prompt="a fox", model=model_id))

    upstreams.built.clear()
    pinned = {"provider": "bedrock", "model": "amazon.nova-canvas-v1:0", "region": "eu-west-1"}
    r = router(settings=Settings(routes=json.dumps({"routes": {"dall-e-3": [pinned]}})))
    assert not r.local_only
    assert r.run(job(prompt="a fox", model="dall-e-3"), "req_2").provider == "bedrock"
    assert upstreams.built[-1].region == "eu-west-1"


def test_check_refuses_an_operation_no_configured_upstream_supports(router, job, upstreams):
    upstreams.supports = {"openai": {"generate", "edit"}}
    variation = job("variations", images=[upload()], model="dall-e-2")
    with pytest.raises(APIError) as info:
        router(OPENAI).check(variation)
    assert (info.value.status, info.value.param, info.value.code) == (400, "model", "model_not_available")
    assert info.value.message == (
        "The model 'dall-e-2' cannot serve /images/variations on this deployment: none of its configured "
        "upstreams supports it."
    )
    # With a route to an upstream that makes variations configured too, the variation skips OpenAI.
    routes = {
        "dall-e-2": [
            RouteSpec("openai", "gpt-image-1-mini", "OPENAI_API_KEY", 15.0),
            RouteSpec("gemini", "gemini-3.1-flash-image", "GEMINI_API_KEY", 15.0),
        ]
    }
    served = router(BOTH, routes=routes).run(variation, "req_1")
    assert served.provider == "gemini"
    assert upstreams.calls == [("gemini", "gemini-3.1-flash-image", 15.0, "vary")]


def test_a_gemini_key_alone_serves_the_gemini_models_and_no_openai_contract(router, job, upstreams):
    r = router(GEMINI)
    assert not r.local_only
    for model_id in ("gemini-3.1-flash-image", "gemini-3-pro-image"):
        served = r.run(job(prompt="a fox", model=model_id, size="1376x768", n=2), f"req_{model_id}")
        assert (served.provider, served.model) == ("gemini", model_id)
        assert served.result.images == [b"gemini"] * 2
    for model_id in ("dall-e-2", "dall-e-3", "gpt-image-1-mini", "gpt-image-2"):
        with pytest.raises(APIError) as info:
            r.check(job(prompt="a fox", model=model_id))
        assert (info.value.status, info.value.code) == (400, "model_not_available")
    assert {c[0] for c in upstreams.calls} == {"gemini"}
    assert [u.api_key for u in upstreams.built] == ["gm-test-gemini-secret"] * 2


def test_providers_are_built_once_per_route_and_timeout(router, job, upstreams):
    r = router(OPENAI, dated=True)
    for i in range(3):
        r.run(job(prompt="a fox", model="gpt-image-1.5"), f"req_{i}")
    r.run(job(prompt="a fox", model="dall-e-3"), "req_4")
    # Both served by their successor today: one provider per model's route.
    assert [(u.model, u.timeout_s) for u in upstreams.built] == [
        ("gpt-image-2", 20.0),
        ("gpt-image-2", 20.0),
    ]
    assert len(upstreams.calls) == 4


# --- retries, fallover, the budget ---


def test_a_retryable_failure_is_retried_after_the_upstreams_retry_after(router, job, upstreams, clock):
    upstreams.script["openai"] = [retryable(status=429, retry_after=2.5)]
    served = router(OPENAI).run(job(prompt="a fox", model="gpt-image-1.5"), "req_1")
    assert served.provider == "openai"
    assert served.result.images == [b"openai"]
    assert clock.sleeps == [2.5]
    assert outcomes(served) == [("openai", 1, "retry"), ("openai", 2, "ok")]
    assert [(a.status, a.latency_ms) for a in served.attempts] == [(429, 2000.0), (200, 2000.0)]


def test_backoff_is_exponential_with_full_jitter(router, job, upstreams, clock):
    upstreams.script["openai"] = [retryable(), retryable()]
    served = router(OPENAI).run(job(prompt="a fox", model="gpt-image-1.5"), "req_1")
    assert outcomes(served) == [("openai", 1, "retry"), ("openai", 2, "retry"), ("openai", 3, "ok")]
    first, second = clock.sleeps
    assert 0 <= first <= 0.5
    assert 0 <= second <= 1.0


def test_three_failed_attempts_fall_over_to_the_next_available_route(router, job, upstreams, clock):
    upstreams.script["openai"] = [retryable(status=502)] * 3
    served = router(BOTH, settings=FALLBACK).run(
        job(prompt="a fox", model="dall-e-2", size="256x256"), "req_1"
    )
    assert (served.provider, served.model) == ("gemini", "gemini-3.1-flash-image")
    assert MAX_ATTEMPTS_PER_ROUTE == 3
    assert [c[:2] for c in upstreams.calls] == [("openai", "gpt-image-1-mini")] * 3 + [
        ("gemini", "gemini-3.1-flash-image")
    ]
    assert len(clock.sleeps) == 2  # between attempts on one route, not before falling over
    assert outcomes(served) == [
        ("openai", 1, "retry"),
        ("openai", 2, "retry"),
        ("openai", 3, "fallover"),
        ("gemini", 1, "ok"),
    ]


def test_an_upstream_auth_failure_falls_over_without_retrying(router, job, upstreams, clock):
    upstreams.script["openai"] = [auth_failure()]
    served = router(BOTH, settings=FALLBACK).run(job(prompt="a fox", model="gpt-image-1.5"), "req_1")
    assert served.provider == "gemini"
    assert clock.sleeps == []
    assert outcomes(served) == [("openai", 1, "fallover"), ("gemini", 1, "ok")]


def test_a_content_policy_refusal_is_final(router, job, upstreams, clock):
    refusal = content_policy("Your request was rejected by the safety system.")
    upstreams.script["openai"] = [refusal]
    with pytest.raises(ProviderError) as info:
        router(BOTH, settings=FALLBACK).run(job(prompt="a fox", model="gpt-image-1.5"), "req_1")
    assert info.value is refusal
    assert (info.value.status, info.value.code) == (400, "content_policy_violation")
    assert [c[0] for c in upstreams.calls] == ["openai"]
    assert clock.sleeps == []


def test_when_every_route_fails_the_last_error_is_raised(router, job, upstreams):
    last = auth_failure()
    upstreams.script["openai"] = [retryable()] * 3
    upstreams.script["gemini"] = [last]
    with pytest.raises(ProviderError) as info:
        router(BOTH, settings=FALLBACK).run(job(prompt="a fox", model="gpt-image-1.5"), "req_1")
    assert info.value is last
    assert [c[0] for c in upstreams.calls] == ["openai"] * 3 + ["gemini"]


def test_timeouts_spend_the_budget_and_end_in_a_504(router, job, upstreams, clock):
    upstreams.script["openai"] = [timeout()] * 3
    started = clock.now
    with pytest.raises(ProviderError) as info:
        router(BOTH, settings=replace(FALLBACK, upstream_budget_seconds=24.0)).run(
            job(prompt="a fox", model="dall-e-2", size="256x256"), "req_1"
        )
    assert (info.value.status, info.value.code) == (504, "upstream_timeout")
    # 15 s for the first call; the second gets only the whole seconds left; nothing starts after that.
    assert [c[2] for c in upstreams.calls] == [15.0, math.floor(24.0 - 15.0 - clock.sleeps[0])]
    assert [c[0] for c in upstreams.calls] == ["openai", "openai"]
    assert clock.now - started <= 24.0


def test_the_budget_caps_the_first_call_timeout(router, job, upstreams):
    router(OPENAI, settings=Settings(upstream_budget_seconds=10.0)).run(
        job(prompt="a fox", model="gpt-image-1.5"), "req_1"
    )
    assert upstreams.calls == [("openai", "gpt-image-1.5", 10.0, "generate")]


def test_a_retry_after_beyond_the_budget_falls_over_at_once(router, job, upstreams, clock):
    upstreams.script["openai"] = [retryable(status=429, retry_after=60)]
    served = router(BOTH, settings=FALLBACK).run(job(prompt="a fox", model="gpt-image-1.5"), "req_1")
    assert served.provider == "gemini"
    assert clock.sleeps == []
    assert outcomes(served) == [("openai", 1, "fallover"), ("gemini", 1, "ok")]


def test_a_provider_bug_propagates_without_retry_or_fallover(router, job, upstreams, clock):
    upstreams.script["openai"] = [KeyError("data")]
    with pytest.raises(KeyError):
        router(BOTH, settings=FALLBACK).run(job(prompt="a fox", model="gpt-image-1.5"), "req_1")
    assert [c[0] for c in upstreams.calls] == ["openai"]
    assert clock.sleeps == []


# --- logs ---


def test_every_attempt_is_logged_without_secrets_or_prompt(router, job, upstreams, log_stream):
    upstreams.script["openai"] = [retryable(status=503), auth_failure()]
    prompt = "a confidential prompt about project nightingale"
    router(BOTH, settings=FALLBACK).run(job(prompt=prompt, model="gpt-image-1.5"), "req_abc")
    records = [r for r in log_records(log_stream) if r["message"] == "upstream attempt"]
    fields = (
        "provider",
        "model",
        "contract",
        "request_id",
        "attempt",
        "outcome",
        "status",
        "code",
        "latency_ms",
    )
    # Powertools leaves out None fields: a successful attempt has no `code`.
    assert [{k: r.get(k) for k in fields} for r in records] == [
        {
            "provider": "openai",
            "model": "gpt-image-1.5",
            "contract": "gpt-image-1.5",
            "request_id": "req_abc",
            "attempt": 1,
            "outcome": "retry",
            "status": 503,
            "code": "upstream_error",
            "latency_ms": 2000.0,
        },
        {
            "provider": "openai",
            "model": "gpt-image-1.5",
            "contract": "gpt-image-1.5",
            "request_id": "req_abc",
            "attempt": 2,
            "outcome": "fallover",
            "status": 502,
            "code": "upstream_auth",
            "latency_ms": 2000.0,
        },
        {
            "provider": "gemini",
            "model": "gemini-3.1-flash-image",
            "contract": "gpt-image-1.5",
            "request_id": "req_abc",
            "attempt": 1,
            "outcome": "ok",
            "status": 200,
            "code": None,
            "latency_ms": 2000.0,
        },
    ]
    assert [r["level"] for r in records] == ["WARNING", "WARNING", "INFO"]
    output = log_stream.getvalue()
    for secret in ("sk-test-openai-secret", "gm-test-gemini-secret", "nightingale"):
        assert secret not in output


def test_a_first_try_success_leaves_its_line_to_the_request(router, job, upstreams, log_stream):
    served = router(OPENAI).run(job(prompt="a fox", model="gpt-image-1.5"), "req_1")
    assert outcomes(served) == [("openai", 1, "ok")]
    assert [r for r in log_records(log_stream) if r["message"] == "upstream attempt"] == []
    upstreams.script["openai"] = [retryable(status=503)]
    router(OPENAI).run(job(prompt="a fox", model="gpt-image-1.5"), "req_2")
    records = [r for r in log_records(log_stream) if r["message"] == "upstream attempt"]
    assert [(r["request_id"], r["attempt"], r["outcome"]) for r in records] == [
        ("req_2", 1, "retry"),
        ("req_2", 2, "ok"),
    ]


def test_a_final_failure_and_a_bug_are_logged_as_errors(router, job, upstreams, log_stream):
    upstreams.script["openai"] = [RuntimeError("bug")]
    with pytest.raises(RuntimeError):
        router(OPENAI).run(job(prompt="a fox", model="gpt-image-1.5"), "req_1")
    upstreams.script["openai"] = [content_policy("blocked")]
    with pytest.raises(ProviderError):
        router(OPENAI).run(job(prompt="a fox", model="gpt-image-1.5"), "req_2")
    records = [r for r in log_records(log_stream) if r["message"] == "upstream attempt"]
    assert [(r["request_id"], r["outcome"], r["status"], r["code"]) for r in records] == [
        ("req_1", "error", 500, "internal_error"),
        ("req_2", "error", 400, "content_policy_violation"),
    ]


# --- the smoke script ---


def test_smoke_script_skips_every_provider_without_keys(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("smoke", REPO / "scripts" / "smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "smoke", smoke)  # dataclasses look their module up while defining
    spec.loader.exec_module(smoke)
    assert smoke.main({}) == 0
    assert capsys.readouterr().out.splitlines() == [
        "skipped openai: IMAGEGATE_OPENAI_API_KEY is not set",
        "skipped gemini: IMAGEGATE_GEMINI_API_KEY is not set",
        "skipped bedrock: IMAGEGATE_BEDROCK_REGION is not set",
    ]


# --- lifecycle dates (issue 18, item 2) -----------------------------------------------------------------

DATED = {
    "models": {
        "gpt-image-2": {
            "routes": [{"provider": "openai", "model": "gpt-image-2", "credential": "OPENAI_API_KEY"}]
        }
    },
    "upstreams": {
        "openai": {
            "gpt-image-2": {
                "deprecated_at": "2027-01-04",
                "shutdown_at": "2027-04-05",
                "successor": "gpt-image-2.5-flare",
            },
            # gpt-image-3 has no price here: nothing says gpt-image-2's price covers it.
            "gpt-image-2.5-flare": {"shutdown_at": "2027-07-05", "successor": "gpt-image-3"},
        }
    },
}


def test_a_route_turns_from_served_to_successor_to_refused_as_the_clock_passes_its_dates(
    upstreams, logger, job
):
    settings = Settings(catalog=json.dumps(DATED))
    catalog = load_catalog(settings)
    now = [float(midnight(date(2027, 4, 4)) + 86_399)]  # the last second before the shutdown
    r = Router(
        settings, catalog.routes, OPENAI, Deps(aws=None), logger,
        factories=upstreams.factories(), catalog=catalog, now=lambda: now[0],
    )  # fmt: skip
    request = job(prompt="a fox", model="gpt-image-2")
    assert r.run(request, "req_1").model == "gpt-image-2"
    now[0] += 1  # 2027-04-05T00:00Z: gpt-image-2 is gone, its successor serves
    assert [s.model for s in r.check(request)] == ["gpt-image-2.5-flare"]
    assert r.run(request, "req_2").model == "gpt-image-2.5-flare"
    now[0] = midnight(date(2027, 7, 5))  # the successor is gone too, and its own successor is not covered
    calls = len(upstreams.calls)
    with pytest.raises(APIError) as info:
        r.check(request)
    assert (info.value.status, info.value.code, info.value.param) == (400, "model_not_found", "model")
    assert "Use 'gpt-image-3' instead" in info.value.message
    assert "gpt-image-2 on 2027-04-05" in info.value.message
    with pytest.raises(APIError):
        r.run(request, "req_3")
    assert len(upstreams.calls) == calls  # no upstream was called for it: never a 502 after a wasted call


def test_a_live_route_is_preferred_to_a_successor_and_an_unreachable_one_hands_over(router, job):
    # gpt-image-1.5 on 2026-12-06: OpenAI's is gone, Azure's lives until the 16th.
    azure = {**OPENAI, "AZURE_OPENAI_API_KEY": "az", "AZURE_OPENAI_ENDPOINT": "https://r.openai.azure.com"}
    request = job(prompt="a fox", model="gpt-image-1.5")
    assert [(s.provider, s.model) for s in router(azure, dated=True).check(request)] == [
        ("azure_openai", "gpt-image-1.5")
    ]
    # Without Azure's credentials, every reachable route is past its date: the successor serves.
    assert [(s.provider, s.model) for s in router(OPENAI, dated=True).check(request)] == [
        ("openai", "gpt-image-2")
    ]


def test_variations_on_openai_routes_say_they_have_no_upstream(router, job, upstreams):
    upstreams.supports = {"openai": {"generate", "edit"}}  # GPT image models make no variations
    variation = job("variations", images=[upload()], model="dall-e-2")
    with pytest.raises(APIError) as info:
        router(OPENAI, dated=True).check(variation)
    assert info.value.code == "model_not_available"
    assert "dall-e-2 shut down on 2026-05-12" in info.value.message
    assert "gpt-image-2 has no variations endpoint" in info.value.message


def test_a_route_whose_provider_will_not_build_is_unavailable_logged_once_not_a_500(
    router, job, upstreams, log_stream
):
    """What the loader cannot know (a Bedrock family's options, say) fails the route, not the model."""

    def refuse(upstream, deps):
        raise ValueError(f"bedrock route for {upstream.model}: unknown option(s) ['steps']")

    routes = {
        "gpt-image-1.5": [
            RouteSpec("bedrock", "stability.sd3-5-large-v1:0", region="us-west-2", options={"steps": 4}),
            RouteSpec("openai", "gpt-image-1.5", "OPENAI_API_KEY"),
        ]
    }
    r = router(OPENAI, routes=routes, factories={**upstreams.factories(), "bedrock": refuse})
    model = job(prompt="a fox", model="gpt-image-1.5").contract
    assert r.offer(model)["generations"] == [routes["gpt-image-1.5"][1]]
    for n in range(2):
        served = r.run(job(prompt="a fox", model="gpt-image-1.5"), f"req_{n}")
        assert (served.provider, served.model) == ("openai", "gpt-image-1.5")
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    broken = [line for line in lines if line["message"].startswith("route unavailable")]
    assert len(broken) == 1 and broken[0]["provider"] == "bedrock" and "steps" in broken[0]["reason"]
    only = {"gpt-image-1.5": routes["gpt-image-1.5"][:1]}
    r = router(OPENAI, routes=only, factories={**upstreams.factories(), "bedrock": refuse})
    with pytest.raises(APIError) as info:
        r.run(job(prompt="a fox", model="gpt-image-1.5"), "req_x")
    assert (info.value.status, info.value.code) == (400, "model_not_available")

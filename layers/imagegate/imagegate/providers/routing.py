"""Which upstream serves a job: route tables, availability, retries, fallover and the time budget.

A public model id maps to an ordered list of routes (the catalog's, overridable per model by the operator).
Routes to an upstream model past its shutdown date are never tried: when every one of a model's routes is,
their successors serve it where its price covers them (`catalog/lifecycle.py`), else the request is refused
with a 400 naming the replacement, before anything is reserved. The router tries the live routes in order:
up to three attempts each for retryable failures (exponential backoff with full jitter, or the upstream's
Retry-After), then the next route for failures worth falling over on, all within
`Settings.upstream_budget_seconds`.

Providers read their per-call timeout from `Upstream.timeout_s`, so a provider is built (once per container)
for each whole number of seconds an attempt may take: min(route timeout, whole seconds left of the budget).
The first attempt on a route nearly always gets the route's full timeout; only late attempts build another.
"""

from __future__ import annotations

import importlib
import itertools
import math
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from typing import TYPE_CHECKING, Any, Literal

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from imagegate.catalog.contracts import Contract, Endpoint
from imagegate.catalog.lifecycle import Lifecycles, Plan, day_of, plan
from imagegate.catalog.loader import Catalog, load_catalog
from imagegate.catalog.routes import LOCAL_ROUTE, RouteSpec
from imagegate.errors import APIError, ProviderError
from imagegate.providers import (
    Deps,
    Operation,
    Provider,
    ProviderResult,
    StreamItem,
    Upstream,
    operation,
    run,
    stream,
)

if TYPE_CHECKING:
    from aws_lambda_powertools.logging import Logger

    from imagegate.config import Settings
    from imagegate.inputs.request import ImageJob

MAX_ATTEMPTS_PER_ROUTE = 3
# An attempt is not started with less time than this left: it could not finish.
MIN_ATTEMPT_SECONDS = 1.0

Factory = Callable[[Upstream, Deps], Provider]
Outcome = Literal["ok", "retry", "fallover", "error"]


@dataclass(frozen=True)
class Attempt:
    provider: str
    model: str
    attempt: int  # 1-based, per route
    latency_ms: float
    outcome: Outcome
    status: int  # 200 when it served the job, else the ProviderError's status (500: a bug in the provider)
    code: str | None = None


@dataclass(frozen=True)
class Served:
    result: ProviderResult
    provider: str
    model: str  # the upstream's model id
    attempts: list[Attempt]


def load_routes(settings: Settings, catalog_ids: Iterable[str] = ()) -> dict[str, list[RouteSpec]]:
    """The catalog's routes with the operator's overrides laid over them (`catalog/loader.py`)."""
    return dict(load_catalog(settings).routes)


def credential_names(routes: Mapping[str, list[RouteSpec]]) -> set[str]:
    """Every credential name the routes refer to: what to look up in the environment."""
    return {
        name
        for specs in routes.values()
        for spec in specs
        for name in (spec.credential, spec.base_url_credential)
        if name
    }


def retired_message(model_id: str, chosen: Plan) -> str:
    """A 400's message for a model whose every route is past its date: what went when, and the replacement
    (the first live successor, which its price does not cover, or none)."""
    gone = ", ".join(sorted({f"{s.retired.model} on {s.shutdown_at}" for s in chosen.successions}))
    replacement = next((s.successor.model for s in chosen.successions if s.successor is not None), None)
    advice = (
        f" Use '{replacement}' instead: this model's price does not cover it."
        if replacement
        else " It has no live successor."
    )
    return f"The model '{model_id}' has been retired: its upstream model shut down ({gone}).{advice}"


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ProviderError) and exc.retry


# Full jitter: a random wait up to 0.5, 1, 2 ... 4 seconds, so concurrent retries do not stampede.
_backoff = wait_random_exponential(multiplier=0.5, max=4)


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, ProviderError) and exc.retry_after is not None:
        return max(0.0, exc.retry_after)
    return _backoff(state)


@dataclass(frozen=True)
class Streamed:
    events: Generator[StreamItem, None, None]  # its first item already made: the upstream answered
    provider: str
    model: str  # the upstream's model id
    attempts: list[Attempt]
    # Seconds left of the request's upstream budget, on the router's clock: the router bounds the wait
    # for the first event, and the stream's reader bounds the last one with this.
    remaining: Callable[[], float]


def _opened(provider: Provider, job: ImageJob) -> Generator[StreamItem, None, None]:
    """A provider's stream once its first item has arrived: until then, a failure is an attempt's."""
    events = stream(provider, job)
    try:
        first = next(events)
    except StopIteration:
        raise ProviderError(f"The upstream image service ({provider.name}) sent an empty stream.") from None
    return _resumed(first, events)


def _resumed(first: StreamItem, events: Iterator[StreamItem]) -> Generator[StreamItem, None, None]:
    # `yield from` passes a close() on to the provider's stream (the upstream connection) as well.
    yield first
    yield from events


@dataclass
class _Call:
    """One request's way through the routes, and the work each attempt does with a provider."""

    job: ImageJob
    request_id: str
    work: Callable[[Provider, ImageJob], Any]
    deadline: float
    attempts: list[Attempt] = field(default_factory=list)
    # The last failed attempt, logged once it is known whether it is retried, fallen over or final.
    pending: Attempt | None = None


class Router:
    def __init__(
        self,
        settings: Settings,
        routes: Mapping[str, list[RouteSpec]],
        credentials: Mapping[str, str],
        deps: Deps,
        logger: Logger,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        factories: Mapping[str, Factory] | None = None,
        catalog: Catalog | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        """`factories` maps provider names to `create` functions; by default each provider module is
        imported on first use, so a deployment loads only the upstream code its routes need. `catalog`
        gives the upstream models' lifecycle dates and the prices that decide whether a successor may
        serve, read on the wall clock `now` (the service's); without it no route is dated."""
        self._settings = settings
        self._routes = routes
        self._credentials = dict(credentials)
        self._deps = deps
        self._logger = logger
        self._broken: set[tuple[str, int]] = set()  # routes whose provider would not build, logged once
        self._clock = clock
        self._sleep = sleep
        self._factories = factories
        self._providers: dict[tuple[str, int, str, float], Provider] = {}
        self._catalog = catalog
        self._now = now
        self._lifecycles = catalog.lifecycles if catalog is not None else Lifecycles({})
        # Local stands in for every model only where settings allow it (a laptop, tests, a demo stack): a
        # deployed stack with no upstream serves imagegate-local alone, and real ids are model_not_available.
        self._local_only = settings.local_serves_all and not any(
            self._available(spec) for specs in routes.values() for spec in specs if spec.provider != "local"
        )

    @property
    def local_only(self) -> bool:
        """No upstream is configured: the built-in renderer serves every model."""
        return self._local_only

    @property
    def configured(self) -> list[str]:
        """The upstream providers some route can reach, for the startup log."""
        return sorted(
            {
                s.provider
                for specs in self._routes.values()
                for s in specs
                if s.provider != "local" and self._available(s)
            }
        )

    def check(self, job: ImageJob) -> list[RouteSpec]:
        """The routes that may serve a job, in order; the 400 a job gets when nothing here can serve it.
        Called before any money is reserved (pricing bounds what these upstreams may bill)."""
        return [spec for _, spec in self._candidates(job)]

    def run(self, job: ImageJob, request_id: str) -> Served:
        result, spec, attempts = self._run(_Call(job, request_id, run, self._deadline(job)))
        return Served(result, spec.provider, spec.model, attempts)

    def stream(self, job: ImageJob, request_id: str) -> Streamed:
        """A streamed job, on the first route whose upstream yields a first event (a partial image, or
        the result of a provider that cannot stream). Retries and fallover apply until then; after it the
        stream is committed to that upstream, and a failure ends it."""
        call = _Call(job, request_id, _opened, self._deadline(job))
        events, spec, attempts = self._run(call)
        return Streamed(events, spec.provider, spec.model, attempts, lambda: self._remaining(call))

    def _deadline(self, job: ImageJob) -> float:
        # The inputs were fetched (image URLs, uploaded files) in the same budget: that time is spent.
        return self._clock() + self._settings.upstream_budget_seconds - job.input_seconds

    def _run(self, call: _Call) -> tuple[Any, RouteSpec, list[Attempt]]:
        """`call.work` on the routes in order (retries, fallover, the time budget): what it returned, and
        on which route."""
        routes = self._candidates(call.job)
        last: ProviderError | None = None
        for index, spec in routes:
            if self._remaining(call) < MIN_ATTEMPT_SECONDS:
                break
            try:
                result = self._try_route(call, index, spec)
            except ProviderError as exc:
                last = exc
                if exc.fallover:
                    continue
                self._settle(call, "error")
                raise
            return result, spec, call.attempts
        self._settle(call, "error")
        if last is None or (last.retry and self._remaining(call) < MIN_ATTEMPT_SECONDS):
            # Out of time with the failure still worth retrying: the client's problem is the time, a 504.
            raise ProviderError(
                "No upstream produced the images within this request's time budget of "
                f"{self._settings.upstream_budget_seconds:g} seconds.",
                status=504,
                code="upstream_timeout",
                fallover=False,
            ) from last
        raise last

    def _candidates(self, job: ImageJob) -> list[tuple[int, RouteSpec]]:
        return self.routes_for(job.contract, job.endpoint, operation(job))

    def routes_for(
        self, contract: Contract, endpoint: Endpoint, wanted: Operation
    ) -> list[tuple[int, RouteSpec]]:
        """The routes (with their index in the model's table) that serve `wanted` on `endpoint` today; a 400
        saying why when there are none."""
        model_id = contract.id
        table = [LOCAL_ROUTE] if self._local_only else self._routes.get(model_id, [])
        available = [(i, spec) for i, spec in enumerate(table) if self._available(spec)]
        if not available:
            raise APIError(
                400,
                f"The model '{model_id}' is not available on this deployment: none of its upstreams is "
                "configured.",
                param="model",
                code="model_not_available",
            )
        routes = self._plan(contract, endpoint, available)
        serving = [(i, spec) for i, spec in routes if self._serves(model_id, i, spec, wanted)]
        if not serving:
            raise APIError(
                400,
                f"The model '{model_id}' cannot serve /images/{endpoint} on this deployment: none of its "
                f"configured upstreams supports it{self._why_not(endpoint, [s for _, s in available])}.",
                param="model",
                code="model_not_available",
            )
        return serving

    def offer(self, contract: Contract) -> dict[Endpoint, list[RouteSpec] | str]:
        """What this deployment can do with a model today: per endpoint of its contract, the routes that
        serve it, or why none does (GET /v1/models, `imagegate models`)."""
        wanted: dict[Endpoint, Operation] = {"generations": "generate", "edits": "edit", "variations": "vary"}
        offer: dict[Endpoint, list[RouteSpec] | str] = {}
        for endpoint in sorted(contract.endpoints):
            try:
                offer[endpoint] = [spec for _, spec in self.routes_for(contract, endpoint, wanted[endpoint])]
            except APIError as exc:
                offer[endpoint] = exc.message
        return offer

    def _plan(
        self, contract: Contract, endpoint: Endpoint, available: list[tuple[int, RouteSpec]]
    ) -> list[tuple[int, RouteSpec]]:
        """The available routes that may serve a contract's endpoint today: the live ones, else the
        successors its price covers; a 400 `model_not_found` naming the replacement when there are none."""
        index = {id(spec): i for i, spec in available}

        def covered(spec: RouteSpec) -> bool:
            prices = self._catalog.prices if self._catalog is not None else None
            return prices is None or prices.covers(contract, endpoint, spec.model, spec.options)

        chosen = plan([spec for _, spec in available], self._lifecycles, self.today(), covered)
        if not chosen.routes:
            raise APIError(400, retired_message(contract.id, chosen), param="model", code="model_not_found")
        origin = {
            id(s.successor): index[id(s.retired)] for s in chosen.successions if s.successor is not None
        }
        return [(index.get(id(spec), origin.get(id(spec), 0)), spec) for spec in chosen.routes]

    def reachable(self, model_id: str) -> list[RouteSpec]:
        """A model's routes that this deployment is configured for (credentials, region), dated or not."""
        table = [LOCAL_ROUTE] if self._local_only else self._routes.get(model_id, [])
        return [spec for spec in table if self._available(spec)]

    def today(self) -> date:
        """The UTC day on the service's clock: the day lifecycle dates are compared with."""
        return day_of(self._now())

    def _why_not(self, endpoint: Endpoint, available: list[RouteSpec]) -> str:
        """Where the routes in use are successors: which upstream model went, and which does not offer it."""
        chosen = plan(available, self._lifecycles, self.today())
        for succession in chosen.successions:
            if succession.successor is not None:
                return (
                    f": its upstream model {succession.retired.model} shut down on {succession.shutdown_at}, "
                    f"and its successor {succession.successor.model} has no {endpoint} endpoint"
                )
        return ""

    def _available(self, spec: RouteSpec) -> bool:
        if spec.provider == "local":
            return True
        if spec.provider == "bedrock":
            return bool(spec.region or self._settings.bedrock_region)
        if spec.base_url_credential and not self._credentials.get(spec.base_url_credential):
            return False
        # A keyless route (an openai_compatible server on a private network) is available as configured.
        return not spec.credential or bool(self._credentials.get(spec.credential))

    def _serves(self, model_id: str, index: int, spec: RouteSpec, wanted: Operation) -> bool:
        """Whether the route's provider does `wanted`; False, logged once, when it cannot be built at all.

        The loader checks what it can of a route (`check_options`); a provider may still refuse what only
        it knows (a Bedrock model family's options). That route is then unavailable, not every request a 500.
        """
        key = (model_id, index)
        if key in self._broken:
            return False
        try:
            provider = self._provider(model_id, index, spec, spec.timeout_s)
        except Exception as exc:  # any refusal to build from the configuration
            self._broken.add(key)
            # A ValueError's message names the route's fields; another exception's might quote anything.
            reason = str(exc)[:500] if isinstance(exc, ValueError) else type(exc).__name__
            self._logger.error(
                "route unavailable: its provider refused the configuration",
                extra={"contract": model_id, "route": index, "provider": spec.provider, "reason": reason},
            )
            return False
        return provider.supports(wanted)

    def _provider(self, model_id: str, index: int, spec: RouteSpec, timeout_s: float) -> Provider:
        key = (model_id, index, spec.model, timeout_s)
        provider = self._providers.get(key)
        if provider is None:
            upstream = Upstream(
                provider=spec.provider,
                model=spec.model,
                base_url=spec.base_url or self._credentials.get(spec.base_url_credential, ""),
                api_key=self._credentials.get(spec.credential, "") if spec.credential else "",
                region=spec.region or (self._settings.bedrock_region if spec.provider == "bedrock" else ""),
                timeout_s=timeout_s,
                options=spec.options,
            )
            provider = self._providers[key] = self._factory(spec.provider)(upstream, self._deps)
        return provider

    def _factory(self, name: str) -> Factory:
        if self._factories is not None:
            return self._factories[name]
        return importlib.import_module(f"{__package__}.{name}").create

    def _remaining(self, call: _Call) -> float:
        return call.deadline - self._clock()

    def _try_route(self, call: _Call, index: int, spec: RouteSpec) -> Any:
        def stop(state: RetryCallState) -> bool:
            # The wait is already chosen: give up on this route if it would leave too little time to try.
            return (
                state.attempt_number >= MAX_ATTEMPTS_PER_ROUTE
                or self._remaining(call) - state.upcoming_sleep < MIN_ATTEMPT_SECONDS
            )

        retrying = Retrying(
            stop=stop,
            wait=_wait,
            retry=retry_if_exception(_retryable),
            sleep=self._sleep,
            before_sleep=lambda state: self._settle(call, "retry"),
            reraise=True,
        )
        numbers = itertools.count(1)
        return retrying(lambda: self._attempt(call, index, spec, next(numbers)))

    def _attempt(self, call: _Call, index: int, spec: RouteSpec, number: int) -> Any:
        # A failure still pending here came from the previous route, and this is its fallover.
        self._settle(call, "fallover")
        timeout = min(spec.timeout_s, max(MIN_ATTEMPT_SECONDS, math.floor(self._remaining(call))))
        provider = self._provider(call.job.contract.id, index, spec, timeout)
        started = self._clock()

        def record(status: int, code: str | None) -> Attempt:
            # "error" until `_settle` says what came of it.
            latency = round((self._clock() - started) * 1000, 1)
            return Attempt(spec.provider, spec.model, number, latency, "error", status, code)

        try:
            result = call.work(provider, call.job)
        except ProviderError as exc:
            call.pending = record(exc.status, exc.code)
            raise
        except Exception:
            # A bug, not an upstream failure: logged, never retried or hidden behind another route.
            call.pending = record(500, "internal_error")
            self._settle(call, "error")
            raise
        call.pending = record(200, None)
        self._settle(call, "ok")
        return result

    def _settle(self, call: _Call, outcome: Outcome) -> None:
        """Log the pending attempt with its outcome, now known, and add it to the request's attempts."""
        if call.pending is None:
            return
        attempt = replace(call.pending, outcome=outcome)
        call.pending = None
        call.attempts.append(attempt)
        if outcome == "ok" and len(call.attempts) == 1:
            # Served at the first try: the request's own log line says so (Service: `upstream_model`,
            # `upstream_ms`, `attempts`), and a second line per request would cost every request its CPU.
            return
        log = self._logger.info if outcome == "ok" else self._logger.warning
        # Never the prompt, the key or the upstream's message (which may quote either): ids and codes only.
        log(
            "upstream attempt",
            extra={
                "request_id": call.request_id,
                "contract": call.job.contract.id,
                "provider": attempt.provider,
                "model": attempt.model,
                "attempt": attempt.attempt,
                "latency_ms": attempt.latency_ms,
                "outcome": outcome,
                "status": attempt.status,
                "code": attempt.code,
            },
        )

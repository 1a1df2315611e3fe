"""Which upstream serves a job: route tables, availability, retries, fallover and the time budget.

A public model id maps to an ordered list of routes (`routes.json`, overridable per model by the operator).
The router tries the available routes in order: up to three attempts each for retryable failures
(exponential backoff with full jitter, or the upstream's Retry-After), then the next route for failures
worth falling over on, all within `Settings.upstream_budget_seconds`.

Providers read their per-call timeout from `Upstream.timeout_s`, so a provider is built (once per container)
for each whole number of seconds an attempt may take: min(route timeout, whole seconds left of the budget).
The first attempt on a route nearly always gets the route's full timeout; only late attempts build another.
"""

from __future__ import annotations

import importlib
import itertools
import math
import pkgutil
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from imagegate.catalog.contracts import LOCAL_MODEL
from imagegate.config import load_document
from imagegate.errors import APIError, ProviderError
from imagegate.providers import Deps, Provider, ProviderResult, StreamItem, Upstream, operation, run, stream

if TYPE_CHECKING:
    from aws_lambda_powertools.logging import Logger

    from imagegate.config import Settings
    from imagegate.inputs.request import ImageJob

ROUTES_PATH = Path(__file__).parents[1] / "catalog" / "routes.json"
# The provider modules beside this router (private helpers start with "_"): adding a module adds a provider.
PROVIDERS = tuple(
    sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parent)])
        if not m.name.startswith("_") and m.name != __name__.rpartition(".")[2]
    )
)
MAX_ATTEMPTS_PER_ROUTE = 3
# An attempt is not started with less time than this left: it could not finish.
MIN_ATTEMPT_SECONDS = 1.0
DEFAULT_TIMEOUT_SECONDS = 15.0
MAX_TIMEOUT_SECONDS = 300.0

Factory = Callable[[Upstream, Deps], Provider]
Outcome = Literal["ok", "retry", "fallover", "error"]


@dataclass(frozen=True)
class RouteSpec:
    """One entry of a model's route list, as configured: the credential is a name, resolved by the router."""

    provider: str
    model: str
    credential: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_SECONDS
    base_url: str = ""
    region: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)


LOCAL_ROUTE = RouteSpec(provider="local", model=LOCAL_MODEL)


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


def load_routes(settings: Settings, catalog_ids: Iterable[str]) -> dict[str, list[RouteSpec]]:
    """The packaged route table with the operator's `Settings.routes` lists laid over it, validated: a
    mistake is a ValueError at startup naming the model, the route and the field, not a misrouted request."""
    ids = frozenset(catalog_ids)
    routes = _parse(_read("", "the packaged routes.json"), ids, "the packaged routes.json")
    if settings.routes.strip():
        routes.update(_parse(_read(settings.routes, "IMAGEGATE_ROUTES"), ids, "IMAGEGATE_ROUTES"))
    return routes


def credential_names(routes: Mapping[str, list[RouteSpec]]) -> set[str]:
    """Every credential name the routes refer to: what to look up in the environment."""
    return {spec.credential for specs in routes.values() for spec in specs if spec.credential}


def _read(source: str, label: str) -> Any:
    try:
        return load_document(source, ROUTES_PATH)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{label} could not be read as JSON: {exc}") from exc


def _parse(document: Any, catalog_ids: frozenset[str], source: str) -> dict[str, list[RouteSpec]]:
    if not isinstance(document, dict) or not isinstance(document.get("routes"), dict):
        raise ValueError(f'{source} must be a JSON object {{"routes": {{"<model id>": [route, ...]}}}}.')
    extra = sorted(k for k in document if k != "routes" and not k.startswith("_"))
    if extra:
        raise ValueError(f"{source}: unknown top-level key(s) {', '.join(extra)}; only 'routes' is read.")
    table = {}
    for model_id, entries in document["routes"].items():
        if model_id.startswith("_"):
            continue
        where = f"{source}: model '{model_id}'"
        if model_id not in catalog_ids:
            raise ValueError(f"{where} is not a model of this deployment ({', '.join(sorted(catalog_ids))}).")
        if not isinstance(entries, list):
            raise ValueError(f"{where} must map to a list of routes.")
        table[model_id] = [_route(entry, f"{where} route {i}") for i, entry in enumerate(entries, 1)]
    return table


_STRINGS = ("provider", "model", "credential", "base_url", "region")
_FIELDS = frozenset({*_STRINGS, "timeout_s", "options"})


def _route(entry: Any, where: str) -> RouteSpec:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a JSON object.")
    given = {k: v for k, v in entry.items() if not k.startswith("_")}
    unknown = sorted(given.keys() - _FIELDS)
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_FIELDS))})."
        )
    for name in _STRINGS:
        if not isinstance(given.get(name, ""), str):
            raise ValueError(f"{where}: '{name}' must be a string.")
    provider = given.get("provider", "")
    if provider not in PROVIDERS:
        raise ValueError(f"{where}: 'provider' must be one of {', '.join(PROVIDERS)}, not {provider!r}.")
    model = given.get("model") or (LOCAL_MODEL if provider == "local" else "")
    if not model:
        raise ValueError(f"{where}: 'model' (the upstream's model id) is required for {provider}.")
    credential = given.get("credential", "")
    if provider in ("openai", "gemini") and not credential:
        raise ValueError(
            f"{where}: 'credential' (the name of the upstream key, e.g. OPENAI_API_KEY) is required."
        )
    if provider in ("bedrock", "local") and credential:
        raise ValueError(f"{where}: {provider} takes no 'credential' (Bedrock signs with the role).")
    base_url = given.get("base_url", "")
    if provider == "openai_compatible" and not base_url:
        raise ValueError(f"{where}: 'base_url' is required for openai_compatible.")
    if base_url and not base_url.startswith(("https://", "http://")):
        raise ValueError(f"{where}: 'base_url' must be an http(s) URL.")
    timeout = given.get("timeout_s", DEFAULT_TIMEOUT_SECONDS)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT_SECONDS
    ):
        raise ValueError(
            f"{where}: 'timeout_s' must be a number of seconds above 0, at most {MAX_TIMEOUT_SECONDS:g}."
        )
    options = given.get("options", {})
    if not isinstance(options, dict):
        raise ValueError(f"{where}: 'options' must be a JSON object.")
    return RouteSpec(
        provider=provider,
        model=model,
        credential=credential,
        timeout_s=float(timeout),
        base_url=base_url,
        region=given.get("region", ""),
        options=options,
    )


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
    ) -> None:
        """`factories` maps provider names to `create` functions; by default each provider module is
        imported on first use, so a deployment loads only the upstream code its routes need."""
        self._settings = settings
        self._routes = routes
        self._credentials = dict(credentials)
        self._deps = deps
        self._logger = logger
        self._clock = clock
        self._sleep = sleep
        self._factories = factories
        self._providers: dict[tuple[str, int, float], Provider] = {}
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
        model_id = job.contract.id
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
        wanted = operation(job)
        serving = [
            (i, spec)
            for i, spec in available
            if self._provider(model_id, i, spec, spec.timeout_s).supports(wanted)
        ]
        if not serving:
            raise APIError(
                400,
                f"The model '{model_id}' cannot serve /images/{job.endpoint} on this deployment: none of its "
                "configured upstreams supports it.",
                param="model",
                code="model_not_available",
            )
        return serving

    def _available(self, spec: RouteSpec) -> bool:
        if spec.provider == "local":
            return True
        if spec.provider == "bedrock":
            return bool(spec.region or self._settings.bedrock_region)
        # A keyless route (an openai_compatible server on a private network) is available as configured.
        return not spec.credential or bool(self._credentials.get(spec.credential))

    def _provider(self, model_id: str, index: int, spec: RouteSpec, timeout_s: float) -> Provider:
        key = (model_id, index, timeout_s)
        provider = self._providers.get(key)
        if provider is None:
            upstream = Upstream(
                provider=spec.provider,
                model=spec.model,
                base_url=spec.base_url,
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

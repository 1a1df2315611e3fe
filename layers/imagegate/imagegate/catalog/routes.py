"""Routes as data: which upstream model serves a public model id, in order of preference.

A route names a provider (a module of `imagegate.providers`, found by its file name, never imported here),
the upstream's model id, the NAME of its credential (never the key itself), a per-call timeout and
provider options. Routes live in the catalog document (`catalog.json`, each model's `routes`); the router
(`providers/routing.py`) tries them in order. A mistake is a ValueError naming the model, the route and the
field, raised when the catalog loads, not a misrouted request.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imagegate.catalog.contracts import LOCAL_MODEL

# The provider modules (private helpers start with "_"; `routing` is the router): adding a module adds a
# provider. Listed from the folder, not imported: the catalog sits below the providers.
PROVIDERS = tuple(
    sorted(
        m.name
        for m in pkgutil.iter_modules([str(Path(__file__).parents[1] / "providers")])
        if not m.name.startswith("_") and m.name != "routing"
    )
)
DEFAULT_TIMEOUT_SECONDS = 15.0
MAX_TIMEOUT_SECONDS = 300.0
# Providers whose routes must name a credential, and those that take none (Bedrock signs with the role).
KEYED = ("openai", "gemini", "azure_openai", "bfl")
KEYLESS = ("bedrock", "local")
BFL_REGIONS = ("global", "eu", "us")  # the keys of providers/bfl.py's ENDPOINTS
MAX_POLL_SECONDS = 60.0


def _one_of(*values: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in values), f"one of {', '.join(map(repr, values))}"


def _number(low: float, high: float) -> tuple[Callable[[Any], bool], str]:
    def test(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and low < v <= high

    return test, f"a number above {low:g}, at most {high:g}"


_TEXT = (lambda v: isinstance(v, str) and bool(v)), "a non-empty string"
_QUALITY_MAP = (
    lambda v: isinstance(v, dict) and all(isinstance(x, str) for kv in v.items() for x in kv),
    "an object of quality -> upstream quality",
)
_OPENAI = {"dialect": _one_of("gpt-image", "dall-e"), "quality": _QUALITY_MAP}
# The options each provider reads, and what each must be. A provider builds from a route's options when a
# request first needs it; checking them here, when the catalog loads, makes a bad override one that is
# refused (the last good catalog keeps serving) instead of one that fails every request for the model.
# Options a provider does not read are left alone (an openai_compatible server may take its own).
OPTION_RULES: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "openai": _OPENAI,
    "openai_compatible": _OPENAI,
    "azure_openai": {**_OPENAI, "api_version": _TEXT},
    "bfl": {"region": _one_of(*BFL_REGIONS), "poll_seconds": _number(0, MAX_POLL_SECONDS)},
    "bedrock": {
        "negative_text": (lambda v: isinstance(v, str), "a string"),
        "cfg_scale": _number(0, 50),
        "similarity_strength": _number(0, 1),
    },
}


def check_options(provider: str, options: Mapping[str, Any], where: str = "route") -> None:
    """A ValueError naming the first option of `provider` that its provider would refuse to build with."""
    for name, (test, wanted) in OPTION_RULES.get(provider, {}).items():
        if name in options and not test(options[name]):
            raise ValueError(f"{where}: 'options.{name}' must be {wanted}, not {options[name]!r}.")


@dataclass(frozen=True)
class RouteSpec:
    """One entry of a model's route list, as configured: the credential is a name, resolved by the router."""

    provider: str
    model: str
    credential: str = ""
    timeout_s: float = DEFAULT_TIMEOUT_SECONDS
    base_url: str = ""
    base_url_credential: str = ""
    region: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)


LOCAL_ROUTE = RouteSpec(provider="local", model=LOCAL_MODEL)


def parse_routes(entries: Any, where: str) -> list[RouteSpec]:
    """A model's `routes` list, validated."""
    if not isinstance(entries, list):
        raise ValueError(f"{where} must map to a list of routes.")
    return [parse_route(entry, f"{where} route {i}") for i, entry in enumerate(entries, 1)]


def legacy_table(document: Any, catalog_ids: frozenset[str], source: str) -> dict[str, list[RouteSpec]]:
    """IMAGEGATE_ROUTES, the older spelling of a catalog override's `routes`: `{"routes": {id: [route]}}`."""
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
        table[model_id] = parse_routes(entries, where)
    return table


# `base_url_credential`: the name of a credential holding the base URL (an Azure resource's endpoint),
# for an operator who keeps it with the key rather than in the catalog.
_STRINGS = ("provider", "model", "credential", "base_url", "base_url_credential", "region")
_FIELDS = frozenset({*_STRINGS, "timeout_s", "options"})


def parse_route(entry: Any, where: str) -> RouteSpec:
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
    if provider in KEYED and not credential:
        raise ValueError(
            f"{where}: 'credential' (the name of the upstream key, e.g. OPENAI_API_KEY) is required."
        )
    if provider in KEYLESS and credential:
        raise ValueError(f"{where}: {provider} takes no 'credential' (Bedrock signs with the role).")
    base_url = given.get("base_url", "")
    base_url_credential = given.get("base_url_credential", "")
    if provider in ("openai_compatible", "azure_openai") and not (base_url or base_url_credential):
        raise ValueError(f"{where}: 'base_url' is required for {provider}.")
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
    check_options(provider, options, where)
    return RouteSpec(
        provider=provider,
        model=model,
        credential=credential,
        timeout_s=float(timeout),
        base_url=base_url,
        base_url_credential=base_url_credential,
        region=given.get("region", ""),
        options=options,
    )

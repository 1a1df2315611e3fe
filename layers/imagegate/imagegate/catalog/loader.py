"""The catalog: one document of contracts, routes, prices, aliases and lifecycle dates, and its loader.

`catalog.json` (package data) is the packaged document:

    {"markup_percent": "0",
     "models":    {"<public id>": {<contract rules>, <price fields>, "routes": [route, ...], "like": "<id>"}},
     "aliases":   {"<alias>": "<public id>"},
     "upstreams": {"<provider>": {"<upstream model>": {"deprecated_at", "shutdown_at", "successor"}}}}

An operator's override has the same shape and is laid over it (`IMAGEGATE_CATALOG`: JSON text, a file path,
`s3://bucket/key` or `ssm:<parameter name or ARN>`): a model it names gets the fields it gives (null removes
a field; `routes` replaces the list), a model it does not know is added, and an entry with `like` starts
afresh from another model's rules and prices (never its routes) and changes only what it gives. Aliases and
lifecycle dates merge one by one (null removes). Keys starting with "_" are notes (`_source`), ignored.

The older spellings IMAGEGATE_PRICES (`{"markup_percent", "models": {id: {price fields}}}`) and
IMAGEGATE_ROUTES (`{"routes": {id: [route, ...]}}`) are read as catalog documents too, beneath the override.

Everything is validated here, once, when the catalog loads: a mistake is a ValueError naming the model and
the field, never a misrouted or mispriced request.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from imagegate.catalog.contracts import LOCAL_MODEL, Contract, FreeFormSizes, parse_size
from imagegate.catalog.lifecycle import Lifecycle, Lifecycles, Plan, midnight, plan
from imagegate.catalog.prices import (
    PRICE_FIELDS,
    PriceBook,
    check_covers,
    check_fields,
    local_price,
    model_price,
)
from imagegate.catalog.prices import percent as parse_percent
from imagegate.catalog.routes import RouteSpec, legacy_table, parse_routes
from imagegate.config import Settings, load_document

PACKAGED_PATH = Path(__file__).with_name("catalog.json")
TOP_FIELDS = frozenset({"markup_percent", "models", "aliases", "upstreams"})
ENTRY_FIELDS_EXTRA = frozenset({"like", "routes"})
_Strict = ConfigDict(extra="forbid", strict=True, frozen=True)


class FreeForm(BaseModel):
    model_config = _Strict
    multiple_of: int = Field(16, ge=1)
    max_edge: int = Field(3840, ge=1)
    min_pixels: int = Field(655_360, ge=1)
    max_pixels: int = Field(3840 * 2160, ge=1)
    max_aspect: float = Field(3.0, ge=1)


class ContractRules(BaseModel):
    """A model's contract in the document: what a client may ask of it (see `contracts.Contract`)."""

    model_config = _Strict
    endpoints: list[Literal["generations", "edits", "variations"]] = Field(min_length=1)
    sizes: list[str] = Field(min_length=1)
    qualities: list[str] = Field(min_length=1)
    prompt_max: int = Field(ge=1)
    default_size: str = "1024x1024"
    default_quality: str = "auto"
    free_form: FreeForm | None = None
    styles: list[str] = []
    n_max: int = Field(10, ge=1, le=10)
    gpt_params: bool = False
    input_fidelity: bool = False
    transparent_background: bool = True
    default_response_format: Literal["url", "b64_json"] = "b64_json"
    max_input_images: int = Field(16, ge=1, le=16)
    input_formats: list[Literal["PNG", "JPEG", "WEBP"]] = ["PNG", "JPEG", "WEBP"]
    max_input_bytes: int = Field(50 * 1024 * 1024, ge=1)
    square_png_input: bool = False
    revised_prompt: bool = False
    reports_usage: bool = False
    auto_quality: str = "medium"
    owned_by: str = "imagegate"
    released: Annotated[date, Field(strict=False)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ContractRules:
        for size in self.sizes:
            if size != "auto" and parse_size(size) is None:
                raise ValueError(f"size {size!r} is not 'auto' or WxH")
        if self.default_size not in self.sizes:
            raise ValueError(f"default_size {self.default_size!r} is not one of its sizes")
        if self.default_quality not in self.qualities:
            raise ValueError(f"default_quality {self.default_quality!r} is not one of its qualities")
        if "auto" in self.qualities and self.auto_quality not in self.qualities:
            raise ValueError(f"auto_quality {self.auto_quality!r} is not one of its qualities")
        return self


class LifecycleEntry(BaseModel):
    model_config = _Strict
    deprecated_at: Annotated[date, Field(strict=False)] | None = None
    shutdown_at: Annotated[date, Field(strict=False)] | None = None
    successor: str | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _ordered(self) -> LifecycleEntry:
        if self.deprecated_at and self.shutdown_at and self.deprecated_at > self.shutdown_at:
            raise ValueError("deprecated_at is after shutdown_at")
        return self


RULE_FIELDS = frozenset(ContractRules.model_fields)
ENTRY_FIELDS = RULE_FIELDS | PRICE_FIELDS | ENTRY_FIELDS_EXTRA


@dataclass(frozen=True)
class Catalog:
    """The loaded catalog: priced contracts by public id (aliases included), the price book, each model's
    routes in order, the aliases, and the upstream models' lifecycle dates."""

    contracts: Mapping[str, Contract]
    prices: PriceBook
    routes: Mapping[str, list[RouteSpec]]
    aliases: Mapping[str, str]
    lifecycles: Lifecycles

    @property
    def models(self) -> list[str]:
        """The public ids of the models (aliases excluded), in the document's order."""
        return [model_id for model_id in self.contracts if model_id not in self.aliases]

    def plan(self, model_id: str, today: date, routes: list[RouteSpec] | None = None) -> Plan:
        """The routes that serve a model (or alias) on `today`, on any of its endpoints, in order: its live
        routes, else the successors its price covers. `routes`: only these of its routes (the reachable)."""
        contract = self.contracts[model_id]
        table = self.routes[contract.id] if routes is None else routes
        chosen: list[RouteSpec] = []
        successions = []
        for endpoint in sorted(contract.endpoints):
            found = plan(
                table,
                self.lifecycles,
                today,
                lambda spec, e=endpoint: self.prices.covers(contract, e, spec.model, spec.options),
            )
            chosen += [spec for spec in found.routes if spec not in chosen]
            successions = successions or found.successions
        return Plan(chosen, successions)

    def status(self, model_id: str, today: date, routes: list[RouteSpec] | None = None) -> ModelStatus:
        """A model's state on `today` (`imagegate models`, GET /v1/models): retired when nothing serves it,
        deprecated when successors serve it or a route it uses has a date ahead, else active."""
        chosen = self.plan(model_id, today, routes)
        dates = [self.lifecycles.of(spec) for spec in chosen.routes]
        shutdowns = [lc.shutdown_at for lc in dates if lc is not None and lc.shutdown_at is not None]
        if not chosen.routes:
            state = "retired"
        elif chosen.by_successor or shutdowns or any(lc and lc.deprecated_at for lc in dates):
            state = "deprecated"
        else:
            state = "active"
        # The day it stops being served, when every route it uses has a date and nothing takes over then.
        shutdown = None
        if chosen.routes and len(shutdowns) == len(chosen.routes):
            last = max(shutdowns)
            if not self.plan(model_id, last, routes).routes:
                shutdown = last
        return ModelStatus(model_id, state, chosen.routes, shutdown)


@dataclass(frozen=True)
class ModelStatus:
    id: str
    status: Literal["active", "deprecated", "retired"]
    routes: list[RouteSpec]
    shutdown_date: date | None


def load_catalog(settings: Settings, override: Any = None) -> Catalog:
    """The packaged document with the operator's documents laid over it, validated and built.

    `override`: an already parsed IMAGEGATE_CATALOG document (fetched from S3 or SSM by `sources.py`);
    without it, `settings.catalog` is read when it is JSON text or a file path."""
    layers: list[tuple[str, Any]] = []
    if settings.prices.strip():
        layers.append(("prices", _read(settings.prices, "IMAGEGATE_PRICES")))
    if settings.routes.strip():
        layers.append(("IMAGEGATE_ROUTES", _read(settings.routes, "IMAGEGATE_ROUTES")))
    if override is None and settings.catalog.strip() and is_static(settings.catalog):
        override = _read(settings.catalog, "IMAGEGATE_CATALOG")
    if override is not None:
        layers.append(("IMAGEGATE_CATALOG", override))
    layered = tuple((label, json.dumps(doc)) for label, doc in layers)
    return _load(layered, settings.local_price_micros, settings.demo_mode)


def is_static(source: str) -> bool:
    """JSON text or a file path: read with the code. S3 objects and SSM parameters are fetched at run time
    and refreshed (`sources.py`)."""
    return not source.strip().startswith(("s3://", "ssm:", "arn:aws:ssm:"))


def validate_document(document: Any, settings: Settings | None = None) -> Catalog:
    """An override document checked as the service would load it: `imagegate catalog validate`."""
    return load_catalog(settings or Settings(), override=document)


def _read(source: str, label: str) -> Any:
    try:
        return load_document(source, PACKAGED_PATH)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{label} could not be read as JSON: {exc}") from exc


@lru_cache(maxsize=8)
def _load(layers: tuple[tuple[str, str], ...], local_price_micros: int, demo: bool) -> Catalog:
    """Cached by the layers' text: the packaged catalog and a deployment's overrides are parsed and checked
    once per container, however many services are built on them."""
    return _build(_merged(layers), local_price_micros, demo)


def _merged(layers: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """The packaged document with each layer laid over it."""
    document = json.loads(PACKAGED_PATH.read_text())
    merged: dict[str, Any] = {
        "markup_percent": document.get("markup_percent", "0"),
        "models": {k: v for k, v in document["models"].items() if not k.startswith("_")},
        "aliases": dict(document.get("aliases", {})),
        "upstreams": {p: dict(m) for p, m in document.get("upstreams", {}).items() if not p.startswith("_")},
    }
    for label, text in layers:
        layer = json.loads(text)
        if label == "IMAGEGATE_ROUTES":
            table = legacy_table(layer, frozenset(merged["models"]), label)
            layer = {"models": {name: {"routes": _raw_routes(specs)} for name, specs in table.items()}}
        _lay(merged, layer, label)
    return merged


def _raw_routes(specs: list[RouteSpec]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in vars(spec).items() if v not in ("", {}) or k in ("provider", "model")}
        for spec in specs
    ]


def _lay(merged: dict[str, Any], layer: Any, label: str) -> None:
    if not isinstance(layer, dict):
        raise ValueError(f"{label}: the override must be a JSON object")
    check_fields(label, layer, TOP_FIELDS if label != "prices" else frozenset({"markup_percent", "models"}))
    if layer.get("markup_percent") is not None:
        merged["markup_percent"] = layer["markup_percent"]
    models = merged["models"]
    given = layer.get("models") or {}
    if not isinstance(given, dict):
        raise ValueError(f"{label}: 'models' must be an object of model id -> fields")
    for name, fields in given.items():
        if name.startswith("_"):
            continue
        if not isinstance(fields, dict):
            raise ValueError(f"{label}: {name} must be an object of fields")
        if name == LOCAL_MODEL and PRICE_FIELDS & fields.keys():
            raise ValueError(
                f"{label}: {LOCAL_MODEL} is priced by IMAGEGATE_LOCAL_PRICE_USD, not by the catalog"
            )
        check_fields(f"{label}: {name}", fields, ENTRY_FIELDS)
        # A null stays until the entry is resolved: it removes a field `like` would otherwise borrow.
        if fields.get("like") is not None or (name not in models and RULE_FIELDS & fields.keys()):
            models[name] = dict(fields)
        elif name in models:
            models[name] = {**models[name], **fields}
        else:
            raise ValueError(
                f"{label}: unknown model '{name}' (models: {', '.join(sorted(models))}); a new model needs "
                "its contract's rules, or 'like' naming a model to borrow them from"
            )
    aliases = layer.get("aliases") or {}
    if not isinstance(aliases, dict):
        raise ValueError(f"{label}: 'aliases' must be an object of alias -> model id")
    for alias, target in aliases.items():
        if target is None:
            merged["aliases"].pop(alias, None)
        else:
            merged["aliases"][alias] = target
    upstreams = layer.get("upstreams") or {}
    if not isinstance(upstreams, dict) or not all(isinstance(m, dict) for m in upstreams.values()):
        raise ValueError(f"{label}: 'upstreams' must be an object of provider -> model -> dates")
    for provider, dated in upstreams.items():
        into = merged["upstreams"].setdefault(provider, {})
        for model, dates in dated.items():
            if dates is None:
                into.pop(model, None)
            else:
                into[model] = dates


def _resolve(models: dict[str, Any], name: str, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """A model's entry with its `like` chain applied: the borrowed model's rules and prices, never its
    routes, under the entry's own fields."""
    entry = {k: v for k, v in models[name].items() if not k.startswith("_")}
    like = entry.pop("like", None)
    if like is None:
        return {k: v for k, v in entry.items() if v is not None}
    if not isinstance(like, str) or like not in models:
        raise ValueError(f"catalog: model '{name}': 'like' names no model ({like!r})")
    if like in chain:
        raise ValueError(f"catalog: model '{name}': 'like' goes round in a circle ({' -> '.join(chain)})")
    borrowed = {k: v for k, v in _resolve(models, like, (*chain, name)).items() if k != "routes"}
    return {k: v for k, v in {**borrowed, **entry}.items() if v is not None}


def _build(document: dict[str, Any], local_price_micros: int, demo: bool) -> Catalog:
    """`demo`: every model sells at the local renderer's flat price, no markup, no token pricing (a demo
    deployment's drawings under real model ids)."""
    markup = parse_percent("prices: markup_percent", document["markup_percent"])
    contracts: dict[str, Contract] = {}
    prices = {}
    routes: dict[str, list[RouteSpec]] = {}
    for name in document["models"]:
        entry = _resolve(document["models"], name)
        contract = _contract(name, {k: v for k, v in entry.items() if k in RULE_FIELDS})
        if name == LOCAL_MODEL or demo:
            price = local_price(contract, local_price_micros)
        else:
            price = model_price(name, {k: v for k, v in entry.items() if k in PRICE_FIELDS}, markup)
            check_covers(contract, price)
        prices[name] = price
        contracts[name] = replace(contract, pricing=price)
        routes[name] = parse_routes(entry.get("routes", []), f"catalog: model '{name}'")
    aliases = {}
    for alias, target in document["aliases"].items():
        if alias.startswith("_"):
            continue
        if not isinstance(target, str) or target not in contracts or alias in contracts:
            problem = "is a model already" if alias in contracts else f"names no model ({target!r})"
            raise ValueError(f"catalog: alias '{alias}' {problem}")
        aliases[alias] = target
    contracts |= {alias: contracts[target] for alias, target in aliases.items()}
    dates = {}
    for provider, dated in document["upstreams"].items():
        for model, fields in dated.items():
            if model.startswith("_"):
                continue
            entry = _validated(LifecycleEntry, fields, f"catalog: upstreams.{provider}.{model}")
            dates[(provider, model)] = Lifecycle(entry.deprecated_at, entry.shutdown_at, entry.successor)
    return Catalog(contracts, PriceBook(prices), routes, aliases, Lifecycles(dates))


def _validated(schema: type[BaseModel], fields: Any, where: str) -> Any:
    if not isinstance(fields, dict):
        raise ValueError(f"{where} must be a JSON object")
    try:
        return schema.model_validate({k: v for k, v in fields.items() if not k.startswith("_")})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise ValueError(f"{where}: {problems}") from None


def _contract(name: str, fields: dict[str, Any]) -> Contract:
    rules: ContractRules = _validated(ContractRules, fields, f"catalog: model '{name}'")
    released = rules.released
    # Lists become tuples (a contract is frozen and hashable); the rest are the Contract's fields by name.
    fields = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in rules.model_dump(exclude={"endpoints", "free_form", "released"}).items()
    }
    return Contract(
        id=name,
        endpoints=frozenset(rules.endpoints),
        free_form=FreeFormSizes(**rules.free_form.model_dump()) if rules.free_form else None,
        created=midnight(released) if released else 0,
        **fields,
    )


def load_prices(settings: Settings) -> PriceBook:
    """The price book alone (tests, `reconcile`)."""
    return load_catalog(settings).prices

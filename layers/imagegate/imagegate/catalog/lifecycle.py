"""Lifecycle dates of upstream models, and what a route becomes as they pass.

Upstreams retire models every few months (the catalog's `upstreams` section: `deprecated_at`, `shutdown_at`,
`successor` per provider and model). A route to a model past its `shutdown_at` is never called. When every
route of a public model id is past its date, the id is served by the routes' successors (the same provider
and credential, the successor's model id), followed along the chain to one that is still live; whether its
price still covers a successor is the price book's question (`PriceBook.covers`).

Dates are whole UTC days: a model shut down "on 2026-12-01" is gone from 2026-12-01T00:00Z.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

from imagegate.catalog.routes import RouteSpec

# Operators are warned this many days before an upstream model's shutdown (the sweeper, `imagegate models`).
WARNING_DAYS = 30


@dataclass(frozen=True)
class Lifecycle:
    deprecated_at: date | None = None
    shutdown_at: date | None = None
    successor: str | None = None


def day_of(timestamp: float) -> date:
    """The UTC day of a unix time."""
    return datetime.fromtimestamp(timestamp, UTC).date()


def midnight(day: date) -> int:
    """The unix time at which a UTC day begins."""
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())


@dataclass(frozen=True)
class Succession:
    """A route past its date and what serves in its place (None: nothing live)."""

    retired: RouteSpec
    shutdown_at: date
    successor: RouteSpec | None


@dataclass(frozen=True)
class Lifecycles:
    dates: Mapping[tuple[str, str], Lifecycle]

    def of(self, spec: RouteSpec) -> Lifecycle | None:
        return self.dates.get((spec.provider, spec.model))

    def live(self, spec: RouteSpec, today: date) -> bool:
        lifecycle = self.of(spec)
        return lifecycle is None or lifecycle.shutdown_at is None or today < lifecycle.shutdown_at

    def succession(self, spec: RouteSpec, today: date) -> Succession:
        """The live successor of a route past its date: the chain of successors, each on the route's
        provider, followed to the first that is live (a loop in the chain ends it)."""
        lifecycle = self.of(spec)
        assert lifecycle is not None and lifecycle.shutdown_at is not None
        seen = {spec.model}
        current: RouteSpec | None = spec
        while current is not None and not self.live(current, today):
            following = self.of(current)
            name = following.successor if following else None
            current = replace(current, model=name) if name and name not in seen else None
            seen.add(name or "")
        return Succession(spec, lifecycle.shutdown_at, current)

    def days_left(self, spec: RouteSpec, today: date) -> int | None:
        """Days until a route's upstream model shuts down (0 or less: it has), None without a date."""
        lifecycle = self.of(spec)
        if lifecycle is None or lifecycle.shutdown_at is None:
            return None
        return (lifecycle.shutdown_at - today).days

    def named_dates(self) -> list[date]:
        """Every date the document names: the days a route's fate may change."""
        return sorted(
            {d for lc in self.dates.values() for d in (lc.deprecated_at, lc.shutdown_at) if d is not None}
        )


@dataclass(frozen=True)
class Plan:
    """The routes that serve a model on a day: its live routes, or (every route past its date) the
    successors its price covers; `successions` say what was retired, for the client's error."""

    routes: list[RouteSpec]
    successions: list[Succession]

    @property
    def by_successor(self) -> bool:
        return bool(self.successions)


def plan(
    routes: Iterable[RouteSpec],
    lifecycles: Lifecycles,
    today: date,
    covered: Callable[[RouteSpec], bool] = lambda spec: True,
) -> Plan:
    """The routes of a model on `today`, in order (pure: the caller passes only the routes it can reach)."""
    routes = list(routes)
    live = [spec for spec in routes if lifecycles.live(spec, today)]
    if live or not routes:
        return Plan(live, [])
    successions = [lifecycles.succession(spec, today) for spec in routes]
    serving: list[RouteSpec] = []
    for succession in successions:
        spec = succession.successor
        if spec is not None and spec not in serving and covered(spec):
            serving.append(spec)
    return Plan(serving, successions)

"""Rate limits as conditions of the reserve transaction: images per minute and requests in flight, per key and
per account. Pure: this module builds DynamoDB update fragments and judges item images; billing.py runs them.

Every scope's state lives on the one item a request writes anyway, the account's, so limiting costs no
extra write (issue 22: a key's limiter used to cost its KEY item two more writes per request):
  ACCOUNT#<id> / ACCOUNT -> tat, in_flight (+ the account's overrides images_per_minute, max_concurrent)
                            kt_<key_id>, kn_<key_id>: each key's tat and in-flight count
A key's own overrides stay on its KEY item (accounts.py), read when it authenticates. The item grows with
the keys in use (about 60 bytes each), never with the requests in flight.

Images per minute is a token bucket of `limit` images that refills at `limit` a minute, kept as GCRA: `tat`
(epoch ms) is when the bucket will be full again. One image costs T = ceil(60000/limit) ms, a request for
n images n * T, and it is admitted when max(tat, now) + cost <= now + limit * T: a full bucket holds
exactly `limit` images whether or not `limit` divides a minute, and refills no faster than `limit` a
minute. Unlike a fixed minute window, no boundary admits twice the limit at once: any span of w ms admits
at most limit + w / T images. Since `tat` only ever grows, any value once seen is a lower bound of the
stored one: with one in the past the update is `SET tat = now + cost` on condition `tat <= now`; with one
in the future it is `SET tat = tat + cost` on condition `tat <= now + limit * T - cost`. A wrong guess
fails the condition, returns the item, and the transaction is built again from what it showed. (A `tat`
up to SLACK_MS in the past takes the second form too, so that racing requests do not keep guessing wrong:
see SLACK_MS; and so does one up to RACE_SLACK_MS in the past just written by a racing request, `raced`.)
Whatever this container caches of an item after a success (`admitted`) stays a lower bound of what it
wrote.

Requests in flight are a counter per scope, taken with `ADD in_flight 1` on condition `in_flight < max` and
given back by the transaction that closes the reservation (billing.py: the settle, or the sweeper's refund
of a request a stopped Lambda left open), so an update costs the same at 1 or 500 in flight. The lease is
the reservation itself: a stopped request's slot is held until the sweeper closes it
(config.Deadlines.stale_reservation_s), a job's until the job is closed. `reconcile` checks each counter
against the reservations open.

Every refusal is a 429 in OpenAI's shape (type "requests", code "rate_limit_exceeded") with `retry-after` and
OpenAI's `x-ratelimit-*` headers; admitted requests carry the same headers. A request for more images than
a whole minute allows can never pass: 429 with `x-should-retry: false` and no `retry-after`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from imagegate.errors import APIError

IMAGES_PER_MINUTE = 50
MAX_CONCURRENT = 10
WINDOW_MS = 60_000
# When a slot frees is unknowable; in-flight requests finish within seconds, so ask for a short wait.
SLOT_RETRY_SECONDS = 1
# A bucket whose `tat` lies less than this in the past is updated as if it were now (`tat = tat + cost`):
# exact GCRA would move it to now first, but then every request racing a busy key would have to guess the
# instant of its neighbour's write, and keep failing. The price is at most this much refill admitted early.
SLACK_MS = 1_000
# A `tat` a racing request just wrote may lie this far behind this container's clock (the writer's clock ran
# behind): still `tat = tat + cost`. An older one is an idle bucket, whatever raced: it restarts from now.
RACE_SLACK_MS = 5_000
LIMITS = ("images_per_minute", "max_concurrent")


@dataclass(frozen=True)
class Limits:
    """Limits in force for one scope; 0 means none."""

    images_per_minute: int
    max_concurrent: int


@dataclass(frozen=True)
class Scope:
    """Where one scope's limiter lives on the ACCOUNT item, and the placeholder prefix (`tag`) that keeps
    its names apart when the key's and the account's fragments merge into one update."""

    tag: str
    tat: str
    count: str
    own_limits: bool  # the item holds this scope's overrides (the account's; a key's are on its KEY item)


ACCOUNT_SCOPE = Scope("a", "tat", "in_flight", own_limits=True)


def key_scope(key_id: str) -> Scope:
    return Scope("k", f"kt_{key_id}", f"kn_{key_id}", own_limits=False)


@dataclass(frozen=True)
class State:
    """What is known of one scope's limiter: read from the ACCOUNT item (returned by a failed condition, or
    remembered), with the scope's overrides (its own limits; None: the default)."""

    tat: int = 0
    in_flight: int = 0
    overrides: tuple[int | None, int | None] = (None, None)

    @classmethod
    def from_item(cls, item: dict[str, Any], scope: Scope = ACCOUNT_SCOPE) -> State:
        return cls(
            tat=_int(item, scope.tat),
            in_flight=_int(item, scope.count),
            overrides=overrides(item) if scope.own_limits else (None, None),
        )

    def limits(self, default: Limits) -> Limits:
        ipm, conc = self.overrides
        return Limits(
            default.images_per_minute if ipm is None else ipm,
            default.max_concurrent if conc is None else conc,
        )


def overrides(item: dict[str, Any]) -> tuple[int | None, int | None]:
    """An item's own limits (an account's or a key's), None where it keeps the default."""
    return tuple(int(item[n]["N"]) if n in item else None for n in LIMITS)  # type: ignore[return-value]


@dataclass
class Fragment:
    """Parts of one Update action; several fragments (balance, limits) merge into one."""

    set: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    add: list[str] = field(default_factory=list)
    conditions: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    values: dict[str, dict[str, str]] = field(default_factory=dict)

    def merge(self, other: Fragment) -> Fragment:
        return Fragment(
            self.set + other.set,
            self.remove + other.remove,
            self.add + other.add,
            self.conditions + other.conditions,
            {**self.names, **other.names},
            {**self.values, **other.values},
        )

    def update(self, table: str, key: dict[str, Any], *, return_old: bool = True) -> dict[str, Any]:
        clauses = [
            f"{verb} {', '.join(parts)}"
            for verb, parts in (("SET", self.set), ("REMOVE", self.remove), ("ADD", self.add))
            if parts
        ]
        update: dict[str, Any] = {"TableName": table, "Key": key, "UpdateExpression": " ".join(clauses)}
        if self.conditions:
            update["ConditionExpression"] = " AND ".join(f"({c})" for c in self.conditions)
        if self.names:
            update["ExpressionAttributeNames"] = self.names
        if self.values:
            update["ExpressionAttributeValues"] = self.values
        if return_old and self.conditions:
            update["ReturnValuesOnConditionCheckFailure"] = "ALL_OLD"
        return {"Update": update}


def cost_ms(images: int, limit: int) -> int:
    """How far n images move the bucket's `tat`: n times one image's share of a minute, rounded up, so the
    limit is never exceeded."""
    return images * -(-WINDOW_MS // limit)


def burst_ms(limit: int) -> int:
    """How far ahead of now `tat` may go: a full bucket's `limit` images (a minute, or just over it when
    `limit` does not divide 60,000 ms)."""
    return cost_ms(limit, limit)


def incremental(state: State, now_ms: int, raced: bool) -> bool:
    """Whether `take` updates the bucket as `tat = tat + cost` (else `tat = now + cost`): a `tat` ahead of
    now or just behind it, or one a racing request just wrote (`raced`) a little further behind. A `tat`
    from an idle spell is never built on, raced or not: that would admit a whole idle spell's refill."""
    return state.tat > now_ms - (RACE_SLACK_MS if raced else SLACK_MS)


def take(
    scope: Scope,
    state: State,
    default: Limits,
    images: int,
    now: float,
    *,
    slot: bool = True,
    raced: bool = False,
) -> Fragment:
    """The update fragment that admits a request on the ACCOUNT item for one scope, assuming `state`.
    Conditions assert every assumption made, so a stale `state` fails the transaction instead of admitting
    too much. `slot`: the request also takes one of the scope's requests in flight.

    `raced`: `state.tat` was just written by a concurrent request (this request's previous attempt lost to
    it), so the bucket is in use now: it is updated as `tat = tat + cost` from that value even if the
    writer's clock ran behind this one's. Otherwise requests racing on a busy key, each with its own idea of
    now, could keep failing one another; the cost is at most the race's duration of refill admitted early.
    """
    limits = state.limits(default)
    now_ms = int(now * 1000)
    t = scope.tag
    frag = Fragment()
    if scope.own_limits:  # the item's overrides must still be those the limits came from
        for name, value in zip(LIMITS, state.overrides, strict=True):
            placeholder = f":{t}_{name}"
            if value is None:
                frag.conditions.append(f"attribute_not_exists({name})")
            else:
                frag.conditions.append(f"{name} = {placeholder}")
                frag.values[placeholder] = _n(value)
    if limits.images_per_minute:
        cost = cost_ms(images, limits.images_per_minute)
        burst = burst_ms(limits.images_per_minute)
        if cost > burst:
            # More than a whole minute's images can never pass: a condition no existing item meets.
            frag.conditions.append("attribute_not_exists(pk)")
        tat = f"#{t}_tat"
        frag.names[tat] = scope.tat
        if incremental(state, now_ms, raced):
            frag.set.append(f"{tat} = {tat} + :{t}_cost")
            frag.conditions.append(f"{tat} BETWEEN :{t}_floor AND :{t}_room")
            frag.values[f":{t}_cost"] = _n(cost)
            frag.values[f":{t}_floor"] = _n(min(state.tat, now_ms - SLACK_MS))
            frag.values[f":{t}_room"] = _n(now_ms + burst - cost)
        else:
            frag.set.append(f"{tat} = :{t}_tat")
            frag.conditions.append(f"attribute_not_exists({tat}) OR {tat} <= :{t}_now")
            frag.values[f":{t}_tat"] = _n(now_ms + cost)
            frag.values[f":{t}_now"] = _n(now_ms)
    if limits.max_concurrent and slot:
        # Exact whatever this container believes: the condition reads the counter itself.
        count = f"#{t}_n"
        frag.names[count] = scope.count
        frag.add.append(f"{count} :{t}_one")
        frag.conditions.append(f"attribute_not_exists({count}) OR {count} < :{t}_max")
        frag.values[f":{t}_one"] = _n(1)
        frag.values[f":{t}_max"] = _n(limits.max_concurrent)
    return frag


def release(scope: Scope) -> Fragment:
    """Give a request's slot back, in the transaction that closes its reservation (exactly once)."""
    return Fragment(
        add=[f"#{scope.tag}_back :{scope.tag}_back"],
        names={f"#{scope.tag}_back": scope.count},
        values={f":{scope.tag}_back": _n(-1)},
    )


def idle_keys(item: dict[str, Any], now: float) -> list[str]:
    """The keys whose limiter attributes on an ACCOUNT item say nothing their absence would not: a bucket
    full again (`tat` not ahead of now) and no request in flight."""
    now_ms = int(now * 1000)
    ids = {name[3:] for name in item if name.startswith(("kt_", "kn_"))}
    return sorted(k for k in ids if _int(item, f"kt_{k}") <= now_ms and _int(item, f"kn_{k}") == 0)


def forget(key_ids: list[str], now: float) -> Fragment:
    """Remove idle keys' limiter attributes (`idle_keys`), each on condition that it is still idle: an ACCOUNT
    item then grows with the keys in use, not with every key that ever made a request."""
    frag = Fragment(values={":idle_now": _n(int(now * 1000)), ":idle_zero": _n(0)})
    for i, key_id in enumerate(key_ids):
        tat, count = f"#i{i}t", f"#i{i}n"
        frag.names |= {tat: f"kt_{key_id}", count: f"kn_{key_id}"}
        frag.remove += [tat, count]
        frag.conditions.append(
            f"(attribute_not_exists({tat}) OR {tat} <= :idle_now) AND "
            f"(attribute_not_exists({count}) OR {count} = :idle_zero)"
        )
    return frag


def admitted(
    state: State, default: Limits, images: int, now: float, *, slot: bool = True, raced: bool = False
) -> State:
    """The state just after `take(..., raced=raced)` succeeded on `state` (for the response's headers, and
    the container's memory of the item): what that update wrote, or a lower bound of it, never more."""
    limits = state.limits(default)
    now_ms = int(now * 1000)
    tat = state.tat
    if limits.images_per_minute:
        start = tat if incremental(state, now_ms, raced) else now_ms
        tat = start + cost_ms(images, limits.images_per_minute)
    in_flight = state.in_flight + 1 if limits.max_concurrent and slot else state.in_flight
    return replace(state, tat=tat, in_flight=in_flight)


def refusal(
    what: str, state: State, default: Limits, images: int, now: float, *, slot: bool = True
) -> APIError | None:
    """Why `state` cannot admit a request for `images` images now (a 429), or None when it can; `slot`:
    the request needs a slot too.

    `what` names the scope in messages: "key key_…" or "account acct_…".
    """
    limits = state.limits(default)
    now_ms = int(now * 1000)
    if limits.images_per_minute:
        if images > limits.images_per_minute:
            return APIError(
                429,
                f"Request too large for images per minute on {what}: Limit {limits.images_per_minute}, "
                f"Requested {images}. This request can never fit the limit; ask for fewer images per "
                "request.",
                type="requests",
                code="rate_limit_exceeded",
                headers={"x-should-retry": "false", **headers(state, default, now)},
            )
        wait_ms = (
            max(state.tat, now_ms)
            + cost_ms(images, limits.images_per_minute)
            - now_ms
            - burst_ms(limits.images_per_minute)
        )
        if wait_ms > 0:
            return _refused(
                f"images per minute on {what}: Limit {limits.images_per_minute}, "
                f"Remaining {remaining_images(state, limits, now_ms)}, Requested {images}",
                math.ceil(wait_ms / 1000),
                headers(state, default, now),
            )
    if slot and limits.max_concurrent and state.in_flight >= limits.max_concurrent:
        return _refused(
            f"concurrent requests on {what}: Limit {limits.max_concurrent}, "
            f"In flight {state.in_flight}, Requested 1",
            SLOT_RETRY_SECONDS,
            headers(state, default, now),
        )
    return None


def busy(what: str) -> APIError:
    """DynamoDB pushing back on one tenant's hot items is contention: the client should slow down, not see a
    500."""
    return _refused(f"concurrent requests on {what} (too many at once)", SLOT_RETRY_SECONDS, {})


def remaining_images(state: State, limits: Limits, now_ms: int) -> int:
    backlog = max(state.tat - now_ms, 0)
    return max(0, (burst_ms(limits.images_per_minute) - backlog) // cost_ms(1, limits.images_per_minute))


def headers(state: State, default: Limits, now: float) -> dict[str, str]:
    """OpenAI's rate-limit headers for one scope's state."""
    limits = state.limits(default)
    now_ms = int(now * 1000)
    out: dict[str, str] = {}
    if limits.images_per_minute:
        out |= {
            "x-ratelimit-limit-images": str(limits.images_per_minute),
            "x-ratelimit-remaining-images": str(remaining_images(state, limits, now_ms)),
            "x-ratelimit-reset-images": duration(math.ceil(max(state.tat - now_ms, 0) / 1000)),
        }
    if limits.max_concurrent:
        out |= {
            "x-ratelimit-limit-requests": str(limits.max_concurrent),
            "x-ratelimit-remaining-requests": str(max(0, limits.max_concurrent - state.in_flight)),
        }
    return out


def duration(seconds: int) -> str:
    """OpenAI's reset format: `12s`, `1m0s`."""
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds}s" if minutes else f"{seconds}s"


def _refused(what: str, wait: int, extra: dict[str, str]) -> APIError:
    return APIError(
        429,
        f"Rate limit reached for {what}. Please try again in {duration(wait)}.",
        type="requests",
        code="rate_limit_exceeded",
        headers={"retry-after": str(wait), **extra},
    )


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


def _int(item: dict[str, Any], name: str) -> int:
    return int(item[name]["N"]) if name in item else 0

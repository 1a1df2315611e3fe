"""Prices as data: what an image costs, what a request reserves, and what it is finally charged.

Every price lives in the catalog document (`catalog.json`, each model's price fields) as an exact USD string;
an operator's override is merged over it, model by model (a field given replaces that field, null removes
it), and the result is validated against the model's contract when the catalog loads (`loader.py`), so a
typo fails loudly instead of mispricing. Once loaded, every amount is integer micro-USD. Markups
(`markup_percent`, global and per model) are applied once, with an integer ceiling, so the operator never
sells below cost. imagegate-local's flat price comes from IMAGEGATE_LOCAL_PRICE_USD, with no markup.

Per-image contracts reserve `per_image * n` and charge `per_image * delivered`. Token-priced contracts (the
GPT image models, whose upstream bills tokens) reserve a worst-case bound on that bill and are charged the
usage the upstream reports; `PriceBook.quote` and `PriceBook.charge` give the formulas.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Protocol

from imagegate.catalog.contracts import Contract, Endpoint, FreeFormSizes, parse_size, upstream_quality
from imagegate.catalog.rates import BASE_SIZE, ModelPrice, TokenPricing, ceil_div
from imagegate.units import usd_to_micros

if TYPE_CHECKING:
    from collections.abc import Sequence

PER_MILLION = 1_000_000  # token rates are micro-USD per 1M tokens

# OpenAI's input-image token formula: fit the image within a 2048 px square, shrink it so its shortest side
# is at most 512 px, and count 512 px tiles; each image costs a base plus a price per tile. gpt-image-1
# bills 65 + 129 per tile (observed); the vision models' published 85 + 170 bound that from above.
IMAGE_BOX_PX = 2048
IMAGE_SHORT_SIDE_PX = 512
IMAGE_TILE_PX = 512
IMAGE_BASE_TOKENS = 85
IMAGE_TILE_TOKENS = 170
# Text tokens the upstream adds around the prompt and per input image (edits bill 32 per image, observed).
FRAMING_TOKENS = 32
# OpenAI bills each streamed partial image as this many more image output tokens.
PARTIAL_IMAGE_TOKENS = 100

# A catalog entry's price fields (catalog.json; the loader reads the rest of the entry).
PRICE_FIELDS = frozenset(
    {"per_image", "token_rates", "image_output_tokens", "markup_percent", "always_high_fidelity"}
)
_RATES = ("text_input", "image_input", "image_output")
_OPTIONAL_RATES = ("text_output",)


class _Dimensions(Protocol):
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...


class Priced(Protocol):
    """What a quote reads of a request. `inputs.request.ImageJob` is one: the catalog prices requests without
    depending on the wing that validates them."""

    @property
    def contract(self) -> Contract: ...
    @property
    def prompt(self) -> str: ...
    @property
    def n(self) -> int: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def quality(self) -> str: ...
    @property
    def input_fidelity(self) -> str | None: ...
    @property
    def images(self) -> Sequence[_Dimensions]: ...
    @property
    def mask(self) -> _Dimensions | None: ...
    @property
    def partial_images(self) -> int: ...


@dataclass(frozen=True)
class Quote:
    """What a request reserves before it runs, and what charging it afterwards needs."""

    reserve: int  # micro-USD debited up front; the charge never exceeds it
    per_image: int  # micro-USD, markup included (inputs.request.ImageJob.price_per_image)
    token_priced: bool  # reserve is a worst-case bound, charged from the upstream's token usage
    price: ModelPrice
    # Every token table that may bill this request: the contract's own, and the upstream models' its routes
    # translate it to. A charge from usage takes the dearest.
    tokens: tuple[TokenPricing, ...] = ()

    def partials(self, count: int) -> int:
        """What `count` streamed partial images cost: PARTIAL_IMAGE_TOKENS output tokens each at the dearest
        image output rate, plus markup; nothing on a model that is not token-priced."""
        if not count or not self.tokens:
            return 0
        rate = max(t.image_output for t in self.tokens)
        return self.price.marked_up(count * PARTIAL_IMAGE_TOKENS * rate, PER_MILLION)


@dataclass(frozen=True)
class PriceBook:
    models: Mapping[str, ModelPrice]
    # `covers` answers, by contract, endpoint, upstream model and route options: asked on every request
    # served by a successor, and the same for as long as the book lives.
    _covered: dict[tuple[str, str, str, str], bool] = field(default_factory=dict, compare=False, repr=False)

    def model(self, model_id: str) -> ModelPrice:
        price = self.models.get(model_id)
        if price is None:
            raise ValueError(f"the price book has no prices for model '{model_id}'")
        return price

    def quote(self, job: Priced, upstreams: Iterable[tuple[str, Mapping[str, Any]]] = ()) -> Quote:
        """The reservation for a job.

        Per-image models reserve `per_image * n`. Token-priced models reserve a bound on the upstream's bill,
        plus markup, and never less than `per_image * n`:

            text tokens   <= UTF-8 bytes of the prompt + 32 * (1 + input images)   (a token spans >= 1 byte)
            input image tokens, per image (mask included)
                          <= 85 + 170 * tiles(w, h), tiles as in OpenAI's formula (see IMAGE_* above),
                           + the model's largest output-image token count when the image is read at high
                             fidelity (input_fidelity=high, or always for gpt-image-2): OpenAI bills high
                             fidelity as roughly one more high-quality image (~6,200 tokens for a 16:9 input
                             on gpt-image-1) and publishes no formula, so the largest table entry bounds it
            output tokens  = n * image_output_tokens(quality, size)
                           + 100 * partial_images (streaming: OpenAI bills each partial image so)
            reserve        = ceil((text * text_input + image_in * image_input + output * image_output)
                                  * (1 + markup/100) / 1e6)

        Output text tokens (reasoning) are not bounded in advance; the charge is capped at the reservation.

        `upstreams` are the (upstream model id, route options) that may serve the job. Where a route
        translates the contract to another priced model that bills tokens, that model's bill is bounded the
        same way (at the quality the route asks it for) and the reservation covers the dearest, so that a
        legacy contract sold per image is never served below its upstream's cost.
        """
        price = self.model(job.contract.id)
        per_image = price.per_image(job.quality, job.width, job.height)
        bills = [(price.tokens, job.quality)] if price.tokens else []
        for model_id, options in upstreams:
            upstream = self.models.get(model_id)
            if model_id != job.contract.id and upstream is not None and upstream.tokens is not None:
                bills.append((upstream.tokens, upstream_quality(job.quality, options)))
        if not bills:
            return Quote(per_image * job.n, per_image, False, price)
        bound = max(
            price.marked_up(_worst_case_cost(job, tokens, quality), PER_MILLION) for tokens, quality in bills
        )
        tokens = tuple({id(t): t for t, _ in bills}.values())
        quote = Quote(bound, per_image, True, price, tokens)
        # The floor of a charge (see `charge`) is within the reservation too.
        floor = per_image * job.n + quote.partials(job.partial_images)
        return replace(quote, reserve=max(bound, floor))

    def charge(
        self,
        quote: Quote,
        delivered: int,
        requested: int,
        usage: Mapping[str, Any] | None,
        partials: int = 0,
    ) -> int:
        """What a finished request costs, in micro-USD.

        With token rates and the upstream's usage (OpenAI-shaped): every reported token at its rate (the
        dearest of the quote's token tables: the contract's and its upstream models'), plus markup, rounded up
        once. The usage covers only the images the upstream made, so it is not scaled
        again for fewer images. Input tokens without a text/image breakdown are charged at the dearer input
        rate, output tokens without one at the dearer output rate. Never below the published per-image
        price for what was delivered (a proxy reporting zero or partial usage must not give images away), and
        never above the reservation. Without usage, or with usage lacking input and output token counts,
        `per_image * delivered`.

        `partials` streamed partial images add `Quote.partials` to that floor (an upstream's usage already
        counts them), and are charged even when the final image never came (a stream its client abandoned).
        """
        delivered = max(0, min(delivered, requested))
        if not delivered and not partials:
            return 0
        floor = quote.per_image * delivered + quote.partials(partials)
        costs = [c for c in (_usage_cost(usage, t) for t in quote.tokens) if c is not None] if usage else []
        amount = max(floor, quote.price.marked_up(max(costs), PER_MILLION)) if costs else floor
        return min(amount, quote.reserve)

    def covers(
        self, contract: Contract, endpoint: Endpoint, model_id: str, options: Mapping[str, Any]
    ) -> bool:
        """Whether `contract`, sold at its own price on `endpoint`, covers the upstream model `model_id` (a
        successor serving it): for the dearest request of each quality and size it allows, what the request
        reserves is at least the upstream's bill for it. An upstream model without prices is never covered:
        its cost is unknown."""
        key = (contract.id, endpoint, model_id, repr(sorted(options.items())))
        if key not in self._covered:
            self._covered[key] = self._covers(contract, endpoint, model_id, options)
        return self._covered[key]

    def _covers(
        self, contract: Contract, endpoint: Endpoint, model_id: str, options: Mapping[str, Any]
    ) -> bool:
        upstream = self.models.get(model_id)
        if upstream is None or contract.id not in self.models:
            return False
        for job in worst_jobs(contract, endpoint):
            reserve = self.quote(job, [(model_id, options)]).reserve
            quality = upstream_quality(job.quality, options)
            if upstream.tokens is not None:
                cost = ceil_div(_worst_case_cost(job, upstream.tokens, quality), PER_MILLION)
            else:
                qualities = {q for q, _ in upstream.per_image_micros}
                chosen = [quality] if quality in qualities else sorted(qualities)
                cost = job.n * max(upstream.per_image(q, job.width, job.height) for q in chosen)
            if reserve < cost:
                return False
        return True


@dataclass(frozen=True)
class _Box:
    width: int
    height: int


@dataclass(frozen=True)
class _WorstJob:
    """The dearest request a contract allows at one quality and size (a `Priced`): the most images, the
    longest prompt in 4-byte characters, the most inputs at the largest side with a mask, high fidelity."""

    contract: Contract
    quality: str
    width: int
    height: int
    n: int
    prompt: str
    images: tuple[_Box, ...]
    mask: _Box | None
    input_fidelity: str | None
    partial_images: int = 0


def worst_jobs(contract: Contract, endpoint: Endpoint) -> list[_WorstJob]:
    sizes = [parse_size(s) for s in contract.sizes if s != "auto"]
    if contract.free_form is not None:
        sizes.append(_largest(contract.free_form))
    qualities = [q for q in contract.qualities if q != "auto"]
    side = 1024 if contract.square_png_input else IMAGE_BOX_PX
    count = {"generations": 0, "edits": contract.max_input_images, "variations": 1}[endpoint]
    images = (_Box(side, side),) * count
    prompt = "" if endpoint == "variations" else "\U0001f600" * contract.prompt_max
    fidelity = "high" if contract.input_fidelity and endpoint == "edits" else None
    mask = _Box(side, side) if endpoint == "edits" else None
    return [
        _WorstJob(contract, q, w, h, contract.n_max, prompt, images, mask, fidelity)
        for q in qualities
        for w, h in (s for s in sizes if s)
    ]


def _largest(bounds: FreeFormSizes) -> tuple[int, int]:
    """The free-form size of the most pixels: the longest edge, and as tall as the pixel bound allows."""
    m = bounds.multiple_of
    height = min(bounds.max_edge, bounds.max_pixels // bounds.max_edge) // m * m
    return bounds.max_edge, height


def input_image_tokens(width: int, height: int) -> int:
    """An upper bound on the input tokens of one image at low fidelity (see IMAGE_* above)."""
    scale = min(Fraction(1), Fraction(IMAGE_BOX_PX, max(width, height)))
    scale *= min(Fraction(1), Fraction(IMAGE_SHORT_SIDE_PX) / (min(width, height) * scale))
    columns = ceil_div(math.ceil(width * scale), IMAGE_TILE_PX)
    rows = ceil_div(math.ceil(height * scale), IMAGE_TILE_PX)
    return IMAGE_BASE_TOKENS + IMAGE_TILE_TOKENS * columns * rows


def _worst_case_cost(job: Priced, tokens: TokenPricing, quality: str) -> int:
    """The bound in `PriceBook.quote`, before markup: micro-USD per 1M tokens times tokens, with output
    images at `quality` (the table's dearest entry when the table has no such quality)."""
    inputs = [*job.images, *([job.mask] if job.mask is not None else [])]
    high_fidelity = tokens.always_high_fidelity or job.input_fidelity == "high"
    fidelity_tokens = max(tokens.output_tokens.values()) if high_fidelity else 0
    text = len(job.prompt.encode()) + FRAMING_TOKENS * (1 + len(inputs))
    image_in = sum(input_image_tokens(i.width, i.height) + fidelity_tokens for i in inputs)
    qualities = {q for q, _ in tokens.output_tokens}
    per_image = (
        tokens.image_output_tokens(quality, job.width, job.height)
        if quality in qualities
        else max(tokens.image_output_tokens(q, job.width, job.height) for q in qualities)
    )
    image_out = job.n * per_image + job.partial_images * PARTIAL_IMAGE_TOKENS
    return text * tokens.text_input + image_in * tokens.image_input + image_out * tokens.image_output


def _usage_cost(usage: Mapping[str, Any], tokens: TokenPricing) -> int | None:
    """OpenAI-shaped usage priced before markup (micro-USD per 1M tokens times tokens); None if malformed
    or not an image usage at all (chat-style `prompt_tokens`, totals only)."""
    if not isinstance(usage, Mapping) or not {"input_tokens", "output_tokens"} <= usage.keys():
        return None
    try:
        input_cost = _split_cost(
            usage, "input_tokens", {"text_tokens": tokens.text_input, "image_tokens": tokens.image_input}
        )
        output_cost = _split_cost(
            usage, "output_tokens", {"image_tokens": tokens.image_output, "text_tokens": tokens.text_output}
        )
    except (TypeError, ValueError, AttributeError):
        return None
    return input_cost + output_cost


def _split_cost(usage: Mapping[str, Any], total_name: str, rates: dict[str, int]) -> int:
    """A usage total priced by its `<total>_details` breakdown; what the breakdown leaves out (or all of it,
    without one) at the dearest of the rates."""
    total = _token_count(usage.get(total_name, 0))
    details = usage.get(f"{total_name}_details") or {}
    counted = {name: _token_count(details.get(name, 0)) for name in rates}
    rest = max(0, total - sum(counted.values()))
    return sum(counted[name] * rate for name, rate in rates.items()) + rest * max(rates.values())


def _token_count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a token count: {value!r}")
    return value


# --- loading -----------------------------------------------------------------------------------------------


def model_price(name: str, fields: dict[str, Any], markup: Fraction) -> ModelPrice:
    where = f"prices: {name}"
    check_fields(where, fields, PRICE_FIELDS)
    if "per_image" not in fields:
        raise ValueError(f"{where}: 'per_image' is required")
    per_image = _table(f"{where}.per_image", fields["per_image"], _usd)
    if "markup_percent" in fields:
        markup = percent(f"{where}.markup_percent", fields["markup_percent"])
    tokens = None
    if "token_rates" in fields:
        tokens = _token_pricing(where, fields, {quality for quality, _ in per_image})
    return ModelPrice(name, per_image, markup, True, tokens)


def _token_pricing(where: str, fields: dict[str, Any], qualities: set[str]) -> TokenPricing:
    rates = fields["token_rates"]
    if not isinstance(rates, dict):
        raise ValueError(f"{where}.token_rates must be an object of USD per 1M tokens")
    check_fields(f"{where}.token_rates", rates, frozenset(_RATES + _OPTIONAL_RATES))
    missing = [name for name in _RATES if name not in rates]
    if missing:
        raise ValueError(f"{where}.token_rates: missing {', '.join(missing)}")
    micros = {name: _usd(f"{where}.token_rates.{name}", value) for name, value in rates.items()}
    if "image_output_tokens" not in fields:
        raise ValueError(f"{where}: token_rates need 'image_output_tokens' to bound the reservation")
    output = _table(f"{where}.image_output_tokens", fields["image_output_tokens"], _tokens)
    unbounded = qualities - {quality for quality, _ in output}
    if unbounded:
        raise ValueError(f"{where}.image_output_tokens: missing quality {', '.join(sorted(unbounded))}")
    high_fidelity = fields.get("always_high_fidelity", False)
    if not isinstance(high_fidelity, bool):
        raise ValueError(f"{where}.always_high_fidelity must be true or false")
    return TokenPricing(
        text_input=micros["text_input"],
        image_input=micros["image_input"],
        image_output=micros["image_output"],
        text_output=micros.get("text_output", micros["image_output"]),
        output_tokens=output,
        always_high_fidelity=high_fidelity,
    )


def local_price(contract: Contract, micros: int) -> ModelPrice:
    """The built-in renderer's flat price (IMAGEGATE_LOCAL_PRICE_USD) at every quality and size."""
    if micros < 0:
        raise ValueError("IMAGEGATE_LOCAL_PRICE_USD must not be negative")
    qualities = [q for q in contract.qualities if q != "auto"]
    return ModelPrice(contract.id, {(q, BASE_SIZE): micros for q in qualities}, by_area=False)


def check_covers(contract: Contract, price: ModelPrice | None) -> None:
    """Every quality and fixed size a contract serves has a price, and the table names nothing else."""
    where = f"prices: {contract.id}"
    if price is None:
        raise ValueError(f"{where}: the model has no prices")
    qualities = {q for q in contract.qualities if q != "auto"}
    sizes = {s for s in contract.sizes if s != "auto"}
    for quality, size in price.per_image_micros:
        if quality not in qualities:
            raise ValueError(f"{where}: no quality '{quality}' (it has {', '.join(sorted(qualities))})")
        if size not in sizes and contract.free_form is None:
            raise ValueError(f"{where}: no size '{size}' (it has {', '.join(sorted(sizes))})")
    for quality in sorted(qualities):
        for size in sorted(sizes) if contract.free_form is None else [BASE_SIZE]:
            if (quality, size) not in price.per_image_micros:
                raise ValueError(f"{where}: no per_image price for quality '{quality}' at {size}")


def _table(where: str, value: Any, parse: Any) -> dict[tuple[str, str], int]:
    """`{quality: {size: value}}` -> `{(quality, size): parsed}`, with a 1024x1024 entry per quality."""
    if not isinstance(value, dict) or not value:
        raise ValueError(f"{where} must be an object of quality -> {{size -> value}}")
    table = {}
    for quality, sizes in value.items():
        if not isinstance(sizes, dict):
            raise ValueError(f"{where}.{quality} must be an object of size -> value")
        for size, amount in sizes.items():
            if parse_size(size) is None:
                raise ValueError(f"{where}.{quality}: {size!r} is not a size like '1024x1024'")
            table[(quality, size)] = parse(f"{where}.{quality}.{size}", amount)
        if BASE_SIZE not in sizes:
            raise ValueError(
                f"{where}.{quality}: a {BASE_SIZE} entry is required (other sizes are priced from it)"
            )
    return table


def _usd(where: str, value: Any) -> int:
    if not isinstance(value, str):
        raise ValueError(f'{where}: write USD amounts as strings, like "0.04"; got {value!r}')
    try:
        micros = usd_to_micros(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    if micros < 0:
        raise ValueError(f"{where}: a price cannot be negative ({value})")
    return micros


def _tokens(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where}: a token count is a whole number of at least 1; got {value!r}")
    return value


def percent(where: str, value: Any) -> Fraction:
    try:
        percent = Decimal(value) if isinstance(value, str) else None
    except InvalidOperation:
        percent = None
    if percent is None or not percent.is_finite() or percent < 0:
        raise ValueError(
            f'{where}: a markup is a non-negative decimal string, like "20" or "12.5"; got {value!r}'
        )
    return Fraction(percent)


def check_fields(where: str, value: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(name for name in value if name not in allowed and not name.startswith("_"))
    if unknown:
        raise ValueError(
            f"{where}: unknown field {', '.join(unknown)} (fields: {', '.join(sorted(allowed))})"
        )

"""A model's prices as data: per-image tables and token rates, in micro-USD. `prices.py` reads them from
`prices.json` and quotes requests with them; a contract carries its own (`Contract.pricing`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

BASE_SIZE = "1024x1024"
BASE_PIXELS = 1024 * 1024


@dataclass(frozen=True)
class TokenPricing:
    """A token-priced model: rates in micro-USD per 1M tokens ($5 per 1M tokens is 5_000_000)."""

    text_input: int
    image_input: int
    image_output: int
    text_output: int  # the image_output rate when the model publishes none: never undersold
    # Output image tokens per image by (quality, size), from the upstream's published table.
    output_tokens: Mapping[tuple[str, str], int]
    # Reads every input image at high fidelity whatever `input_fidelity` says (gpt-image-2).
    always_high_fidelity: bool = False

    def image_output_tokens(self, quality: str, width: int, height: int) -> int:
        """Output tokens of one image: the table's entry, else the 1024x1024 entry scaled by area (rounded
        up) and never below it, since the upstream's per-image overhead does not shrink with the image."""
        exact = self.output_tokens.get((quality, f"{width}x{height}"))
        if exact is not None:
            return exact
        base = self.output_tokens[(quality, BASE_SIZE)]
        return max(base, ceil_div(base * width * height, BASE_PIXELS))


@dataclass(frozen=True)
class ModelPrice:
    """One public model's prices. Per-image amounts are micro-USD before markup."""

    model: str
    per_image_micros: Mapping[tuple[str, str], int]
    markup_percent: Fraction = Fraction(0)
    # Sizes absent from the table (free-form ones) cost the 1024x1024 price scaled by area; a flat price
    # (imagegate-local) costs the same at every size.
    by_area: bool = True
    tokens: TokenPricing | None = None

    def marked_up(self, numerator: int, denominator: int = 1) -> int:
        """`numerator / denominator` micro-USD plus the markup, rounded up once to a whole micro-dollar."""
        factor = 100 + self.markup_percent
        return ceil_div(numerator * factor.numerator, denominator * 100 * factor.denominator)

    def per_image(self, quality: str, width: int, height: int) -> int:
        exact = self.per_image_micros.get((quality, f"{width}x{height}"))
        if exact is not None:
            return self.marked_up(exact)
        base = self.per_image_micros[(quality, BASE_SIZE)]
        if not self.by_area:
            return self.marked_up(base)
        return self.marked_up(base * width * height, BASE_PIXELS)


def ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)

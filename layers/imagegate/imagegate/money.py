"""Money is integer micro-USD everywhere; these are the only conversions to and from dollars."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000


def usd_to_micros(amount: str | Decimal) -> int:
    """Exact conversion of a decimal USD amount to integer micro-USD; no floats touch money."""
    try:
        value = Decimal(str(amount)) * MICROS_PER_USD
    except InvalidOperation as exc:
        raise ValueError(f"not a USD amount: {amount!r}") from exc
    if not value.is_finite():
        raise ValueError(f"not a USD amount: {amount!r}")
    if value != value.to_integral_value():
        raise ValueError(f"{amount} USD is finer than one micro-dollar")
    return int(value)


def micros_to_decimal(micros: int) -> str:
    """Micro-USD as an exact decimal string with six places (`0.020000`), for JSON and CSV."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


def micros_to_usd(micros: int) -> str:
    """Render micro-USD as a dollar string with six decimals (`$0.020000`, `-$1.500000`)."""
    amount = micros_to_decimal(micros)
    return f"-${amount[1:]}" if micros < 0 else f"${amount}"

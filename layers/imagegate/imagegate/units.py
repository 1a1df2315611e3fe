"""Money is integer micro-USD everywhere; these are the only conversions to and from dollars."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000
# The largest single amount (a price, a credit, an adjustment) accepted: $1,000,000,000. Far above any real
# prepayment, and it keeps every amount and any realistic balance exact wherever it goes: in micro-USD it is
# 10**15, below 2**53, so JSON readers that parse numbers as doubles (JavaScript, jq) read `balance_micros`
# exactly, and DynamoDB's 38 digits are never approached.
MAX_USD = 1_000_000_000


def usd_to_micros(amount: str | Decimal) -> int:
    """Exact conversion of a decimal USD amount to integer micro-USD; no floats touch money."""
    try:
        usd = Decimal(str(amount))
    except InvalidOperation as exc:
        raise ValueError(f"not a USD amount: {amount!r}") from exc
    if not usd.is_finite():
        raise ValueError(f"not a USD amount: {amount!r}")
    if usd.copy_abs() > MAX_USD:  # before any arithmetic (abs() too), which could overflow or round
        raise ValueError(f"{amount} USD is above the ceiling of ${MAX_USD:,} for one amount")
    # Integer arithmetic on the decimal's digits: Decimal's own would round past 28 significant digits.
    sign, digits, exponent = usd.as_tuple()
    significant = "".join(map(str, digits)).rstrip("0")
    if not significant:
        return 0
    shift = int(exponent) + len(digits) - len(significant) + 6  # the exponent of the last nonzero digit
    if shift < 0:
        raise ValueError(f"{amount} USD is finer than one micro-dollar")
    micros = int(significant) * 10**shift  # |usd| <= MAX_USD bounds shift to 15
    return -micros if sign else micros


def micros_to_decimal(micros: int) -> str:
    """Micro-USD as an exact decimal string with six places (`0.020000`), for JSON and CSV."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


def micros_to_usd(micros: int) -> str:
    """Render micro-USD as a dollar string with six decimals (`$0.020000`, `-$1.500000`)."""
    amount = micros_to_decimal(micros)
    return f"-${amount[1:]}" if micros < 0 else f"${amount}"

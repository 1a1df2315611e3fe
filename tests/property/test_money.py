"""Property tests of the one conversion from typed dollars to stored micro-dollars (money.usd_to_micros)."""

from decimal import Decimal

from hypothesis import example, given, settings
from hypothesis import strategies as st

from imagegate.units import MAX_USD, micros_to_decimal, usd_to_micros

BUDGET = settings(max_examples=300, derandomize=True, database=None, deadline=None)
MAX_MICROS = MAX_USD * 1_000_000


@BUDGET
@given(st.integers(-MAX_MICROS, MAX_MICROS))
def test_every_amount_up_to_the_ceiling_round_trips_exactly(micros):
    assert usd_to_micros(micros_to_decimal(micros)) == micros


@BUDGET
@given(micros=st.integers(1 - MAX_MICROS, MAX_MICROS - 1), extra=st.integers(1, 9), zeros=st.integers(0, 40))
def test_any_amount_finer_than_a_micro_dollar_is_refused(micros, extra, zeros):
    """However many digits it takes to say so: Decimal's 28-digit context must not round it away."""
    text = micros_to_decimal(micros) + "0" * zeros + str(extra)
    try:
        usd_to_micros(text)
    except ValueError as exc:
        assert "finer than one micro-dollar" in str(exc)
    else:
        raise AssertionError(f"{text} was accepted")


@BUDGET
@given(
    st.one_of(
        st.integers(MAX_USD + 1, 10**45).map(Decimal),
        st.builds(lambda m, e: Decimal(f"{m}E+{e}"), st.integers(1, 999), st.integers(10, 999_999)),
        st.integers(1, 10**12).map(lambda f: MAX_USD + Decimal(f).scaleb(-12)),  # just above
    ).flatmap(lambda d: st.sampled_from([str(d), f"-{d}"]))
)
@example("1e35")
@example("-1E+999999")
@example("1000000000.000001")
def test_any_amount_above_the_ceiling_is_refused(amount):
    try:
        usd_to_micros(amount)
    except ValueError as exc:
        assert "above the ceiling" in str(exc)
    else:
        raise AssertionError(f"{amount} was accepted")


@BUDGET
@given(st.text(max_size=60) | st.from_regex(r"[-+]?[0-9]{0,12}(\.[0-9]{0,12})?([eE][-+]?[0-9]{1,7})?"))
def test_any_text_is_an_exact_amount_or_a_value_error(text):
    try:
        micros = usd_to_micros(text)
    except ValueError:
        return
    assert isinstance(micros, int) and abs(micros) <= MAX_MICROS
    assert Decimal(micros) == Decimal(text) * 1_000_000

"""Money conversion is exact, and settings come from the environment with documented defaults."""

from decimal import Decimal

import pytest

from imagegate.config import LAMBDA_PAYLOAD_BYTES, Settings
from imagegate.units import micros_to_usd, usd_to_micros


@pytest.mark.parametrize(
    ("usd", "micros"),
    [
        ("0.000001", 1),
        ("10", 10_000_000),
        ("0.002", 2_000),
        ("0.02", 20_000),
        ("2.5", 2_500_000),
        ("0", 0),
        ("1e-6", 1),
        ("0.1000000", 100_000),
        (Decimal("0.133"), 133_000),
        ("123456789.123456", 123_456_789_123_456),
    ],
)
def test_usd_to_micros_is_exact(usd, micros):
    result = usd_to_micros(usd)
    assert result == micros
    assert type(result) is int


@pytest.mark.parametrize("usd", ["0.0000001", "0.0200005", "1.0000001"])
def test_usd_to_micros_rejects_fractions_of_a_micro_dollar(usd):
    with pytest.raises(ValueError, match="finer than one micro-dollar"):
        usd_to_micros(usd)


@pytest.mark.parametrize("usd", ["abc", "", "$1", "1,5"])
def test_usd_to_micros_rejects_non_amounts(usd):
    with pytest.raises(ValueError, match="not a USD amount"):
        usd_to_micros(usd)


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (20_000, "$0.020000"),
        (0, "$0.000000"),
        (1, "$0.000001"),
        (10_000_000, "$10.000000"),
        (123_456_789, "$123.456789"),
        (-1_500, "-$0.001500"),
        (-2_000_001, "-$2.000001"),
    ],
)
def test_micros_to_usd(micros, text):
    assert micros_to_usd(micros) == text


def test_round_trip():
    for micros in (0, 1, 999_999, 1_000_000, 987_654_321):
        assert usd_to_micros(micros_to_usd(micros).lstrip("$")) == micros


def test_settings_defaults_from_an_empty_environment():
    s = Settings.from_env({})
    assert s.local_price_micros == 2_000
    assert s.max_body_bytes == 4_694_016
    assert s.upstream_budget_seconds == 24.0
    assert (s.local_serves_all, s.demo_mode, s.cors_origins, s.tracing) == (True, False, (), False)
    assert s.url_ttl_seconds == 3600
    assert s.region is None  # left to boto3, which reads the AWS config profile as the AWS CLI does


def test_settings_read_from_the_environment():
    s = Settings.from_env(
        {
            "IMAGEGATE_TABLE": "t",
            "IMAGEGATE_BUCKET": "b",
            "AWS_REGION": "eu-west-1",
            "AWS_DEFAULT_REGION": "us-west-2",
            "IMAGEGATE_URL_TTL": "600",
            "IMAGEGATE_LOCAL_PRICE_USD": "0.0125",
            "IMAGEGATE_MAX_BODY_BYTES": "1024",
        }
    )
    assert (s.table, s.bucket, s.region) == ("t", "b", "eu-west-1")
    assert (s.url_ttl_seconds, s.local_price_micros, s.max_body_bytes) == (600, 12_500, 1024)
    assert Settings.from_env({"AWS_DEFAULT_REGION": "us-west-2"}).region == "us-west-2"


def test_body_limit_fits_a_lambda_invocation_once_base64_encoded():
    """API Gateway base64-encodes multipart bodies: the largest body we accept must still fit Lambda's 6 MB
    with room for the event's headers and context, and a body a little larger must not."""
    s = Settings.from_env({})
    encoded = 4 * -(-s.max_body_bytes // 3)
    assert encoded + 32_000 <= LAMBDA_PAYLOAD_BYTES
    assert 4 * -(-(s.max_body_bytes + 64_000) // 3) > LAMBDA_PAYLOAD_BYTES - 20_000
    assert s.max_response_bytes < LAMBDA_PAYLOAD_BYTES


@pytest.mark.parametrize(
    ("timeout", "requested", "budget"),
    [("29", None, 24.0), ("60", None, 55.0), ("29", "10", 10.0), ("29", "90", 24.0), ("300", "120", 120.0)],
)
def test_upstream_budget_derives_from_the_integration_timeout(timeout, requested, budget):
    env = {"IMAGEGATE_INTEGRATION_TIMEOUT_SECONDS": timeout}
    if requested:
        env["IMAGEGATE_UPSTREAM_BUDGET_SECONDS"] = requested
    s = Settings.from_env(env)
    assert s.upstream_budget_seconds == budget
    # A cold start (3 s allowed) plus the budget plus storing and settling (2 s) fits the gateway's timeout.
    assert 3.0 + s.upstream_budget_seconds + 2.0 <= float(timeout)


def test_a_deployed_function_never_lets_local_stand_in_unless_in_demo_mode():
    deployed = {"AWS_LAMBDA_FUNCTION_NAME": "imagegate-GenerationsFunction-abc"}
    assert Settings.from_env(deployed).local_serves_all is False
    demo = Settings.from_env({**deployed, "IMAGEGATE_DEMO_MODE": "on"})
    assert (demo.local_serves_all, demo.demo_mode) == (True, True)
    # Every model at the local price, whatever its size or quality.
    from imagegate.catalog.loader import load_catalog

    prices = load_catalog(demo).prices
    assert {
        prices.model(m).per_image(q, 3840, 2160) for m, q in [("gpt-image-2", "high"), ("dall-e-3", "hd")]
    } == {demo.local_price_micros}
    assert Settings.from_env({}).local_serves_all is True  # a laptop, the tests


def test_cors_origins_are_a_comma_separated_list():
    s = Settings.from_env({"IMAGEGATE_CORS_ORIGINS": "https://a.example, https://b.example"})
    assert s.cors_origins == ("https://a.example", "https://b.example")

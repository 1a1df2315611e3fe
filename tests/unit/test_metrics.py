"""The EMF members a request's log line carries: what Powertools itself would print, with each line's own
time and values (the directive is built once per model, provider and metric names)."""

import pytest
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from imagegate.metrics import Metrics


def powertools_line(model, provider, latency_ms, **counts):
    metrics = EphemeralMetrics(namespace="imagegate", service="imagegate")
    metrics.add_dimension(name="model", value=model)
    metrics.add_dimension(name="provider", value=provider)
    for name, value in counts.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    metrics.add_metric(name="Latency", unit=MetricUnit.Milliseconds, value=latency_ms)
    line = metrics.serialize_metric_set()
    del line["_aws"]["Timestamp"]
    return line


def test_each_line_is_powertools_own_with_its_own_time_and_values():
    now = [1_700_000_000.25]
    metrics = Metrics(True, clock=lambda: now[0])
    first = metrics.embedded(model="dall-e-2", provider="local", latency_ms=12.5, Requests=1, Images=2)
    now[0] += 1
    second = metrics.embedded(model="dall-e-2", provider="local", latency_ms=7.0, Requests=1, Images=1)

    assert (first["_aws"].pop("Timestamp"), second["_aws"].pop("Timestamp")) == (
        1_700_000_000_250,
        1_700_000_001_250,
    )
    assert first == powertools_line("dall-e-2", "local", 12.5, Requests=1, Images=2)
    assert second == powertools_line("dall-e-2", "local", 7.0, Requests=1, Images=1)
    other = Metrics(True).embedded(model="gpt-image-1", provider="openai", RevenueMicroUSD=16_000)
    assert other["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [{"Name": "RevenueMicroUSD", "Unit": "Count"}]
    assert (other["model"], other["provider"], other["RevenueMicroUSD"]) == (
        "gpt-image-1",
        "openai",
        [16000.0],
    )


def test_off_is_nothing_and_an_unknown_metric_is_a_bug():
    assert Metrics(False).embedded(model="m", provider="p", Requests=1) == {}
    with pytest.raises(ValueError, match="not a dashboard metric"):
        Metrics(True).embedded(model="m", provider="p", Requets=1)

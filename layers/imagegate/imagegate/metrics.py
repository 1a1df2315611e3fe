"""Business metrics as CloudWatch EMF lines (Powertools), one line per request, per model and provider.

EMF needs no API calls: CloudWatch extracts the metrics from the function's log output, so emitting costs
nothing on the request path. Off outside Lambda (`IMAGEGATE_METRICS`), where nobody reads them.
"""

from __future__ import annotations

NAMESPACE = "imagegate"
# The counters the service emits; the template's dashboard and alarms query them by these names.
COUNTERS = frozenset(
    {"Requests", "Images", "RevenueMicroUSD", "RefundMicroUSD", "UpstreamErrors", "RateLimited", "Rejected"}
)


class Metrics:
    def __init__(self, enabled: bool, service: str = "imagegate") -> None:
        self.enabled = enabled
        self._service = service

    def record(self, *, model: str, provider: str, latency_ms: float | None = None, **counts: int) -> None:
        """One EMF line: `counts` by metric name (one of `COUNTERS`), and the request's latency if it ran."""
        if not self.enabled:
            return
        unknown = counts.keys() - COUNTERS
        if unknown:
            raise ValueError(f"not a dashboard metric: {sorted(unknown)}")
        # Imported here: the metrics module is only needed when metrics are on (cold start).
        from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

        # Ephemeral: no state shared between requests, so concurrent requests (dev server) cannot mix.
        metrics = EphemeralMetrics(namespace=NAMESPACE, service=self._service)
        metrics.add_dimension(name="model", value=model)
        metrics.add_dimension(name="provider", value=provider)
        for name, value in counts.items():
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
        if latency_ms is not None:
            metrics.add_metric(name="Latency", unit=MetricUnit.Milliseconds, value=latency_ms)
        metrics.flush_metrics()

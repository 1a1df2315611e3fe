"""Business metrics in CloudWatch's embedded metric format (EMF, via Powertools), per model and provider.

EMF needs no API calls: CloudWatch extracts the metrics from any JSON line of the function's log output that
carries an `_aws` member, so emitting costs nothing on the request path. A request's metrics ride in its
log line (`embedded`); the rare ones with no line of their own (rejections, upstream errors) get a line
each (`record`). Off outside Lambda (`IMAGEGATE_METRICS`), where nobody reads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aws_lambda_powertools.metrics import EphemeralMetrics

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
        metrics = self._metrics(model, provider, latency_ms, counts)
        if metrics is not None:
            metrics.flush_metrics()

    def embedded(
        self, *, model: str, provider: str, latency_ms: float | None = None, **counts: int
    ) -> dict[str, Any]:
        """The same metrics as members of a structured log line ({} when off). Its other members must not
        contradict the dimensions (`model`, `provider`, `service`): CloudWatch reads them from the line."""
        metrics = self._metrics(model, provider, latency_ms, counts)
        return {} if metrics is None else metrics.serialize_metric_set()

    def _metrics(
        self, model: str, provider: str, latency_ms: float | None, counts: dict[str, int]
    ) -> EphemeralMetrics | None:
        if not self.enabled:
            return None
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
        return metrics

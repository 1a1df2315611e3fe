"""Business metrics in CloudWatch's embedded metric format (EMF, via Powertools), per model and provider.

EMF needs no API calls: CloudWatch extracts the metrics from any JSON line of the function's log output that
carries an `_aws` member, so emitting costs nothing on the request path. A request's metrics ride in its
log line (`embedded`); the rare ones with no line of their own (rejections, upstream errors) get a line
each (`record`). Off outside Lambda (`IMAGEGATE_METRICS`), where nobody reads them.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

NAMESPACE = "imagegate"
# The counters the service emits; the template's dashboard and alarms query them by these names.
COUNTERS = frozenset(
    {
        "Requests",
        "Images",
        "RevenueMicroUSD",
        "RefundMicroUSD",
        "UpstreamErrors",
        "RateLimited",
        "Rejected",
        # The Stripe webhook (topups.py): forged or stale signatures, and events that should have moved money
        # and could not (both alarmed), and what top-ups credited.
        "StripeSignatureFailures",
        "TopupsUnapplied",
        "TopupMicroUSD",
        # The catalog: an override refused (catalog/sources.py), and routes near or past their upstream
        # model's shutdown that still served traffic (the sweeper).
        "CatalogRefused",
        "RoutesNearShutdown",
    }
)


class Metrics:
    def __init__(
        self, enabled: bool, service: str = "imagegate", clock: Callable[[], float] = time.time
    ) -> None:
        self.enabled = enabled
        self._service = service
        self._clock = clock

    def record(self, *, model: str, provider: str, latency_ms: float | None = None, **counts: int) -> None:
        """One EMF line: `counts` by metric name (one of `COUNTERS`), and the request's latency if it ran."""
        line = self.embedded(model=model, provider=provider, latency_ms=latency_ms, **counts)
        if line:
            print(json.dumps(line, separators=(",", ":")), flush=True)

    def embedded(
        self, *, model: str, provider: str, latency_ms: float | None = None, **counts: int
    ) -> dict[str, Any]:
        """The same metrics as members of a structured log line ({} when off). Its other members must not
        contradict the dimensions (`model`, `provider`, `service`): CloudWatch reads them from the line."""
        if not self.enabled:
            return {}
        unknown = counts.keys() - COUNTERS
        if unknown:
            raise ValueError(f"not a dashboard metric: {sorted(unknown)}")
        values: dict[str, float] = dict(counts)
        if latency_ms is not None:
            values["Latency"] = latency_ms
        # The directive depends only on the dimensions and the metric names: Powertools builds it once per
        # combination, and each request adds its time and values (a fresh metric set per request took
        # 0.43 M of a warm request's 11.9 M instructions; this takes 0.11 M).
        directive = _directive(self._service, model, provider, tuple(values))
        line = {**directive, **{name: [float(value)] for name, value in values.items()}}
        line["_aws"] = {**directive["_aws"], "Timestamp": int(self._clock() * 1000)}
        return line


@functools.lru_cache(maxsize=512)  # models x providers x metric sets: a handful, bounded all the same
def _directive(service: str, model: str, provider: str, names: tuple[str, ...]) -> dict[str, Any]:
    """Powertools' EMF line for these dimensions and metric names, values aside."""
    # Imported here: the metrics module is only needed when metrics are on (cold start).
    from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

    metrics = EphemeralMetrics(namespace=NAMESPACE, service=service)
    metrics.add_dimension(name="model", value=model)
    metrics.add_dimension(name="provider", value=provider)
    for name in names:
        unit = MetricUnit.Milliseconds if name == "Latency" else MetricUnit.Count
        metrics.add_metric(name=name, unit=unit, value=0)
    line = metrics.serialize_metric_set()
    return {key: value for key, value in line.items() if key not in names}

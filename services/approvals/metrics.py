"""What the approvals service counts, in Prometheus' text format at `/v1/metrics`."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _Gauges(Collector):
    """Read at scrape time, so the figures are the store's, whichever replica answers."""

    def __init__(self, read: Callable[[], dict[str, dict[str, int]]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        figures = self._read()
        approvals = GaugeMetricFamily("charter_approvals", "Approvals by status.", labels=["status"])
        for status, n in sorted(figures.get("approvals", {}).items()):
            approvals.add_metric([status], n)
        yield approvals
        hooks = GaugeMetricFamily(
            "charter_webhook_notifications", "Webhook notifications by state.", labels=["state"]
        )
        for state, n in sorted(figures.get("notifications", {}).items()):
            hooks.add_metric([state], n)
        yield hooks


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "charter_api_requests",
            "API and console requests.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "charter_api_request_seconds", "API and console request time.", ["route"], registry=self.registry
        )
        self._decisions = Counter(
            "charter_approval_decisions",
            "Human decisions applied, by outcome (counted, refused) and refusal code.",
            ["attempted", "outcome", "code"],
            registry=self.registry,
        )

    def watch(self, read: Callable[[], dict[str, dict[str, int]]]) -> None:
        self.registry.register(_Gauges(read))

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        self._requests.labels(method, route, str(status)).inc()
        self._latency.labels(route).observe(seconds)

    def decision(self, attempted: str, outcome: str, code: str | None) -> None:
        self._decisions.labels(attempted, outcome, code or "").inc()

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))

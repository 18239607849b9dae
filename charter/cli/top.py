"""charter top: a live view of the running stack, from the services' own metrics endpoints.

Each refresh scrapes every service (with the metrics token) and shows rates computed between
two scrapes. Counters are per process, so a restarted service's counters start again from zero;
a counter that went down is read as a restart, not as a negative rate.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated

import httpx
import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.live import Live
from rich.table import Table

from charter import metrics_server
from charter.cli.output import console
from charter.config import Settings
from charter.stack.readiness import SERVICES

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    """One scrape of every service: sample name -> labels -> value, and who did not answer."""

    at: float
    values: dict[str, dict[Labels, float]] = field(default_factory=lambda: defaultdict(dict))
    down: dict[str, str] = field(default_factory=dict)

    def total(self, name: str, **labels: str) -> float:
        wanted = set(labels.items())
        return sum(v for have, v in self.values.get(name, {}).items() if wanted <= set(have))

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        wanted = set(labels.items())
        out: dict[str, float] = defaultdict(float)
        for have, value in self.values.get(name, {}).items():
            if wanted <= set(have):
                out[dict(have).get(label, "")] += value
        return dict(out)


def scrape(settings: Settings, client: httpx.Client) -> Scrape:
    token = metrics_server.token(settings)
    result = Scrape(time.monotonic())
    for service in SERVICES:
        port = metrics_server.port(settings, service)
        if port is None:
            result.down[service] = "metrics are off (CHARTER_METRICS_PORT=0)"
            continue
        host = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "") else settings.metrics_host  # noqa: S104
        try:
            response = client.get(
                f"http://{host}:{port}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=2
            )
        except httpx.HTTPError as exc:
            result.down[service] = f"not answering on {port}: {type(exc).__name__}"
            continue
        if response.status_code != 200:
            result.down[service] = f"answered {response.status_code} on {port}"
            continue
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                key = (("service", service), *sorted(sample.labels.items()))
                result.values[sample.name][key] = sample.value
    return result


def _rate(now: Scrape, before: Scrape | None, name: str, **labels: str) -> float | None:
    if before is None or now.at <= before.at:
        return None
    delta = now.total(name, **labels) - before.total(name, **labels)
    return max(0.0, delta) / (now.at - before.at)


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.1f}{unit}"


def _count(value: float | None) -> str:
    """A counter or gauge of whole things: Prometheus gives every value as a float."""
    return "-" if value is None else f"{value:,.0f}"


def _pairs(title: str, rows: Iterable[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for label, value in rows:
        table.add_row(label, value)
    return table


def view(now: Scrape, before: Scrape | None) -> Group:
    """What `charter top` shows, from two scrapes."""
    pending = now.by("charter_approvals", "status").get("pending")
    overview = _pairs(
        "Runs",
        [
            ("runs/s ended", _fmt(_rate(now, before, "charter_runs_total"))),
            ("actions/s executed", _fmt(_rate(now, before, "charter_tool_calls_total", outcome="executed"))),
            ("in flight", _count(now.total("charter_runs_in_flight"))),
            ("pending approvals", _count(pending)),
            ("escalated (since start)", _count(now.total("charter_runs_total", outcome="escalated"))),
        ],
    )
    denials = now.by("charter_policy_decisions_total", "reason", outcome="deny")
    ranked = sorted(denials.items(), key=lambda item: -item[1])
    denied = _pairs(
        "Denials by reason (since start)", [(r, f"{n:,.0f}") for r, n in ranked] or [("none", "")]
    )
    errors = _pairs(
        "Errors (since start)",
        [
            ("dead letters", _fmt(now.total("charter_dead_letters_total"))),
            ("dead letters waiting (DLQ depth)", _fmt(now.total("charter_dlq_depth"))),
            ("handler retries", _fmt(now.total("charter_handler_retries_total"))),
            ("tool calls failed", _fmt(now.total("charter_tool_calls_total", outcome="failed"))),
            ("tool calls in doubt", _fmt(now.total("charter_tool_calls_total", outcome="in_doubt"))),
            ("tool retries", _fmt(now.total("charter_tool_retries_total"))),
            ("model calls failed", _fmt(now.total("charter_model_calls_total", outcome="unavailable"))),
        ],
    )
    lag = now.by("charter_consumer_lag", "service")
    services = Table(title="Services", title_justify="left", box=None, pad_edge=False)
    for column in ("service", "records/s", "lag", "state"):
        services.add_column(column, justify="left" if column in ("service", "state") else "right")
    for service in SERVICES:
        if service in now.down:
            services.add_row(service, "-", "-", f"down: {now.down[service]}")
            continue
        rate = _rate(now, before, "charter_records_total", service=service)
        services.add_row(service, _fmt(rate), f"{lag.get(service, 0):,.0f}", "up")
    return Group(overview, "", denied, "", errors, "", services)


def top(
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between refreshes.")] = 1.0,
    once: Annotated[
        bool, typer.Option("--once", help="Print one view (rates over --interval) and exit.")
    ] = False,
) -> None:
    """A live view of the running stack: runs per second, in flight and pending approvals,
    denials by reason, errors, and lag per service. Ctrl-C to leave."""
    settings = Settings()
    with httpx.Client() as client:
        before = scrape(settings, client)
        if once:
            time.sleep(interval)
            console.print(view(scrape(settings, client), before))
            return
        with Live(view(before, None), console=console, refresh_per_second=4, screen=False) as live:
            while True:
                time.sleep(interval)
                now = scrape(settings, client)
                live.update(view(now, before))
                before = now

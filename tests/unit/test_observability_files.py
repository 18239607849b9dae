"""The observability half of docker-compose.yml (collector, Jaeger, Prometheus, Grafana) and the
dashboard, checked without Docker: the wiring between the files, and every series a panel names
against the series the services export (a panel naming one no service exports shows nothing,
silently)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from charter import metrics, metrics_server
from charter.config import Settings
from charter.stack.readiness import SERVICES
from tests.conftest import REPO

INFRA = REPO / "infra"
DASHBOARD = INFRA / "grafana" / "dashboards" / "charter.json"
# A metric name, not a label in a matcher (`charter_x="..."`).
_SERIES = re.compile(r"(?<![A-Za-z0-9_:])charter_[A-Za-z0-9_]*(?!\s*[=!]~?)(?![A-Za-z0-9_])")


def _yaml(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def _services() -> dict[str, Any]:
    return dict(_yaml(REPO / "docker-compose.yml")["services"])


def _mounts(spec: dict[str, Any]) -> dict[str, str]:
    """A compose service's volumes as container path -> source (a host path or a named volume)."""
    return {entry.split(":")[1]: entry.split(":")[0] for entry in spec.get("volumes", [])}


def _host_file(spec: dict[str, Any], container_path: str) -> Path:
    """The repository file a service sees at container_path, through a bind mount of it or of a
    folder above it."""
    for target, source in _mounts(spec).items():
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            assert source.startswith("./"), f"{container_path} is in volume {source}, not the repo"
            return REPO / source / Path(container_path).relative_to(target)
    raise AssertionError(f"nothing is mounted at {container_path}")


def _flag(spec: dict[str, Any], name: str) -> str:
    for arg in spec["command"]:
        if arg.startswith(f"{name}="):
            return str(arg.split("=", 1)[1])
    raise AssertionError(f"no {name} in {spec['command']}")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def _prometheus_uid() -> str:
    sources = _yaml(INFRA / "grafana" / "provisioning" / "datasources" / "charter.yaml")["datasources"]
    (uid,) = [s["uid"] for s in sources if s["type"] == "prometheus"]
    return str(uid)


def test_series_are_read_from_expressions_but_labels_are_not() -> None:
    expr = 'sum by (le) (rate(charter_step_seconds_bucket{charter_x="a",y!~"b"}[5m])) / charter_nope'
    assert set(_SERIES.findall(expr)) == {"charter_step_seconds_bucket", "charter_nope"}


def test_every_series_the_dashboard_names_is_one_a_service_exports() -> None:
    named = {name for expr in _exprs(_dashboard()) for name in _SERIES.findall(expr)}
    assert not named - metrics.names(), "the dashboard names series no service exports"
    # Every part of the system is on it: at least one series of each service's own.
    for series in (
        "charter_runs_total",
        "charter_policy_decisions_total",
        "charter_approvals",
        "charter_tool_calls_total",
        "charter_audit_appends_total",
        "charter_consumer_lag",
    ):
        assert series in named


def test_every_panel_queries_the_provisioned_prometheus() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"]
    assert dashboard["schemaVersion"] >= 39
    uid = _prometheus_uid()
    queries = [p for p in _panels(dashboard["panels"]) if p["type"] != "row"]
    assert queries
    for panel in queries:
        assert panel["targets"], panel["title"]
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": uid}, panel["title"]
    ids = [p["id"] for p in _panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_exports_traces_to_the_collector_and_serves_metrics(name: str) -> None:
    services = _services()
    env = services[name]["environment"]
    assert env["CHARTER_TRACE_EXPORTER"] == "otlp"
    assert env["CHARTER_METRICS_HOST"] == "0.0.0.0"
    assert "CHARTER_METRICS_TOKEN" not in env  # the scrape token is the keys volume's file
    endpoint = env["CHARTER_OTLP_ENDPOINT"]
    host, port = endpoint.removeprefix("http://").split(":")
    assert host in services
    # The services speak OTLP over HTTP: the collector's http receiver.
    collector = _yaml(_host_file(services[host], _flag(services[host], "--config")))
    assert collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == f"0.0.0.0:{port}"


def test_the_collector_passes_traces_to_jaeger() -> None:
    services = _services()
    spec = services["otel-collector"]
    config = _yaml(_host_file(spec, _flag(spec, "--config")))
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    traces = config["service"]["pipelines"]["traces"]
    assert "otlp" in traces["receivers"]
    assert all(p in config["processors"] for p in traces["processors"])
    endpoints = [config["exporters"][e]["endpoint"] for e in traces["exporters"]]
    assert "jaeger:4317" in endpoints
    assert "jaeger" in services
    assert services["jaeger"]["ports"] == ["16686:16686"]


def test_prometheus_scrapes_every_service_with_the_metrics_token() -> None:
    services = _services()
    spec = services["prometheus"]
    config = _yaml(_host_file(spec, _flag(spec, "--config.file")))
    assert _mounts(spec)["/keys"] == "keys"
    assert "keys:/keys:ro" in spec["volumes"]
    base = int(Settings.model_fields["metrics_port"].default)
    wanted = {f"{name}:{base + metrics_server.OFFSETS[name]}" for name in SERVICES}
    scraped: set[str] = set()
    for job in config["scrape_configs"]:
        targets = {t for group in job["static_configs"] for t in group["targets"]}
        if targets & wanted:
            assert job["authorization"] == {
                "type": "Bearer",
                "credentials_file": f"/keys/{metrics_server.TOKEN_FILE}",
            }
            scraped |= targets
    assert wanted <= scraped
    for name in SERVICES:
        assert "CHARTER_METRICS_PORT" not in services[name]["environment"]


def test_grafana_provisions_the_dashboard_and_its_data_sources() -> None:
    spec = _services()["grafana"]
    provisioning = _host_file(spec, "/etc/grafana/provisioning")
    assert provisioning == INFRA / "grafana" / "provisioning"
    (provider,) = _yaml(provisioning / "dashboards" / "charter.yaml")["providers"]
    assert _host_file(spec, provider["options"]["path"]) == DASHBOARD.parent
    sources = _yaml(provisioning / "datasources" / "charter.yaml")["datasources"]
    urls = {s["type"]: s["url"] for s in sources}
    assert urls["prometheus"] == "http://prometheus:9090"
    assert urls["jaeger"] == "http://jaeger:16686"


def test_the_observability_images_are_pinned() -> None:
    services = _services()
    for name in ("otel-collector", "jaeger", "prometheus", "grafana"):
        image = services[name]["image"]
        tag = image.rpartition(":")[2]
        assert "/" not in tag, image
        assert tag not in ("", "latest"), image

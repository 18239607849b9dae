"""docker-compose.yml cannot be started on the build machine (no Docker engine); these checks
keep it consistent with the code: every service, on the production settings."""

from __future__ import annotations

from typing import Any

import yaml

from charter.stack.supervisor import SERVICES
from tests.conftest import REPO


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "docker-compose.yml").read_text()))


def test_every_service_runs_as_its_module_on_kafka_and_postgres() -> None:
    services = _compose()["services"]
    for name in SERVICES:
        spec = services[name]
        assert spec["command"] == ["python", "-m", f"services.{name}"]
        env = spec["environment"]
        assert env["CHARTER_BROKER"] == "kafka"
        assert env["CHARTER_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["CHARTER_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert spec["depends_on"]["topics"] == {"condition": "service_completed_successfully"}


def test_topics_are_created_explicitly_before_the_services() -> None:
    compose = _compose()
    assert compose["services"]["topics"]["command"] == ["charter", "topics"]
    kafka = compose["services"]["kafka"]["environment"]
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]

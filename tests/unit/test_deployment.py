"""docker-compose.yml cannot be started on the build machine (no Docker engine); these checks
keep it consistent with the code: every service, on the production settings."""

from __future__ import annotations

from typing import Any

import yaml

from charter.stack.readiness import SERVICES
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
        assert spec["depends_on"]["keys"] == {"condition": "service_completed_successfully"}
        assert env["CHARTER_KEYS_DIR"] == "/keys"
        assert "keys:/keys:ro" in spec["volumes"]


def test_the_keys_are_made_once_and_the_api_is_published() -> None:
    services = _compose()["services"]
    assert services["keys"]["command"] == ["charter", "keys", "init"]
    assert services["keys"]["volumes"] == ["keys:/keys"]
    approvals = services["approvals"]
    assert approvals["environment"]["CHARTER_API_HOST"] == "0.0.0.0"
    assert approvals["ports"] == ["8470:8470"]
    assert approvals["environment"]["CHARTER_USERS_FILE"] == "/app/users.yaml"


def test_topics_are_created_explicitly_before_the_services() -> None:
    compose = _compose()
    assert compose["services"]["topics"]["command"] == ["charter", "topics"]
    kafka = compose["services"]["kafka"]["environment"]
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]

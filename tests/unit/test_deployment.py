"""docker-compose.yml cannot be started on the build machine (no Docker engine); these checks
keep it consistent with the code: every service, on the production settings, and the file valid
by docker-compose's own reading (tests/e2e/test_compose.py runs its services as processes)."""

from __future__ import annotations

from typing import Any

import yaml

from charter.stack.readiness import SERVICES
from tests.compose_files import BASE, DEMO, compose_config
from tests.conftest import REPO


def _compose() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "docker-compose.yml").read_text()))


def test_docker_compose_reads_the_base_file_and_the_demo_override() -> None:
    base = compose_config(BASE)["services"]
    demo = compose_config(BASE, DEMO)["services"]
    for name in SERVICES:
        # The base runs the operator's configuration and tools, never the demo's.
        assert base[name]["environment"]["CHARTER_TOOL_MODULES"] == ""
        assert any(v.endswith(":/config:ro") and "/demo/" not in v for v in base[name]["volumes"])
        # The override puts the demo's own in their place, and nothing else changes.
        assert demo[name]["environment"]["CHARTER_TOOL_MODULES"] == "charter.demo.tools"
        assert f"{REPO}/charter/demo/files:/config:ro" in demo[name]["volumes"]
        for key in ("command", "image", "healthcheck", "depends_on"):
            assert demo[name][key] == base[name][key]
    assert "charter.demo" not in (REPO / "docker-compose.yml").read_text()


def test_one_image_is_built_once_and_run_by_every_charter_service() -> None:
    services = _compose()["services"]
    builders = [name for name, spec in services.items() if "build" in spec]
    assert builders == ["keys"]
    image = services["keys"]["image"]
    for name in [*SERVICES, "topics"]:
        assert services[name]["image"] == image
        assert services[name]["pull_policy"] == "never"


def test_every_service_has_a_healthcheck_and_a_stable_instance() -> None:
    services = _compose()["services"]
    instances = set()
    for name in SERVICES:
        check = services[name]["healthcheck"]["test"]
        assert check == ["CMD", "python", "-m", "charter.stack.healthcheck", name]
        instances.add(services[name]["environment"]["CHARTER_INSTANCE"])
    assert instances == {f"{name}-1" for name in SERVICES}
    for name in ("kafka", "postgres"):
        assert services[name]["healthcheck"]["test"]


def test_kafka_keeps_its_topics_on_its_volume() -> None:
    kafka = _compose()["services"]["kafka"]
    (volume,) = kafka["volumes"]
    assert volume.split(":")[1] == kafka["environment"]["KAFKA_LOG_DIRS"]


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
    assert approvals["environment"]["CHARTER_USERS_FILE"] == "/config/users.yaml"


def test_topics_are_created_explicitly_before_the_services() -> None:
    compose = _compose()
    assert compose["services"]["topics"]["command"] == ["charter", "topics"]
    kafka = compose["services"]["kafka"]["environment"]
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]


def test_the_image_installs_the_built_wheel() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "pip wheel --no-cache-dir --no-deps -w /dist ." in text
    assert "-c /tmp/constraints.txt /tmp/dist/charter-*.whl" in text
    assert " -e " not in text  # not editable: the image runs what a wheel holds

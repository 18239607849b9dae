"""A secret quoted in a tool's error reaches no trace file: the executor's span records the
error as the span's status, and as an exception event with its message and traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from charter.events import ActionFailed, RunFailed
from tests.conftest import REPO
from tests.e2e.conftest import run_events, run_id, running, stack_env, wait_run_end

pytestmark = pytest.mark.e2e

CANARY = "canary-trace-8c41d2f07e"
AGENT = """
id: leaky
owner: tests@example.com
description: Calls a tool that fails with its secret in the message.
environment: production
roles: [tester]
triggers: [{event: test.leaky}]
tools: [test_leaky]
steps:
  - {id: leak, tool: test_leaky, resource: "test/leaky", parameters: {order: leaky}}
"""
POLICY = """
@id("testers-use-the-leaky-tool")
@reason("the trace redaction test may call its tool")
permit (principal in Role::"tester", action == Action::"test_leaky", resource);
"""
RESOURCES = """
  - match: "test/*"
    environment: production
    kind: test
"""


def _configure(home: Path) -> dict[str, str]:
    env = {
        "CHARTER_TOOL_MODULES": "charter.demo.tools,tests.e2e.leaky_tools",
        "CHARTER_SECRET_LEAKY_TOKEN": CANARY,
        "CHARTER_TRACE_EXPORTER": "file",
        "PYTHONPATH": str(REPO),
    }
    config = Path(stack_env(home, **env)["CHARTER_AGENTS_DIR"]).parent
    (config / "agents" / "leaky.yaml").write_text(AGENT)
    (config / "policies" / "leaky.cedar").write_text(POLICY)
    with (config / "policies" / "resources.yaml").open("a") as resources:
        resources.write(RESOURCES)
    return env


@pytest.mark.tansu
def test_a_secret_in_a_tools_error_is_in_no_trace_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running(home, **_configure(home)) as stack:
        run = run_id(stack.publish("test.leaky", {}), "leaky")
        assert isinstance(wait_run_end(stack, run), RunFailed)
        [failed] = [e for e in run_events(stack, run, "actions.results") if isinstance(e, ActionFailed)]
        assert "[redacted] was refused" in failed.error
    # Stopped: every process has flushed its spans. The executor's span of the call is there...
    traces = sorted(stack.settings.logs_dir.glob("traces-*.jsonl"))
    spans = [json.loads(line) for path in traces for line in path.read_text().splitlines()]
    [call] = [s for s in spans if s["name"] == "tool test_leaky"]
    assert call["status"]["description"].endswith("[redacted] was refused")
    assert any(e["name"] == "exception" for e in call["events"])
    # ...and no trace file holds the secret, nor does any other file of the stack.
    assert [p.name for p in traces if CANARY.encode() in p.read_bytes()] == []
    assert [p for p in home.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()] == []

"""Workload isolation for tools: a tool of the `payments` pool runs only in an executor started
for that pool, never in the general one; a sandboxed tool that allocates past its memory quota
fails its action with the reason, and the same executor serves the next action."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from charter.events import ActionExecuted, ActionFailed, RunCompleted
from charter.stack.processes import free_port
from tests.conftest import REPO
from tests.e2e.conftest import (
    Stack,
    broker_env,
    run_id,
    running,
    samples,
    stack_env,
    value,
    wait_for,
    wait_run_end,
)

pytestmark = pytest.mark.e2e

AGENT = """
id: {name}
owner: tests@example.com
description: Calls {tool} once.
environment: production
roles: [tester]
triggers: [{{event: test.{name}}}]
tools: [{tool}]
steps:
  - {{id: call, tool: {tool}, resource: "test/{name}", parameters: {{order: "{{{{ trigger.order }}}}"}}}}
"""
AGENTS = {"payer": "test_pay", "hogger": "test_hog", "boxed": "test_sandboxed"}
POLICY = """
@id("testers-use-isolated-tools")
@reason("the isolation tests may call their tools")
permit (
    principal in Role::"tester",
    action in [Action::"test_pay", Action::"test_hog", Action::"test_sandboxed"],
    resource
);
"""
RESOURCES = """
  - match: "test/*"
    environment: production
    kind: test
"""


@pytest.fixture(scope="module")
def isolated(
    broker: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp(f"isolation-{broker}") / "home"
    env = {"CHARTER_TOOL_MODULES": "charter.demo.tools,tests.e2e.isolation_tools", "PYTHONPATH": str(REPO)}
    config = Path(stack_env(home, **env)["CHARTER_AGENTS_DIR"]).parent
    for name, tool in AGENTS.items():
        (config / "agents" / f"{name}.yaml").write_text(AGENT.format(name=name, tool=tool))
    (config / "policies" / "isolation.cedar").write_text(POLICY)
    with (config / "policies" / "resources.yaml").open("a") as resources:
        resources.write(RESOURCES)
    with running(home, **env, **broker_env(request, broker)) as stack:
        yield stack


@contextmanager
def payments_executor(stack: Stack) -> Iterator[subprocess.Popen[bytes]]:
    """An executor for the `payments` pool, a process of its own beside the stack's."""
    env = {
        **stack.env,
        "CHARTER_EXECUTOR_POOL": "payments",
        "CHARTER_INSTANCE": "payments-1",
        "CHARTER_METRICS_PORT": str(free_port()),
    }
    log = (stack.settings.home / "payments-executor.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.executor"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _tool_calls(stack: Stack, tool: str) -> float:
    """The general executor's count of calls of `tool`, from its metrics."""
    return value(samples(stack, "executor"), "charter_tool_calls_total", tool=tool)


def test_a_payments_tool_runs_only_in_the_payments_pools_executor(isolated: Stack) -> None:
    stack = isolated
    paid = run_id(stack.publish("test.payer", {"order": "P-1"}), "payer")
    # The general executor has the action, and leaves it: a later run of a general tool completes
    # while the payment waits for an executor of its pool.
    wait_for(stack, lambda e: e.run_id == paid and type(e).__name__ == "ActionApproved", "actions.approved")
    boxed = run_id(stack.publish("test.boxed", {"order": "B-1"}), "boxed")
    assert isinstance(wait_run_end(stack, boxed), RunCompleted)
    with payments_executor(stack) as pool:
        ended = wait_run_end(stack, paid, timeout=60)
        assert isinstance(ended, RunCompleted)
        executed = wait_for(
            stack, lambda e: isinstance(e, ActionExecuted) and e.run_id == paid, "actions.results"
        )
        assert isinstance(executed, ActionExecuted)
        assert executed.result == {"pool": "payments", "pid": pool.pid}
    assert _tool_calls(stack, "test_pay") == 0
    assert _tool_calls(stack, "test_sandboxed") >= 1  # the general executor did run its own


def test_a_tool_past_its_memory_quota_fails_with_the_reason_and_the_executor_carries_on(
    isolated: Stack,
) -> None:
    stack = isolated
    executor = stack.service_pid("executor")
    hogged = run_id(stack.publish("test.hogger", {"order": "H-1"}), "hogger")
    failed = wait_for(stack, lambda e: isinstance(e, ActionFailed) and e.run_id == hogged, "actions.results")
    assert isinstance(failed, ActionFailed)
    assert failed.error_type == "QuotaExceeded"
    assert "past its memory quota of 64 MB" in failed.error
    assert failed.in_doubt  # it may have acted before it was stopped
    following = run_id(stack.publish("test.boxed", {"order": "B-2"}), "boxed")
    assert isinstance(wait_run_end(stack, following), RunCompleted)
    assert stack.service_pid("executor") == executor

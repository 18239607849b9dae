"""Fair share: a flood of one tenant's runs fills the executor's queue, not its every slot. With
two slots, both held by acme's calls and four more of acme's queued, the next slot to free goes
to globex's run, which completes while acme's backlog remains."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from charter.client import Client
from charter.events import RunCompleted
from tests.conftest import REPO
from tests.e2e.conftest import Stack, broker_env, run_id, running, samples, stack_env, value, wait_run_end

pytestmark = pytest.mark.e2e

AGENT = """
id: gated
owner: tests@example.com
description: Calls a tool that holds its slot until the test opens its gate.
environment: production
roles: [tester]
triggers: [{event: test.gated}]
tools: [test_gate]
steps:
  - id: call
    tool: test_gate
    resource: "test/gated"
    parameters: {order: "{{ trigger.order }}", gates: "{{ trigger.gates }}"}
"""
POLICY = """
@id("testers-pass-gates")
@reason("the fair-share test may call its gate")
permit (principal in Role::"tester", action == Action::"test_gate", resource);
"""
RESOURCES = """
  - match: "test/*"
    environment: production
    kind: test
"""
FLOOD = 6


@pytest.fixture
def gated(broker: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    home = tmp_path / "home"
    env = {
        "CHARTER_TOOL_MODULES": "charter.demo.tools,tests.e2e.isolation_tools",
        "PYTHONPATH": str(REPO),
        "CHARTER_MAX_IN_FLIGHT": "2",  # two slots in hand per service
    }
    config = Path(stack_env(home, **env)["CHARTER_AGENTS_DIR"]).parent
    (config / "agents" / "gated.yaml").write_text(AGENT)
    (config / "policies" / "gated.cedar").write_text(POLICY)
    with (config / "policies" / "resources.yaml").open("a") as resources:
        resources.write(RESOURCES)
    with running(home, **env, **broker_env(request, broker)) as stack:
        yield stack


def _until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def _queued(stack: Stack, tenant: str) -> float:
    """The executor's records of `tenant` queued for a slot, from its metrics."""
    return value(samples(stack, "executor"), "charter_tenant_records", state="queued", tenant=tenant)


def _publish(stack: Stack, tenant: str, orders: list[str], gates: Path) -> list[str]:
    async def send() -> list[str]:
        async with Client(stack.settings) as client:
            return [
                (
                    await client.publish("test.gated", {"order": o, "gates": str(gates)}, tenant=tenant)
                ).event_id
                for o in orders
            ]

    return [run_id(trigger, "gated") for trigger in asyncio.run(send())]


def test_a_tenants_flood_does_not_stop_anothers_runs(gated: Stack, tmp_path: Path) -> None:
    stack, gates = gated, tmp_path / "gates"
    gates.mkdir()
    flood = [f"acme-{i}" for i in range(FLOOD)]
    acme_runs = _publish(stack, "acme", flood, gates)

    def started() -> set[str]:
        return {p.name.removesuffix(".started") for p in gates.glob("*.started")}

    _until(lambda: len(started()) == 2, "both of the executor's slots held by acme's calls")
    (gates / "globex-0").write_text("")  # globex's gate is open: its call returns at once
    [globex_run] = _publish(stack, "globex", ["globex-0"], gates)
    # Every action in the executor: two of acme's in hand, four queued, and globex's queued too
    # (the topics' partitions bring them in no fixed order).
    _until(
        lambda: (_queued(stack, "globex"), _queued(stack, "acme")) == (1, FLOOD - 2),
        "globex's action queued in the executor beside acme's four",
    )

    first = sorted(started())[0]
    (gates / first).write_text("")  # one of acme's calls returns: one slot frees
    assert isinstance(wait_run_end(stack, globex_run, timeout=60), RunCompleted)
    # acme's backlog remains: at most one more of its calls began (in the slot globex gave back).
    begun = started() - {"globex-0"}
    assert len(begun) <= 3
    assert len(set(flood) - begun) >= FLOOD - 3

    for order in flood:
        (gates / order).write_text("")
    for run in acme_runs:
        assert isinstance(wait_run_end(stack, run, timeout=60), RunCompleted)

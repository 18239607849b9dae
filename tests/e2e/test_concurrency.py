"""Many runs at once: the planner's model calls and the executor's tool calls of different runs
are in flight together, not one after another (STYLE.md, principle 9).

No timer is asserted on. Each test holds its calls at a barrier that opens only when K of them
are waiting together: the model stub (tests/e2e/model_server.py --barrier K) answers no call
until K are in flight, and the `gather` tool (tests/e2e/barrier_tools.py) returns only once K
calls of it are running. A service that handles runs one at a time, or K-1 at a time, never
fills the barrier; it breaks after its timeout, stays broken, and every run fails or escalates.
So the runs all completing is the proof, and nothing here can pass on a serial service.

CHARTER_TEST_BARRIER_TIMEOUT_S (default 60) shortens how long a barrier waits before it breaks,
to see a serial service fail sooner; a concurrent one fills each barrier in seconds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from charter.client import Client
from charter.demo import ledger
from charter.events import RUN_TERMINAL, Event, RunCompleted
from tests.e2e.barrier_tools import PARTIES_ENV, TIMEOUT_ENV
from tests.e2e.conftest import Stack, broker_env, in_thread, run_id, running, stack_env, wait_for
from tests.e2e.model_stub import ModelServer

pytestmark = pytest.mark.e2e

MODEL_RUNS = 10  # each makes three model calls, in three rounds of the barrier
TOOL_RUNS = 20  # more than the 6 threads asyncio.to_thread has on two cores
BARRIER_TIMEOUT_S = float(os.environ.get(TIMEOUT_ENV, "60"))
# Bounds the wait for every run to end, not a figure asserted on: a concurrent stack ends
# them in seconds, a serial one soon after its barrier breaks. Within pytest's 300 s per test.
RUNS_TIMEOUT_S = 180.0
REFUND = "support-assistant"  # agents/support-assistant.yaml, model-planned

GATHERER = "barrier-gatherer"
GATHER_AGENT = f"""\
# One step: the `gather` tool, which returns only once {TOOL_RUNS} calls of it run at once.
id: {GATHERER}
owner: tests@example.com
description: Meets the other runs at the barrier.
environment: production
roles: [support]
triggers:
  - event: test.gather
tools: [gather]
steps:
  - id: meet
    tool: gather
    resource: "barrier/{{{{ trigger.key }}}}"
    parameters: {{key: "{{{{ trigger.key }}}}"}}
"""
GATHER_POLICY = f"""\
// The concurrency test's agent may call the barrier tool, and no one else may.

@id("barrier-gather")
@reason("the concurrency test's runs meet at the barrier")
permit (principal == Agent::"{GATHERER}", action == Action::"gather", resource);
"""
GATHER_RESOURCES = '  - match: "barrier/*"\n    environment: production\n    kind: barrier\n'


@pytest.fixture
def barrier_model(tmp_path: Path) -> Iterator[ModelServer]:
    """The model stub answering calls only MODEL_RUNS at a time."""
    barrier = ("--barrier", str(MODEL_RUNS), "--barrier-timeout", str(BARRIER_TIMEOUT_S))
    server = ModelServer(tmp_path / "requests.jsonl", *barrier)
    yield server
    server.stop()


def _publish(stack: Stack, name: str, data: list[dict[str, object]]) -> list[str]:
    """Publish the business events back to back; returns their event ids."""

    async def go() -> list[str]:
        async with Client(stack.settings) as client:
            return [(await client.publish(name, d)).event_id for d in data]

    return in_thread(go)


def _ends(stack: Stack, runs: set[str]) -> dict[str, Event]:
    """Each run's last event, for those that ended within RUNS_TIMEOUT_S."""
    ended: dict[str, Event] = {}

    def all_ended(event: Event) -> bool:
        if isinstance(event, RUN_TERMINAL) and event.run_id in runs:
            ended[event.run_id or ""] = event
        return len(ended) == len(runs)

    # On a timeout, the caller's assertion says which runs never ended.
    with contextlib.suppress(TimeoutError):
        wait_for(stack, all_ended, "runs", timeout=RUNS_TIMEOUT_S)
    return ended


def _assert_all_completed(ended: dict[str, Event], runs: set[str], seen: str = "") -> None:
    """Every run completed; if not, how the others ended, and what the barrier saw."""
    others = [e for e in ended.values() if not isinstance(e, RunCompleted)]
    completed = len(ended) - len(others)
    why = sorted({f"{type(e).__name__}: {getattr(e, 'reason', '')}" for e in others})
    assert completed == len(runs), (
        f"{len(ended)} of {len(runs)} runs ended, {completed} completed: {why} {seen}".strip()
    )


def test_the_planner_has_the_model_calls_of_many_runs_in_flight_at_once(
    broker: str, request: pytest.FixtureRequest, tmp_path: Path, barrier_model: ModelServer
) -> None:
    env = {
        **broker_env(request, broker),
        "CHARTER_LLM_BASE_URL": barrier_model.url,
        "CHARTER_LLM_MODEL": "stub-model",
        "CHARTER_SECRET_LLM_API_KEY": "sk-test-concurrency",
        # Longer than the barrier's wait: a call the planner gave up on would still be a party
        # at the barrier, and its retry another, filling a round with fewer runs than K.
        "CHARTER_LLM_TIMEOUT_S": str(BARRIER_TIMEOUT_S + 60),
    }
    with running(tmp_path / "home", **env) as stack:
        # Every run plays the same script (lookup, refund, answer: three model calls), so each
        # turn of all K runs is one round of the barrier, however their actions interleave.
        data: list[dict[str, object]] = [
            {"script": "refund", "order_id": f"C-{900 + i}", "amount": 10} for i in range(MODEL_RUNS)
        ]
        runs = {run_id(t, REFUND) for t in _publish(stack, "support.ticket_opened", data)}
        ended = _ends(stack, runs)
    stats = barrier_model.stats()
    _assert_all_completed(ended, runs, f"(model stub: {stats})")
    assert stats["max_in_flight"] >= MODEL_RUNS, stats
    assert stats["served"] == 3 * MODEL_RUNS, stats
    assert not stats["broken"], stats


def _gather_stack_home(home: Path) -> Path:
    """A stack's home with the gathering agent, its permit and its resources added."""
    stack_env(home)  # the stack's own copy of agents and policies
    config = home / "config"
    (config / "agents" / f"{GATHERER}.yaml").write_text(GATHER_AGENT)
    (config / "policies" / "barrier.cedar").write_text(GATHER_POLICY)
    with (config / "policies" / "resources.yaml").open("a") as f:
        f.write(GATHER_RESOURCES)
    # TOOL_RUNS actions of one agent and tool in a moment are well inside the default rates
    # (policies/limits.yaml: 120 a minute), so no limit turns one away.
    return home


def test_the_executor_runs_the_tool_calls_of_many_runs_at_once(
    broker: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    env = {
        **broker_env(request, broker),
        "CHARTER_TOOL_MODULES": "charter.demo.tools,tests.e2e.barrier_tools",
        PARTIES_ENV: str(TOOL_RUNS),
        TIMEOUT_ENV: str(BARRIER_TIMEOUT_S),
    }
    with running(_gather_stack_home(tmp_path / "home"), **env) as stack:
        triggers = _publish(stack, "test.gather", [{"key": f"k-{i}"} for i in range(TOOL_RUNS)])
        runs = {run_id(t, GATHERER) for t in triggers}
        ended = _ends(stack, runs)
        calls = [c for c in ledger.calls(stack.settings.data_dir) if c["tool"] == "gather"]
    _assert_all_completed(ended, runs)
    # Each run's one call, once: no run got through the barrier on a second try.
    assert sorted(c["run_id"] for c in calls) == sorted(runs)

"""The executor's guarantees on a real stack, with tools that are HTTP endpoints on a local
server that counts calls and effects per Idempotency-Key (tests/e2e/tool_server.py):

- chaos: 200 runs under load while the executor is SIGKILLed 10 times, each time with at least
  IN_FLIGHT_AT_KILL tool calls under way at once; every run ends, no effect happens twice, an
  effect left in doubt escalates, the audit verifies, and on Kafka a read-committed reader finds
  each event once on every topic;
- a run that fails after charging twice undoes both charges, last first, each governed;
- a dry-run environment calls nothing and says so;
- a canary secret used by a tool appears nowhere: topics, logs, stores, traces.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from charter.client import Client
from charter.events import (
    ActionExecuted,
    ActionFailed,
    ActionProposed,
    Event,
    RunCompleted,
    RunEscalated,
    RunFailed,
)
from charter.topics import all_names
from tests.conftest import REPO
from tests.e2e.conftest import (
    Stack,
    broker_env,
    in_thread,
    run_events,
    run_id,
    running,
    stack_env,
    wait_restarted,
    wait_run_end,
)
from tests.e2e.tool_server import Ledger, serving

pytestmark = pytest.mark.e2e

CANARY = "canary-5e1f0c2a9d7b4e63"
RUNS = 200
KILLS = 10
# Tool calls under way at once when the executor is killed: it handles runs side by side.
IN_FLIGHT_AT_KILL = 10
AGENTS = {
    "chaos": """
id: chaos
owner: tests@example.com
description: Charges, then ships, while the executor is being killed.
environment: production
roles: [tester]
triggers: [{event: test.chaos}]
tools: [test_charge, test_uncharge, test_ship]
steps:
  - {id: charge, tool: test_charge, resource: "test/{{ trigger.order }}",
     parameters: {order: "{{ trigger.order }}", amount: "{{ trigger.amount }}"}}
  - {id: ship, tool: test_ship, resource: "test/{{ trigger.order }}",
     parameters: {order: "{{ trigger.order }}", amount: "{{ trigger.amount }}"}}
""",
    "saga": """
id: saga
owner: tests@example.com
description: Charges twice, then meets a refusal, so both charges are undone.
environment: production
roles: [tester]
triggers: [{event: test.saga}]
tools: [test_charge, test_uncharge, test_reject]
steps:
  - {id: first, tool: test_charge, resource: "test/{{ trigger.order }}",
     parameters: {order: "{{ trigger.order }}-a", amount: 10}}
  - {id: second, tool: test_charge, resource: "test/{{ trigger.order }}",
     parameters: {order: "{{ trigger.order }}-b", amount: 20}}
  - {id: refused, tool: test_reject, resource: "test/{{ trigger.order }}",
     parameters: {order: "{{ trigger.order }}", amount: 0}}
""",
    "canary": """
id: canary
owner: tests@example.com
description: Calls a tool that sends a secret and gets it echoed back.
environment: production
roles: [tester]
triggers: [{event: test.canary}]
tools: [test_echo]
steps:
  - {id: echo, tool: test_echo, resource: "test/canary", parameters: {order: canary, amount: 1}}
""",
    "rehearsal": """
id: rehearsal
owner: tests@example.com
description: The chaos agent's playbook in a dry-run environment.
environment: staging
roles: [tester]
triggers: [{event: test.rehearsal}]
tools: [test_charge, test_uncharge]
steps:
  - {id: charge, tool: test_charge, resource: "staging-test/{{ trigger.order }}",
     parameters: {order: "{{ trigger.order }}", amount: 5}}
""",
}
POLICY = """
@id("testers-use-test-tools")
@reason("the executor's tests may use the test tools")
permit (
    principal in Role::"tester",
    action in [Action::"test_charge", Action::"test_uncharge", Action::"test_ship", Action::"test_reject",
               Action::"test_echo"],
    resource
);
"""
RESOURCES = """
  - match: "test/*"
    environment: production
    kind: test
  - match: "staging-test/*"
    environment: staging
    kind: test
"""


def _configure(home: Path, url: str) -> dict[str, str]:
    env = {
        "CHARTER_TOOL_MODULES": "charter.demo.tools,tests.e2e.http_tools",
        "CHARTER_TEST_TOOLS_URL": url,
        "CHARTER_HTTP_PRIVATE_NETWORKS": "127.0.0.1",
        "CHARTER_SECRET_CANARY_TOKEN": CANARY,
        "CHARTER_DRY_RUN_ENVIRONMENTS": "staging",
        "PYTHONPATH": str(REPO),
    }
    config = Path(stack_env(home, **env)["CHARTER_AGENTS_DIR"]).parent
    for name, text in AGENTS.items():
        (config / "agents" / f"{name}.yaml").write_text(text)
    (config / "policies" / "tests.cedar").write_text(POLICY)
    with (config / "policies" / "resources.yaml").open("a") as resources:
        resources.write(RESOURCES)
    # The load is the point here, not the default rate limit of 120 actions a minute.
    limits = config / "policies" / "limits.yaml"
    limits.write_text(limits.read_text().replace("count: 120,", "count: 100000,"))
    return env


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture(scope="module")
def tools_stack(ledger: Ledger, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("executor") / "home"
    with serving(ledger) as url, running(home, **_configure(home, url)) as stack:
        yield stack


def _ends(stack: Stack) -> dict[str, Event]:
    """Every run's terminal event so far."""

    async def go() -> dict[str, Event]:
        found: dict[str, Event] = {}
        async with Client(stack.settings) as client:
            async for received in client.replay("runs"):
                event = received.event
                if isinstance(event, RunCompleted | RunFailed | RunEscalated) and event.run_id:
                    found[event.run_id] = event
        return found

    return in_thread(go)


def test_200_runs_survive_the_executor_killed_10_times(
    broker: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    ledger = Ledger(delay_s=1.0)  # a slow system: up to 1 s between the effect and the answer
    home = tmp_path / "home"
    rng = random.Random(6)
    with (
        serving(ledger) as url,
        running(home, **broker_env(request, broker), **_configure(home, url)) as stack,
    ):
        runs: list[str] = []
        at_kill: list[int] = []

        async def publish(wave: int, count: int) -> list[str]:
            async with Client(stack.settings, source="chaos") as client:
                sent = []
                for i in range(count):
                    data = {"order": f"w{wave}-{i}", "amount": 1 + i}
                    sent.append((await client.publish("test.chaos", data)).event_id)
                return sent

        per_wave = RUNS // KILLS
        for wave in range(KILLS):
            sent = in_thread(lambda w=wave: publish(w, per_wave))  # type: ignore[misc]
            runs += [run_id(t, "chaos") for t in sent]
            at_kill.append(ledger.wait_in_flight(IN_FLIGHT_AT_KILL, timeout_s=60))
            time.sleep(rng.uniform(0, 0.3))
            old = stack.service_pid("executor")
            os.kill(old, signal.SIGKILL)
            wait_restarted(stack, "executor", old, timeout=60)
        deadline = time.monotonic() + 180
        while len(ends := {r: e for r, e in _ends(stack).items() if r in runs}) < RUNS:
            assert time.monotonic() < deadline, (
                f"{RUNS - len(ends)} runs never ended:\n{stack.text()[-3000:]}"
            )
            time.sleep(2)
        audit = stack.cli("audit", "verify", check=False)
        repeated = _repeated_event_ids(stack) if stack.settings.broker_kind == "kafka" else {}

    assert min(at_kill) >= IN_FLIGHT_AT_KILL, f"tool calls under way at each kill: {at_kill}"
    assert repeated == {}, f"events a read-committed reader finds more than once: {repeated}"
    assert "restarting" in stack.text()
    shipped = Counter(key for (path, key), n in ledger.effects.items() if path == "/ship" for _ in range(n))
    charged = Counter(key for (path, key), n in ledger.effects.items() if path == "/charge" for _ in range(n))
    ship_calls = Counter({key: n for (path, key), n in ledger.calls.items() if path == "/ship"})
    outcomes = Counter(type(e).__name__ for e in ends.values())
    for run, end in ends.items():
        charge_key, ship_key = f"{run}:0", f"{run}:1"
        assert charged[charge_key] == 1, (run, end)  # retried after kills maybe, never twice in effect
        if isinstance(end, RunCompleted):
            assert shipped[ship_key] == 1
            continue
        # Only the non-idempotent step may be left in doubt, and then it is escalated, not repeated.
        assert isinstance(end, RunEscalated), end
        assert end.cause == "in_doubt", end
        assert end.step == 1
        assert shipped[ship_key] <= 1
    assert max(ship_calls.values()) == 1, "a non-idempotent tool was called twice for one action"
    # A kill with dozens of calls under way leaves each shipment among them in doubt (the charges
    # are idempotent and called again): many runs escalate by design, and the rest complete.
    assert outcomes["RunCompleted"] >= RUNS // 10, outcomes
    assert audit.returncode == 0, audit.stdout + audit.stderr
    charge_calls = sum(c for (p, _), c in ledger.calls.items() if p == "/charge")
    print(
        f"chaos: {dict(outcomes)}; {charge_calls} charge calls for {len(charged)} charges; "
        f"calls under way at the kills {at_kill}"
    )


def _repeated_event_ids(stack: Stack) -> dict[str, int]:
    """Event ids found more than once on any topic by a read-committed reader, with their counts:
    where outputs commit in transactions with their inputs' offsets, there are none."""

    async def go() -> dict[str, int]:
        counts: Counter[str] = Counter()
        async with Client(stack.settings) as client:
            for topic in all_names(stack.settings):
                async for received in client.replay(topic):
                    if received.event is not None:
                        counts[f"{topic} {received.event.event_id}"] += 1
        return {key: n for key, n in counts.items() if n > 1}

    return in_thread(go)


@pytest.mark.tansu
def test_a_failed_run_undoes_its_charges_last_first(tools_stack: Stack, ledger: Ledger) -> None:
    trigger = tools_stack.publish("test.saga", {"order": "s1"})
    run = run_id(trigger, "saga")
    end = wait_run_end(tools_stack, run)
    assert isinstance(end, RunFailed), end
    assert "undone: second, first" in end.reason
    undone = [key for path, key in ledger.order if path == "/uncharge" and key.startswith(run)]
    assert undone == [f"{run}:3", f"{run}:4"]  # numbered after the three steps
    proposed = [e for e in run_events(tools_stack, run, "actions.proposed") if isinstance(e, ActionProposed)]
    assert [p.action.compensates for p in proposed] == [None, None, None, "second", "first"]
    # Each undo passed policy and the executor like any action, with the charge's receipt.
    executed = {
        e.action.step_index: e
        for e in run_events(tools_stack, run, "actions.results")
        if isinstance(e, ActionExecuted | ActionFailed)
    }
    assert executed[3].action.parameters == {"receipt": f"charge-{run}:1"}
    assert executed[4].action.parameters == {"receipt": f"charge-{run}:0"}
    assert isinstance(executed[2], ActionFailed)


@pytest.mark.tansu
def test_a_dry_run_environment_calls_nothing_and_says_so(tools_stack: Stack, ledger: Ledger) -> None:
    trigger = tools_stack.publish("test.rehearsal", {"order": "d1"})
    run = run_id(trigger, "rehearsal")
    assert isinstance(wait_run_end(tools_stack, run), RunCompleted)
    [outcome] = [e for e in run_events(tools_stack, run, "actions.results")]
    assert isinstance(outcome, ActionExecuted)
    assert outcome.dry_run
    assert outcome.result["would_send"]["url"].endswith("/charge")
    assert not [key for (_path, key) in ledger.calls if key.startswith(run)]


@pytest.mark.tansu
def test_a_canary_secret_appears_nowhere(tools_stack: Stack, ledger: Ledger) -> None:
    trigger = tools_stack.publish("test.canary", {})
    run = run_id(trigger, "canary")
    assert isinstance(wait_run_end(tools_stack, run), RunCompleted)
    assert ledger.calls[("/echo", f"{run}:0")] == 1
    [outcome] = run_events(tools_stack, run, "actions.results")
    assert isinstance(outcome, ActionExecuted)
    assert outcome.result == {"auth": "Bearer [redacted]"}  # the tool got it; it came back scrubbed

    async def every_record() -> list[bytes]:
        raw: list[bytes] = []
        async with Client(tools_stack.settings) as client:
            for name in all_names(tools_stack.settings):
                async for received in client.replay(name):
                    shown = received.event.model_dump_json() if received.event else received.error
                    raw.append(f"{received.key!r} {received.headers!r} {shown}".encode())
        return raw

    records = in_thread(every_record)
    assert records
    assert not [r for r in records if CANARY.encode() in r]
    # Logs, the audit store and every other store, traces, the embedded broker's own files.
    leaks = [p for p in tools_stack.home.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert leaks == []

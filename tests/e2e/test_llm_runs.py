"""Model-planned runs end to end: the real services on the embedded broker, and a scripted
OpenAI-compatible model server in a process of its own (tests/e2e/model_server.py).

The model is never trusted: each tool call it makes is proposed and governed like a playbook's
step, an injected instruction it obeys is denied by policy and never executed, and whatever
stops a run escalates it to a human, who resumes it with an instruction or cancels it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from charter.client import Client
from charter.demo import ledger
from charter.events import (
    RUN_TERMINAL,
    ActionExecuted,
    ActionProposed,
    ActionRejected,
    Event,
    RunCancelled,
    RunCompleted,
    RunEscalated,
)
from tests.conftest import REPO
from tests.e2e.conftest import (
    Stack,
    audited_run,
    broker_env,
    run_events,
    run_id,
    running,
    shown_when,
    stack_env,
    wait_approval,
    wait_for,
    wait_restarted,
    wait_run_end,
)
from tests.e2e.model_stub import ModelServer

KEY = "sk-test-5f0c9a7e1d2b4c6a"
ALL = ("triggers", "runs", "actions.proposed", "actions.rejected", "actions.results")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    server = ModelServer(tmp_path_factory.mktemp("model") / "requests.jsonl")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def llm_stack(
    model: ModelServer, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("llm") / "home"
    stack_env(home)  # the stack's own copy of agents and policies, which the tests' are added to
    config = home / "config"
    for agent in (REPO / "tests" / "e2e" / "llm" / "agents").glob("*.yaml"):
        shutil.copy(agent, config / "agents" / agent.name)
    for policy in (REPO / "tests" / "e2e" / "llm" / "policies").iterdir():
        shutil.copy(policy, config / "policies" / policy.name)
    with (config / "policies" / "resources.yaml").open("a") as f:
        f.write('  - match: "ticket/*"\n    environment: production\n    kind: ticket\n')
    env = {
        **broker_env(request, "tansu"),
        "CHARTER_TOOL_MODULES": "charter.demo.tools,tests.e2e.llm_tools",
        "CHARTER_LLM_BASE_URL": model.url,
        "CHARTER_LLM_MODEL": "stub-model",
        "CHARTER_SECRET_LLM_API_KEY": KEY,
        "CHARTER_LLM_INPUT_COST_PER_1K": "0.5",
        "CHARTER_LLM_OUTPUT_COST_PER_1K": "1.5",
    }
    with running(home, **env) as stack:
        yield stack


def _ticket(stack: Stack, **data: object) -> tuple[str, str]:
    trigger = stack.publish("support.ticket_opened", dict(data))
    return trigger, run_id(trigger, "support-assistant")


def _of(events: list[Event], kind: type[Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def test_the_model_plans_a_refund_and_every_call_is_governed(llm_stack: Stack, model: ModelServer) -> None:
    trigger, run = _ticket(llm_stack, script="refund", order_id="A-100", amount=40)
    end = wait_run_end(llm_stack, run)
    assert isinstance(end, RunCompleted), end
    assert end.outputs["answer"] == "Refunded 40 EUR for A-100."
    assert end.llm_tokens > 0
    assert end.llm_cost > 0

    events = run_events(llm_stack, run, *ALL)
    proposed = _of(events, ActionProposed)
    assert [p.action.tool for p in proposed] == ["lookup_order", "issue_refund"]
    assert [p.action.resource for p in proposed] == ["order/A-100", "order/A-100"]
    assert all(p.llm_tokens > 0 and p.llm_cost > 0 for p in proposed)
    assert sum(p.llm_tokens for p in proposed) < end.llm_tokens  # the last call proposed nothing
    assert [e.action.tool for e in _of(events, ActionExecuted)] == ["lookup_order", "issue_refund"]

    sent = model.requests(trigger)
    assert len(sent) == 3
    assert all(r["authorization"] == f"Bearer {KEY}" for r in sent)
    first = sent[0]["body"]
    assert first["model"] == "stub-model"
    offered = {t["function"]["name"] for t in first["tools"]}
    assert offered == {"lookup_order", "issue_refund", "notify_customer", "ask_human"}
    looked_up = sent[1]["body"]["messages"][-1]
    assert looked_up["role"] == "tool"
    assert json.loads(looked_up["content"])["currency"] == "EUR"

    # Each model call is a span in the run's trace, named and described as OpenTelemetry's
    # GenAI conventions say.
    first_record = json.loads(llm_stack.cli("replay", "--run", run, "--json").stdout.splitlines()[0])
    calls = _spans_named(llm_stack, "planner", "chat stub-model", first_record["trace_id"], 3)
    assert [c["attributes"]["gen_ai.operation.name"] for c in calls] == ["chat"] * 3
    assert all(c["attributes"]["gen_ai.request.model"] == "stub-model" for c in calls)
    assert all(c["attributes"]["gen_ai.usage.input_tokens"] > 0 for c in calls)
    assert sum(c["attributes"]["gen_ai.usage.output_tokens"] for c in calls) > 0

    # The key is a secret reference: in no event, and in no line any service logged.
    raw = llm_stack.cli("replay", "--run", run).stdout
    assert KEY not in raw
    assert "stub-model" not in raw
    for log in llm_stack.settings.logs_dir.glob("*"):
        assert KEY not in log.read_text(errors="replace"), log


def test_a_refund_the_model_proposes_above_100_waits_for_finance(llm_stack: Stack) -> None:
    _, run = _ticket(llm_stack, script="refund", order_id="A-101", amount=750)
    request = wait_approval(llm_stack, run)
    assert request.action.tool == "issue_refund"
    assert request.action.parameters["amount"] == 750
    llm_stack.as_user("dana", "approvals", "approve", request.approval_id)
    end = wait_run_end(llm_stack, run)
    assert isinstance(end, RunCompleted), end


def test_two_calls_in_one_message_are_proposed_one_after_the_other(llm_stack: Stack) -> None:
    _, run = _ticket(llm_stack, script="parallel", order_id="A-102", other_order_id="A-103")
    end = wait_run_end(llm_stack, run)
    assert isinstance(end, RunCompleted), end
    assert end.outputs["answer"] == "Looked up 2 orders."
    proposed = _of(run_events(llm_stack, run, "actions.proposed"), ActionProposed)
    assert [(p.action.step_index, p.action.parameters["order_id"]) for p in proposed] == [
        (0, "A-102"),
        (1, "A-103"),
    ]


def test_an_injected_instruction_is_proposed_denied_and_never_run(
    llm_stack: Stack, model: ModelServer
) -> None:
    trigger = llm_stack.publish("test.ticket", {"script": "ticket", "ticket_id": "T-666"})
    run = run_id(trigger, "ticket-reader")
    end = wait_run_end(llm_stack, run)
    assert isinstance(end, RunCompleted), end

    events = run_events(llm_stack, run, *ALL)
    assert [p.action.tool for p in _of(events, ActionProposed)] == ["read_ticket", "delete_customer"]
    rejected = _of(events, ActionRejected)
    assert [(r.action.tool, r.rejected_by) for r in rejected] == [("delete_customer", "policy")]
    assert "is not granted to agent ticket-reader" in " ".join(rejected[0].decision.reasons)
    assert [e.action.tool for e in _of(events, ActionExecuted)] == ["read_ticket"]
    called = {c["tool"] for c in ledger.calls(llm_stack.settings.data_dir)}
    assert "read_ticket" in called
    assert "delete_customer" not in called

    # The model obeyed the ticket, and was told it was denied.
    sent = model.requests(trigger)
    denial = sent[-1]["body"]["messages"][-1]
    assert denial["role"] == "tool"
    assert denial["content"].startswith("denied by policy")

    # The audit keeps the attempt: the proposal and its denial are in the run's evidence.
    bundle = llm_stack.home / "injection.zip"
    audited_run(llm_stack, run)
    deadline = time.monotonic() + 30
    # The run's last records are exported once a signed head covers them (within seconds).
    while llm_stack.cli("audit", "export", "--run", run, "-o", str(bundle), check=False).returncode != 0:
        assert time.monotonic() < deadline, "the run's records were never covered by a signed head"
        time.sleep(0.5)
    with zipfile.ZipFile(bundle) as z:
        lines = [json.loads(line) for line in z.read("events.jsonl").decode().splitlines()]
    recorded = {
        (r["event"]["envelope"]["event_type"], "delete_customer" in json.dumps(r["event"])) for r in lines
    }
    assert ("ActionProposed", True) in recorded
    assert ("ActionRejected", True) in recorded


def test_malformed_tool_calls_are_answered_as_errors_then_escalate(
    llm_stack: Stack, model: ModelServer
) -> None:
    trigger, run = _ticket(llm_stack, script="malformed")
    end = wait_run_end(llm_stack, run)
    assert isinstance(end, RunEscalated), end
    assert end.cause == "tool_call_errors"
    assert end.context["errors"] == 4
    assert end.llm_tokens > 0
    assert _of(run_events(llm_stack, run, "actions.proposed"), ActionProposed) == []
    answers = [r["body"]["messages"][-1]["content"] for r in model.requests(trigger)[1:]]
    assert answers[0].startswith("error: unknown tool 'launch_rockets'")
    assert "not valid JSON" in answers[1]
    assert "invalid arguments for lookup_order" in answers[2]


def test_the_model_asks_a_human_who_resumes_it_with_an_instruction(
    llm_stack: Stack, model: ModelServer
) -> None:
    trigger, run = _ticket(llm_stack, script="ask", order_id="A-104")
    asked = wait_run_end(llm_stack, run)
    assert isinstance(asked, RunEscalated), asked
    assert asked.cause == "model_asked"
    assert "refund all of it, or part?" in asked.reason

    # Approvers may not direct runs; an operator may (once the audit, which the API reads,
    # knows the run is escalated).
    shown_when(llm_stack, run, "status escalated")
    refused = llm_stack.as_user("dana", "run", "resume", run, "-i", "refund 30", check=False)
    assert refused.returncode != 0
    assert "runs:direct" in refused.stderr + refused.stdout
    out = llm_stack.as_user("omar", "run", "resume", run[:10], "-i", "refund 30 only").stdout
    assert f"run {run} resumed by omar" in out

    end = wait_for(llm_stack, lambda e: isinstance(e, RunCompleted) and e.run_id == run, "runs")
    assert isinstance(end, RunCompleted)
    proposed = _of(run_events(llm_stack, run, "actions.proposed"), ActionProposed)
    assert [(p.action.tool, p.action.parameters["amount"]) for p in proposed] == [("issue_refund", 30)]
    said = model.requests(trigger)[1]["body"]["messages"][-1]
    assert said["role"] == "tool"
    assert said["content"] == "A human (omar) says: refund 30 only"
    # The run reads as resumed, then completed.
    shown = shown_when(llm_stack, run, "status completed")
    assert "resume by omar: refund 30 only" in shown


def test_a_human_cancels_an_escalated_run(llm_stack: Stack) -> None:
    _, run = _ticket(llm_stack, script="ask", order_id="A-105")
    assert isinstance(wait_run_end(llm_stack, run), RunEscalated)
    shown_when(llm_stack, run, "status escalated")  # the API knows runs from the audit log
    llm_stack.as_user("omar", "run", "cancel", run, "--reason", "customer withdrew")
    end = wait_for(llm_stack, lambda e: isinstance(e, RunCancelled) and e.run_id == run, "runs")
    assert isinstance(end, RunCancelled)
    assert end.cause == "human"
    assert end.reason == "cancelled by omar: customer withdrew"
    # A run that has ended cannot be resumed (once the audit, which the API reads, has its end).
    deadline = time.monotonic() + 30
    while (again := llm_stack.as_user("omar", "run", "resume", run, check=False)).returncode == 0:
        assert time.monotonic() < deadline, again.stdout
        time.sleep(0.5)
    assert "is cancelled" in again.stderr + again.stdout


def test_a_model_server_that_fails_twice_is_retried(llm_stack: Stack, model: ModelServer) -> None:
    trigger, run = _ticket(llm_stack, script="refund", order_id="A-106", amount=20, fail_first=2)
    end = wait_run_end(llm_stack, run)
    assert isinstance(end, RunCompleted), end
    assert len(model.requests(trigger)) == 5  # two refused, then three answered


def test_a_planner_killed_mid_run_resumes_fifty_runs_without_proposing_a_step_twice(llm_stack: Stack) -> None:
    async def publish() -> list[str]:
        async with Client(llm_stack.settings) as client:
            data = [{"script": "multi", "order_id": f"B-{500 + i}", "amount": 5} for i in range(50)]
            return [(await client.publish("test.llm_multi", d)).event_id for d in data]

    runs = {run_id(t, "llm-multi") for t in asyncio.run(publish())}
    # Kill the planner once runs are part way through their steps.
    wait_for(
        llm_stack,
        lambda e: isinstance(e, ActionProposed) and e.run_id in runs and e.action.step_index == 1,
        "actions.proposed",
        timeout=60,
    )
    planner = llm_stack.service_pid("planner")
    os.kill(planner, signal.SIGKILL)
    finished = [e for e in _all_events(llm_stack, "runs") if isinstance(e, RunCompleted) and e.run_id in runs]
    assert len(finished) < 25, "the planner was killed too late to test anything"
    wait_restarted(llm_stack, "planner", planner, timeout=60)

    ended: dict[str, Event] = {}

    def all_ended(event: Event) -> bool:
        if isinstance(event, RUN_TERMINAL) and event.run_id in runs:
            ended[event.run_id or ""] = event
        return len(ended) == len(runs)

    wait_for(llm_stack, all_ended, "runs", timeout=240)
    assert all(isinstance(e, RunCompleted) for e in ended.values()), list(ended.values())

    proposals: dict[tuple[str, int], set[str]] = defaultdict(set)
    executed: dict[str, set[str]] = defaultdict(set)
    for event in _all_events(llm_stack, "actions.proposed", "actions.results"):
        if event.run_id not in runs:
            continue
        if isinstance(event, ActionProposed):
            proposals[(event.run_id, event.action.step_index)].add(event.event_id)
        elif isinstance(event, ActionExecuted):
            executed[event.action.action_id].add(event.event_id)
    assert len(proposals) == 150
    assert all(len(ids) == 1 for ids in proposals.values()), "a step was proposed twice"
    assert len(executed) == 150
    assert all(len(ids) == 1 for ids in executed.values())
    refunds = [
        e
        for e in ledger.entries(llm_stack.settings.data_dir)
        if e["run_id"] in runs and e["kind"] == "refund"
    ]
    assert len(refunds) == 50 == len({e["idempotency_key"] for e in refunds})


def _spans_named(stack: Stack, service: str, name: str, trace_id: str, count: int) -> list[dict[str, Any]]:
    """The service's exported spans of that name in the trace, once there are `count`."""
    deadline = time.monotonic() + 30
    while True:
        path = stack.settings.logs_dir / f"traces-{service}.jsonl"
        spans = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        found = [s for s in spans if s["name"] == name and s["context"]["trace_id"] == f"0x{trace_id}"]
        if len(found) >= count or time.monotonic() > deadline:
            assert len(found) == count, found
            return found
        time.sleep(0.2)


def _all_events(stack: Stack, *topics: str) -> list[Event]:
    async def go() -> list[Event]:
        async with Client(stack.settings) as client:
            return [r.event async for r in client.replay(*topics) if r.event is not None]

    return asyncio.run(go())

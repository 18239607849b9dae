"""A planner that proposes anything: random tools, parameters, resources and environments,
tools its agent does not hold, production targets from a staging agent. Published straight to
`actions.proposed`, as a compromised or confused planner would. Whatever it proposes, no tool
may run outside policy, counted at the tool side (the demo tools' own call log)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from charter import tools
from charter.client import Client
from charter.clock import derive_id, new_id
from charter.demo import ledger
from charter.events import Action, ActionApproved, ActionProposed, Event
from tests.e2e.conftest import Stack, broker_env, running

pytestmark = pytest.mark.e2e

GRANTS = {
    "support-refunds": {"lookup_order", "issue_refund", "notify_customer"},
    "it-access": {"grant_access"},
    "it-access-staging": {"grant_access"},
}
HOME = {"support-refunds": "production", "it-access": "production", "it-access-staging": "staging"}
CATALOG = {
    "order/A-1001": "production",
    "customer/cust-1": "production",
    "system/production/wiki": "production",
    "system/staging/wiki": "staging",
    "system/production/payroll-db": "production",
}
TOOLS = tools.load(["charter.demo.tools"])
IT_SYSTEMS = {"wiki", "jira", "payroll-db", "crm", "build"}


@pytest.fixture(scope="module")
def rogue_stack(
    broker: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    # A stack of its own: the flood spends the agents' rate limits, which other tests rely on.
    with running(
        tmp_path_factory.mktemp(f"adversarial-{broker}") / "home", **broker_env(request, broker)
    ) as own:
        yield own


amounts = st.one_of(st.integers(-10, 20_000), st.floats(-1, 10_000, allow_nan=False), st.text(max_size=4))
parameters = st.fixed_dictionaries(
    {},
    optional={
        "order_id": st.sampled_from(["A-1001", "A-1", "Z-1001", "'; drop table"]),
        "amount": amounts,
        "currency": st.sampled_from(["EUR", "eur", "XXXX"]),
        "customer": st.sampled_from(["cust-1", "cust-*", "%", ""]),
        "message": st.sampled_from(["hi", ""]),
        "user": st.sampled_from(["sam", "root", "Robert'); --"]),
        "system": st.sampled_from(["wiki", "payroll-db", "mainframe"]),
        "level": st.sampled_from(["read", "write", "admin", "root"]),
        "target_environment": st.sampled_from(["production", "staging"]),
        "extra": st.integers(),
    },
)


@dataclass(frozen=True)
class Rogue:
    agent: str
    tool: str
    resource: str
    environment: str
    parameters: dict[str, Any]


anything = st.builds(
    Rogue,
    agent=st.sampled_from([*GRANTS, "ghost"]),
    tool=st.sampled_from(
        ["lookup_order", "issue_refund", "notify_customer", "grant_access", "delete_customer"]
    ),
    resource=st.sampled_from([*CATALOG, "warehouse/7"]),
    environment=st.sampled_from(["production", "staging"]),
    parameters=parameters,
)
refunds = st.builds(
    Rogue,
    agent=st.just("support-refunds"),
    tool=st.just("issue_refund"),
    resource=st.sampled_from(["order/A-1001", "customer/cust-1"]),
    environment=st.just("production"),
    parameters=st.fixed_dictionaries(
        {"order_id": st.just("A-1001"), "amount": amounts, "currency": st.just("EUR")}
    ),
)
grants = st.builds(
    Rogue,
    agent=st.sampled_from(["it-access", "it-access-staging"]),
    tool=st.just("grant_access"),
    resource=st.sampled_from(
        ["system/production/wiki", "system/staging/wiki", "system/production/payroll-db"]
    ),
    environment=st.sampled_from(["production", "staging"]),
    parameters=st.fixed_dictionaries(
        {
            "user": st.just("sam"),
            "system": st.sampled_from(["wiki", "payroll-db", "mainframe"]),
            "level": st.sampled_from(["read", "admin"]),
            "target_environment": st.just("production"),
        }
    ),
)
within = st.builds(
    Rogue,
    agent=st.just("support-refunds"),
    tool=st.sampled_from(["lookup_order", "issue_refund"]),
    resource=st.just("order/A-1001"),
    environment=st.just("production"),
    parameters=st.fixed_dictionaries(
        {"order_id": st.just("A-1001"), "amount": st.integers(1, 100), "currency": st.just("EUR")}
    ),
).map(
    lambda r: (
        r
        if r.tool == "issue_refund"
        else Rogue(r.agent, r.tool, r.resource, r.environment, {"order_id": "A-1001"})
    )
)
# Much of the flood is near the mark (a real agent's own tool, its home resources) or within
# policy outright, so that the tool-side count has something to count.
rogues = st.one_of(anything, refunds, grants, within)


def may_run(r: Rogue) -> bool:
    """An oracle written apart from the policy engine: could policy ever let this run unattended?
    Only the parameters' shape is the tools' own (their models are their contract)."""
    if r.tool not in GRANTS.get(r.agent, set()):
        return False
    try:
        TOOLS[r.tool].params.model_validate(r.parameters)
    except ValidationError:
        return False
    if r.environment != HOME[r.agent] or CATALOG.get(r.resource) != HOME[r.agent]:
        return False
    p = r.parameters
    if r.tool == "issue_refund":
        amount = p.get("amount")
        return r.resource.startswith("order/") and type(amount) is int and 0 < amount <= 100
    if r.tool == "grant_access":
        return p.get("level") == "read" and p.get("system") in IT_SYSTEMS
    if r.tool == "notify_customer":
        return "*" not in str(p.get("customer", "")) and "%" not in str(p.get("customer", ""))
    return True


def _proposal(r: Rogue) -> ActionProposed:
    run = f"rogue-{new_id()}"
    action = Action(
        action_id=derive_id(run, "action"), step_index=0, step_id="rogue", tool=r.tool, resource=r.resource,
        parameters=r.parameters, environment=r.environment,
    )  # fmt: skip
    return ActionProposed.create(
        event_id=derive_id(run, "proposed"),
        now=datetime.now(UTC),
        tenant="default",
        agent=r.agent,
        run_id=run,
        correlation_id=run,
        action=action,
    )


async def _flood(stack: Stack, proposals: list[ActionProposed]) -> dict[str, Event]:
    """Publish the proposals; return each one's policy decision once every allowed one has an outcome."""
    wanted = {derive_id(p.event_id, "policy"): p for p in proposals}
    decisions: dict[str, Event] = {}
    outcomes: set[str | None] = set()
    async with Client(stack.settings) as client:
        for proposal in proposals:
            await client.send(proposal)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for topic in ("actions.approved", "approvals.requested", "actions.rejected", "actions.results"):
                async for received in client.replay(topic):
                    event = received.event
                    if event is None:
                        continue
                    if event.event_id in wanted:
                        decisions[wanted[event.event_id].event_id] = event
                    if topic == "actions.results":
                        outcomes.add(event.run_id)
            allowed = {e.run_id for e in decisions.values() if isinstance(e, ActionApproved)}
            if len(decisions) == len(proposals) and allowed <= outcomes:
                return decisions
            await asyncio.sleep(0.5)
    raise AssertionError(f"only {len(decisions)} of {len(proposals)} proposals were decided in time")


# Each example is a live flood of 40 proposals: a few examples, and no shrinking (a failure
# already prints the proposal that ran outside policy).
@settings(
    max_examples=3,
    deadline=None,
    database=None,
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=list(HealthCheck),
)
@given(batch=st.lists(rogues, min_size=40, max_size=40))
def test_no_tool_runs_outside_policy(rogue_stack: Stack, batch: list[Rogue]) -> None:
    proposals = [_proposal(r) for r in batch]
    decisions = asyncio.run(_flood(rogue_stack, proposals))
    assert len(decisions) == len(proposals)
    calls = {c["run_id"] for c in ledger.calls(rogue_stack.settings.data_dir)}
    for rogue, proposal in zip(batch, proposals, strict=True):
        decision = decisions[proposal.event_id]
        if proposal.run_id in calls:
            # Zero executions outside policy: whatever ran, the independent oracle allows.
            assert may_run(rogue), f"a tool ran outside policy: {rogue}"
            assert isinstance(decision, ActionApproved)
        elif may_run(rogue):
            # And nothing legitimate was refused, except by a live limit the flood used up.
            limit = getattr(getattr(decision, "decision", None), "limit", None)
            assert isinstance(decision, ActionApproved) or limit is not None, f"refused: {rogue}: {decision}"
        else:
            assert not isinstance(decision, ActionApproved), f"approved outside policy: {rogue}"
    # The count had something to count: what was within policy ran (unless a limit stopped it).
    assert any(p.run_id in calls for p in proposals) or not any(may_run(r) for r in batch)

"""A planner that proposes anything: random tools, parameters, resources and environments,
tools its agent does not hold, production targets from a staging agent. Published straight to
`actions.proposed`, as a compromised or confused planner would (one holding the planner's key),
and as anyone else who can write to the topic would (unsigned, signed by another key, or signed
and then changed). Whatever it proposes, no tool may run outside policy, and nothing runs that
the planner's key did not sign as it stands: counted at the tool side (the demo tools' own
call log)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from charter import signing, tools
from charter.client import Client
from charter.clock import derive_id, new_id
from charter.demo import ledger
from charter.events import Action, ActionApproved, ActionProposed, DeadLettered, Event
from charter.store import make_engine
from services.audit import store as audit_store
from tests.e2e.conftest import Stack, broker_env, running, wait_for

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


# How a proposal is signed: by the planner's own key (a compromised planner), or forged.
PLANNER, UNSIGNED, STRANGER, TAMPERED = "planner", "unsigned", "stranger", "tampered"
STRANGER_KEY = signing.Signer(Ed25519PrivateKey.generate())


@dataclass(frozen=True)
class Rogue:
    agent: str
    tool: str
    resource: str
    environment: str
    parameters: dict[str, Any]
    signed: str = PLANNER


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
signatures = st.sampled_from([PLANNER, PLANNER, UNSIGNED, STRANGER, TAMPERED])


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


def _proposal(r: Rogue, planner: signing.Signer) -> ActionProposed:
    run = f"rogue-{new_id()}"
    action = Action(
        action_id=derive_id(run, "action"), step_index=0, step_id="rogue", tool=r.tool, resource=r.resource,
        parameters=r.parameters, environment=r.environment,
    )  # fmt: skip
    proposal = ActionProposed.create(
        event_id=derive_id(run, "proposed"),
        now=datetime.now(UTC),
        tenant="default",
        agent=r.agent,
        run_id=run,
        correlation_id=run,
        action=action,
    )
    if r.signed == UNSIGNED:
        return proposal
    if r.signed == STRANGER:
        return STRANGER_KEY.sign(proposal)
    signed = planner.sign(proposal)
    if r.signed == TAMPERED:
        # Signed as a small refund by the planner, then changed on the way.
        return signed.model_copy(update={"action": action.model_copy(update={"parameters": {"amount": 1}})})
    return signed


def _planner(stack: Stack) -> signing.Signer:
    """The planner's own key, as a compromised planner holds it."""
    return signing.Signer.load(stack.settings.keys, "planner")


async def _flood(stack: Stack, proposals: list[ActionProposed]) -> dict[str, Event]:
    """Publish the proposals; return each one's policy decision (or, for a forged one, its dead
    letter) once every allowed one has an outcome."""
    wanted = {derive_id(p.event_id, "policy"): p for p in proposals}
    mine = {p.event_id for p in proposals}
    decisions: dict[str, Event] = {}
    outcomes: set[str | None] = set()
    async with Client(stack.settings) as client:
        for proposal in proposals:
            await client.send(proposal)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            topics = ("actions.approved", "approvals.requested", "actions.rejected", "actions.results")
            for topic in (*topics, "actions.proposed.dlq"):
                async for received in client.replay(topic):
                    event = received.event
                    if event is None:
                        continue
                    if event.event_id in wanted:
                        decisions[wanted[event.event_id].event_id] = event
                    if isinstance(event, DeadLettered) and event.envelope.causation_id in mine:
                        decisions[event.envelope.causation_id or ""] = event
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
@given(batch=st.lists(st.tuples(rogues, signatures), min_size=40, max_size=40))
def test_no_tool_runs_outside_policy(rogue_stack: Stack, batch: list[tuple[Rogue, str]]) -> None:
    rogues = [replace(r, signed=signed) for r, signed in batch]
    planner = _planner(rogue_stack)
    proposals = [_proposal(r, planner) for r in rogues]
    decisions = asyncio.run(_flood(rogue_stack, proposals))
    assert len(decisions) == len(proposals)
    calls = {c["run_id"] for c in ledger.calls(rogue_stack.settings.data_dir)}
    for rogue, proposal in zip(rogues, proposals, strict=True):
        decision = decisions[proposal.event_id]
        if rogue.signed != PLANNER:
            # Forged: never decided, never run; dead-lettered with the reason.
            assert proposal.run_id not in calls, f"a forged proposal ran: {rogue}"
            assert isinstance(decision, DeadLettered), f"a forged proposal was decided: {rogue}: {decision}"
            assert decision.error_type == "ForgedEvent"
        elif proposal.run_id in calls:
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
    genuine = [r for r in rogues if r.signed == PLANNER]
    assert any(p.run_id in calls for p in proposals) or not any(may_run(r) for r in genuine)


def test_a_proposal_put_on_the_topic_directly_within_policy_is_never_run(stack: Stack) -> None:
    rogue = Rogue(
        "support-refunds",
        "issue_refund",
        "order/A-1001",
        "production",
        {"order_id": "A-1001", "amount": 10, "currency": "EUR"},
        UNSIGNED,
    )
    assert may_run(rogue)  # policy would allow it, were it the planner's
    proposal = _proposal(rogue, _planner(stack))

    async def send() -> None:
        async with Client(stack.settings) as client:
            await client.send(proposal)

    asyncio.run(send())
    dead = wait_for(
        stack,
        lambda e: isinstance(e, DeadLettered) and e.envelope.causation_id == proposal.event_id,
        "actions.proposed.dlq",
    )
    assert isinstance(dead, DeadLettered)
    assert dead.error_type == "ForgedEvent"
    assert "is not signed" in dead.reason
    assert dead.service == "policy"
    # The audit records the attempt, under the run id it claimed, but it makes no run.
    engine = make_engine(stack.settings.database_url_for("audit"))
    deadline = time.monotonic() + 30
    try:
        while True:
            with engine.connect() as conn:
                recorded = [r.event_type for r in audit_store.timeline(conn, proposal.run_id or "")]
            # Two topics: the audit may read the letter before the proposal.
            if len(recorded) >= 2 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        engine.dispose()
    assert sorted(recorded) == ["ActionProposed", "DeadLettered"]
    assert (proposal.run_id or "")[:12] not in stack.cli("runs").stdout
    assert proposal.run_id not in {c["run_id"] for c in ledger.calls(stack.settings.data_dir)}

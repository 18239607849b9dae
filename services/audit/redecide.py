"""`charter audit replay-decisions`: recorded history fed back through the planner's and policy's
`decide` functions, to prove they give the outputs the log holds.

Policy decides each recorded proposal (and each human-approved action it decided again) under the
policy version its recorded decision names, rebuilt from the files the `PolicyReloaded` event of
that version carries, with the kill switches and limit counters as the log shows them at the
time. The planner takes each trigger, step outcome and kill switch in log order. Each output is
compared with the recorded event of the same id (ids derive from their causes), leaving out what
a replay cannot reproduce: the time and the policy's signature. Every difference is reported
with the event that caused it.

Agent definitions are not versioned in the log: the planner and policy use the agents as
configured now, so a divergence can also mean an agent's file changed since.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from charter.agents import Agent
from charter.clock import as_utc, derive_id
from charter.events import (
    ActionApproved,
    ActionExecuted,
    ActionFailed,
    ActionProposed,
    ActionRejected,
    Event,
    KillSwitchSet,
    PolicyReloaded,
    RunStarted,
    ToolUnavailable,
    TriggerReceived,
)
from charter.killswitch import KillSwitch
from charter.signing import Verifier
from charter.tools import ToolSpec
from services.planner import decide as planner
from services.policy.bundle import PolicyBundle
from services.policy.decide import Context, decide, revalidate
from services.policy.limits import Usage

UNCOMPARED = ("signature",)
PLANNER_OUTPUTS = (
    "RunStarted",
    "ActionProposed",
    "RunCompleted",
    "RunFailed",
    "RunCancelled",
    "RunEscalated",
)


@dataclass(frozen=True)
class Divergence:
    cause: str  # the event fed in: type and id
    decider: str  # planner | policy
    difference: str


@dataclass
class Replayed:
    inputs: int = 0
    outputs: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not self.divergences

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


def _comparable(event: Event) -> dict[str, Any]:
    dumped = event.model_dump(mode="json", exclude=set(UNCOMPARED))
    dumped["envelope"].pop("occurred_at", None)
    return dumped


def _differences(ours: Any, theirs: Any, path: str = "") -> list[str]:
    if isinstance(ours, dict) and isinstance(theirs, dict):
        out = []
        for key in sorted(ours.keys() | theirs.keys()):
            out += _differences(ours.get(key), theirs.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if ours == theirs else [f"{path}: replayed {ours!r}, recorded {theirs!r}"]


class Replayer:
    def __init__(
        self,
        recorded: Mapping[str, Event],
        agents: Mapping[str, Agent],
        tools: Mapping[str, ToolSpec],
        approvals_key: Verifier | None,
    ) -> None:
        self._recorded = recorded
        self._by_cause: dict[str, list[Event]] = {}
        for event in recorded.values():
            if event.envelope.causation_id and event.envelope.event_type in PLANNER_OUTPUTS:
                self._by_cause.setdefault(event.envelope.causation_id, []).append(event)
        self._agents = agents
        self._tools = tools
        self._approvals_key = approvals_key
        self._bundles: dict[str, PolicyBundle] = {}
        self._switches: dict[str, KillSwitch] = {}
        self._usage = Usage()
        self._used: set[str] = set()
        self._runs: dict[str, planner.RunState] = {}
        self.result = Replayed()
        # Runs (and their triggers) whose outputs are compared; None: all. The rest of the log
        # is still decided, so state and limit counters are what they were at the time.
        self.only: set[str | None] | None = None

    def know(self, bundle: PolicyBundle) -> None:
        """A policy version from elsewhere than the log (the policy directory as it is now): the
        base set and each tenant's, each under its own hash, as the log's decisions name them
        (the base alone must not decide a tenant by the set that tenant has now)."""
        for one in [replace(bundle, tenants={}), *bundle.tenants.values()]:
            self._bundles.setdefault(one.hash, one)

    def feed(self, event: Event) -> None:
        match event:
            case PolicyReloaded():
                self._policy_version(event)
            case KillSwitchSet():
                self._switch(event)
            case TriggerReceived():
                self._planner(event, lambda now: [o for t in self._started(event, now) for o in t.outputs])
            case ActionProposed():
                self._policy_on_proposal(event)
            case ActionApproved() if not event.executable:
                self._policy_on_approval(event)
            case ActionExecuted() | ActionFailed() | ActionRejected() | ToolUnavailable():
                self._on_outcome(event)

    def _policy_version(self, event: PolicyReloaded) -> None:
        if not event.sources:
            return
        bundle = PolicyBundle.of(dict(event.sources))
        if bundle.hash != event.policy_hash:
            self.result.skip("policy versions whose recorded files do not hash to their recorded hash")
            return
        self._bundles[bundle.hash] = bundle

    def _relevant(self, cause: Event) -> bool:
        return self.only is None or cause.run_id in self.only or cause.event_id in self.only

    # The planner's side.

    def _started(self, trigger: TriggerReceived, now: datetime) -> list[planner.Transition]:
        transitions = planner.on_trigger(trigger, self._agents, self._runs.keys(), now)
        for t in transitions:
            self._runs[t.state.run_id] = t.state
        return transitions

    def _on_outcome(self, outcome: ActionExecuted | ActionFailed | ActionRejected | ToolUnavailable) -> None:
        state = self._runs.get(outcome.run_id or "")
        if state is None:
            self.result.skip("outcomes of runs started before the replayed range")
            return

        def step(now: datetime) -> list[Event]:
            transition = planner.on_outcome(outcome, state, now)
            if transition is None:
                return []
            self._runs[state.run_id] = transition.state
            return transition.outputs

        self._planner(outcome, step)

    def _switch(self, switch: KillSwitchSet) -> None:
        if switch.active:
            self._switches[switch.switch_id] = KillSwitch(
                switch.switch_id,
                switch.scope_agent,
                switch.scope_tool,
                switch.reason,
                switch.set_by,
                switch.envelope.occurred_at,
            )
        else:
            self._switches.pop(switch.switch_id, None)

        def cancel(now: datetime) -> list[Event]:
            running = [s for s in self._runs.values() if s.status == "running"]
            outputs = []
            for t in planner.on_kill_switch(switch, running, now):
                self._runs[t.state.run_id] = t.state
                outputs += t.outputs
            return outputs

        self._planner(switch, cancel)

    def _planner(self, cause: Event, decide_at: Callable[[datetime], list[Event]]) -> None:
        outputs = decide_at(cause.envelope.occurred_at)
        if not self._relevant(cause):
            return
        self.result.inputs += 1
        self._compare("planner", cause, outputs)
        produced = {o.event_id for o in outputs}
        for recorded in self._by_cause.get(cause.event_id, []):
            if recorded.event_id not in produced:
                self.result.divergences.append(
                    Divergence(
                        f"{cause.envelope.event_type} {cause.event_id}",
                        "planner",
                        f"the log holds {recorded.envelope.event_type} {recorded.event_id}, "
                        "which the replay does not emit",
                    )
                )

    # Policy's side.

    def _context(self, policy_hash: str, cause: Event) -> Context | None:
        bundle = self._bundles.get(policy_hash)
        if bundle is None:
            self.result.skip("decisions under a policy version whose files are not in the log")
            return None
        return Context(bundle, self._agents, self._tools, list(self._switches.values()), self._approvals_key)

    def _recorded_decision(self, cause: Event, label: str, what: str) -> tuple[Context, datetime] | None:
        """The context of the decision the log records on `cause` (under its policy version),
        and when it was made; None (counted) when there is none to replay."""
        recorded = self._recorded.get(derive_id(cause.event_id, label))
        decision = getattr(recorded, "decision", None)
        if recorded is None or decision is None:
            self.result.skip(f"{what} with no recorded decision")
            return None
        ctx = self._context(decision.policy_hash, cause)
        return (ctx, recorded.envelope.occurred_at) if ctx is not None else None

    def _policy_on_proposal(self, proposed: ActionProposed) -> None:
        found = self._recorded_decision(proposed, "policy", "proposals")
        if found is None:
            return
        ctx, at = found
        outputs = decide(proposed, ctx, self._usage, at)
        if self._relevant(proposed):
            self.result.inputs += 1
            self._compare("policy", proposed, outputs)

    def _policy_on_approval(self, approved: ActionApproved) -> None:
        found = self._recorded_decision(approved, "revalidated", "approved actions")
        if found is None:
            return
        ctx, at = found
        approval = approved.approval_id or ""
        outputs = revalidate(approved, ctx, at, used=approval in self._used)
        if approval and any(isinstance(o, ActionApproved) for o in outputs):
            self._used.add(approval)
        if self._relevant(approved):
            self.result.inputs += 1
            self._compare("policy", approved, outputs)

    # Both.

    def _compare(self, decider: str, cause: Event, outputs: Iterable[Event]) -> None:
        where = f"{cause.envelope.event_type} {cause.event_id}"
        for output in outputs:
            self.result.outputs += 1
            recorded = self._recorded.get(output.event_id)
            if recorded is None:
                self.result.divergences.append(
                    Divergence(
                        where,
                        decider,
                        f"replay emits {output.envelope.event_type} {output.event_id}, "
                        "which the log does not hold",
                    )
                )
                continue
            for difference in _differences(_comparable(output), _comparable(recorded)):
                self.result.divergences.append(
                    Divergence(
                        where, decider, f"{output.envelope.event_type} {output.event_id}: {difference}"
                    )
                )


def replay(
    events: list[Event],
    agents: Mapping[str, Agent],
    tools: Mapping[str, ToolSpec],
    approvals_key: Verifier | None,
    *,
    run_id: str | None = None,
    known: Iterable[PolicyBundle] = (),
) -> Replayed:
    """Replay `events` (in log order) through the planner and policy and compare with the log;
    with `run_id`, only that run (from its trigger), the rest of the log still the reference."""
    replayer = Replayer({e.event_id: e for e in events}, agents, tools, approvals_key)
    for bundle in known:
        replayer.know(bundle)
    if run_id:
        triggers = {e.trigger_event_id for e in events if isinstance(e, RunStarted) and e.run_id == run_id}
        replayer.only = {run_id, *triggers}
    # In the order things happened: the log's order is arrival order, across topics.
    for event in sorted(events, key=lambda e: as_utc(e.envelope.occurred_at)):
        replayer.feed(event)
    return replayer.result

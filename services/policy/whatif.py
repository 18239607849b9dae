"""`charter policy what-if`: every proposed action in the audit log, decided again by a
candidate policy directory (each by its tenant's set there), compared with what the running
policy decided at the time.

Live limits are not replayed (they depend on what else was happening): an action a limit
denied is reported as such and compared on policy alone.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime

from charter import serde
from charter.clock import derive_id
from charter.errors import InvalidMessage
from charter.events import ActionProposed, Decision, Event
from services.policy.decide import Context, decide
from services.policy.limits import Usage


@dataclass(frozen=True)
class Change:
    proposal_id: str
    run_id: str | None
    agent: str | None
    tool: str
    resource: str
    before: str
    after: str
    before_policies: list[str]
    after_policies: list[str]
    after_reasons: list[str]


@dataclass(frozen=True)
class Report:
    replayed: int
    unchanged: int
    changes: list[Change]
    limited: int

    def transitions(self) -> Counter[tuple[str, str]]:
        return Counter((c.before, c.after) for c in self.changes)

    def as_json(self) -> dict[str, object]:
        return {
            "replayed": self.replayed,
            "unchanged": self.unchanged,
            "denied_by_live_limits_at_the_time": self.limited,
            "transitions": {f"{a} -> {b}": n for (a, b), n in sorted(self.transitions().items())},
            "changes": [asdict(c) for c in self.changes],
        }


def _decoded(values: Iterable[bytes]) -> Iterator[Event]:
    for value in values:
        try:
            yield serde.decode(value)
        except InvalidMessage:
            continue


def what_if(values: Iterable[bytes], candidate: Context, now: datetime) -> Report:
    proposals: list[ActionProposed] = []
    decisions: dict[str, Decision] = {}
    for event in _decoded(values):
        if isinstance(event, ActionProposed):
            proposals.append(event)
        decision = getattr(event, "decision", None)
        if isinstance(decision, Decision):
            # Looked up below by the id the policy gives its own decision on a proposal.
            decisions[event.event_id] = decision
    changes: list[Change] = []
    unchanged = limited = 0
    for proposal in proposals:
        before = decisions.get(derive_id(proposal.event_id, "policy"))
        if before is None:
            continue  # never decided (the policy service had not got to it yet)
        if before.limit is not None:
            limited += 1
        [out] = decide(proposal, candidate, Usage(), now)
        after: Decision = out.decision  # type: ignore[attr-defined]
        if after.outcome == before.outcome or before.limit is not None:
            unchanged += 1
            continue
        action = proposal.action
        changes.append(
            Change(
                proposal.event_id,
                proposal.run_id,
                proposal.envelope.agent,
                action.tool,
                action.resource,
                before.outcome,
                after.outcome,
                before.policy_ids,
                after.policy_ids,
                after.reasons,
            )
        )
    return Report(len(proposals), unchanged, changes, limited)

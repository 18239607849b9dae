"""What the planner counts: runs started and ended, how long runs and steps took, what runs cost,
and humans stepping in. Figures of this process since it started; the events remain the record.

Start times are remembered in memory, bounded, so a run started before a restart ends uncounted
in the latency histograms (still counted by outcome).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime

from charter import metrics
from charter.events import (
    ActionExecuted,
    ActionFailed,
    ActionProposed,
    ActionRejected,
    Event,
    RunCancelled,
    RunCompleted,
    RunEscalated,
    RunFailed,
    RunInstructed,
    RunStarted,
    ToolUnavailable,
)

REMEMBERED = 100_000
_OUTCOMES: dict[type[Event], str] = {
    RunCompleted: "completed",
    RunFailed: "failed",
    RunCancelled: "cancelled",
    RunEscalated: "escalated",
}


class _Times:
    def __init__(self) -> None:
        self._at: OrderedDict[str, datetime] = OrderedDict()

    def put(self, key: str, at: datetime) -> None:
        self._at[key] = at
        if len(self._at) > REMEMBERED:
            self._at.popitem(last=False)

    def since(self, key: str, now: datetime, *, forget: bool = True) -> float | None:
        at = self._at.pop(key, None) if forget else self._at.get(key)
        return None if at is None else max(0.0, (now - at).total_seconds())


class Measure:
    def __init__(self) -> None:
        self._runs = _Times()
        self._steps = _Times()

    def observe(self, event: Event, outputs: Sequence[Event]) -> None:
        """Called once per input decided and written (not for a redelivered duplicate)."""
        self._input(event)
        for out in outputs:
            self._output(out)

    def _input(self, event: Event) -> None:
        match event:
            case ActionExecuted() | ActionFailed() | ActionRejected() | ToolUnavailable():
                took = self._steps.since(event.action.action_id, event.envelope.occurred_at)
                if took is not None:
                    metrics.step_seconds.labels(event.envelope.agent or "", event.action.tool).observe(took)
            case RunInstructed():
                metrics.human_interventions.labels(event.command).inc()

    def _output(self, out: Event) -> None:
        agent = out.envelope.agent or ""
        match out:
            case RunStarted():
                metrics.runs_started.labels(agent).inc()
                self._runs.put(out.run_id or "", out.envelope.occurred_at)
            case ActionProposed():
                self._steps.put(out.action.action_id, out.envelope.occurred_at)
            case RunCompleted() | RunFailed() | RunCancelled() | RunEscalated():
                outcome = _OUTCOMES[type(out)]
                metrics.runs_ended.labels(agent, outcome).inc()
                # An escalated run may be resumed and end again: keep its start.
                took = self._runs.since(
                    out.run_id or "", out.envelope.occurred_at, forget=outcome != "escalated"
                )
                if took is not None:
                    metrics.run_seconds.labels(agent, outcome).observe(took)
                if isinstance(out, RunCompleted | RunEscalated):
                    metrics.run_cost.labels(agent).observe(out.llm_cost)
                    metrics.run_tokens.labels(agent).inc(out.llm_tokens)

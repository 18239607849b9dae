"""Which agents a business event starts: the planner's rule, and the same answer told to whoever
publishes the event (`charter publish`, `POST /v1/events`), so that nothing is accepted in silence.

An agent is triggered by an event when one of its trigger rules names the event and that rule's
`when` holds over the event's data. A `when` that cannot be evaluated (a field of the wrong type,
a field missing) is not a "no": the planner dead-letters the trigger with the reason rather than
guess, so it is told here too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charter import agents as agent_files
from charter.agents import Agent
from charter.clock import derive_id
from charter.errors import ConfigError
from charter.templating import TemplateFailure, evaluate
from charter.watch import DirectoryWatcher

log = logging.getLogger(__name__)


def run_of(trigger_event_id: str, agent_id: str) -> str:
    """The id of the run a trigger starts for an agent: the same trigger never starts it twice."""
    return derive_id(trigger_event_id, f"run:{agent_id}")


@dataclass(frozen=True)
class Unevaluable:
    """An agent's trigger filter that the event's data cannot be evaluated against."""

    agent: str
    when: str
    error: str

    def __str__(self) -> str:
        return f"agent {self.agent}: filter {self.when!r} cannot be evaluated: {self.error}"


@dataclass(frozen=True)
class Matched:
    """The agents an event starts, and the filters it could not be checked against."""

    agents: list[Agent]
    unevaluable: list[Unevaluable]


def _holds(agent: Agent, name: str, data: Mapping[str, Any]) -> tuple[bool, list[Unevaluable]]:
    failed: list[Unevaluable] = []
    for rule in agent.triggers:
        if rule.event != name:
            continue
        if rule.when is None:
            return True, []
        try:
            if evaluate(rule.when, {"trigger": data}):
                return True, []
        except TemplateFailure as exc:
            failed.append(Unevaluable(agent.id, rule.when, str(exc.__cause__ or exc)))
    return False, failed


def matched(agents: Mapping[str, Agent], name: str, data: Mapping[str, Any]) -> Matched:
    """The agents, by id, that an event named `name` with `data` starts. An agent one of whose
    rules holds is started even if another of its rules cannot be evaluated: that rule's answer
    would not change the agent's."""
    started: list[Agent] = []
    unevaluable: list[Unevaluable] = []
    for agent in sorted(agents.values(), key=lambda a: a.id):
        holds, failed = _holds(agent, name, data)
        if holds:
            started.append(agent)
        else:
            unevaluable += failed
    return Matched(started, unevaluable)


@dataclass(frozen=True)
class Forecast:
    """What publishing an event will set going, told before the planner has seen it. `error`:
    the agents could not be read here, so nothing is known."""

    name: str
    starts: list[tuple[str, str]]  # agent id, run id
    unevaluable: list[Unevaluable]
    awaited_by: list[str]  # agents with a wait step for this event: a waiting run may go on
    listening: list[str]  # agents with a trigger rule for this event name, whatever its filter
    error: str | None = None

    def lines(self, dlq_topic: str) -> list[str]:
        """The forecast in plain words, one line each."""
        if self.error is not None:
            return [f'cannot tell which agents "{self.name}" starts: {self.error}']
        if self.unevaluable:
            reasons = "; ".join(str(u) for u in self.unevaluable)
            return [f"no agent will run: the planner will dead-letter it to {dlq_topic}: {reasons}"]
        if self.starts:
            return ["starts: " + ", ".join(f"{agent} (run {run})" for agent, run in self.starts)]
        quoted = f'"{self.name}"'
        if self.listening:
            said = f"no agent's filter holds for this {quoted} ({', '.join(self.listening)} listen for it)"
        else:
            said = f"no agent is triggered by {quoted}"
        if self.awaited_by:
            return [f"{said}; runs of {', '.join(self.awaited_by)} waiting for it may go on"]
        return [f"{said} — nothing will run"]


def forecast(agents: Mapping[str, Agent], name: str, data: Mapping[str, Any], event_id: str) -> Forecast:
    found = matched(agents, name, data)
    ordered = sorted(agents.values(), key=lambda a: a.id)
    return Forecast(
        name=name,
        # A trigger that cannot be evaluated for one agent starts no agent at all (the planner
        # dead-letters it whole), so none is named as started.
        starts=[] if found.unevaluable else [(a.id, run_of(event_id, a.id)) for a in found.agents],
        unevaluable=found.unevaluable,
        awaited_by=[a.id for a in ordered if any(s.wait and s.wait.event == name for s in a.steps)],
        listening=[a.id for a in ordered if any(r.event == name for r in a.triggers)],
    )


class Roster:
    """The agents in a directory, read again when its files change: what a publisher checks an
    event against. A directory that cannot be read is reported, never raised: publishing goes on."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._watcher = DirectoryWatcher(directory, ("*.yaml", "*.yml"))
        self._agents: Mapping[str, Agent] | None = None
        self._error: str | None = None

    def current(self) -> tuple[Mapping[str, Agent], str | None]:
        """The agents, and why they could not be read (then none)."""
        if self._watcher.changed() or (self._agents is None and self._error is None):
            try:
                # No tool registry: which agents an event starts depends on their triggers only.
                self._agents, self._error = agent_files.load(self._directory), None
            except (ConfigError, OSError) as exc:  # a file removed or unreadable mid-read
                self._agents, self._error = None, str(exc)
        return self._agents or {}, self._error

    def forecast(self, name: str, data: Mapping[str, Any], event_id: str) -> Forecast:
        agents, error = self.current()
        if error is not None:
            return Forecast(name, [], [], [], [], error=error)
        return forecast(agents, name, data, event_id)


def describe(unevaluable: Sequence[Unevaluable]) -> str:
    """The reason a trigger is dead-lettered with: agent and filter first, so that a listing
    cut to width still names them (the letter's key and causation id name the trigger)."""
    return "; ".join(str(u) for u in unevaluable)

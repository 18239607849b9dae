"""A circuit breaker per tool (or model server), so a system that is down is left alone rather
than hammered.

Closed: calls go through; `failures` transient failures in a row open it. Open: calls are
refused until `cooldown_s` has passed. Half-open: one probe call goes through; its success
closes the circuit, its failure opens it again for another cooldown. Each replica keeps its own
circuits: they protect the tool (the executor's) or the model server (the planner's) from this
process's calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half_open"]


@dataclass
class Circuit:
    failures: int = 0
    opened_at: float | None = None
    probing: bool = False


@dataclass(frozen=True)
class Refusal:
    tool: str
    failures: int
    retry_after_s: float


class Breakers:
    def __init__(self, failures: int, cooldown_s: float) -> None:
        self._threshold = failures
        self._cooldown_s = cooldown_s
        self._circuits: dict[str, Circuit] = {}

    def state(self, tool: str, now: float) -> State:
        circuit = self._circuits.get(tool)
        if circuit is None or circuit.opened_at is None:
            return "closed"
        return "open" if now - circuit.opened_at < self._cooldown_s or circuit.probing else "half_open"

    def admit(self, tool: str, now: float) -> Refusal | None:
        """None if a call may go ahead; otherwise why not, and for how long."""
        circuit = self._circuits.setdefault(tool, Circuit())
        match self.state(tool, now):
            case "closed":
                return None
            case "half_open":
                circuit.probing = True
                return None
            case _:
                assert circuit.opened_at is not None
                wait = max(0.0, self._cooldown_s - (now - circuit.opened_at))
                return Refusal(tool, circuit.failures, round(wait, 3))

    def succeeded(self, tool: str) -> None:
        """The tool answered, even if to refuse the call: it is up."""
        self._circuits[tool] = Circuit()

    def failed(self, tool: str, now: float) -> None:
        """A transient failure: the tool did not answer, or answered that it is unwell."""
        circuit = self._circuits.setdefault(tool, Circuit())
        circuit.failures += 1
        if circuit.probing or circuit.failures >= self._threshold:
            circuit.opened_at, circuit.probing = now, False

    def release(self, tool: str) -> None:
        """A probe that ended without a verdict (or any call, harmlessly) gives its slot back."""
        circuit = self._circuits.get(tool)
        if circuit is not None:
            circuit.probing = False

"""The data subject a payload names: the first of CHARTER_SUBJECT_FIELDS found, at any depth.

The planner names the subject of each run it starts (RunStarted.subject) from its trigger, and
the audit seals the run's personal data under that subject's key. The run carries it because
the audit may read a run's RunStarted before the trigger that started it: they are on
different topics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any


def field_names(text: str) -> tuple[str, ...]:
    """The names of a comma-separated setting such as CHARTER_SUBJECT_FIELDS."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def objects(payloads: Sequence[Any]) -> Iterator[dict[str, Any]]:
    """Every object inside the payloads, the payloads first, shallower before deeper."""
    queue: list[Any] = list(payloads)
    for item in queue:  # grows as it is read: breadth first
        if isinstance(item, dict):
            yield item
            queue.extend(item.values())
        elif isinstance(item, list):
            queue.extend(item)


def named(payloads: Sequence[Any], fields: Sequence[str]) -> str | None:
    """The data subject the payloads name, wherever it nests: the first subject field wins,
    and of its occurrences the shallowest (a run's outputs hold each step's result)."""
    found = list(objects(payloads))
    for name in fields:
        for obj in found:
            value = obj.get(name)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
                return str(value)
    return None

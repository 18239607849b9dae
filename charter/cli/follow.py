"""`charter publish --wait`: follow the runs an event started, through the API, to their ends.

A run is read from the audit's view of it, so it appears once the audit has recorded its first
event (until then the API answers 404, and the follower keeps asking). A run ends completed,
failed, cancelled or escalated; one awaiting a person is said once, with the approval to decide,
and followed on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from charter.api_client import ApiCallFailed, ApiClient

ENDED = ("completed", "failed", "cancelled", "escalated")
POLL_S = 0.25


class StillRunning(Exception):
    def __init__(self, running: Sequence[str]) -> None:
        super().__init__(", ".join(r[:8] for r in running))
        self.running = list(running)


def follow(
    api: ApiClient,
    run_ids: Sequence[str],
    timeout_s: float,
    said: Callable[[dict[str, Any]], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, dict[str, Any]]:
    """Each run's summary once it has ended; `said` hears every change of a run's status.
    Raises StillRunning with the runs not ended when `timeout_s` passes."""
    deadline = clock() + timeout_s
    last: dict[str, tuple[str, str]] = {}
    ended: dict[str, dict[str, Any]] = {}
    while True:
        for run_id in run_ids:
            if run_id in ended:
                continue
            summary = _summary(api, run_id)
            if summary is None:
                continue
            seen = (summary["status"], summary["last"])
            if last.get(run_id) != seen:
                last[run_id] = seen
                said(summary)
            if summary["status"] in ENDED:
                ended[run_id] = summary
        if len(ended) == len(run_ids):
            return ended
        if clock() >= deadline:
            raise StillRunning([r for r in run_ids if r not in ended])
        sleep(POLL_S)


def _summary(api: ApiClient, run_id: str) -> dict[str, Any] | None:
    try:
        return dict(api.get(f"/v1/runs/{run_id}")["run"])
    except ApiCallFailed as exc:
        if exc.status == 404:  # not recorded by the audit yet
            return None
        raise

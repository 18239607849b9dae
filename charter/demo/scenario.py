"""What `charter up --demo` shows: five business events, and how each run they start ends.

A small refund runs unattended; a large one waits for finance, and the demo approves it the
way a person would with `charter approvals approve`: through the HTTP API, with a token issued
to dana of finance; a refund over the limit and production admin access are denied by policy;
read access is granted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from charter import events as ev
from charter.api_client import ApiCallFailed, ApiClient
from charter.client import Client
from charter.describe import describe

DEMO_APPROVER = "dana"

EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("support.refund_requested", {"order_id": "A-1001", "amount": 40, "reason": "arrived damaged"}),
    ("support.refund_requested", {"order_id": "A-1002", "amount": 2500, "reason": "charged twice"}),
    ("support.refund_requested", {"order_id": "A-1003", "amount": 9000, "reason": "bulk return"}),
    ("it.access_requested", {"user": "sam", "system": "wiki", "level": "read", "environment": "production"}),
    (
        "it.access_requested",
        {"user": "sam", "system": "payroll-db", "level": "admin", "environment": "production"},
    ),
]


@dataclass
class RunOutcome:
    run_id: str
    agent: str
    trigger: str
    triggered_at: datetime
    ended_at: datetime | None = None
    outcome: str = "running"
    detail: str = ""
    approvals: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float | None:
        """From the business event to the run's end, by the events' own clocks."""
        return None if self.ended_at is None else (self.ended_at - self.triggered_at).total_seconds()


async def run(
    client: Client,
    api: ApiClient,
    say: Callable[[str], None],
    timeout_s: float = 60.0,
    *,
    publisher: ApiClient,
) -> list[RunOutcome]:
    """Publish the business events through the API as the operator (`publisher`'s token), so
    the runs name a proven submitter; follow them, approving as `api`'s approver."""
    since = datetime.now(UTC)
    triggers: dict[str, tuple[str, datetime]] = {}
    for name, data in EVENTS:
        body = {"name": name, "data": data, "source": "demo"}
        at = datetime.now(UTC)
        accepted = await asyncio.to_thread(publisher.post, "/v1/events", body)
        shown = json.dumps(data, separators=(",", ":"), sort_keys=True)
        triggers[accepted["event_id"]] = (f"{name} from demo, by {accepted['submitted_by']} {shown}", at)
    say(f"published {len(EVENTS)} business events")
    runs: dict[str, RunOutcome] = {}
    try:
        async with (
            asyncio.timeout(timeout_s),
            aclosing(client.subscribe("runs", "approvals.requested", since=since)) as events,
        ):
            async for received in events:
                event = received.event
                if isinstance(event, ev.RunStarted) and event.trigger_event_id in triggers:
                    text, at = triggers[event.trigger_event_id]
                    run_id = event.envelope.run_id or ""
                    runs[run_id] = RunOutcome(run_id, event.envelope.agent or "", text, at)
                elif event is not None and event.run_id in runs:
                    await _follow(api, runs[event.run_id], event, say)
                if len(runs) == len(EVENTS) and all(r.ended_at is not None for r in runs.values()):
                    break
    except TimeoutError:
        say(f"gave up waiting after {timeout_s:.0f}s; runs still open are shown as running")
    return list(runs.values())


async def _recorded(api: ApiClient, approval_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """The approval as the API shows it, once the approvals service has recorded it."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                return await asyncio.to_thread(api.approval, approval_id)
            except ApiCallFailed as exc:
                if exc.status != 404:
                    raise
            await asyncio.sleep(0.02)


async def _follow(api: ApiClient, outcome: RunOutcome, event: ev.Event, say: Callable[[str], None]) -> None:
    if isinstance(event, ev.ApprovalRequested):
        outcome.approvals.append(event.approval_id)
        say(f"run {outcome.run_id[:8]}: {describe(event)}")
        # A person approves what `charter approvals show` displays, bound to its action hash.
        shown = (await _recorded(api, event.approval_id))["approval"]
        say(f"run {outcome.run_id[:8]}: {DEMO_APPROVER} approves it through the API, as CLI and console do")
        await asyncio.to_thread(api.approve, event.approval_id, shown["action_hash"], "demo")
    elif isinstance(event, ev.RunCompleted | ev.RunFailed):
        outcome.ended_at = event.envelope.occurred_at
        outcome.outcome = "completed" if isinstance(event, ev.RunCompleted) else "failed"
        outcome.detail = describe(event)

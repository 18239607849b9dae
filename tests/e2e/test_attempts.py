"""Attempts are attempts, on the real stack: an approval refused for a missing role, a second
approval after the first (409), and a forged one put on `approvals.decided` around the API are
each shown as a refused attempt, never as granted: in `charter run show`, GET /v1/runs/{id},
`charter runs`' last event, the console, and the audit's recorded outcome."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from charter.client import Client
from charter.clock import new_id
from charter.events import ApprovalGranted, DeadLettered, Event, RunCompleted
from tests.e2e.conftest import Stack, wait_approval, wait_for, wait_run_end
from tests.e2e.test_approvals import approve, call, error_of, publish_as

pytestmark = pytest.mark.e2e
READER = "ada"  # an auditor: reads runs and the audit log, decides nothing


async def _send(stack: Stack, event: Event) -> None:
    async with Client(stack.settings) as client:
        await client.send(event)


def _detail(stack: Stack, run: str) -> dict[str, Any]:
    response = call(stack, READER, "GET", f"/v1/runs/{run}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def _settled(stack: Stack, run: str, attempts: int, timeout: float = 30) -> dict[str, Any]:
    """The run as the API shows it once the audit has recorded all `attempts` refusals."""
    deadline = time.monotonic() + timeout
    while True:
        detail = _detail(stack, run)
        texts = [t["text"] for t in detail["timeline"]]
        if sum(t.startswith("refused attempt") for t in texts) >= attempts:
            return detail
        assert time.monotonic() < deadline, "\n".join(texts)
        time.sleep(0.2)


def test_refused_and_forged_approvals_are_shown_as_refused_attempts(stack: Stack) -> None:
    run = publish_as(stack, "noor", "T-4001", 2400)
    request = wait_approval(stack, run)
    binding = request.action_hash
    assert binding
    assert error_of(approve(stack, "priya", request.approval_id, binding)) == (403, "wrong_role")
    assert approve(stack, "dana", request.approval_id, binding).status_code == 200
    assert error_of(approve(stack, "lee", request.approval_id, binding)) == (409, "not_pending")
    assert isinstance(wait_run_end(stack, run), RunCompleted)

    # Forged after the run ended, so that, unless it is told as refused, the run's last event
    # would read as mallory's grant.
    forged = ApprovalGranted.create(
        event_id=new_id(),
        now=datetime.now(UTC),
        tenant=stack.settings.tenant,
        run_id=run,
        correlation_id=request.approval_id,
        approval_id=request.approval_id,
        approver="mallory",
        action_hash=binding,
        approver_roles=["finance"],
    )
    asyncio.run(_send(stack, forged))
    wait_for(
        stack,
        lambda e: isinstance(e, DeadLettered) and e.envelope.causation_id == forged.event_id,
        "approvals.decided.dlq",
    )
    short = request.approval_id[:8]
    granted = f"approval {short} granted by dana"

    # The API, which the CLI and the console read too.
    detail = _settled(stack, run, 3)
    texts = [t["text"] for t in detail["timeline"]]
    assert [t for t in texts if "granted by" in t] == [granted]
    refused = [t for t in detail["timeline"] if t["text"].startswith("refused attempt")]
    assert [(t["event_type"], t["text"]) for t in refused] == [
        (
            "ApprovalRefused",
            f"refused attempt: priya's approval of approval {short} — "
            "priya does not hold the role policy named (finance)",
        ),
        (
            "ApprovalRefused",
            f"refused attempt: lee's approval of approval {short} — approval {short} is already approved",
        ),
        (
            "DeadLettered",
            f"refused attempt: an approval of approval {short} claiming to be by mallory — forged: "
            f"ApprovalGranted {forged.event_id} is not signed by the approvals service: "
            "decisions are taken only through its authenticated API",
        ),
    ]
    assert not any(
        t["event_type"] == "ApprovalGranted" and "mallory" in t["text"] for t in detail["timeline"]
    )
    assert (detail["run"]["status"], detail["run"]["last"]) == ("completed", refused[-1]["text"])
    [listed] = [r for r in call(stack, READER, "GET", "/v1/runs").json()["runs"] if r["run_id"] == run]
    assert listed["last"] == refused[-1]["text"]

    # The CLI, through the API with a token.
    shown = stack.as_user("root", "run", "show", run).stdout
    [only] = [line for line in shown.splitlines() if "granted by" in line]
    assert only.endswith(granted)
    assert shown.count("refused attempt:") == 3
    assert "status completed" in shown

    # The console.
    console = httpx.Client(
        base_url=stack.api_url, cookies={"charter_session": stack.token(READER)}, timeout=30
    )
    with console:
        page = console.get(f"/console/runs/{run}")
        runs = console.get("/console/runs")
    assert page.status_code == 200, page.text
    assert page.text.count("granted by") == 1
    assert granted in page.text
    assert page.text.count("refused attempt:") == 4  # three in the timeline, one as the latest
    assert page.text.count('<span class="badge refused">refused</span>') == 4
    assert "claiming to be by mallory" in page.text
    row = next(line for line in runs.text.splitlines() if f"/console/runs/{run}" in line)
    rest = runs.text[runs.text.index(row) :].split("</tr>")[0]
    assert "refused attempt: an approval" in rest
    assert "granted by" not in rest

    # The audit: each decision recorded as submitted, the forged one's letter as refused.
    export = call(stack, READER, "GET", "/v1/audit/export", params={"run_id": run})
    assert export.status_code == 200, export.text
    records = [json.loads(line) for line in export.text.splitlines()]
    decisions = [r for r in records if r["event_type"] == "ApprovalGranted"]
    assert len(decisions) == 4
    assert {r["outcome"] for r in decisions} == {"approval submitted"}
    [letter] = [r for r in records if r["event_type"] == "DeadLettered"]
    assert letter["outcome"] == "refused: forged"
    assert sorted(r["outcome"] for r in records if r["event_type"] == "ApprovalRefused") == ["refused"] * 2

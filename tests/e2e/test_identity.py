"""People act only as who their credential says, through the API: kill switches, tokens,
publishing and the runs they may read, from the CLI, refused without a credential and with the
wrong role. A submitter nothing signed is a claim; a handoff the planner did not sign starts
nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from charter.cli import exits
from charter.client import Client
from charter.clock import new_id
from charter.events import (
    DeadLettered,
    RunCancelled,
    RunCompleted,
    RunHandedOff,
    RunInstructed,
    RunStarted,
    RunWaiting,
)
from tests.e2e.conftest import Stack, run_events, run_id, shown_when, wait_approval, wait_for, wait_run_end

pytestmark = pytest.mark.e2e

ACTS = {
    "kill-switch on": ["kill-switch", "on", "--agent", "support-refunds", "--reason", "should not happen"],
    "tokens create": ["tokens", "create", "--user", "sam", "--description", "should not happen"],
    "tokens list": ["tokens", "list"],
    "runs": ["runs"],
    "run show": ["run", "show", "abcd"],
}


def _cli(stack: Stack, args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "charter", *args],
        capture_output=True,
        text=True,
        env={**stack.env, **env},
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("act", list(ACTS))
def test_each_act_is_refused_without_a_credential(stack: Stack, act: str, tmp_path: Path) -> None:
    # No token at all: nothing in CHARTER_TOKEN, and no operator token where the keys are.
    bare = _cli(stack, ACTS[act], CHARTER_KEYS_DIR=str(tmp_path))
    assert bare.returncode == exits.REFUSED
    assert "no API token" in bare.stderr
    # A token that is not one: the API says who is unknown.
    forged = _cli(stack, ACTS[act], CHARTER_TOKEN="chr_0123456789abcdef_forged")
    assert forged.returncode == exits.REFUSED
    assert "HTTP 401 unauthenticated" in forged.stderr


@pytest.mark.parametrize("act", list(ACTS))
def test_each_act_is_refused_with_the_wrong_role(stack: Stack, act: str) -> None:
    # sam publishes business events, and may do nothing else.
    refused = stack.as_user("sam", *ACTS[act], check=False)
    assert refused.returncode == exits.REFUSED
    assert "HTTP 403 forbidden" in refused.stderr
    assert "sam (publisher) may not" in refused.stderr


def test_an_approver_may_not_set_a_switch_or_issue_tokens(stack: Stack) -> None:
    for act in ("kill-switch on", "tokens create"):
        refused = stack.as_user("dana", *ACTS[act], check=False)
        assert refused.returncode == exits.REFUSED
        assert "HTTP 403 forbidden" in refused.stderr


def test_the_operator_token_charter_up_made_acts_as_the_first_admin(stack: Stack) -> None:
    token = stack.settings.keys / "operator.token"
    assert token.stat().st_mode & 0o777 == 0o600
    issued = stack.cli("tokens", "create", "--user", "lee", "--description", "by the operator").stdout
    assert "for lee (finance)" in issued
    listed = stack.cli("tokens", "list").stdout
    assert "charter up: the operator's first admin token" in listed


def test_a_submitter_nothing_signed_is_shown_as_claimed_and_sways_no_separation_of_duties(
    stack: Stack,
) -> None:
    # A business system writing to `triggers` itself names noor, who holds finance: a claim.
    async def send() -> str:
        async with Client(stack.settings) as client:
            trigger = await client.publish(
                "support.refund_requested", {"order_id": "C-1001", "amount": 2300}, submitted_by="noor"
            )
            return trigger.event_id

    run = run_id(asyncio.run(send()), "support-refunds")
    request = wait_approval(stack, run)
    started = wait_for(stack, lambda e: isinstance(e, RunStarted) and e.run_id == run, "runs")
    assert isinstance(started, RunStarted)
    assert (started.triggered_by, started.submitter_claimed) == (None, "noor")
    assert request.triggered_by is None  # what separation of duties reads
    shown_when(stack, run, "submitter noor (claimed)")
    with httpx.Client(base_url=stack.api_url, timeout=30) as api:
        headers = {"Authorization": f"Bearer {stack.token('root')}"}
        assert api.get(f"/v1/runs/{run}", headers=headers).json()["run"]["triggered_by"] == "noor (claimed)"
        # noor may approve it: a name nothing proves excludes no one (and lets no one through).
        approved = api.post(
            f"/v1/approvals/{request.approval_id}/approve",
            json={"action_hash": request.action_hash},
            headers={"Authorization": f"Bearer {stack.token('noor')}"},
        )
    assert approved.status_code == 200, approved.text
    assert isinstance(wait_run_end(stack, run), RunCompleted)


def test_a_published_event_names_the_authenticated_person(stack: Stack) -> None:
    out = stack.as_user(
        "sam", "publish", "support.refund_requested", "--data", '{"order_id": "C-1002", "amount": 5}'
    )
    assert ", submitted by sam" in out.stdout
    assert "starts: support-refunds" in out.stdout
    event_id = out.stdout.split(" as event ")[1].split()[0]
    started = wait_for(
        stack, lambda e: isinstance(e, RunStarted) and e.run_id == run_id(event_id, "support-refunds"), "runs"
    )
    assert isinstance(started, RunStarted)
    assert (started.triggered_by, started.submitter_claimed) == ("sam", None)
    # Naming someone else needs the broker itself, and is then only a claim.
    refused = stack.as_user("sam", "publish", "x.y", "--data", "{}", "--as", "dana", check=False)
    assert refused.returncode == 2
    assert "use it only with --offline" in refused.stderr


def test_a_handoff_the_planner_did_not_sign_starts_no_run(stack: Stack) -> None:
    handed = RunHandedOff.create(
        event_id=new_id(), now=datetime.now(UTC), tenant="default", agent="handoff-tester", run_id=new_id(),
        correlation_id=new_id(), to_agent="settle-waiter", context={"order_id": "F-1"}, depth=1,
    )  # fmt: skip

    async def send() -> None:
        async with Client(stack.settings) as client:
            await client.send(handed)

    asyncio.run(send())
    dead = wait_for(
        stack,
        lambda e: isinstance(e, DeadLettered) and e.envelope.causation_id == handed.event_id,
        "triggers.dlq",
    )
    assert isinstance(dead, DeadLettered)
    assert "not signed by the planner" in dead.reason
    assert (
        stack.cli("run", "show", run_id(handed.event_id, "settle-waiter"), check=False).returncode
        == exits.NOT_FOUND
    )


def test_a_cancel_nothing_signed_is_dead_lettered_and_the_run_goes_on(stack: Stack) -> None:
    # A run that waits (settle-waiter, after a handoff) has nothing in flight: a cancel ends it.
    published = stack.publish("test.handoff", {"order_id": "C-1003"})
    handed = wait_for(
        stack,
        lambda e: isinstance(e, RunHandedOff) and e.run_id == run_id(published, "handoff-tester"),
        "triggers",
    )
    run = run_id(handed.event_id, "settle-waiter")
    waiting = wait_for(stack, lambda e: isinstance(e, RunWaiting) and e.run_id == run, "runs")
    forged = RunInstructed.caused_by(
        waiting, event_id=new_id(), now=datetime.now(UTC), command="cancel", instructed_by="omar"
    )

    async def send() -> None:
        async with Client(stack.settings) as client:
            await client.send(forged)

    asyncio.run(send())
    dead = wait_for(
        stack,
        lambda e: isinstance(e, DeadLettered) and e.envelope.causation_id == forged.event_id,
        "triggers.dlq",
    )
    assert isinstance(dead, DeadLettered)
    assert "not signed by the approvals service" in dead.reason
    # The run still waits; the operator's own cancel, through the API, ends it.
    shown_when(stack, run, "status waiting")
    stack.as_user("omar", "run", "cancel", run, "--reason", "customer withdrew")
    end = wait_run_end(stack, run)
    assert isinstance(end, RunCancelled)
    cancels = [e for e in run_events(stack, run, "triggers") if isinstance(e, RunInstructed)]
    assert [c.signature is not None for c in cancels] == [False, True]  # the forged one, then omar's

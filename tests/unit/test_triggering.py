"""Which agents an event starts, as a publisher is told before the planner has seen it."""

from __future__ import annotations

import shutil
from pathlib import Path

from charter import agents, triggering
from services.planner.run import run_of
from tests.conftest import REPO

AGENTS = agents.load(REPO / "agents")
WAITERS = agents.load(REPO / "tests" / "e2e" / "agents")
DLQ = "charter.triggers.dlq"


def test_the_agents_an_event_starts_are_named_with_their_runs() -> None:
    told = triggering.forecast(AGENTS, "support.refund_requested", {"order_id": "A-1", "amount": 5}, "e-1")
    assert told.starts == [("support-refunds", run_of("e-1", "support-refunds"))]
    assert told.lines(DLQ) == [f"starts: support-refunds (run {run_of('e-1', 'support-refunds')})"]


def test_an_event_no_agent_listens_for_says_plainly_that_nothing_will_run() -> None:
    told = triggering.forecast(AGENTS, "suport.ticket", {}, "e-1")
    assert (told.starts, told.listening) == ([], [])
    assert told.lines(DLQ) == ['no agent is triggered by "suport.ticket" — nothing will run']


def test_an_event_whose_filters_all_say_no_names_the_agents_that_listen() -> None:
    told = triggering.forecast(AGENTS, "it.access_requested", {"environment": "dev"}, "e-1")
    assert told.starts == []
    assert told.lines(DLQ) == [
        'no agent\'s filter holds for this "it.access_requested" (it-access, it-access-staging listen '
        "for it) — nothing will run"
    ]


def test_an_event_a_filter_cannot_evaluate_is_said_to_be_dead_lettered_and_starts_nothing() -> None:
    told = triggering.forecast(AGENTS, "support.refund_requested", {"amount": "five"}, "e-1")
    assert told.starts == []
    [line] = told.lines(DLQ)
    assert line.startswith(
        f"no agent will run: the planner will dead-letter it to {DLQ}: agent support-refunds"
    )
    assert "'>' not supported between instances of 'str' and 'int'" in line


def test_an_event_runs_wait_for_is_not_said_to_do_nothing() -> None:
    told = triggering.forecast(WAITERS, "test.settled", {"order_id": "A-1"}, "e-1")
    assert told.starts == []
    assert told.awaited_by == ["quick-waiter", "settle-waiter"]
    assert told.lines(DLQ) == [
        'no agent is triggered by "test.settled"; '
        "runs of quick-waiter, settle-waiter waiting for it may go on"
    ]


def test_a_roster_follows_its_directory_and_reports_what_it_cannot_read(tmp_path: Path) -> None:
    folder = tmp_path / "agents"
    roster = triggering.Roster(folder)
    unread = roster.forecast("support.refund_requested", {"amount": 5}, "e-1")
    assert unread.lines(DLQ) == [
        'cannot tell which agents "support.refund_requested" starts: '
        f"agents directory {folder} does not exist"
    ]
    shutil.copytree(REPO / "agents", folder)
    assert [a for a, _ in roster.forecast("support.refund_requested", {"amount": 5}, "e-1").starts] == [
        "support-refunds"
    ]
    (folder / "support-refunds.yaml").unlink()
    assert roster.forecast("support.refund_requested", {"amount": 5}, "e-1").starts == []

"""A person's decision that the approvals service refused (a second approval, a missing role)
or dead-lettered (forged) is told as a refused attempt wherever people read a run: the timeline
that the CLI, the API and the console share, the run's summary (`charter runs`' last event), the
one-line descriptions, and the audit's recorded outcome. None of them reads as granted.

The refusals are the approvals service's own (`decide.on_decision`, and the runtime's dead
letter for the ForgedEvent its adapter raises), recorded by the real audit on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import Engine, select

from charter import events as ev
from charter import serde, signing
from charter.binding import action_hash
from charter.clock import FixedClock, derive_id, new_id
from charter.config import Settings
from charter.describe import describe
from charter.errors import ForgedEvent
from charter.identity.users import Directory, User
from charter.runtime.delivery import Delivery
from charter.runtime.pipeline import Pipeline
from services.approvals.console import templates
from services.approvals.decide import Pending, on_decision
from services.audit import store, views
from services.audit.service import Auditor
from services.audit.store import log_table
from tests.factories import ACTION, DECISION, NOW, RUN
from tests.unit.test_pipeline import Recorder

USERS = Directory(
    [
        User(id="dana", email="dana@example.com", roles=["finance"]),
        User(id="lee", email="lee@example.com", roles=["finance"]),
        User(id="priya", email="priya@example.com", roles=["it-security"]),
    ]
)
EXPIRES = NOW + timedelta(hours=24)
DECIDED = "charter.approvals.decided"
CASES = ["second approval", "wrong role", "forged"]


def _at(minutes: float) -> datetime:
    return NOW + timedelta(minutes=minutes)


def _request() -> ev.ApprovalRequested:
    decision = DECISION.model_copy(update={"approvals_required": 1, "previous_policy_hash": None})
    return ev.ApprovalRequested.create(
        event_id=derive_id(RUN, "requested"),
        now=_at(1),
        tenant="acme",
        agent="support-refunds",
        run_id=RUN,
        correlation_id="trigger-1",
        causation_id=derive_id(RUN, "proposed"),
        approval_id="ap-1",
        action=ACTION,
        decision=decision,
        action_hash=action_hash(ACTION, RUN, decision.policy_hash),
        agent_owner="maria@example.com",
        triggered_by="kim",
    )


REQUEST = _request()


def _decision(
    approver: str,
    roles: Sequence[str] = ("finance",),
    at: float = 2,
    kind: type[ev.ApprovalGranted | ev.ApprovalRejected] = ev.ApprovalGranted,
    **fields: Any,
) -> ev.ApprovalGranted | ev.ApprovalRejected:
    """A decision as the API builds it: the request's run, the person's roles."""
    return kind.create(
        event_id=new_id(),
        now=_at(at),
        tenant="acme",
        agent="support-refunds",
        run_id=RUN,
        correlation_id="trigger-1",
        causation_id=REQUEST.event_id,
        approval_id="ap-1",
        approver=approver,
        approver_roles=list(roles),
        action_hash=REQUEST.action_hash,
        **fields,
    )


def _grant(approver: str, roles: Sequence[str] = ("finance",), at: float = 2) -> ev.ApprovalGranted:
    granted = _decision(approver, roles, at)
    assert isinstance(granted, ev.ApprovalGranted)
    return granted


def _applied(decision: ev.ApprovalGranted | ev.ApprovalRejected, status: str = "pending") -> list[ev.Event]:
    """What the approvals service publishes for a decision on REQUEST in `status`."""
    pending = Pending(REQUEST, status, EXPIRES)
    return list(on_decision(decision, pending, _at(3), USERS.same_person).outputs)


def _dead_letter(forged: ev.Event) -> ev.DeadLettered:
    """The letter the runtime writes when the approvals service refuses an unsigned decision."""

    async def refuse(event: ev.Event, _d: Delivery) -> Sequence[ev.Event]:
        raise ForgedEvent(f"{type(event).__name__} {event.event_id} is not signed by the approvals service")

    pipeline = Pipeline("approvals", Recorder(), refuse, FixedClock(_at(4)))  # type: ignore[arg-type]
    delivery = Delivery(DECIDED, 0, 7, b"ap-1", serde.encode(forged), (), 0)
    [letter] = asyncio.run(pipeline.prepare(delivery)).outputs
    assert isinstance(letter, ev.DeadLettered)
    return letter


def _started() -> list[tuple[str, ev.Event]]:
    started = ev.RunStarted.create(
        event_id=derive_id(RUN, "started"),
        now=NOW,
        tenant="acme",
        agent="support-refunds",
        run_id=RUN,
        correlation_id="trigger-1",
        agent_owner="maria@example.com",
        trigger_event_id="trigger-1",
        trigger_name="support.refund_requested",
        environment="production",
        steps=3,
        triggered_by="kim",
    )
    return [("charter.runs", started), ("charter.approvals.requested", REQUEST)]


def _attempt(case: str) -> tuple[ev.ApprovalGranted, list[tuple[str, ev.Event]]]:
    """The refused decision of `case` and what the approvals service made of it, after dana's
    approval (which counted) for the second approval, before it for the others."""
    if case == "second approval":
        attempt = _grant("lee", at=5)
        return attempt, [(DECIDED, attempt), *((DECIDED, o) for o in _applied(attempt, "approved"))]
    if case == "wrong role":
        attempt = _grant("priya", roles=["it-security"], at=5)
        return attempt, [(DECIDED, attempt), *((DECIDED, o) for o in _applied(attempt))]
    # Forged around the API: unsigned, claiming to be dana, and dated far ahead so that sorting
    # by its own (claimed) time would put it last.
    attempt = _grant("dana", at=60 * 24 * 365)
    return attempt, [(DECIDED, attempt), (f"{DECIDED}.dlq", _dead_letter(attempt))]


def _run_with(case: str) -> tuple[ev.ApprovalGranted, list[tuple[str, ev.Event]]]:
    granted = _grant("dana", at=2)
    attempt, refused = _attempt(case)
    counted = [(DECIDED, granted), *(("charter.actions.approved", o) for o in _applied(granted))]
    return attempt, [*_started(), *counted, *refused]


@pytest.fixture
def auditor(engine: Engine, tmp_path: Path) -> Auditor:
    store.create(engine)
    signing.ensure_keys(tmp_path / "keys")
    settings = Settings(home=tmp_path, keys_dir=tmp_path / "keys", audit_checkpoint_seconds=3600)
    return Auditor(engine, settings, signing.Signer.load(tmp_path / "keys", "audit"))


def _record(auditor: Auditor, events: list[tuple[str, ev.Event]]) -> None:
    deliveries = [
        Delivery(topic, 0, offset, b"k", serde.encode(event), (), 0)
        for offset, (topic, event) in enumerate(events)
    ]
    asyncio.run(auditor.handle_batch(deliveries))


def _outcomes(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(log_table.c.event_id, log_table.c.outcome))
        return {event_id: outcome for event_id, outcome in rows}


@pytest.mark.parametrize("case", CASES)
def test_a_refused_attempt_reads_as_refused_in_the_timeline_summary_and_audit(
    case: str, auditor: Auditor, engine: Engine
) -> None:
    attempt, events = _run_with(case)
    _record(auditor, events)
    with engine.connect() as conn:
        entries = views.timeline(conn, RUN)
        [summary] = views.recent(conn)
    texts = [e.text for e in entries]

    # Dana's approval counted: that one, and only that one, reads as granted.
    assert [t for t in texts if "granted" in t] == ["approval ap-1 granted by dana"]
    # The attempt is one entry, a refused attempt naming who tried what, and why not.
    [refused] = [e for e in entries if e.text.startswith("refused attempt")]
    assert attempt.event_id not in {e.event.event_id for e in entries if e.event}
    why = {
        "second approval": "lee's approval of approval ap-1 — approval ap-1 is already approved",
        "wrong role": "priya's approval of approval ap-1 — priya does not hold the role policy named",
        "forged": "an approval of approval ap-1 claiming to be by dana — forged: ApprovalGranted",
    }[case]
    assert why in refused.text
    assert refused.event_type in {"ApprovalRefused", "DeadLettered"}
    # The run's real state: still running after dana's approval, its last entry the refusal.
    assert (summary.run_id, summary.status) == (RUN, "running")
    assert summary.last == refused.text
    assert summary == views.summarize(RUN, entries)
    # The audit recorded the attempt as submitted, never as approved; its refusal as refused.
    outcomes = _outcomes(engine)
    assert outcomes[attempt.event_id] == "approval submitted"
    refusal = refused.event
    assert refusal is not None
    assert outcomes[refusal.event_id] == ("refused: forged" if case == "forged" else "refused")
    assert "approved" not in {outcomes[e.event_id] for _, e in events if isinstance(e, ev.ApprovalGranted)}


def test_a_decision_alone_reads_as_submitted_not_taken() -> None:
    """`charter tail` and `replay` see a decision before (or without) its outcome."""
    granted = _decision("mallory")
    rejected = _decision("dana", kind=ev.ApprovalRejected, reason="not eligible")
    assert describe(granted) == "mallory's approval of approval ap-1 submitted"
    assert describe(rejected) == "dana's rejection of approval ap-1 submitted: not eligible"
    [refusal] = _applied(_decision("priya", roles=["it-security"]))
    assert describe(refusal).startswith("refused attempt: priya's approval of approval ap-1 — ")
    assert "granted" not in describe(_dead_letter(granted))


def test_a_decision_with_no_outcome_yet_reads_as_submitted(auditor: Auditor, engine: Engine) -> None:
    waiting = _decision("dana")
    _record(auditor, [*_started(), (DECIDED, waiting)])
    with engine.connect() as conn:
        [summary] = views.recent(conn)
    assert summary.last == "dana's approval of approval ap-1 submitted"
    assert summary.status == "awaiting approval"


def test_a_rejection_reads_as_taken_once_the_service_applied_it_and_refused_once_it_did_not(
    auditor: Auditor, engine: Engine
) -> None:
    rejection = _decision("dana", kind=ev.ApprovalRejected, reason="not eligible")
    late = _decision("lee", kind=ev.ApprovalRejected, at=5, reason="me too")
    _record(
        auditor,
        [
            *_started(),
            (DECIDED, rejection),
            *(("charter.actions.results", o) for o in _applied(rejection)),
            (DECIDED, late),
            *((DECIDED, o) for o in _applied(late, "rejected")),
        ],
    )
    with engine.connect() as conn:
        texts = [e.text for e in views.timeline(conn, RUN)]
    assert "approval ap-1 rejected by dana: not eligible" in texts
    assert not any("rejected by lee" in t for t in texts)
    assert (
        texts[-1] == "refused attempt: lee's rejection of approval ap-1 — approval ap-1 is already rejected"
    )
    outcomes = _outcomes(engine)
    assert (outcomes[rejection.event_id], outcomes[late.event_id]) == ("rejection submitted",) * 2


def test_the_console_marks_a_refused_attempt_and_nothing_else(auditor: Auditor, engine: Engine) -> None:
    _, events = _run_with("forged")
    _record(auditor, events)
    with engine.connect() as conn:
        entries = views.timeline(conn, RUN)
    html = templates.env.get_template("timeline.html").render(d=SimpleNamespace(timeline=entries))
    rows = html.split("<tr")[2:]  # after the table's head
    marked = [row for row in rows if 'class="attempt"' in row]
    assert len(rows) == len(entries)
    assert len(marked) == 1
    assert "claiming to be by dana" in marked[0]
    assert '<span class="badge refused">refused</span>' in marked[0]

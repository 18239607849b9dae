"""Personal fields are found wherever they nest and sealed under the run's subject, so a purge
leaves no clear copy: a step's result and the run's outputs (keyed by step id) seldom name the
customer again, and were stored unsealed, readable after the customer's purge."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from charter import events as ev
from charter import serde, signing
from charter.config import Settings
from charter.runtime.delivery import Delivery
from services.audit import personal, store
from services.audit.personal import Sealer
from services.audit.service import Auditor
from services.audit.store import log_table
from tests.factories import ACTION, NOW

EMAIL = "ada.lovelace@example.com"
PHONE = "+44 20 7946 0018"
RUN = "run-nested-1"
SUBJECT = "cust-42"


def test_the_subject_is_found_however_deep_shallowest_first() -> None:
    sealer = Sealer(("email",), ("customer_id", "subject_id"))
    nested = {"lookup": {"records": [{"subject_id": "deep", "customer": {"customer_id": "c-7"}}]}}
    assert sealer.subject([nested]) == "c-7"  # the first subject field wins, at any depth
    assert sealer.subject([{"a": {"customer_id": "outer", "b": {"customer_id": "inner"}}}]) == "outer"
    assert sealer.subject([{"a": [{"customer_id": True}, {"customer_id": ""}]}]) is None


def test_a_field_name_anywhere_in_the_bytes_sends_the_event_to_sealing() -> None:
    sealer = Sealer(("email",), ("customer_id",))
    executed, started = _run()[2], _run()[1]
    assert sealer.concerns(executed, b'{"lookup": {"email": "x"}}')
    assert sealer.concerns(executed, b'{"customer_id": "c"}')
    assert not sealer.concerns(executed, b'{"order_id": "A-1"}')
    assert sealer.concerns(started, b"")  # it ties the run to its trigger's subject


def _env(cls: type[ev.Event], run_id: str | None = RUN) -> dict[str, Any]:
    return {
        "event_id": f"{cls.__name__}-{run_id}",
        "now": NOW,
        "tenant": "acme",
        "agent": "support-refunds",
        "run_id": run_id,
        "correlation_id": "trig-nested",
    }


def _run() -> list[ev.Event]:
    """A run whose trigger alone names the customer; its result and outputs hold personal fields
    nested in objects and lists, as a lookup tool returns them."""
    trigger = ev.TriggerReceived.create(
        **{**_env(ev.TriggerReceived, None), "event_id": "trig-nested"},
        name="support.refund_requested",
        data={"customer_id": SUBJECT, "order_id": "A-1001"},
        source="test",
    )
    started = ev.RunStarted.create(
        **_env(ev.RunStarted),
        agent_owner="owner@example.com",
        trigger_event_id="trig-nested",
        trigger_name="support.refund_requested",
        environment="production",
        steps=2,
    )
    found = {"contacts": [{"email": EMAIL, "kind": "work"}, {"phone": PHONE}], "tier": "gold"}
    executed = ev.ActionExecuted.create(
        **_env(ev.ActionExecuted),
        action=ACTION,
        idempotency_key=f"{RUN}:0",
        result=found,
        duration_ms=1.0,
        attempts=1,
    )
    completed = ev.RunCompleted.create(
        **_env(ev.RunCompleted), steps_completed=2, outputs={"lookup": found, "refund": {"refund_id": "rf-1"}}
    )
    return [trigger, started, executed, completed]


def _deliveries(events: list[ev.Event]) -> list[Delivery]:
    return [Delivery("charter.x", 0, i, b"k", serde.encode(e), (), 0) for i, e in enumerate(events)]


@pytest.fixture
def auditor(engine: Engine, tmp_path: Path) -> Auditor:
    store.create(engine)
    signing.ensure_keys(tmp_path / "keys")
    return _auditor(engine, tmp_path)


def _auditor(engine: Engine, tmp_path: Path) -> Auditor:
    settings = Settings(home=tmp_path, keys_dir=tmp_path / "keys", audit_checkpoint_every=100)
    return Auditor(engine, settings, signing.Signer.load(tmp_path / "keys", "audit"))


def _rows(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {r.event_type: r for r in conn.execute(select(log_table).order_by(log_table.c.seq))}


def _clear_copies(engine: Engine, tmp_path: Path) -> list[str]:
    """Where the email is still readable as it was written: any column of any table of the audit
    store, and on SQLite the database's files themselves."""
    found = []
    with engine.connect() as conn:
        for table in store.metadata.sorted_tables:
            for row in conn.execute(select(table)):
                if any(
                    EMAIL.encode() in bytes(v) if isinstance(v, bytes | memoryview) else EMAIL in str(v)
                    for v in row
                ):
                    found.append(table.name)
    if engine.dialect.name == "sqlite":
        found += [f.name for f in tmp_path.glob("store.db*") if EMAIL.encode() in f.read_bytes()]
    return found


def _opened(engine: Engine, event_type: str) -> Any:
    row = _rows(engine)[event_type]
    event = serde.decode(bytes(row.value))
    with engine.connect() as conn:
        return personal.unseal(conn, event.event_id, event.model_dump(context={"objects": True}), row.subject)


def test_a_runs_nested_personal_fields_are_sealed_under_its_triggers_subject_and_purged(
    auditor: Auditor, engine: Engine, tmp_path: Path
) -> None:
    asyncio.run(
        auditor.handle_batch(_deliveries(_run()))
    )  # one batch: the run's subject is not in the log yet
    rows = _rows(engine)
    assert {t: r.subject for t, r in rows.items()} == dict.fromkeys(
        ["TriggerReceived", "RunStarted", "ActionExecuted", "RunCompleted"], SUBJECT
    )
    assert _clear_copies(engine, tmp_path) == []
    assert _opened(engine, "RunCompleted")["outputs"]["lookup"]["contacts"][0]["email"] == EMAIL
    assert _opened(engine, "ActionExecuted")["result"]["contacts"][1]["phone"] == PHONE

    assert personal.purge(engine, SUBJECT, "dpo@example.com").found
    outputs = _opened(engine, "RunCompleted")["outputs"]
    assert outputs["lookup"]["contacts"] == [
        {"email": personal.PURGED, "kind": "work"},
        {"phone": personal.PURGED},
    ]
    assert outputs["refund"] == {"refund_id": "rf-1"}  # what is not personal stays readable
    assert _opened(engine, "ActionExecuted")["result"]["contacts"][0]["email"] == personal.PURGED
    assert _clear_copies(engine, tmp_path) == []


def test_the_runs_subject_is_read_back_from_the_log_after_a_restart(
    auditor: Auditor, engine: Engine, tmp_path: Path
) -> None:
    trigger, started, executed, completed = _run()
    asyncio.run(auditor.handle_batch(_deliveries([trigger])))
    # Each event by an auditor that never saw the ones before: the log alone knows the subject.
    for event in (started, executed, completed):
        asyncio.run(_auditor(engine, tmp_path).handle_batch(_deliveries([event])))
    assert {r.subject for r in _rows(engine).values()} == {SUBJECT}
    assert _clear_copies(engine, tmp_path) == []


def test_a_run_read_before_its_trigger_is_sealed_under_the_subject_its_run_started_names(
    auditor: Auditor, engine: Engine, tmp_path: Path
) -> None:
    """The trigger and the run's events are on different topics: the audit may read RunStarted,
    and what follows, first (it did, on a slow machine)."""
    trigger, started, executed, completed = _run()
    named = started.model_copy(update={"subject": SUBJECT})
    asyncio.run(auditor.handle_batch(_deliveries([named, executed, completed])))
    asyncio.run(auditor.handle_batch(_deliveries([trigger])))
    assert {t: r.subject for t, r in _rows(engine).items()} == dict.fromkeys(
        ["TriggerReceived", "RunStarted", "ActionExecuted", "RunCompleted"], SUBJECT
    )
    assert _clear_copies(engine, tmp_path) == []


def test_an_event_outside_any_subjects_run_is_sealed_under_the_subject_it_nests(
    auditor: Auditor, engine: Engine, tmp_path: Path
) -> None:
    outputs = {"lookup": {"customers": [{"customer_id": "cust-9", "email": EMAIL}]}}
    completed = ev.RunCompleted.create(
        **_env(ev.RunCompleted, "run-other"), steps_completed=1, outputs=outputs
    )
    asyncio.run(auditor.handle_batch(_deliveries([completed])))
    assert _rows(engine)["RunCompleted"].subject == "cust-9"
    assert _clear_copies(engine, tmp_path) == []


def test_a_result_read_before_its_runs_start_is_sealed_and_purged_with_the_subject(
    auditor: Auditor, engine: Engine, tmp_path: Path
) -> None:
    """The run's topics are read in no fixed order: a step's result, and the run's end, may reach
    the log before the RunStarted that names the customer (it did, in CI)."""
    _, started, executed, completed = _run()
    named = started.model_copy(update={"subject": SUBJECT})
    asyncio.run(auditor.handle_batch(_deliveries([executed])))
    asyncio.run(_auditor(engine, tmp_path).handle_batch(_deliveries([named, completed])))
    subjects = {t: r.subject for t, r in _rows(engine).items()}
    assert subjects == {"ActionExecuted": f"run:{RUN}", "RunStarted": SUBJECT, "RunCompleted": SUBJECT}
    assert _clear_copies(engine, tmp_path) == []
    assert _opened(engine, "ActionExecuted")["result"]["contacts"][0]["email"] == EMAIL

    assert personal.purge(engine, SUBJECT, "dpo@example.com").found
    assert _opened(engine, "ActionExecuted")["result"]["contacts"][0]["email"] == personal.PURGED
    assert _opened(engine, "RunCompleted")["outputs"]["lookup"]["contacts"][1]["phone"] == personal.PURGED


def test_a_run_that_never_names_a_subject_keeps_its_personal_fields_under_its_own_key(
    auditor: Auditor, engine: Engine, tmp_path: Path
) -> None:
    _, started, executed, _ = _run()
    asyncio.run(auditor.handle_batch(_deliveries([started, executed])))
    assert _rows(engine)["ActionExecuted"].subject == f"run:{RUN}"
    assert _clear_copies(engine, tmp_path) == []
    assert personal.purge(engine, f"run:{RUN}", "dpo@example.com").found
    assert _opened(engine, "ActionExecuted")["result"]["contacts"][0]["email"] == personal.PURGED


def test_a_result_read_before_its_start_is_unreadable_if_the_subject_was_purged_meanwhile(
    auditor: Auditor, engine: Engine, tmp_path: Path
) -> None:
    _, started, executed, _ = _run()
    asyncio.run(auditor.handle_batch(_deliveries([executed])))
    with engine.begin() as conn:
        personal.subject_key(conn, SUBJECT, 1)  # the customer had a key, from an earlier run
    personal.purge(engine, SUBJECT, "dpo@example.com")
    named = started.model_copy(update={"subject": SUBJECT})
    asyncio.run(_auditor(engine, tmp_path).handle_batch(_deliveries([named])))
    assert _opened(engine, "ActionExecuted")["result"]["contacts"][0]["email"] == personal.PURGED

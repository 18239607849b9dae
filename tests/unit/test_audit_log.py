"""The audit log's contract, on SQLite and on PostgreSQL: appends, signed heads, and verify naming
every kind of tampering where it happened; proofs; migrations; purge and retention."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, Engine, delete, insert, select, update

from charter import serde, signing
from charter.bus import ORIGIN_HEADER
from charter.config import Settings
from charter.events import EVENT_TYPES, DeadLettered, Event, TriggerReceived
from charter.runtime.delivery import Delivery
from services.audit import checkpoint, migrations, personal, record, retention, store, views
from services.audit import decide as audit_decide
from services.audit.merkle import InvalidProof, Tree, check_consistency, check_inclusion
from services.audit.service import Auditor
from services.audit.store import log_table
from services.audit.verify import Report, verify
from tests.factories import one_of_each
from tests.unit.test_merkle import mth

TRACE = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HEADERS = (("traceparent", TRACE), (ORIGIN_HEADER, b"charter.planner@host-7"))


def _deliveries(events: list[Event] | None = None, first_offset: int = 0) -> list[Delivery]:
    chosen = events if events is not None else one_of_each()
    return [
        Delivery("charter.x", 0, first_offset + i, b"k", serde.encode(e), HEADERS, 0)
        for i, e in enumerate(chosen)
    ]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    signing.ensure_keys(tmp_path / "keys")
    return tmp_path / "keys"


@pytest.fixture
def auditor(engine: Engine, keys: Path, tmp_path: Path) -> Auditor:
    store.create(engine)
    settings = Settings(home=tmp_path, keys_dir=keys, audit_checkpoint_every=4, audit_checkpoint_seconds=3600)
    return Auditor(engine, settings, signing.Signer.load(keys, "audit"))


@pytest.fixture
def filled(auditor: Auditor, engine: Engine) -> Engine:
    """The log of one of each event, fed in batches of 4: a head is signed after each full batch."""
    deliveries = _deliveries()
    for start in range(0, len(deliveries), 4):
        asyncio.run(auditor.handle_batch(deliveries[start : start + 4]))
    return engine


def _key(keys: Path) -> signing.Verifier:
    return signing.Verifier.load(keys, "audit")


def _verify(engine: Engine, keys: Path, published: list[store.Head] | None = None) -> Report:
    with engine.connect() as conn:
        return verify(conn, _key(keys), published or ())


def _kinds(report: Report) -> list[tuple[str, int]]:
    return [(p.kind, p.position) for p in report.problems]


def _heads(engine: Engine) -> list[store.Head]:
    with engine.connect() as conn:
        return store.checkpoints(conn)


def _row(engine: Engine, seq: int) -> dict[str, object]:
    with engine.connect() as conn:
        return dict(conn.execute(select(log_table).where(log_table.c.seq == seq)).one()._mapping)


def test_an_untouched_log_verifies_against_its_heads(filled: Engine, keys: Path) -> None:
    report = _verify(filled, keys)
    assert report.ok, report.problems
    assert report.rows == len(EVENT_TYPES)
    heads = _heads(filled)
    assert [h.size for h in heads] == list(range(4, len(EVENT_TYPES) + 1, 4))
    assert report.signed == heads[-1].size


def test_records_carry_who_what_when_where_and_trace(filled: Engine) -> None:
    with filled.connect() as conn:
        rows = {r.event_type: r for r in conn.execute(select(log_table))}
    granted = rows["ApprovalGranted"]
    assert (granted.service, granted.host) == ("charter.planner", "host-7")
    assert granted.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert granted.actor
    assert granted.outcome == "approval submitted"
    assert rows["ActionApproved"].policy_hash
    assert rows["ActionRejected"].outcome == "denied"
    assert rows["TriggerReceived"].source
    assert rows["ActionExecuted"].outcome == "succeeded"
    assert all((r.occurred_at is not None and r.agent is not None) or r.run_id is None for r in rows.values())


def test_duplicates_are_not_appended(auditor: Auditor, filled: Engine) -> None:
    asyncio.run(auditor.handle_batch(_deliveries()))
    with filled.connect() as conn:
        assert store.count(conn) == len(EVENT_TYPES)


def test_undecodable_records_are_kept_as_evidence(auditor: Auditor, filled: Engine, keys: Path) -> None:
    asyncio.run(auditor.handle_batch([Delivery("charter.triggers", 1, 9, None, b"not avro", (), 0)]))
    last = _row(filled, len(EVENT_TYPES) + 1)
    assert (last["event_type"], last["value"]) == ("Undecodable", b"not avro")
    assert _verify(filled, keys).ok


def test_a_changed_byte_is_named_at_its_row(filled: Engine, keys: Path) -> None:
    value = bytearray(_row(filled, 5)["value"])  # type: ignore[call-overload]
    value[-1] ^= 0x01
    with filled.begin() as conn:
        conn.execute(update(log_table).where(log_table.c.seq == 5).values(value=bytes(value)))
    report = _verify(filled, keys)
    assert _kinds(report)[0] == ("altered", 5)
    assert ("mismatch", 8) in _kinds(report)  # the heads after it no longer match


def test_a_changed_query_column_is_named(filled: Engine, keys: Path) -> None:
    with filled.begin() as conn:
        conn.execute(update(log_table).where(log_table.c.seq == 3).values(run_id="someone-else"))
    report = _verify(filled, keys)
    assert _kinds(report) == [("column", 3)]
    assert "run_id" in report.problems[0].message


def test_a_deleted_row_is_named(filled: Engine, keys: Path) -> None:
    with filled.begin() as conn:
        conn.execute(delete(log_table).where(log_table.c.seq == 7))
    report = _verify(filled, keys)
    # The gap, and each head above it no longer matching; nothing else (no truncation).
    heads_above = [("mismatch", size) for size in range(8, len(EVENT_TYPES) + 1, 4)]
    assert _kinds(report) == [("deleted", 7), *heads_above]
    assert "rows 7 are missing" in report.problems[0].message


def test_a_row_deleted_under_the_newest_head_is_not_called_truncation(
    auditor: Auditor, filled: Engine, keys: Path
) -> None:
    more = 4 - len(EVENT_TYPES) % 4  # enough records for the next head
    asyncio.run(
        auditor.handle_batch(
            _deliveries([_customer_trigger(f"trig-{i}") for i in range(more)], first_offset=90)
        )
    )
    assert _heads(filled)[-1].size == len(EVENT_TYPES) + more  # the newest head covers the last row
    with filled.begin() as conn:
        conn.execute(delete(log_table).where(log_table.c.seq == 4))
    kinds = _kinds(_verify(filled, keys))
    assert kinds[0] == ("deleted", 4)
    assert "truncated" not in {k for k, _ in kinds}


def _renumber(engine: Engine, after: int, by: int) -> None:
    """Shift the seq of every row after `after`, highest first (or lowest first going down)."""
    with engine.connect() as conn:
        seqs = sorted(conn.execute(select(log_table.c.seq).where(log_table.c.seq > after)).scalars())
    with engine.begin() as conn:
        for seq in sorted(seqs, reverse=by > 0):
            conn.execute(update(log_table).where(log_table.c.seq == seq).values(seq=seq + by))


def test_a_deleted_row_hidden_by_renumbering_is_named(filled: Engine, keys: Path) -> None:
    with filled.begin() as conn:
        conn.execute(delete(log_table).where(log_table.c.seq == 6))
    _renumber(filled, 6, -1)
    report = _verify(filled, keys)
    assert _kinds(report)[0] == ("moved", 6)
    assert "1 row(s) deleted before row 6" in report.problems[0].message


def test_an_inserted_row_is_named(filled: Engine, keys: Path) -> None:
    forged = _row(filled, 2) | {"event_id": "forged", "seq": 3}
    _renumber(filled, 2, +1)
    with filled.begin() as conn:
        conn.execute(insert(log_table).values(**forged))
    report = _verify(filled, keys)
    assert ("moved", 3) in _kinds(report)
    assert any("1 row(s) inserted at or before row 3" in p.message for p in report.problems)


def test_reordered_rows_are_named(filled: Engine, keys: Path) -> None:
    four, five = _row(filled, 4), _row(filled, 5)
    with filled.begin() as conn:
        for seq, other in ((4, five), (5, four)):
            moved = {k: v for k, v in other.items() if k not in ("seq", "event_id")}
            conn.execute(update(log_table).where(log_table.c.seq == seq).values(**moved, event_id=f"x{seq}"))
    report = _verify(filled, keys)
    messages = [p.message for p in report.problems if p.kind == "moved"]
    assert messages == [
        "row 4 holds the record written for row 5: rows reordered",
        "row 5 holds the record written for row 4: rows reordered",
    ]


def test_truncation_past_a_published_head_is_named(filled: Engine, keys: Path) -> None:
    published = _heads(filled)
    with filled.begin() as conn:
        # The attacker cuts the log and the heads kept with it; the published heads remain.
        conn.execute(delete(log_table).where(log_table.c.seq > 9))
        conn.execute(delete(store.checkpoints_table).where(store.checkpoints_table.c.size > 9))
    assert _verify(filled, keys).ok  # what the database alone shows is consistent...
    report = _verify(filled, keys, published)
    assert ("truncated", 9) in _kinds(report)  # ...but not with what was published
    assert "rows 10..12 were removed" in report.problems[0].message


def _rewrite(engine: Engine, first: int) -> None:
    """Change rows from `first` on and recompute their canonical bytes and leaves consistently."""
    with engine.connect() as conn:
        rows = conn.execute(select(log_table).where(log_table.c.seq >= first)).all()
    with engine.begin() as conn:
        for row in rows:
            value = bytes(row.value) + b"!"
            conn.execute(
                update(log_table)
                .where(log_table.c.seq == row.seq)
                .values(value=value, leaf_hash=record.leaf(bytes(row.meta), record.value_digest(value)))
            )


def test_a_history_rewritten_with_fresh_hashes_is_named_a_fork(filled: Engine, keys: Path) -> None:
    _rewrite(filled, 6)
    report = _verify(filled, keys)
    assert ("forked", 5) in _kinds(report)
    assert "rows 5..8 were rewritten" in report.problems[0].message


def test_a_rewritten_history_signed_again_conflicts_with_the_published_heads(
    filled: Engine, keys: Path
) -> None:
    published = _heads(filled)
    _rewrite(filled, 2)
    signer = signing.Signer.load(keys, "audit")  # an insider with the key re-signs everything
    with filled.begin() as conn:
        conn.execute(delete(store.checkpoints_table))
        tree = Tree.over(lambda: conn)
        for head in published:
            store.add_checkpoint(
                conn, checkpoint.sign(signer, head.size, tree.root(head.size), head.signed_at_us)
            )
    assert _verify(filled, keys).ok
    report = _verify(filled, keys, published)
    assert "forked" in {k for k, _ in _kinds(report)}
    assert any("two genuine heads" in p.message for p in report.problems)


def test_a_forged_head_is_named(filled: Engine, keys: Path, tmp_path: Path) -> None:
    signing.ensure_keys(tmp_path / "other", ("audit",))
    other = signing.Signer.load(tmp_path / "other", "audit")
    with filled.connect() as conn:
        forged = checkpoint.sign(other, 3, Tree.over(lambda: conn).root(3), 1)
    assert _kinds(_verify(filled, keys, [forged])) == [("forged", 3)]


def test_inclusion_and_consistency_proofs(filled: Engine) -> None:
    heads = _heads(filled)
    with filled.connect() as conn:
        tree = Tree.over(lambda: conn)
        leaf = store.leaves(conn, 4, 1)[0]
        old, new = heads[0], heads[-1]
        inclusion = tree.inclusion(5, new.size)
        consistency = tree.consistency(old.size, new.size)
    check_inclusion(inclusion, leaf, new.root, 5, new.size)
    check_consistency(consistency, (old.size, old.root), (new.size, new.root))
    with pytest.raises(InvalidProof):
        check_inclusion(inclusion, hashlib.sha256(b"other").digest(), new.root, 5, new.size)
    with pytest.raises(InvalidProof):
        check_inclusion(inclusion, leaf, new.root, 6, new.size)
    with pytest.raises(InvalidProof):
        check_consistency(consistency, (old.size, new.root), (new.size, new.root))


def test_proofs_from_tiles_are_the_proofs_from_leaves(auditor: Auditor, engine: Engine, keys: Path) -> None:
    values = [serde.encode(e) for e in one_of_each()]
    deliveries = [Delivery("charter.x", 0, i, b"k", values[i % len(values)], HEADERS, 0) for i in range(700)]
    # Distinct event ids: the same bytes under 700 ids would be deduplicated to 23.
    for start in range(0, 700, 100):
        batch = [replace_id(d, f"ev-{d.offset}") for d in deliveries[start : start + 100]]
        asyncio.run(auditor.handle_batch(batch))
    with engine.connect() as conn:
        leaves = store.leaves(conn, 0, 700)
        assert len(store.tiles(conn, 0, 10)) == 700 // store.TILE
        tiled, plain = Tree.over(lambda: conn), Tree.of(leaves)
        for index, size in ((1, 700), (300, 700), (513, 600), (700, 700)):
            assert tiled.inclusion(index, size) == plain.inclusion(index, size)
        assert tiled.consistency(256, 700) == plain.consistency(256, 700)
        assert tiled.root(700) == mth(leaves)
    assert _verify(engine, keys).ok
    with engine.begin() as conn:
        conn.execute(update(store.tiles_table).where(store.tiles_table.c.tile == 1).values(root=bytes(32)))
    assert _kinds(_verify(engine, keys)) == [("tile", 257)]


def replace_id(delivery: Delivery, event_id: str) -> Delivery:
    event = serde.decode(delivery.value)
    renamed = event.model_copy(update={"envelope": event.envelope.model_copy(update={"event_id": event_id})})
    return Delivery(
        delivery.topic, delivery.partition, delivery.offset, delivery.key, serde.encode(renamed), HEADERS, 0
    )


def test_signed_roots_are_rfc_6962_roots_of_the_stored_leaves(filled: Engine) -> None:
    with filled.connect() as conn:
        leaves = store.leaves(conn, 0, 100)
    assert all(head.root == mth(leaves[: head.size]) for head in _heads(filled))


def test_the_migrations_make_the_schema_the_code_uses(engine: Engine) -> None:
    store.create(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), store.metadata)
    # Alembic's own version table is the one difference.
    assert [d for d in diff if not (d[0] == "remove_table" and d[1].name == migrations.VERSION_TABLE)] == []


LEGACY = importlib.import_module("services.audit.migrations.versions.0002_transparency_log")


def _legacy_log(engine: Engine, rows: int, *, break_at: int | None = None) -> None:
    """A log as the hash chain wrote it before Alembic: `create_all`'s tables, no version table."""
    migrations.upgrade(engine, "0001")
    chain = sa.table(
        "audit_log", *(sa.column(c) for c in ("seq", "event_id", "event_type", "run_id", "agent", "tenant")),
        *(sa.column(c) for c in ("topic", "partition", "offset", "occurred_at", "recorded_at_us", "value")),
        sa.column("prev_hash"), sa.column("hash"),
    )  # fmt: skip
    prev = bytes(32)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {migrations.VERSION_TABLE}")
        for seq, event in enumerate(one_of_each()[:rows], 1):
            row = SimpleNamespace(
                seq=seq, event_id=event.event_id, event_type=event.envelope.event_type, run_id=event.run_id,
                agent=event.envelope.agent, tenant="acme", topic="charter.runs", partition=0, offset=seq,
                occurred_at=event.envelope.occurred_at, recorded_at_us=5, value=serde.encode(event),
            )  # fmt: skip
            digest = LEGACY._chain_hash(prev, row)
            if seq == break_at:
                row.value += b"!"  # changed after it was chained
            conn.execute(insert(chain).values(**vars(row), prev_hash=prev, hash=digest))
            prev = digest


def test_a_hash_chain_log_from_before_alembic_is_migrated_and_verifies(
    engine: Engine, keys: Path, tmp_path: Path
) -> None:
    _legacy_log(engine, 3)
    store.create(engine)
    settings = Settings(home=tmp_path, keys_dir=keys, audit_checkpoint_every=4)
    auditor = Auditor(engine, settings, signing.Signer.load(keys, "audit"))
    asyncio.run(auditor.handle_batch(_deliveries(first_offset=100)))
    report = _verify(engine, keys)
    assert report.ok, report.problems
    assert report.rows == len(EVENT_TYPES)  # the three old ones are deduplicated by id, 20 new
    assert _row(engine, 1)["occurred_at"] is not None


def test_a_broken_hash_chain_is_not_laundered_into_leaves(engine: Engine) -> None:
    _legacy_log(engine, 3, break_at=2)
    with pytest.raises(RuntimeError, match="hash chain is broken at row 2"):
        store.create(engine)


def _customer_trigger(event_id: str = "trig-personal") -> TriggerReceived:
    return TriggerReceived.create(
        event_id=event_id,
        now=datetime(2026, 1, 1, tzinfo=UTC),
        tenant="acme",
        correlation_id="c1",
        name="support.refund_requested",
        data={"customer_id": "cust-42", "email": "ada@example.com", "amount": 25},
        source="test",
    )


def _exported(conn: Connection, event_id: str) -> dict[str, Any]:
    (found,) = [
        r for r in views.export(conn, since=datetime(2000, 1, 1, tzinfo=UTC)) if r["event_id"] == event_id
    ]
    return found


def test_personal_fields_are_sealed_and_a_purge_erases_them(
    auditor: Auditor, filled: Engine, keys: Path, tmp_path: Path
) -> None:
    asyncio.run(auditor.handle_batch(_deliveries([_customer_trigger()], first_offset=50)))
    row = _row(filled, len(EVENT_TYPES) + 1)
    assert row["subject"] == "cust-42"
    assert b"ada@example.com" not in row["value"]  # type: ignore[operator]
    with filled.connect() as conn:
        exported = _exported(conn, "trig-personal")
        key = conn.execute(select(store.subject_keys_table.c.key)).scalar_one()
        opened = personal.unseal(conn, "trig-personal", exported["event"], "cust-42")
    assert opened["data"]["email"] == "ada@example.com"
    assert opened["data"]["amount"] == 25
    assert personal.purge(filled, "cust-42", "dpo@example.com") == personal.Purged(found=True, scrubbed=True)
    with filled.connect() as conn:
        exported = _exported(conn, "trig-personal")
        gone = personal.unseal(conn, "trig-personal", exported["event"], "cust-42")
    assert gone["data"]["email"] == personal.PURGED
    assert gone["data"]["customer_id"] == "cust-42"
    if filled.dialect.name == "sqlite":
        files = list(tmp_path.glob("store.db*"))
        assert files
        assert all(key not in f.read_bytes() for f in files)
    assert _verify(filled, keys).ok


def test_retention_removes_event_bytes_and_the_log_still_verifies(filled: Engine, keys: Path) -> None:
    rules = retention.parse("acme=1d,default=3650d")
    later = datetime.now(UTC) + timedelta(days=2)
    with filled.connect() as conn:
        acme = conn.execute(select(log_table.c.seq).where(log_table.c.tenant == "acme")).scalars().all()
    assert retention.apply(filled, rules, later, dry_run=True) == {"acme": len(acme)}
    assert retention.apply(filled, rules, later) == {"acme": len(acme)}
    assert _row(filled, acme[0])["value"] is None
    assert _verify(filled, keys).ok
    assert retention.apply(filled, rules, later) == {}
    with filled.connect() as conn:
        # Judged when the rules allowed it, the removal is in order...
        assert verify(conn, _key(keys), retention_rules=rules, now=later).ok
        # ...judged today, or with no retention configured, each removal is named.
        early = verify(conn, _key(keys), retention_rules=rules)
        unruled = verify(conn, _key(keys), retention_rules={})
    assert _kinds(early) == [("removed", seq) for seq in acme]
    assert "its tenant's retention is 1 day(s)" in early.problems[0].message
    assert "no retention applies to it" in unruled.problems[0].message


def test_retention_rules_are_checked() -> None:
    with pytest.raises(Exception, match="tenant=<number>"):
        retention.parse("acme=ninety days")


def test_the_service_signs_no_head_over_leaves_changed_under_it(
    filled: Engine, keys: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _rewrite(filled, 6)
    restarted = Auditor(
        filled,
        Settings(home=tmp_path, keys_dir=keys, audit_checkpoint_every=1),
        signing.Signer.load(keys, "audit"),
    )
    asyncio.run(restarted.handle_batch(_deliveries([_customer_trigger()], first_offset=90)))
    with filled.connect() as conn:
        assert store.count(conn) == len(EVENT_TYPES) + 1  # still appended
    # ...but nothing signed over the rewritten rows: the last head is filled's (one every 4).
    assert _heads(filled)[-1].size == len(EVENT_TYPES) // 4 * 4
    assert "no more heads are signed" in caplog.text


def test_a_dead_letters_original_is_sealed_too(auditor: Auditor, filled: Engine, keys: Path) -> None:
    trigger = _customer_trigger()
    letter = DeadLettered.caused_by(
        trigger,
        now=trigger.envelope.occurred_at,
        label="dlq",
        source_topic="charter.triggers",
        source_partition=0,
        source_offset=7,
        key=b"k",
        value=serde.encode(trigger),
        reason="refused",
        error_type="Test",
        service="planner",
    )
    asyncio.run(auditor.handle_batch(_deliveries([letter], first_offset=60)))
    row = _row(filled, len(EVENT_TYPES) + 1)
    assert row["subject"] == "cust-42"
    assert b"ada@example.com" not in row["value"]  # type: ignore[operator]
    assert _verify(filled, keys).ok


def test_a_head_is_due_after_enough_records_or_enough_time_with_records_unsigned() -> None:
    cadence = audit_decide.Cadence(every=100, every_s=5.0)
    assert not audit_decide.checkpoint_due(10, 10, 0, 99_000_000, cadence)  # nothing new to sign
    assert not audit_decide.checkpoint_due(50, 10, 0, 4_000_000, cadence)  # too few, too soon
    assert audit_decide.checkpoint_due(110, 10, 0, 1_000_000, cadence)  # enough records
    assert audit_decide.checkpoint_due(11, 10, 0, 5_000_000, cadence)  # a quiet log, in time

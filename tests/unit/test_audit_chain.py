"""The audit chain on both databases: appends dedupe, and verify names the first tampered row."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import Engine, delete, update

from charter import serde
from charter.consumer import Delivery
from charter.events import EVENT_TYPES
from services.audit import store
from services.audit.decide import GENESIS, Row, hash_of, verify
from services.audit.service import entry_of
from tests.factories import one_of_each


def _deliveries() -> list[Delivery]:
    return [Delivery("charter.x", 0, i, b"k", serde.encode(e), (), 0) for i, e in enumerate(one_of_each())]


@pytest.fixture
def filled(engine: Engine) -> Engine:
    store.create(engine)
    with engine.begin() as conn:
        assert store.append(conn, [entry_of(d) for d in _deliveries()], 1_000) == len(EVENT_TYPES)
    return engine


def _verify(engine: Engine) -> tuple[bool, int | None, str | None]:
    with engine.connect() as conn:
        result = verify(store.rows(conn, batch=4))
    return result.ok, result.broken_seq, result.problem


def test_an_untouched_log_verifies(filled: Engine) -> None:
    assert _verify(filled) == (True, None, None)


def test_duplicates_are_not_appended(filled: Engine) -> None:
    with filled.begin() as conn:
        assert store.append(conn, [entry_of(d) for d in _deliveries()], 2_000) == 0
        assert store.count(conn) == len(EVENT_TYPES)


def test_undecodable_records_are_kept_as_evidence(filled: Engine) -> None:
    garbage = Delivery("charter.triggers", 1, 9, None, b"not avro", (), 0)
    with filled.begin() as conn:
        assert store.append(conn, [entry_of(garbage)], 3_000) == 1
    with filled.connect() as conn:
        last = list(store.rows(conn))[-1]
    assert last.event_type == "Undecodable"
    assert last.value == b"not avro"
    assert _verify(filled)[0]


def test_a_changed_byte_is_found_at_its_row(filled: Engine) -> None:
    with filled.connect() as conn:
        row = next(r for r in store.rows(conn) if r.seq == 5)
    tampered = bytearray(row.value)
    tampered[-1] ^= 0x01
    with filled.begin() as conn:
        conn.execute(update(store.log_table).where(store.log_table.c.seq == 5).values(value=bytes(tampered)))
    ok, seq, problem = _verify(filled)
    assert (ok, seq) == (False, 5)
    assert "altered" in (problem or "")


def test_a_changed_query_column_is_found(filled: Engine) -> None:
    with filled.begin() as conn:
        conn.execute(update(store.log_table).where(store.log_table.c.seq == 3).values(run_id="someone-else"))
    assert _verify(filled)[:2] == (False, 3)


def test_a_deleted_row_is_found(filled: Engine) -> None:
    with filled.begin() as conn:
        conn.execute(delete(store.log_table).where(store.log_table.c.seq == 7))
    ok, seq, problem = _verify(filled)
    assert (ok, seq) == (False, 8)
    assert "jumps" in (problem or "")


def test_swapped_rows_are_found(filled: Engine) -> None:
    t = store.log_table
    with filled.connect() as conn:
        rows = {r.seq: r for r in store.rows(conn)}
    with filled.begin() as conn:
        # Swap the contents of rows 4 and 5, keeping each row's own seq and hashes.
        for seq, other in ((4, rows[5]), (5, rows[4])):
            conn.execute(
                update(t).where(t.c.seq == seq).values(value=other.value, event_id=f"{other.event_id}-x")
            )
    assert _verify(filled)[:2] == (False, 4)


def test_a_rewritten_row_with_a_fresh_hash_breaks_the_next_link(filled: Engine) -> None:
    with filled.connect() as conn:
        row = next(r for r in store.rows(conn) if r.seq == 6)
    forged = replace(row, value=b"forged")
    forged = replace(forged, hash=hash_of(forged))
    with filled.begin() as conn:
        t = store.log_table
        conn.execute(update(t).where(t.c.seq == 6).values(value=forged.value, hash=forged.hash))
    ok, seq, problem = _verify(filled)
    assert (ok, seq) == (False, 7)
    assert "link" in (problem or "")


def test_verify_of_nothing_is_ok() -> None:
    assert verify([]).ok
    assert verify([]).head == GENESIS


def test_hash_covers_every_field() -> None:
    base = Row(1, "e", "T", "r", "t", 0, 0, 1, b"v", GENESIS, b"")
    variants = [
        replace(base, event_id="f"),
        replace(base, event_type="U"),
        replace(base, run_id=None),
        replace(base, topic="u"),
        replace(base, partition=1),
        replace(base, offset=1),
        replace(base, recorded_at_us=2),
        replace(base, value=b"w"),
        replace(base, prev_hash=b"\x01" * 32),
        replace(base, seq=2),
    ]
    hashes = {hash_of(v) for v in variants} | {hash_of(base)}
    assert len(hashes) == len(variants) + 1

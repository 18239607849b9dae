"""The audit chain: each row's hash covers its content and the previous row's hash.

`row_hash` is the only definition of a row's content; `verify` recomputes the chain and names
the first row where it breaks: a changed byte, a missing or inserted row, or a broken link.
Fields are length-prefixed before hashing, so no two different rows can hash the same text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

GENESIS = bytes(32)


@dataclass(frozen=True)
class Row:
    seq: int
    event_id: str
    event_type: str
    run_id: str | None
    topic: str
    partition: int
    offset: int
    recorded_at_us: int
    value: bytes
    prev_hash: bytes
    hash: bytes


def row_hash(
    prev_hash: bytes,
    *,
    seq: int,
    event_id: str,
    event_type: str,
    run_id: str | None,
    topic: str,
    partition: int,
    offset: int,
    recorded_at_us: int,
    value: bytes,
) -> bytes:
    digest = hashlib.sha256(prev_hash)
    fields: tuple[bytes, ...] = (
        str(seq).encode(),
        event_id.encode(),
        event_type.encode(),
        (run_id or "").encode(),
        topic.encode(),
        str(partition).encode(),
        str(offset).encode(),
        str(recorded_at_us).encode(),
        value,
    )
    for field in fields:
        digest.update(len(field).to_bytes(8, "big"))
        digest.update(field)
    return digest.digest()


def hash_of(row: Row) -> bytes:
    return row_hash(
        row.prev_hash,
        seq=row.seq,
        event_id=row.event_id,
        event_type=row.event_type,
        run_id=row.run_id,
        topic=row.topic,
        partition=row.partition,
        offset=row.offset,
        recorded_at_us=row.recorded_at_us,
        value=row.value,
    )


@dataclass(frozen=True)
class Verification:
    rows: int
    ok: bool
    broken_seq: int | None = None
    problem: str | None = None
    head: bytes = GENESIS


def verify(rows: Iterable[Row]) -> Verification:
    """Walk the rows in seq order; stop at the first that does not belong to the chain."""
    prev_hash = GENESIS
    expected_seq = 1
    count = 0
    for row in rows:
        if row.seq != expected_seq:
            problem = f"sequence jumps from {expected_seq - 1} to {row.seq}: rows deleted or renumbered"
            return Verification(count, False, row.seq, problem, prev_hash)
        if row.prev_hash != prev_hash:
            return Verification(count, False, row.seq, "link to the previous row is broken", prev_hash)
        if hash_of(row) != row.hash:
            problem = f"content does not match its hash (event {row.event_id}): the row was altered"
            return Verification(count, False, row.seq, problem, prev_hash)
        prev_hash = row.hash
        expected_seq += 1
        count += 1
    return Verification(count, True, head=prev_hash)

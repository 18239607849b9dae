"""Verifying the audit log: every row against its leaf, the tree against every signed head.

It names where each problem is:
  - a changed byte: the row whose content no longer matches its leaf hash;
  - a deleted row: the gap in the sequence, or, if the rows after it were renumbered, the first
    row holding a record written for another position;
  - an inserted or reordered row: the same, from the position each record was written for;
  - truncation: the last row left, against the head that covered more;
  - a forked history: two genuine heads that cannot both be prefixes of one log, or a head the
    log no longer matches, with the rows since the last head it does match.
A forged or foreign head is reported too. Rows after the newest head are counted, not judged:
nothing signed covers them yet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Connection

from charter.signing import Verifier
from services.audit import record, store
from services.audit.checkpoint import genuine
from services.audit.merkle import Tree
from services.audit.record import Attribution
from services.audit.store import Head, Stored

LIMIT = 50  # problems named one by one; the rest are counted


@dataclass(frozen=True)
class Problem:
    kind: str
    position: int
    message: str


@dataclass
class Report:
    rows: int = 0
    problems: list[Problem] = field(default_factory=list)
    more: int = 0
    heads: int = 0
    signed: int = 0  # rows covered by the newest head that matches
    root: bytes = b""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unsigned(self) -> int:
        return self.rows - self.signed

    def add(self, kind: str, position: int, message: str) -> None:
        if len(self.problems) < LIMIT:
            self.problems.append(Problem(kind, position, message))
        else:
            self.more += 1


def _written_for(meta: bytes) -> int | None:
    head, sep, _ = meta.partition(b"\n")
    return int(head) if sep and head.isdigit() else None


def _event_id(meta: bytes) -> str:
    try:
        return str(record.decode_meta(meta)[1]["event_id"])
    except (ValueError, KeyError):
        return "?"


class _Rows:
    """The walk over the rows: leaves recomputed from content, problems named by position."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.leaves: list[bytes] = []
        self.expected = 1
        self._shift: tuple[int, int] | None = None  # (first row, offset) of a run of moved rows

    def see(self, row: Stored) -> None:
        if row.seq != self.expected:
            gap = f"{self.expected}" if row.seq == self.expected + 1 else f"{self.expected}..{row.seq - 1}"
            self.report.add("deleted", self.expected, f"rows {gap} are missing: deleted")
            self.expected = row.seq
        self._position(row)
        digest = hashlib.sha256(row.value).digest() if row.value is not None else row.value_digest or b""
        computed = record.leaf(row.meta, digest)
        if computed != row.leaf_hash:
            what = "its event bytes or attribution were" if row.value is not None else "its attribution was"
            self.report.add(
                "altered",
                row.seq,
                f"row {row.seq} (event {_event_id(row.meta)}) no longer matches its leaf hash: "
                f"{what} altered",
            )
        self.leaves.append(computed)
        self.expected += 1
        self.report.rows += 1

    def _position(self, row: Stored) -> None:
        written = _written_for(row.meta)
        offset = None if written == row.seq else (written or 0) - row.seq
        if self._shift and (offset is None or offset != self._shift[1]):
            self._close(row.seq - 1)
        if offset is not None and self._shift is None:
            self._shift = (row.seq, offset)

    def _close(self, last: int) -> None:
        if self._shift is None:
            return
        first, offset = self._shift
        span = f"row {first}" if first == last else f"rows {first}..{last}"
        if offset > 0:
            cause = f"{offset} row(s) deleted before row {first} and the rows after renumbered"
        elif first == last:
            cause = f"a record moved here from row {first + offset}, or a row inserted: reordered"
        else:
            cause = f"{-offset} row(s) inserted at or before row {first}"
        self.report.add(
            "moved", first, f"{span} hold records written {abs(offset)} position(s) away: {cause}"
        )
        self._shift = None

    def done(self) -> None:
        self._close(self.expected - 1)


def check_rows(rows: Iterable[Stored], report: Report) -> list[bytes]:
    walk = _Rows(report)
    for row in rows:
        walk.see(row)
    walk.done()
    return walk.leaves


ROW_KINDS = ("deleted", "altered", "moved")


def check_heads(leaves: Sequence[bytes], heads: Iterable[Head], key: Verifier, report: Report) -> None:
    tree = Tree.of(leaves)
    distinct = sorted({(h.size, h.root, h.signature): h for h in heads}.values(), key=lambda h: h.size)
    matched = 0
    broken: Head | None = None
    by_size: dict[int, Head] = {}
    for head in distinct:
        report.heads += 1
        if not genuine(head, key):
            report.add("forged", head.size, f"the head for size {head.size} is not signed by the audit key")
            continue
        other = by_size.setdefault(head.size, head)
        if other.root != head.root:
            report.add(
                "forked", head.size, f"two genuine heads for size {head.size} differ: the history forked"
            )
            continue
        if head.size > len(leaves):
            report.add(
                "truncated",
                len(leaves),
                f"the log ends after {len(leaves)} rows, but a head signed at {_when(head)} covers "
                f"{head.size}: rows {len(leaves) + 1}..{head.size} were removed",
            )
            continue
        if tree.root(head.size) == head.root:
            if broken is not None:
                report.add(
                    "forked",
                    broken.size,
                    f"the heads signed at {_when(broken)} (size {broken.size}) and {_when(head)} "
                    f"(size {head.size}) cannot both hold: the history was rewritten and signed again",
                )
                broken = None
            matched = head.size
            continue
        broken = broken or head
        _mismatch(head, matched, report)
    report.signed = matched
    report.root = tree.root(len(leaves)) if leaves else b""


def _mismatch(head: Head, matched: int, report: Report) -> None:
    span = f"rows {matched + 1}..{head.size}"
    if any(p.kind in ROW_KINDS and matched < p.position <= head.size for p in report.problems):
        report.add(
            "mismatch",
            head.size,
            f"the log's first {head.size} rows no longer hash to the head signed at {_when(head)}: "
            f"{span} changed (rows named above)",
        )
        return
    report.add(
        "forked",
        matched + 1,
        f"the log's first {head.size} rows no longer hash to the head signed at {_when(head)}, yet every "
        f"row matches its own leaf hash: {span} were rewritten with their hashes recomputed "
        "(a forked history)",
    )


def check_columns(rows: Iterable[tuple[int, bytes, Attribution]], report: Report) -> None:
    """The query columns against the attribution `meta` holds (what leaves cover)."""
    for seq, meta, attribution in rows:
        try:
            _, written = record.decode_meta(meta)
        except (ValueError, TypeError):
            continue  # an unreadable meta is already reported as an altered row
        columns = record.comparable(attribution)
        for name, value in written.items():
            if columns[name] != value:
                report.add(
                    "column",
                    seq,
                    f"row {seq}: column {name} reads {columns[name]!r}, the record says {value!r}",
                )


def _when(head: Head) -> str:
    return datetime.fromtimestamp(head.signed_at_us / 1e6, UTC).isoformat(timespec="seconds")


def verify(conn: Connection, key: Verifier, published: Iterable[Head] = (), *, deep: bool = True) -> Report:
    """The whole check: rows, the heads stored with the log and those published, and (deep)
    the query columns."""
    report = Report()
    leaves = check_rows(store.stored(conn), report)
    check_heads(leaves, [*store.checkpoints(conn), *published], key, report)
    if deep:
        check_columns(store.attributions(conn), report)
    return report

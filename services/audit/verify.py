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
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection

from charter.signing import Verifier
from services.audit import record, retention, store
from services.audit.checkpoint import genuine
from services.audit.merkle import Frontier
from services.audit.record import LEAF_PREFIX, Attribution
from services.audit.store import Head, Row

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
    last: int = 0  # the last row's position (beyond `rows` when rows are missing)
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
    """The walk over the rows: leaves recomputed from content, problems named by position.
    `see` is the loop a large log runs a million times: the common case is kept to a few
    hash calls and comparisons, and everything else goes to `_unusual`."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.leaves: list[bytes] = []
        self.expected = 1
        self._shift: tuple[int, int] | None = None  # (first row, offset) of a run of moved rows

    def walk(self, rows: Iterable[Row]) -> None:
        sha256, leaves, expected = hashlib.sha256, self.leaves, self.expected
        append = leaves.append
        for seq, meta, value, value_digest, stored_leaf in rows:
            digest = sha256(value).digest() if value is not None else value_digest or b""
            computed = sha256(LEAF_PREFIX + meta + digest).digest()
            if (
                seq != expected
                or computed != stored_leaf
                or not meta.startswith(b"%d\n" % seq)
                or self._shift
            ):
                self.expected = expected
                self._unusual(seq, meta, value, computed, stored_leaf)
                expected = self.expected
            append(computed)
            expected += 1
        self.expected = expected
        self.report.rows = len(leaves)
        self.report.last = expected - 1

    def _unusual(self, seq: int, meta: bytes, value: bytes | None, computed: bytes, stored: bytes) -> None:
        if seq != self.expected:
            gap = f"{self.expected}" if seq == self.expected + 1 else f"{self.expected}..{seq - 1}"
            self.report.add("deleted", self.expected, f"rows {gap} are missing: deleted")
            self.expected = seq
        self._position(seq, meta)
        if computed != stored:
            what = "its event bytes or attribution were" if value is not None else "its attribution was"
            self.report.add(
                "altered",
                seq,
                f"row {seq} (event {_event_id(meta)}) no longer matches its leaf hash: {what} altered",
            )

    def _position(self, seq: int, meta: bytes) -> None:
        written = _written_for(meta)
        offset = None if written == seq else (written or 0) - seq
        if self._shift and (offset is None or offset != self._shift[1]):
            self._close(seq - 1)
        if offset is not None and self._shift is None:
            self._shift = (seq, offset)

    def _close(self, last: int) -> None:
        if self._shift is None:
            return
        first, offset = self._shift
        self._shift = None
        if first == last:
            self.report.add(
                "moved",
                first,
                f"row {first} holds the record written for row {first + offset}: rows reordered",
            )
            return
        if offset > 0:
            cause = f"{offset} row(s) deleted before row {first} and the rows after renumbered"
        else:
            cause = f"{-offset} row(s) inserted at or before row {first}"
        self.report.add(
            "moved", first, f"rows {first}..{last} hold records written {abs(offset)} away: {cause}"
        )

    def done(self) -> None:
        self._close(self.expected - 1)


def check_rows(rows: Iterable[Row], report: Report) -> list[bytes]:
    walk = _Rows(report)
    walk.walk(rows)
    walk.done()
    return walk.leaves


ROW_KINDS = ("deleted", "altered", "moved")


def roots_at(leaves: Sequence[bytes], sizes: Iterable[int]) -> dict[int, bytes]:
    """The tree's root at each size, in one pass over the leaves."""
    frontier, out = Frontier(0, ()), {}
    for size in sorted({s for s in sizes if 0 <= s <= len(leaves)}):
        frontier = frontier.extended(leaves[frontier.size : size])
        out[size] = frontier.root()
    return out


def check_heads(leaves: Sequence[bytes], heads: Iterable[Head], key: Verifier, report: Report) -> None:
    distinct = sorted({(h.size, h.root, h.signature): h for h in heads}.values(), key=lambda h: h.size)
    roots = roots_at(leaves, [*(h.size for h in distinct), len(leaves)])
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
        end = max(report.last, len(leaves))  # rows deleted below the end are named by the walk
        if head.size > end:
            report.add(
                "truncated",
                end,
                f"the log ends after {end} rows, but a head signed at {_when(head)} covers "
                f"{head.size}: rows {end + 1}..{head.size} were removed",
            )
            continue
        if roots.get(head.size) == head.root:
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
    report.root = roots[len(leaves)] if leaves else b""


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


def check_removed(
    removed: Iterable[tuple[int, bytes, int]], rules: dict[str, timedelta], now: datetime, report: Report
) -> None:
    """Event bytes gone from records still inside their tenant's retention: removing a value
    keeps the leaf valid (its digest stays), so this is how an erasure outside retention shows."""
    for seq, meta, recorded_at_us in removed:
        try:
            tenant = record.decode_meta(meta)[1].get("tenant")
        except (ValueError, TypeError):
            continue  # an unreadable meta is already reported as an altered row
        period = rules.get(str(tenant), rules.get(retention.DEFAULT))
        recorded = datetime.fromtimestamp(recorded_at_us / 1e6, UTC)
        if period is None or recorded > now - period:
            kept = (
                "no retention applies to it"
                if period is None
                else f"its tenant's retention is {period.days} day(s)"
            )
            report.add("removed", seq, f"row {seq}: its event bytes were removed, but {kept}")


def verify(
    conn: Connection,
    key: Verifier,
    published: Iterable[Head] = (),
    *,
    deep: bool = True,
    retention_rules: dict[str, timedelta] | None = None,
    now: datetime | None = None,
) -> Report:
    """The whole check: rows, the heads stored with the log and those published, event bytes
    removed outside retention (given the rules), and (deep) the query columns and tiles."""
    report = Report()
    leaves = check_rows(store.stored(conn), report)
    check_heads(leaves, [*store.checkpoints(conn), *published], key, report)
    if retention_rules is not None:
        check_removed(store.removed(conn), retention_rules, now or datetime.now(UTC), report)
    if deep:
        check_columns(store.attributions(conn), report)
        check_tiles(leaves, store.tiles(conn, 0, len(leaves) // store.TILE), report)
    return report


def check_tiles(leaves: Sequence[bytes], stored: Sequence[bytes], report: Report) -> None:
    """The stored tile roots proofs are built from, against the leaves (a wrong one would make
    proofs that fail, not false ones: this names it before anyone asks for a proof)."""
    for tile in range(len(leaves) // store.TILE):
        start = tile * store.TILE
        root = store.perfect_root(leaves[start : start + store.TILE])
        if tile >= len(stored) or stored[tile] != root:
            report.add(
                "tile",
                start + 1,
                f"the proof tile of rows {start + 1}..{start + store.TILE} is missing or wrong",
            )

"""One audit record: what it holds, its canonical bytes, and its Merkle leaf hash.

A record answers who (agent, human actor), what (event type, the event itself), when (the
event's UTC time and when the audit recorded it), where (the producing service and host, the
topic, partition and offset), source, outcome, policy hash and trace id: NIST SP 800-53 AU-3
and the record-keeping of the EU AI Act, Article 12.

The canonical bytes are written once, at append, into the `meta` column: the position, then
the attribution as a JSON array (which keeps None apart from "" and cannot be read two ways).
The leaf is RFC 6962's: SHA-256 over 0x00, `meta` and the SHA-256 of the event's bytes. The
event enters by digest so that a value removed under retention leaves its digest behind and the
record still verifies. The other columns are indexes for queries; `verify --deep` checks them
against `meta`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from charter.clock import as_utc

# RFC 6962, 2.1: leaves and interior nodes are hashed with different prefixes.
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"


@dataclass(frozen=True)
class Attribution:
    """Everything the audit records about an event besides its bytes."""

    event_id: str
    event_type: str
    run_id: str | None
    agent: str | None
    actor: str | None
    tenant: str | None
    occurred_at: datetime | None
    recorded_at_us: int
    topic: str
    partition: int
    offset: int
    service: str | None
    host: str | None
    source: str | None
    outcome: str | None
    policy_hash: str | None
    trace_id: str | None
    subject: str | None

    def as_row(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every field, which dominated the append path.
        return dict(vars(self))


FIELDS = tuple(Attribution.__dataclass_fields__)


def _time(at: datetime | None) -> str | None:
    return as_utc(at).isoformat(timespec="microseconds") if at is not None else None


def prefix(seq: int) -> bytes:
    return b"%d\n" % seq


def encode_meta(seq: int, a: Attribution) -> bytes:
    values = [getattr(a, f) for f in FIELDS]
    values[FIELDS.index("occurred_at")] = _time(a.occurred_at)
    return prefix(seq) + json.dumps(values, separators=(",", ":"), ensure_ascii=True).encode()


def decode_meta(meta: bytes) -> tuple[int, dict[str, Any]]:
    """The position and attribution fields `meta` holds (times as ISO 8601 text)."""
    head, _, body = meta.partition(b"\n")
    values = json.loads(body)
    # Fields are only ever added at the end: a record written before one was added lacks it.
    return int(head), {name: values[i] if i < len(values) else None for i, name in enumerate(FIELDS)}


def value_digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def leaf(meta: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + meta + digest).digest()


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def comparable(a: Attribution) -> dict[str, Any]:
    """The attribution as `decode_meta` gives it back, for comparing columns with `meta`."""
    row = a.as_row()
    row["occurred_at"] = _time(a.occurred_at)
    return row

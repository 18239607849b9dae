"""Signed tree heads: the audit's commitment that its first `size` records hash to `root`.

A head is signed with the audit key (Ed25519, `<keys dir>/audit.key`) over a fixed text, stored
with the log and published to `audit.checkpoints`, where it lives beyond the database's reach:
a log rewritten or cut short afterwards no longer matches a head someone else holds.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from charter.clock import derive_id
from charter.events import CheckpointSigned
from charter.signing import Signer, Verifier
from services.audit.store import Head

FORMAT = b"charter-audit-tree-head/1"
HEADS_KEY = "audit-heads"


def signed_text(size: int, root: bytes, signed_at_us: int) -> bytes:
    return b"%s\n%d\n%s\n%d\n" % (FORMAT, size, root.hex().encode(), signed_at_us)


def sign(signer: Signer, size: int, root: bytes, signed_at_us: int) -> Head:
    signature = signer.sign_bytes(signed_text(size, root, signed_at_us))
    return Head(size, root, signed_at_us, signer.verifier.key_id, signature)


def genuine(head: Head, key: Verifier) -> bool:
    return head.key_id == key.key_id and key.verify_bytes(
        signed_text(head.size, head.root, head.signed_at_us), head.signature
    )


def as_json(head: Head) -> dict[str, Any]:
    return {
        "size": head.size,
        "root": head.root.hex(),
        "signed_at_us": head.signed_at_us,
        "signed_at": datetime.fromtimestamp(head.signed_at_us / 1e6, UTC).isoformat(),
        "key_id": head.key_id,
        "signature": base64.urlsafe_b64encode(head.signature).decode(),
    }


def from_json(data: dict[str, Any]) -> Head:
    return Head(
        int(data["size"]),
        bytes.fromhex(data["root"]),
        int(data["signed_at_us"]),
        str(data["key_id"]),
        base64.urlsafe_b64decode(data["signature"].encode()),
    )


def event_of(head: Head, tenant: str) -> CheckpointSigned:
    fields = as_json(head)
    del fields["signed_at"]
    return CheckpointSigned.create(
        event_id=derive_id(f"audit-head/{head.key_id}", str(head.size)),
        now=datetime.fromtimestamp(head.signed_at_us / 1e6, UTC),
        tenant=tenant,
        # One key for every head (a head has no run, so its correlation id is its key): they share
        # one partition, whose order is then the order they were published in, which only grows.
        correlation_id=HEADS_KEY,
        **fields,
    )


def of_event(event: CheckpointSigned) -> Head:
    return from_json(event.model_dump(include={"size", "root", "signed_at_us", "key_id", "signature"}))

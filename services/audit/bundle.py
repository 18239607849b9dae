"""Evidence bundles: a run's (or a time range's) records, provable offline by anyone.

A bundle is a zip file:
  - `events.jsonl`: each record with its canonical bytes (`meta`), its event bytes as stored
    (personal fields sealed), the event decoded, and the personal fields opened where the
    subject's key still exists;
  - `proofs.jsonl`: an RFC 6962 inclusion proof of each record in the signed head;
  - `head.json`: the signed tree head; `audit.pub`: the audit's public key.
`verify_bundle` needs nothing else: no database, broker or configuration.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from charter import serde
from charter.errors import ConfigError, InvalidMessage
from charter.signing import Verifier
from services.audit import checkpoint, personal, record, store
from services.audit.merkle import InvalidProof, Tree, check_inclusion

FORMAT = "charter-evidence-bundle/1"


def _event_json(conn: Connection, row: Any, open_personal: bool) -> tuple[Any, Any]:
    if row.value is None:
        return None, None
    try:
        event = serde.decode(bytes(row.value))
    except InvalidMessage:
        return None, None
    decoded = event.model_dump(mode="json", context={"objects": True})
    if not open_personal:
        return decoded, None
    opened = personal.unseal(conn, event.event_id, json.loads(json.dumps(decoded)), row.subject)
    return decoded, (opened if opened != decoded else None)


def export(
    conn: Connection,
    key: Verifier,
    out: Path,
    *,
    run_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    open_personal: bool = False,
) -> tuple[int, store.Head]:
    """Write the bundle; return how many records it holds and the head they are proven in."""
    head = store.latest_checkpoint(conn)
    rows = list(store.selected(conn, run_id=run_id, since=since, until=until))
    if not rows:
        raise ConfigError("no audit records match")
    last = rows[-1].seq
    if head is None or head.size < last:
        raise ConfigError(
            f"record {last} is not covered by a signed head yet; the audit signs one within "
            "CHARTER_AUDIT_CHECKPOINT_SECONDS: export again then"
        )
    tree = Tree.over(lambda: conn)
    events, proofs = io.StringIO(), io.StringIO()
    for row in rows:
        decoded, opened = _event_json(conn, row, open_personal)
        line = {
            "seq": row.seq,
            "meta": base64.b64encode(row.meta).decode(),
            "value": base64.b64encode(row.value).decode() if row.value is not None else None,
            "value_digest": bytes(row.value_digest).hex() if row.value_digest is not None else None,
            "leaf_hash": bytes(row.leaf_hash).hex(),
            "attribution": record.decode_meta(bytes(row.meta))[1],
            "event": decoded,
            "personal_opened": opened,
        }
        events.write(json.dumps(line, sort_keys=True) + "\n")
        proofs.write(json.dumps({"seq": row.seq, "proof": tree.inclusion(row.seq, head.size)}) + "\n")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("FORMAT", FORMAT + "\n")
        z.writestr("events.jsonl", events.getvalue())
        z.writestr("proofs.jsonl", proofs.getvalue())
        z.writestr("head.json", json.dumps(checkpoint.as_json(head), indent=2) + "\n")
        z.writestr("audit.pub", key.pem())
    return len(rows), head


@dataclass
class BundleCheck:
    records: int = 0
    head: store.Head | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.records > 0


def _check_line(line: dict[str, Any], proof: dict[str, Any], head: store.Head) -> str | None:
    seq = int(line["seq"])
    meta = base64.b64decode(line["meta"])
    value = base64.b64decode(line["value"]) if line["value"] is not None else None
    digest = record.value_digest(value) if value is not None else bytes.fromhex(line["value_digest"] or "")
    leaf = record.leaf(meta, digest)
    if not meta.startswith(record.prefix(seq)):
        return f"record {seq}: its canonical bytes were written for another position"
    if record.decode_meta(meta)[1] != line["attribution"]:
        return f"record {seq}: the attribution shown differs from the one signed"
    try:
        check_inclusion(proof, leaf, head.root, seq, head.size)
    except InvalidProof as exc:
        return f"record {seq}: not proven in the signed head ({exc}): altered or not in the log"
    if value is None:
        if line["event"] is not None or line["personal_opened"] is not None:
            return f"record {seq}: an event is shown for bytes removed under retention"
        return None
    event = serde.decode(value).model_dump(mode="json", context={"objects": True}) if line["event"] else None
    if line["event"] is not None and event != line["event"]:
        return f"record {seq}: the decoded event shown differs from its signed bytes"
    if line["personal_opened"] is not None and not _opens(line["event"], line["personal_opened"]):
        return f"record {seq}: the personal data shown opened differs from the event beyond its sealed fields"
    return None


def _opens(sealed: Any, opened: Any) -> bool:
    """`opened` is `sealed` with sealed values replaced, and nothing else changed. (What a sealed
    value held cannot be checked without its subject's key; that it is where one was, can.)"""
    if isinstance(sealed, str) and sealed.startswith(personal.SEALED):
        return True
    if isinstance(sealed, dict) and isinstance(opened, dict):
        return sealed.keys() == opened.keys() and all(_opens(sealed[k], opened[k]) for k in sealed)
    if isinstance(sealed, list) and isinstance(opened, list):
        return len(sealed) == len(opened) and all(_opens(a, b) for a, b in zip(sealed, opened, strict=True))
    return bool(sealed == opened)


def verify_bundle(path: Path) -> BundleCheck:
    result = BundleCheck()
    try:
        with zipfile.ZipFile(path) as z:
            if z.read("FORMAT").decode().strip() != FORMAT:
                raise ConfigError(f"{path} is not a {FORMAT}")
            key = Verifier.from_pem(z.read("audit.pub"))
            head = checkpoint.from_json(json.loads(z.read("head.json")))
            events = z.read("events.jsonl").decode().splitlines()
            proofs = z.read("proofs.jsonl").decode().splitlines()
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"cannot read bundle {path}: {exc}") from exc
    result.head = head
    if not checkpoint.genuine(head, key):
        result.problems.append("the tree head's signature does not verify with the bundled key")
        return result
    try:
        by_seq = {int(p["seq"]): p["proof"] for p in map(json.loads, proofs)}
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"bundle {path}: proofs.jsonl is malformed: {exc}") from exc
    for number, text in enumerate(events, 1):
        try:
            line = json.loads(text)
            proof = by_seq.get(int(line["seq"]))
            problem = "no inclusion proof" if proof is None else _check_line(line, proof, head)
        except (ValueError, KeyError, TypeError, InvalidMessage) as exc:
            problem = f"line {number} of events.jsonl is malformed: {exc}"
        if problem:
            result.problems.append(problem)
        result.records += 1
    return result

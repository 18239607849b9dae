"""Evidence bundles: exported from the store, checked with nothing else, and every way of
doctoring one is caught."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from charter import signing
from charter.config import Settings
from charter.errors import ConfigError
from services.audit import bundle, store
from services.audit.service import Auditor
from tests.factories import RUN
from tests.unit.test_audit_log import _deliveries


@pytest.fixture
def exported(engine: Engine, tmp_path: Path) -> Path:
    signing.ensure_keys(tmp_path / "keys")
    store.create(engine)
    settings = Settings(home=tmp_path, keys_dir=tmp_path / "keys", audit_checkpoint_every=1)
    auditor = Auditor(engine, settings, signing.Signer.load(tmp_path / "keys", "audit"))
    asyncio.run(auditor.handle_batch(_deliveries()))
    out = tmp_path / "run.zip"
    with engine.connect() as conn:
        count, head = bundle.export(conn, signing.Verifier.load(tmp_path / "keys", "audit"), out, run_id=RUN)
    assert count > 5
    assert head.size >= count
    return out


def _doctored(path: Path, change: Callable[[dict[str, bytes]], None]) -> Path:
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    change(members)
    out = path.with_name("doctored.zip")
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out


def _lines(members: dict[str, bytes], name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in members[name].decode().splitlines()]


def _put(members: dict[str, bytes], name: str, lines: list[dict[str, Any]]) -> None:
    members[name] = "".join(json.dumps(line) + "\n" for line in lines).encode()


def test_an_exported_run_verifies(exported: Path) -> None:
    result = bundle.verify_bundle(exported)
    assert result.ok, result.problems


def _swap_values(members: dict[str, bytes]) -> None:
    lines = _lines(members, "events.jsonl")
    lines[0]["value"], lines[1]["value"] = lines[1]["value"], lines[0]["value"]
    _put(members, "events.jsonl", lines)


def _other_attribution(members: dict[str, bytes]) -> None:
    lines = _lines(members, "events.jsonl")
    lines[2]["attribution"]["actor"] = "someone else"
    _put(members, "events.jsonl", lines)


def _drop_proof(members: dict[str, bytes]) -> None:
    _put(members, "proofs.jsonl", _lines(members, "proofs.jsonl")[1:])


def _bent_proof(members: dict[str, bytes]) -> None:
    proofs = _lines(members, "proofs.jsonl")
    proofs[0]["proof"]["path"][-1] = "00" * 32
    _put(members, "proofs.jsonl", proofs)


def _other_root(members: dict[str, bytes]) -> None:
    head = json.loads(members["head.json"])
    head["root"] = "11" * 32
    members["head.json"] = json.dumps(head).encode()


def _event_for_removed_bytes(members: dict[str, bytes]) -> None:
    lines = _lines(members, "events.jsonl")
    value = base64.b64decode(lines[0]["value"])
    lines[0]["value"], lines[0]["value_digest"] = None, hashlib.sha256(value).hexdigest()
    _put(members, "events.jsonl", lines)


def _opened_beyond_sealed(members: dict[str, bytes]) -> None:
    lines = _lines(members, "events.jsonl")
    opened = json.loads(json.dumps(lines[0]["event"]))
    opened["envelope"]["tenant"] = "someone-else"
    lines[0]["personal_opened"] = opened
    _put(members, "events.jsonl", lines)


def _garbage_line(members: dict[str, bytes]) -> None:
    members["events.jsonl"] += b"{not json\n"


@pytest.mark.parametrize(
    ("change", "found"),
    [
        (_swap_values, "not proven in the signed head"),
        (_other_attribution, "attribution shown differs"),
        (_drop_proof, "no inclusion proof"),
        (_bent_proof, "not proven in the signed head"),
        (_other_root, "signature does not verify"),
        (_garbage_line, "is malformed"),
        (_event_for_removed_bytes, "an event is shown for bytes removed under retention"),
        (_opened_beyond_sealed, "differs from the event beyond its sealed fields"),
    ],
)
def test_a_doctored_bundle_is_caught(
    exported: Path, change: Callable[[dict[str, bytes]], None], found: str
) -> None:
    result = bundle.verify_bundle(_doctored(exported, change))
    assert not result.ok
    assert any(found in p for p in result.problems), result.problems


def test_a_foreign_key_signs_nothing_it_did_not(exported: Path, tmp_path: Path) -> None:
    signing.ensure_keys(tmp_path / "other", ("audit",))
    other = (tmp_path / "other" / "audit.pub").read_bytes()
    result = bundle.verify_bundle(_doctored(exported, lambda m: m.update({"audit.pub": other})))
    assert result.problems == ["the tree head's signature does not verify with the bundled key"]


def test_not_a_bundle_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="cannot read bundle"):
        bundle.verify_bundle(junk)

"""Signatures on the events that carry authority, and the binding of an approval to one action."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import Column, MetaData, String, Table, create_engine

from charter import signing
from charter.binding import action_hash
from charter.errors import ConfigError
from charter.events import ActionApproved
from charter.store import create_checked
from tests.factories import ACTION, RUN, one_of_each

APPROVED = next(e for e in one_of_each() if isinstance(e, ActionApproved))


def test_keys_are_made_once_with_the_private_half_readable_only_by_its_owner(tmp_path: Path) -> None:
    assert signing.ensure_keys(tmp_path) == ["policy", "approvals", "audit", "planner"]
    mode = stat.S_IMODE((tmp_path / "policy.key").stat().st_mode)
    assert mode == 0o600
    before = (tmp_path / "policy.key").read_bytes()
    assert signing.ensure_keys(tmp_path) == []
    assert (tmp_path / "policy.key").read_bytes() == before


def test_a_signature_covers_the_whole_event(tmp_path: Path) -> None:
    signing.ensure_keys(tmp_path)
    signer = signing.Signer.load(tmp_path, "policy")
    verifier = signing.Verifier.load(tmp_path, "policy")
    signed = signer.sign(APPROVED)
    assert verifier.verify(signed)
    # Deterministic (Ed25519): a redelivered input signs to the same bytes.
    assert signer.sign(APPROVED) == signed
    for changed in (
        {"approved_by": "policy"},
        {"revalidated": False},
        {"action": ACTION.model_copy(update={"parameters": {"amount": 1}})},
        {"envelope": signed.envelope.model_copy(update={"run_id": "other"})},
    ):
        assert not verifier.verify(signed.model_copy(update=changed))
    assert not verifier.verify(APPROVED.model_copy(update={"signature": None}))
    assert not verifier.verify(APPROVED.model_copy(update={"signature": "not base64!"}))
    # The other service's key does not verify it.
    assert not signing.Verifier.load(tmp_path, "approvals").verify(signed)


def test_a_missing_key_stops_the_service_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="charter keys init"):
        signing.Signer.load(tmp_path, "policy")
    with pytest.raises(ConfigError, match="charter keys init"):
        signing.Verifier.load(tmp_path, "approvals")


def test_the_binding_changes_with_anything_a_human_approves() -> None:
    base = action_hash(ACTION, RUN, "p1")
    assert base == action_hash(ACTION, RUN, "p1")
    assert len({
        base,
        action_hash(ACTION, "another-run", "p1"),
        action_hash(ACTION, RUN, "p2"),
        action_hash(ACTION.model_copy(update={"parameters": {**ACTION.parameters, "amount": 9}}), RUN, "p1"),
        action_hash(ACTION.model_copy(update={"step_index": 2}), RUN, "p1"),
        action_hash(ACTION.model_copy(update={"resource": "order/A-1002"}), RUN, "p1"),
    }) == 6  # fmt: skip


def test_a_table_an_older_version_made_stops_the_service_with_one_line(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    old = MetaData()
    Table("things", old, Column("id", String, primary_key=True))
    old.create_all(engine)
    new = MetaData()
    Table("things", new, Column("id", String, primary_key=True), Column("colour", String))
    with pytest.raises(ConfigError, match="lacks colour"):
        create_checked(engine, new)

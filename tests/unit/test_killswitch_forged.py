"""A switch the approvals service did not sign is dead-lettered, never applied, and never stops
the follower: not when its letter is too big to send whole, nor when sending fails."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from aiokafka.structs import ConsumerRecord
from sqlalchemy import create_engine

from charter import serde, signing
from charter.bus import Bus
from charter.config import Settings
from charter.events import DeadLettered, Event, KillSwitchSet
from charter.killswitch import ControlFollower, SwitchStore, switch_event
from charter.runtime.letters import LETTER_HEADROOM
from services.policy import store as policy_store


class Sent:
    def __init__(self, settings: Settings, fail: bool = False) -> None:
        self.settings = settings
        self.fail = fail
        self.events: list[Event] = []

    async def publish(self, *events: Event) -> None:
        if self.fail:
            raise RuntimeError("the broker refused it")
        self.events += events


def _follower(tmp_path: Path, fail: bool = False) -> tuple[ControlFollower, Sent, SwitchStore]:
    settings = Settings(home=tmp_path)
    signing.ensure_keys(settings.keys, ("approvals",))
    engine = create_engine(f"sqlite:///{tmp_path / 'policy.db'}")
    policy_store.create(engine)
    store = SwitchStore(engine, policy_store.switches)
    sent = Sent(settings, fail)
    follower = ControlFollower(settings, "policy", bus=cast(Bus, sent), engine=engine, store=store)
    return follower, sent, store


def _record(event: KillSwitchSet, offset: int = 7) -> ConsumerRecord[bytes, bytes]:
    value = serde.encode(event)
    return ConsumerRecord("charter.control", 0, offset, 0, 0, b"k", value, None, 1, len(value), ())


def _forged(reason: str = "forged") -> KillSwitchSet:
    return switch_event(
        agent="support-refunds", tool=None, active=True, reason=reason, set_by="omar",
        tenant="default", now=datetime.now(UTC),
    )  # fmt: skip


def _handle(follower: ControlFollower, record: ConsumerRecord[bytes, bytes]) -> Any:
    return asyncio.run(follower._handle(record))


def test_an_unsigned_switch_is_dead_lettered_and_not_applied(tmp_path: Path) -> None:
    follower, sent, store = _follower(tmp_path)
    _handle(follower, _record(_forged()))
    [letter] = sent.events
    assert isinstance(letter, DeadLettered)
    assert letter.error_type == "ForgedEvent"
    assert "not signed by the approvals service" in letter.reason
    assert store.active() == []
    # A genuine one, signed with the approvals key, is applied.
    genuine = signing.Signer.load(follower._settings.keys, "approvals").sign(_forged("genuine"))
    _handle(follower, _record(genuine, offset=8))
    assert [s.reason for s in store.active()] == ["genuine"]


def test_a_forged_switch_too_big_to_letter_whole_is_lettered_in_part(tmp_path: Path) -> None:
    follower, sent, store = _follower(tmp_path)
    big = _forged("x" * (follower._settings.max_message_bytes - 2000))
    _handle(follower, _record(big))
    [letter] = sent.events
    assert isinstance(letter, DeadLettered)
    assert letter.truncated
    assert letter.original_size is not None
    assert letter.original_size > follower._settings.max_message_bytes - 2000
    encoded = len(serde.encode(letter)) + len(letter.key or b"")
    assert encoded <= follower._settings.max_message_bytes - LETTER_HEADROOM
    assert store.active() == []


def test_a_letter_that_cannot_be_sent_does_not_stop_the_follower(tmp_path: Path) -> None:
    follower, sent, store = _follower(tmp_path, fail=True)
    _handle(follower, _record(_forged()))  # raises nothing
    assert sent.events == []
    assert store.active() == []

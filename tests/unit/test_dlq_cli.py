"""`charter dlq`: what a corrected event must pass before it is published, and what is printed.
No broker: the dead letters are made here."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from charter import serde, topics
from charter.cli import dlq, exits
from charter.config import Settings
from charter.errors import ConfigError, NotFound
from charter.events import DeadLettered, Event, RunStarted, TriggerReceived
from tests.factories import NOW, one_of_each, trigger
from tests.unit.test_cli import charter

SETTINGS = Settings(bootstrap_servers="127.0.0.1:9", tenant="acme")
TRIGGERS = "charter.triggers"


def _letter(value: bytes, reason: str = "not an Avro single-object record", offset: int = 0) -> dlq.Letter:
    dead = DeadLettered.create(
        event_id=f"0f1e2d3c-0000-5000-8000-00000000000{offset}",
        now=NOW,
        tenant="acme",
        correlation_id=f"{TRIGGERS}:1:{offset + 40}",
        source_topic=TRIGGERS,
        source_partition=1,
        source_offset=offset + 40,
        key=b"order-7",
        value=value,
        reason=reason,
        error_type="UndecodableRecord",
        service="planner",
    )
    return dlq.Letter(f"{TRIGGERS}.dlq", 0, offset, dead)


def _as_file(event: Event) -> dict[str, Any]:
    """An event as `dlq show --json` prints it: JSON-valued fields as objects."""
    body: dict[str, Any] = json.loads(json.dumps(event.model_dump(mode="json", context={"objects": True})))
    return body


POISON = _letter(b'{"order_id": "D-7001"}')


def test_a_corrected_trigger_is_encoded_for_the_topic_it_came_from() -> None:
    fixed = trigger(order_id="D-7001", amount=20)
    event, out = dlq.corrected(SETTINGS, POISON, _as_file(fixed))
    assert event == fixed
    assert out.topic == TRIGGERS
    assert out.key == fixed.envelope.correlation_id.encode()
    assert serde.decode(out.value) == fixed


def _without_name() -> dict[str, Any]:
    body = _as_file(trigger(order_id="D-7001"))
    del body["name"]
    return body


def _with_data(data: object) -> dict[str, Any]:
    body = _as_file(trigger(order_id="D-7001"))
    body["data"] = data
    return body


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "must be a JSON object"),
        ({"name": "x"}, "needs envelope.event_type, one of: ActionApproved"),
        ({"envelope": {"event_type": "Nope"}}, "needs envelope.event_type"),
        (_without_name(), "the corrected TriggerReceived is not valid: name: Field required"),
        (_with_data("[1]"), "the corrected TriggerReceived is not valid: data"),
        (
            _as_file(next(e for e in one_of_each() if isinstance(e, RunStarted))),
            "a RunStarted belongs on charter.runs, but this dead letter came from charter.triggers",
        ),
        (
            _as_file(next(e for e in one_of_each() if isinstance(e, DeadLettered))),
            "a DeadLettered belongs on",
        ),
    ],
)
def test_a_bad_fix_is_refused_with_the_reason(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        dlq.corrected(SETTINGS, POISON, data)
    assert message in str(raised.value)


def test_a_changed_event_may_not_keep_the_original_id() -> None:
    original = trigger(order_id="D-7001", amount=20)
    letter = _letter(serde.encode(original), reason="no agent handles it")
    changed = _as_file(original) | {"data": {"order_id": "D-7001", "amount": 25}}
    with pytest.raises(ConfigError, match=r"keeps the original's id .* give it a new envelope\.event_id"):
        dlq.corrected(SETTINGS, letter, changed)
    same, _ = dlq.corrected(SETTINGS, letter, _as_file(original))
    assert same == original


@pytest.mark.parametrize("named", ["triggers", "triggers.dlq", "charter.triggers", "charter.triggers.dlq"])
def test_a_dlq_topic_may_be_named_as_its_source(named: str) -> None:
    assert dlq.dlq_topics(SETTINGS, named) == ["charter.triggers.dlq"]


def test_every_dlq_topic_by_default_and_nothing_else() -> None:
    names = dlq.dlq_topics(SETTINGS, None)
    assert len(names) == len(topics.Topic)
    assert all(n.startswith("charter.") and n.endswith(".dlq") for n in names)
    with pytest.raises(ConfigError, match=r"unknown topic 'nope\.dlq'"):
        dlq.dlq_topics(SETTINGS, "nope")


def _read(letters: list[dlq.Letter], others: int = 0) -> Any:
    return lambda _settings, _names: (letters, others)


def test_list_prints_one_row_each_with_the_reason_cut(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    long = _letter(b"x", reason="no " + "very " * 40 + "long", offset=1)
    monkeypatch.setattr(dlq, "read_letters", _read([POISON, long], others=1))
    dlq.list_(topic=None, as_json=False, limit=100)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["id", "when", "(UTC)", "service", "source", "error", "reason"]
    assert lines[1].split()[:6] == [
        "0f1e2d3c",
        "2026-11-22",
        "12:00:00",
        "planner",
        "triggers@1:40",
        "UndecodableRecord",
    ]
    assert lines[2].endswith("…")
    assert len(lines[2].split("UndecodableRecord")[1].strip()) == dlq.REASON_WIDTH
    assert lines[3:] == ["-- 2 of 2 dead letters", "-- and 1 records in DLQ topics that are not dead letters"]


def test_list_json_keeps_the_full_reason_and_the_limit_keeps_the_latest(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    long = _letter(b"\xff\x00", reason="no " + "very " * 40 + "long", offset=1)
    monkeypatch.setattr(dlq, "read_letters", _read([POISON, long]))
    dlq.list_(topic=None, as_json=True, limit=1)
    [line] = capsys.readouterr().out.splitlines()
    record = json.loads(line)
    assert record["reason"] == long.event.reason
    assert record["value_base64"] == "/wA="
    assert (record["key"], record["dlq_offset"], record["source_offset"]) == ("order-7", 1, 41)


def test_show_prints_a_decodable_original_as_json_and_an_undecodable_one_as_bytes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = trigger(order_id="D-7001", amount=20)
    decodable = _letter(serde.encode(original), reason="no agent", offset=1)
    monkeypatch.setattr(dlq, "read_letters", _read([POISON, decodable]))
    dlq.show(letter_id="0f1e2d3c-0000-5000-8000-000000000001", as_json=False)
    out = capsys.readouterr().out
    assert "dead letter 0f1e2d3c-0000-5000-8000-000000000001 at charter.triggers.dlq:0:1" in out
    assert "a TriggerReceived:" in out
    shown = json.loads(out[out.index("{") :])
    assert TriggerReceived.model_validate(shown) == original
    dlq.show(letter_id="0f1e2d3c-0000-5000-8000-000000000000", as_json=False)
    out = capsys.readouterr().out
    assert "does not decode: not an Avro single-object record (missing C3 01 marker)" in out
    assert b'{"order_id": "D-7001"}'.hex() in out
    with pytest.raises(ConfigError, match="2 dead letters have ids starting '0f1e'"):
        dlq.show(letter_id="0f1e", as_json=False)
    with pytest.raises(NotFound, match="no dead letter with an id starting 'abcd'"):
        dlq.show(letter_id="abcd", as_json=False)


def test_replay_without_yes_asks_and_never_asks_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    with pytest.raises(ConfigError, match="add --yes"):
        dlq._confirm("publish?")


def test_with_no_stack_every_command_says_so_in_one_line(tmp_path: Path) -> None:
    for args in (["list"], ["show", "abcd"], ["replay", "abcd", "--yes"]):
        result = charter("dlq", *args, home=tmp_path)
        assert result.returncode == exits.UNAVAILABLE, result.stderr
        assert result.stderr.startswith("charter: no broker: start the stack with `charter up`")
        assert len(result.stderr.strip().splitlines()) == 1


BIG = b"\xee" * 1_200_000
TRUNCATED = dlq.Letter(
    f"{TRIGGERS}.dlq",
    0,
    2,
    POISON.event.model_copy(
        update={
            "envelope": POISON.event.envelope.model_copy(
                update={"event_id": "0f1e2d3c-0000-5000-8000-000000000002"}
            ),
            "value": BIG[:1024],
            "truncated": True,
            "original_size": len(BIG),
            "digest": "sha256:" + "ab" * 32,
        }
    ),
)


def test_list_says_first_what_is_known_of_an_original_too_big_to_keep(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(dlq, "read_letters", _read([POISON, TRUNCATED]))
    dlq.list_(topic=None, as_json=False, limit=100)
    lines = capsys.readouterr().out.splitlines()
    assert "[original not kept" not in lines[1]
    assert (
        lines[2]
        .split("UndecodableRecord")[1]
        .strip()
        .startswith("[original not kept: 1200000 bytes, sha256:ab")
    )
    dlq.list_(topic=None, as_json=True, limit=100)
    kept, cut = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert (kept["truncated"], kept["digest"], kept["original_size"]) == (False, None, None)
    assert (cut["truncated"], cut["digest"], cut["original_size"]) == (True, "sha256:" + "ab" * 32, 1_200_000)


def test_show_gives_the_digest_size_and_first_bytes_of_an_original_too_big_to_keep(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(dlq, "read_letters", _read([TRUNCATED]))
    dlq.show(letter_id="0f1e", as_json=False)
    out = capsys.readouterr().out
    assert f"original value (1200000 bytes, sha256:{'ab' * 32}) was too big for the broker" in out
    assert f"its first 1024 bytes:\n  base64 {base64.b64encode(BIG[:1024]).decode()}" in out
    dlq.show(letter_id="0f1e", as_json=True)
    assert json.loads(capsys.readouterr().out)["original_error"] == "only its first 1024 bytes were kept"


def test_the_first_bytes_of_an_original_are_never_replayed_as_the_original(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dlq, "read_letters", _read([TRUNCATED]))
    with pytest.raises(ConfigError, match="kept only the first 1024 of the original's 1200000 bytes"):
        dlq.replay(letter_id="0f1e", event_file=None, yes=True)

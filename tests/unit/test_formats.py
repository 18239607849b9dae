"""--output, taken wherever it stands on the command line, and what each format prints."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from charter.cli import formats
from charter.errors import ConfigError


@pytest.fixture(autouse=True)
def _text_again() -> Iterator[None]:
    yield
    formats.take(["--output", "text"])


@pytest.mark.parametrize(
    ("argv", "rest", "chosen"),
    [
        (["runs"], ["runs"], formats.Format.TEXT),
        (["--output", "json", "runs"], ["runs"], formats.Format.JSON),
        (["runs", "list", "--output", "jsonl", "--limit", "3"], ["runs", "list", "--limit", "3"], "jsonl"),
        (["runs", "--output=json"], ["runs"], formats.Format.JSON),
        (
            ["publish", "x", "--data", "{}", "--", "--output", "json"],
            ["publish", "x", "--data", "{}", "--", "--output", "json"],
            "text",
        ),
    ],
)
def test_output_is_taken_anywhere_before_a_double_dash(argv: list[str], rest: list[str], chosen: str) -> None:
    assert formats.take(argv) == rest
    assert formats.chosen() == chosen


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ConfigError, match="--output takes text, json or jsonl, not 'yaml'"):
        formats.take(["--output", "yaml"])


def test_a_commands_own_json_flag_means_jsonl_unless_a_format_was_chosen(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert formats.chosen(as_json=True) is formats.Format.JSONL
    formats.one({"id": "a"}, lambda: print("as text"), as_json=True)
    assert capsys.readouterr().out == '{"id": "a"}\n'
    formats.take(["--output", "json"])
    assert formats.chosen(as_json=True) is formats.Format.JSON


def test_each_format_prints_listings_and_single_things(capsys: pytest.CaptureFixture[str]) -> None:
    at = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    records: list[dict[str, Any]] = [{"id": "a", "at": at}, {"id": "b", "at": None}]
    formats.listing(records, lambda: print("as text"))
    assert capsys.readouterr().out == "as text\n"
    formats.take(["--output", "json"])
    formats.listing(records, lambda: print("as text"))
    assert json.loads(capsys.readouterr().out) == [{"id": "a", "at": at.isoformat()}, {"id": "b", "at": None}]
    formats.one(records[0], lambda: print("as text"))
    assert json.loads(capsys.readouterr().out) == {"id": "a", "at": at.isoformat()}
    formats.take(["--output", "jsonl"])
    formats.listing(records, lambda: print("as text"))
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == ["a", "b"]

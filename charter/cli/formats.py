"""`--output text|json|jsonl`: the one format every listing and showing command prints in.

It is global, so it is taken wherever it stands on the command line (`charter --output json runs`
and `charter runs list --output json` alike) before the command parses the rest. `json` prints a
listing as one array and a single thing as one object; `jsonl` prints one object a line. Streams
(`tail`, `replay`) print one object a line for both. A command's own older `--json` means `jsonl`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from charter.errors import ConfigError


class Format(StrEnum):
    TEXT = "text"
    JSON = "json"
    JSONL = "jsonl"


_chosen = [Format.TEXT]
OPTION = "--output"


def take(argv: list[str]) -> list[str]:
    """`argv` without its `--output X` (or `--output=X`), which sets the format."""
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            rest.extend(["--", *args])
            break
        if arg == OPTION:
            _choose(next(args, ""))
        elif arg.startswith(f"{OPTION}="):
            _choose(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return rest


def _choose(value: str) -> None:
    try:
        _chosen[0] = Format(value)
    except ValueError:
        raise ConfigError(f"{OPTION} takes text, json or jsonl, not {value!r}") from None


def chosen(as_json: bool = False) -> Format:
    """The format in force; a command's own `--json` asks for jsonl when none was chosen."""
    return Format.JSONL if as_json and _chosen[0] is Format.TEXT else _chosen[0]


def as_data(as_json: bool = False) -> bool:
    """Whether to print data (either JSON format) rather than text."""
    return chosen(as_json) is not Format.TEXT


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def dumps(record: Any, *, pretty: bool = False) -> str:
    return json.dumps(record, default=_plain, indent=2 if pretty else None, sort_keys=False)


def data_listing(records: Sequence[Mapping[str, Any]], as_json: bool = False) -> None:
    """Print `records` as data: one JSON array, or one object a line for jsonl."""
    if chosen(as_json) is Format.JSON:
        print(dumps(list(records), pretty=True))
    else:
        for record in records:
            print(dumps(record))


def data_one(record: Mapping[str, Any], as_json: bool = False) -> None:
    """Print one thing as data: indented for json, on one line for jsonl."""
    print(dumps(record, pretty=chosen(as_json) is Format.JSON))


def listing(records: Sequence[Mapping[str, Any]], text: Callable[[], None], as_json: bool = False) -> None:
    """Print `records` in the chosen format, or as `text` draws them."""
    if as_data(as_json):
        data_listing(records, as_json)
    else:
        text()


def one(record: Mapping[str, Any], text: Callable[[], None], as_json: bool = False) -> None:
    """Print one thing in the chosen format, or as `text` draws it."""
    if as_data(as_json):
        data_one(record, as_json)
    else:
        text()

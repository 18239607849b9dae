"""Every schema change stays compatible both ways with every version of that schema ever
committed: a new reader reads old events (backward) and an old reader reads new ones (forward).
The check is Apache Avro's own (avro.compatibility), on whole schemas with their named types."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from avro.schema import Schema, parse
from fastavro.schema import parse_schema

from charter.serde import standalone
from tests.conftest import REPO

SCHEMAS = "schemas"


def _git(*args: str) -> str:
    result = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"the compatibility test needs the git history: git {' '.join(args)}: {result.stderr}")
    return result.stdout


def _standalone(read: Callable[[str], str | None], name: str, types: list[str]) -> Schema | None:
    """Schema `name` with its named types written in, from files `read` returns (None: absent)."""
    text = read(f"{SCHEMAS}/{name}.avsc")
    if text is None:
        return None
    named: dict[str, Any] = {}
    for t in types:
        body = read(f"{SCHEMAS}/types/{t}")
        if body is not None:
            parse_schema(json.loads(body), named_schemas=named)
    return parse(json.dumps(standalone(json.loads(text), named)))


def _at(commit: str) -> Callable[[str], str | None]:
    def read(path: str) -> str | None:
        result = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{commit}:{path}"], capture_output=True, text=True, check=False
        )
        return result.stdout if result.returncode == 0 else None

    return read


def _now(path: str) -> str | None:
    file = REPO / path
    return file.read_text() if file.exists() else None


def _history() -> list[str]:
    """Every commit that touched the schemas, newest first."""
    return _git("log", "--format=%H", "--", SCHEMAS).split()


def _names() -> list[str]:
    return sorted(p.stem for p in (REPO / SCHEMAS).glob("*.avsc"))


def _types() -> list[str]:
    return sorted(p.name for p in (REPO / SCHEMAS / "types").glob("*.avsc"))


def compatible(reader: Schema, writer: Schema) -> bool:
    checker = ReaderWriterCompatibilityChecker()  # type: ignore[no-untyped-call]  # avro ships no types
    result = checker.get_compatibility(reader, writer)
    return bool(result.compatibility is SchemaCompatibilityType.compatible)


def test_there_is_history_to_check_against() -> None:
    assert _history(), "no commit touched schemas/: nothing to be compatible with"


@pytest.mark.parametrize("name", _names())
def test_each_schema_is_compatible_both_ways_with_every_committed_version(name: str) -> None:
    current = _standalone(_now, name, _types())
    assert current is not None
    checked = 0
    for commit in _history():
        old = _standalone(_at(commit), name, _types())
        if old is None:
            continue  # the schema did not exist yet at that commit
        assert compatible(current, old), f"{name}: the new reader cannot read events written at {commit[:12]}"
        assert compatible(old, current), f"{name}: readers at {commit[:12]} cannot read new events"
        checked += 1
    # Every schema present now either is in the history or is brand new in this change.
    assert checked or _at("HEAD")(f"{SCHEMAS}/{name}.avsc") is None


def _record(*fields: dict[str, Any]) -> Schema:
    return parse(json.dumps({"type": "record", "name": "charter.X", "fields": list(fields)}))


def test_the_checker_catches_the_changes_that_break_readers() -> None:
    base = _record({"name": "a", "type": "string"})
    added_required = _record({"name": "a", "type": "string"}, {"name": "b", "type": "string"})
    added_optional = _record(
        {"name": "a", "type": "string"}, {"name": "b", "type": ["null", "string"], "default": None}
    )
    retyped = _record({"name": "a", "type": "int"})
    # A new required field: new readers cannot read old events.
    assert not compatible(added_required, base)
    # A field with a default: fine both ways.
    assert compatible(added_optional, base)
    assert compatible(base, added_optional)
    # A changed type breaks both directions.
    assert not compatible(retyped, base)
    assert not compatible(base, retyped)

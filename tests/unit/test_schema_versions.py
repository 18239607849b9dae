"""Events written by an earlier version of a schema stay readable: every committed version is
kept in schemas/versions, and the decoder resolves it into the current model."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import parse_schema

from charter import serde
from charter.events import EVENT_TYPES, Event
from tests.conftest import REPO
from tests.factories import one_of_each

VERSIONS = REPO / "schemas" / "versions"


def test_every_committed_version_of_every_schema_is_kept() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "schema_versions.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"run scripts/schema_versions.py: {done.stdout}{done.stderr}"


@pytest.mark.parametrize("path", sorted(VERSIONS.glob("*.avsc")), ids=lambda p: p.name)
def test_each_kept_version_is_named_by_its_own_fingerprint(path: Path) -> None:
    name, fp, _ = path.name.split(".")
    writer = serde.schemas().by_fingerprint[bytes.fromhex(fp)]
    assert writer.name == name


def _old_bytes(path: Path, event: Event) -> bytes:
    """`event` as the writer of that version would have written it: only the fields it knew."""
    schema = parse_schema(json.loads(path.read_text()))

    def known(record: dict[str, Any], fields: list[dict[str, Any]]) -> dict[str, Any]:
        return {f["name"]: record[f["name"]] for f in fields}

    record = known(event.model_dump(), json.loads(path.read_text())["fields"])
    buffer = io.BytesIO()
    buffer.write(serde.MARKER + bytes.fromhex(path.name.split(".")[1]))
    fastavro.schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


@pytest.mark.parametrize("path", sorted(VERSIONS.glob("*.avsc")), ids=lambda p: p.name)
def test_an_event_written_by_an_old_version_decodes_into_the_current_model(path: Path) -> None:
    name = path.name.split(".")[0]
    if name not in EVENT_TYPES:
        pytest.fail(f"{path.name} is kept for an event type Charter no longer has")
    event = next(e for e in one_of_each() if type(e).__name__ == name)
    data = _old_bytes(path, event)
    decoded = serde.decode(data)
    assert type(decoded) is type(event)
    # Everything the old version carried comes through (nested records included) ...
    assert _old_bytes(path, decoded) == data
    # ... and fields it lacked take their defaults.
    old_fields = {f["name"] for f in json.loads(path.read_text())["fields"]}
    for field, info in type(event).model_fields.items():
        if field not in old_fields:
            assert getattr(decoded, field) == info.default, field

"""Keep every committed version of every event schema readable.

    .venv/bin/python scripts/schema_versions.py          # writes what is missing
    .venv/bin/python scripts/schema_versions.py --check  # exits 1 if anything is missing

An event on a topic or in the audit log names its writer schema by fingerprint. Once a schema
changes, the old fingerprint must still resolve, so each version that was ever committed, and
the one in the working tree, is kept whole (named types written in) as
`schemas/versions/<Name>.<fingerprint>.avsc`; the decoder reads old events with the current
schema through Avro's schema resolution. Run it with every schema change, and commit what it
writes with the change (the unit tests fail until then).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from charter.serde import standalone

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = "schemas"
VERSIONS = REPO / SCHEMAS / "versions"


def _git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)


def _files_at(commit: str | None, folder: str) -> list[str]:
    """The .avsc files in a folder at a commit, or in the working tree (None)."""
    if commit is None:
        return sorted(p.name for p in (REPO / folder).glob("*.avsc"))
    listed = _git("ls-tree", "--name-only", f"{commit}:{folder}")
    return [n for n in listed.stdout.split() if n.endswith(".avsc")] if listed.returncode == 0 else []


def _read_at(commit: str | None, path: str) -> str:
    if commit is None:
        return (REPO / path).read_text()
    return _git("show", f"{commit}:{path}").stdout


def versions_at(commit: str | None) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each event schema at `commit` (None: the working tree): name -> (fingerprint, schema)."""
    named: dict[str, Any] = {}
    for name in _files_at(commit, f"{SCHEMAS}/types"):
        parse_schema(json.loads(_read_at(commit, f"{SCHEMAS}/types/{name}")), named_schemas=named)
    out = {}
    for name in _files_at(commit, SCHEMAS):
        whole = standalone(json.loads(_read_at(commit, f"{SCHEMAS}/{name}")), named)
        canonical = to_parsing_canonical_form(parse_schema(whole))
        out[name.removesuffix(".avsc")] = (fingerprint(canonical, "CRC-64-AVRO"), whole)
    return out


def all_versions() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every version of every schema, in the history and in the working tree:
    file name -> (name, whole schema)."""
    commits: list[str | None] = [None, *_git("log", "--format=%H", "--", SCHEMAS).stdout.split()]
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for commit in commits:
        for name, (fp, whole) in versions_at(commit).items():
            found.setdefault(f"{name}.{fp}.avsc", (name, whole))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Report what is missing; write nothing.")
    args = parser.parse_args()
    versions = all_versions()
    missing = {f: v for f, v in versions.items() if not (VERSIONS / f).exists()}
    # A version written for a working tree that was never committed is no version at all.
    stray = sorted(p.name for p in VERSIONS.glob("*.avsc") if p.name not in versions)
    if args.check:
        for file in sorted(missing):
            print(f"missing: {SCHEMAS}/versions/{file}")
        for file in stray:
            print(f"not a version of any schema: {SCHEMAS}/versions/{file}")
        return 1 if missing or stray else 0
    VERSIONS.mkdir(exist_ok=True)
    for file, (_, whole) in sorted(missing.items()):
        (VERSIONS / file).write_text(json.dumps(whole, indent=2) + "\n")
        print(f"wrote {SCHEMAS}/versions/{file}")
    for file in stray:
        (VERSIONS / file).unlink()
        print(f"removed {SCHEMAS}/versions/{file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""charter audit verify | proof | export | verify-bundle | replay-decisions | purge | retention"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy import Connection

from charter import agents as agent_files
from charter import tools, topics
from charter.cli import formats
from charter.cli.helptext import WholeSummaries
from charter.cli.output import console
from charter.cli.stores import open_store, resolve_id
from charter.client import Client
from charter.clock import as_utc
from charter.config import Settings
from charter.errors import ConfigError, NotFound
from charter.events import CheckpointSigned
from charter.signing import Verifier
from services.audit import bundle, checkpoint, personal, redecide, retention, store
from services.audit.merkle import InvalidProof, Tree, check_consistency, check_inclusion
from services.audit.store import Head
from services.audit.verify import Report
from services.audit.verify import verify as verify_log
from services.policy.bundle import PolicyBundle

app = typer.Typer(no_args_is_help=True, help="The tamper-evident record of every event.")
proof_app = typer.Typer(no_args_is_help=True, help="Inclusion and consistency proofs (RFC 6962).")
app.add_typer(proof_app, name="proof", cls=WholeSummaries)


def _key(settings: Settings) -> Verifier:
    return Verifier.load(settings.keys, "audit")


async def _published(settings: Settings) -> list[Head]:
    name = topics.name(settings, topics.Topic.AUDIT_CHECKPOINTS)
    heads = []
    async with Client(settings) as client:
        async for received in client.replay(name):
            if isinstance(received.event, CheckpointSigned):
                heads.append(checkpoint.of_event(received.event))
    return heads


def _print_report(report: Report, published: int | None) -> None:
    witnessed = "not read (--offline)" if published is None else f"{published} published"
    if report.ok:
        console.print(
            f"audit log verified: {report.rows} records, {report.heads} signed heads checked "
            f"({witnessed}), root {report.root.hex()[:16]}; {report.unsigned} records after the "
            "newest head await the next",
            markup=False,
        )
        return
    console.print(f"audit log BROKEN: {len(report.problems) + report.more} problems", markup=False)
    for problem in report.problems:
        console.print(f"  [{problem.kind}] {problem.message}", markup=False)
    if report.more:
        console.print(f"  ... and {report.more} more", markup=False)


@app.command("verify")
def verify(
    offline: Annotated[
        bool, typer.Option("--offline", help="Skip the heads published on the broker (audit.checkpoints).")
    ] = False,
    fast: Annotated[
        bool,
        typer.Option(
            "--fast", help="Skip the query columns and proof tiles; the cryptographic checks remain."
        ),
    ] = False,
) -> None:
    """Check every record against its leaf hash and the tree against every signed head (stored
    and published). Names each changed, deleted, inserted or reordered row, truncation and
    forks. Exit 1 if anything is wrong."""
    settings = Settings()
    engine = open_store(settings, "audit")
    with engine.connect() as conn:
        sent = store.published_sizes(conn)  # before reading the broker, which then holds them all
    published = None if offline else asyncio.run(_published(settings))
    with engine.connect() as conn:
        report = verify_log(
            conn,
            _key(settings),
            published or (),
            deep=not fast,
            retention_rules=retention.parse(settings.audit_retention),
        )
    gone = sorted(sent - {h.size for h in published}) if published is not None else []
    record = {
        "ok": report.ok,
        "records": report.rows,
        "signed_heads": report.heads,
        "published_heads": None if published is None else len(published),
        "root": report.root.hex(),
        "unsigned_records": report.unsigned,
        "problems": [{"kind": p.kind, "message": p.message} for p in report.problems],
        "more_problems": report.more,
        "published_heads_gone": gone,
    }
    formats.one(record, lambda: _print_report(report, None if published is None else len(published)))
    if gone and not formats.as_data():
        sizes = ", ".join(map(str, gone[:5])) + ("..." if len(gone) > 5 else "")
        console.print(
            f"warning: {len(gone)} heads the audit published are not on audit.checkpoints any more "
            f"(sizes {sizes}): deleted or expired there (Tansu, `--broker tansu`, keeps topics in memory, so "
            "a restart of `charter up` loses them), so they cannot witness against a log cut short "
            "behind them",
            markup=False,
        )
    if not report.ok:
        raise typer.Exit(1)


def _head(conn_heads: list[Head], size: int | None, key: Verifier) -> Head:
    """A stored head of `size` (default: the newest), refused unless the audit key signed it."""
    if not conn_heads:
        raise ConfigError("no signed head yet")
    found = conn_heads[-1] if size is None else next((h for h in conn_heads if h.size == size), None)
    if found is None:
        sizes = ", ".join(str(h.size) for h in conn_heads[-5:])
        raise NotFound(f"no signed head of size {size}; the newest: {sizes}")
    if not checkpoint.genuine(found, key):
        raise ConfigError(f"the stored head of size {found.size} is not signed by the audit key")
    return found


def _not_proven(what: str, exc: InvalidProof) -> typer.Exit:
    console.print(f"{what} does NOT verify: {exc}; run `charter audit verify`", markup=False)
    return typer.Exit(1)


@proof_app.command("inclusion")
def proof_inclusion(
    seq: Annotated[int, typer.Argument(min=1, help="The record's position (seq).")],
    size: Annotated[int | None, typer.Option(help="The signed head's size (default: the newest).")] = None,
) -> None:
    """Print, as JSON, the proof that a record is in a signed head, and check it."""
    settings = Settings()
    with open_store(settings, "audit").connect() as conn:
        head = _head(store.checkpoints(conn), size, _key(settings))
        if seq > head.size:
            raise ConfigError(f"record {seq} is after the head of size {head.size}")
        # The leaf as the record's content gives it, not as stored beside it.
        leaf = store.content_leaf(conn, seq)
        if leaf is None:
            raise NotFound(f"there is no record {seq}")
        proof = Tree.over(lambda: conn).inclusion(seq, head.size)
    try:
        check_inclusion(proof, leaf, head.root, seq, head.size)
    except InvalidProof as exc:
        raise _not_proven(f"record {seq}'s inclusion in the head of size {head.size}", exc) from exc
    out = {"seq": seq, "leaf_hash": leaf.hex(), "head": checkpoint.as_json(head), "proof": proof}
    print(json.dumps(out, indent=2))


@proof_app.command("consistency")
def proof_consistency(
    old: Annotated[int, typer.Argument(min=1, help="The earlier head's size.")],
    new: Annotated[int, typer.Argument(min=1, help="The later head's size.")],
) -> None:
    """Print, as JSON, the proof that the earlier signed head is a prefix of the later, and check it."""
    settings = Settings()
    with open_store(settings, "audit").connect() as conn:
        heads, key = store.checkpoints(conn), _key(settings)
        prior, later = _head(heads, old, key), _head(heads, new, key)
        if prior.size > later.size:
            raise ConfigError("the earlier head must not be larger than the later")
        proof = Tree.over(lambda: conn).consistency(prior.size, later.size)
    try:
        check_consistency(proof, (prior.size, prior.root), (later.size, later.root))
    except InvalidProof as exc:
        raise _not_proven(f"the consistency of heads {prior.size} and {later.size}", exc) from exc
    out = {"prior": checkpoint.as_json(prior), "later": checkpoint.as_json(later), "proof": proof}
    print(json.dumps(out, indent=2))


@app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="The bundle to write (a zip file).")],
    run_id: Annotated[
        str | None, typer.Option("--run", help="One run's records: its id, or its first characters.")
    ] = None,
    since: Annotated[
        datetime | None, typer.Option("--from", help="Records from this time (ISO 8601; UTC if no zone).")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option("--to", help="Records before this time (ISO 8601; UTC if no zone).")
    ] = None,
    open_personal: Annotated[
        bool,
        typer.Option(
            "--open-personal", help="Also write the sealed personal fields opened (where not purged)."
        ),
    ] = False,
) -> None:
    """Write an evidence bundle: the records as JSONL, their inclusion proofs, the signed head
    and the public key. `charter audit verify-bundle` checks it with nothing else."""
    if not (run_id or since or until):
        raise ConfigError("give --run ID, or --from/--to")
    settings = Settings()
    with open_store(settings, "audit").connect() as conn:
        run_id = _full_run_id(conn, run_id)
        count, head = bundle.export(
            conn,
            _key(settings),
            out,
            run_id=run_id,
            since=as_utc(since) if since else None,
            until=as_utc(until) if until else None,
            open_personal=open_personal,
        )
    print(
        f"wrote {out}: {count} records, proven in the head of size {head.size} (root {head.root.hex()[:16]})"
    )


def _full_run_id(conn: Connection, prefix: str | None) -> str | None:
    """The run an id or prefix names in the audit store (these commands read it directly)."""
    return None if prefix is None else resolve_id(store.run_ids(conn, prefix=prefix, limit=2), prefix, "run")


@app.command("verify-bundle")
def verify_bundle(
    path: Annotated[Path, typer.Argument(help="A bundle from `charter audit export`.")],
    key_id: Annotated[
        str | None, typer.Option("--key-id", help="Require this audit key id (from `charter keys show`).")
    ] = None,
) -> None:
    """Check an evidence bundle offline: every record's bytes against its inclusion proof and the
    signed head, needing no database, broker or configuration. Exit 1 if anything fails."""
    result = bundle.verify_bundle(path)
    head = result.head
    assert head is not None
    if key_id and head.key_id != key_id:
        result.problems.append(f"signed by key {head.key_id}, not the required {key_id}")
    if result.ok:
        pinned = (
            "the required key"
            if key_id
            else "the key in the bundle, NOT PINNED: compare its id with the audit key's "
            "(`charter keys show`), or pass --key-id"
        )
        console.print(
            f"bundle verified: {result.records} records proven in the head of size {head.size} "
            f"signed at {checkpoint.as_json(head)['signed_at']} by key {head.key_id}, {pinned}",
            markup=False,
        )
        return
    console.print(f"bundle BROKEN: {len(result.problems)} problems", markup=False)
    for problem in result.problems:
        console.print(f"  {problem}", markup=False)
    raise typer.Exit(1)


@app.command("purge")
def purge(
    subject: Annotated[str, typer.Option("--subject", help="The data subject's id.")],
    by: Annotated[str, typer.Option("--by", help="Who asked for the purge, for the record.")],
) -> None:
    """Erase a data subject's personal data from the audit log by deleting its key
    (crypto-shredding). Records and hashes stay; the chain still verifies."""
    settings = Settings()
    purged = personal.purge(open_store(settings, "audit"), subject, by)
    if not purged.found:
        print(f"nothing to purge: no personal data of {subject} is held")
        return
    print(f"purged: the personal data of {subject} can no longer be read")
    if not purged.scrubbed:
        print(
            "warning: the database's write-ahead log stayed busy; the deleted key's bytes leave it "
            "at its next checkpoint"
        )


@app.command("retention")
def apply_retention(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, remove nothing.")] = False,
) -> None:
    """Remove event bytes older than their tenant's retention (CHARTER_AUDIT_RETENTION), keeping
    each record's attribution and digest, so the log still verifies."""
    settings = Settings()
    rules = retention.parse(settings.audit_retention)
    if not rules:
        raise ConfigError("CHARTER_AUDIT_RETENTION is not set: everything is kept")
    removed = retention.apply(open_store(settings, "audit"), rules, datetime.now(UTC), dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for tenant, count in sorted(removed.items()):
        print(f"{tenant}: {verb} the event bytes of {count} records")
    if not removed:
        print("nothing is past its retention")


@app.command("replay-decisions")
def replay_decisions(
    run_id: Annotated[
        str | None, typer.Option("--run", help="Only this run: its id, or its first characters.")
    ] = None,
) -> None:
    """Feed the recorded history back through the planner's and policy's decide functions, each
    decision under the policy version it recorded, and check they give the outputs the log holds.
    Names every divergence with the event that caused it; exit 1 if there is one."""
    settings = Settings()
    registry = tools.load(settings.tool_module_list())
    agents = agent_files.load(settings.agents_dir, registry)
    with open_store(settings, "audit").connect() as conn:
        run_id = _full_run_id(conn, run_id)
        events, purged = personal.history(conn)
    result = redecide.replay(
        events,
        agents,
        registry,
        Verifier.load(settings.keys, "approvals"),
        run_id=run_id,
        known=[PolicyBundle.load(settings.policies_dir)],
    )
    if purged:
        result.skipped["events whose personal data was purged"] = purged
    skipped = "".join(f"; skipped {n} {why}" for why, n in sorted(result.skipped.items()))
    if result.same:
        print(f"replayed {result.inputs} recorded inputs: {result.outputs} outputs, all as recorded{skipped}")
        return
    print(f"replayed {result.inputs} recorded inputs: {len(result.divergences)} DIVERGENCES{skipped}")
    for d in result.divergences:
        print(f"  {d.decider} on {d.cause}: {d.difference}")
    raise typer.Exit(1)

"""charter audit verify"""

from __future__ import annotations

import typer

from charter.cli.output import console
from charter.cli.stores import open_store
from charter.config import Settings
from services.audit import store
from services.audit.decide import verify as verify_chain

app = typer.Typer(no_args_is_help=True, help="The tamper-evident record of every event.")


@app.command("verify")
def verify() -> None:
    """Recompute the audit hash chain; name the first broken row. Exit 1 if it is broken."""
    engine = open_store(Settings(), "audit")
    with engine.connect() as conn:
        result = verify_chain(store.rows(conn))
    if result.ok:
        console.print(f"audit chain verified: {result.rows} rows, head {result.head.hex()[:16]}")
        return
    console.print(
        f"audit chain BROKEN at row {result.broken_seq}: {result.problem} "
        f"({result.rows} rows before it verify)",
        markup=False,
    )
    raise typer.Exit(1)

"""charter up"""

from __future__ import annotations

import typer

from charter.config import Settings
from charter.stack.up import up as run_up


def up(
    demo: bool = typer.Option(False, "--demo", help="Publish the demo events and print how each run ended."),
    once: bool = typer.Option(False, "--once", help="Stop the stack once it is ready (and the demo has run)."),
) -> None:
    """Start the whole stack: the embedded broker (unless CHARTER_BOOTSTRAP_SERVERS is set), every
    topic, and the five services, supervised. Ctrl-C stops it all."""
    code = run_up(Settings(), demo=demo, once=once, say=lambda line: print(line, flush=True))
    raise typer.Exit(code)

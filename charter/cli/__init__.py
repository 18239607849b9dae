"""`charter`: the command line. Every command has --help; an error is one line on stderr and an
exit code from the table in charter.cli.exits."""

from __future__ import annotations

import sys
from importlib.metadata import version
from typing import Annotated

import typer
from typer.exceptions import TyperException

from charter.cli import (
    agents,
    approvals,
    audit,
    dlq,
    events,
    exits,
    formats,
    identity,
    policy,
    runs,
    stack,
    switches,
    tokens,
    top,
)
from charter.cli.helptext import WholeSummaries
from charter.errors import CharterError

app = typer.Typer(
    cls=WholeSummaries,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(shown: bool) -> None:
    if shown:
        print(f"charter {version('charter')}")
        raise typer.Exit


@app.callback()
def _global(
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print Charter's version and exit."),
    ] = False,
    _output: Annotated[
        formats.Format,
        typer.Option(
            formats.OPTION,
            help="How listings and single things print: text, json (an array, or one object) or jsonl "
            "(an object a line). Taken anywhere on the command line.",
        ),
    ] = formats.Format.TEXT,
) -> None:
    """Charter: governed autonomy for AI agents. Start with `charter up --demo`.

    Exit codes: 0 done, 1 a failure found (a test, a check, a broken chain), 2 usage or bad
    input, 3 not found, 4 refused by the API, 5 the stack cannot be reached, 130 interrupted.
    """


app.command("up")(stack.up)
app.command("topics")(stack.topics_ensure)
app.command("publish")(events.publish)
app.command("tail")(events.tail)
app.command("replay")(events.replay)
app.command("top")(top.top)
for sub, name in (
    (runs.runs_app, "runs"),
    (agents.app, "agents"),
    (approvals.app, "approvals"),
    (audit.app, "audit"),
    (dlq.app, "dlq"),
    (policy.app, "policy"),
    (switches.switch_app, "kill-switch"),
    (tokens.tokens_app, "tokens"),
    (identity.keys_app, "keys"),
):
    app.add_typer(sub, name=name, cls=WholeSummaries)
# The older `charter run show|resume|cancel`, kept working, out of the listing.
app.add_typer(runs.run_app, name="run", cls=WholeSummaries, hidden=True)


def main() -> None:
    try:
        code = app(args=formats.take(sys.argv[1:]), standalone_mode=False)
    except TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"charter: {' '.join(message.split())} (see --help)", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", exits.USAGE) or exits.USAGE)
    except CharterError as exc:
        print(f"charter: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(exits.for_error(exc))
    except KeyboardInterrupt:
        sys.exit(exits.INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)

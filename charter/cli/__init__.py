"""`charter`: the command line. Every command has --help; bad input gets one line and exit 2."""

from __future__ import annotations

import sys

import typer
from typer.exceptions import TyperException

from charter.cli import (
    agents,
    approvals,
    audit,
    dlq,
    events,
    identity,
    policy,
    runs,
    stack,
    switches,
    tokens,
    top,
)
from charter.errors import CharterError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Charter: governed autonomy for AI agents. Start with `charter up --demo`.",
)
app.command("up")(stack.up)
app.command("topics")(stack.topics_ensure)
app.command("publish")(events.publish)
app.command("tail")(events.tail)
app.command("replay")(events.replay)
app.command("runs")(runs.list_runs)
app.command("top")(top.top)
app.add_typer(runs.run_app, name="run")
app.add_typer(agents.app, name="agents")
app.add_typer(approvals.app, name="approvals")
app.add_typer(audit.app, name="audit")
app.add_typer(dlq.app, name="dlq")
app.add_typer(policy.app, name="policy")
app.add_typer(switches.switch_app, name="kill-switch")
app.add_typer(tokens.tokens_app, name="tokens")
app.add_typer(identity.keys_app, name="keys")


def main() -> None:
    try:
        code = app(standalone_mode=False)
    except TyperException as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"charter: {' '.join(message.split())} (see --help)", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2) or 2)
    except CharterError as exc:
        print(f"charter: {' '.join(str(exc).split())}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)

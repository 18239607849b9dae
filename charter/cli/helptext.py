"""Command listings that show each command's whole first sentence, wrapped, where click would cut
it with "..." to fit one line."""

from __future__ import annotations

from typer import _click
from typer.core import TyperGroup


class WholeSummaries(TyperGroup):
    def format_commands(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

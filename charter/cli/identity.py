"""charter keys init | show"""

from __future__ import annotations

import typer

from charter import metrics_server, signing
from charter.cli.output import console
from charter.config import Settings
from charter.errors import ConfigError

keys_app = typer.Typer(
    no_args_is_help=True, help="The signing keys of the planner, policy, approvals and audit services."
)


@keys_app.command("init")
def init() -> None:
    """Create the signing keys that do not exist yet, in CHARTER_KEYS_DIR (default <home>/keys)."""
    settings = Settings()
    created = signing.ensure_keys(settings.keys)
    if not (settings.keys / metrics_server.TOKEN_FILE).exists():
        metrics_server.token(settings)
        created.append("metrics token")
    kept = [n for n in signing.SIGNERS if n not in created]
    console.print(
        f"keys in {settings.keys}: created {', '.join(created) or 'none'}; kept {', '.join(kept) or 'none'}",
        markup=False,
    )


@keys_app.command("show")
def show() -> None:
    """Print each signing key's id (SHA-256 of the public key): what `charter audit verify-bundle
    --key-id` pins, and what others compare before trusting a signature."""
    settings = Settings()
    for name in signing.SIGNERS:
        try:
            key_id = signing.Verifier.load(settings.keys, name).key_id
        except ConfigError:
            key_id = "(none: run `charter keys init`)"
        console.print(f"{name:<10} {key_id}", markup=False)

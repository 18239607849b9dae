"""The demo's own agents, policies and users, shipped inside the package: `charter up --demo` uses
them wherever the settings name files that do not exist (a fresh directory after `pip install`),
so the demo runs with nothing to write first. The repository's top-level `agents/`, `policies/`
and `users.yaml` are links to these."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from charter.config import Settings

FILES = Path(__file__).resolve().parent / "files"
SHIPPED = {
    "agents_dir": FILES / "agents",
    "policies_dir": FILES / "policies",
    "users_file": FILES / "users.yaml",
}


def filled_in(settings: Settings, say: Callable[[str], None]) -> Settings:
    """`settings`, with the shipped file in place of each one it names that does not exist."""
    missing = {name: path for name, path in SHIPPED.items() if not Path(getattr(settings, name)).exists()}
    for name, path in missing.items():
        say(f"{getattr(settings, name)} does not exist: the demo uses its own, {path}")
    return settings.model_copy(update=missing)

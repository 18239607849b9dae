"""Secrets by name, resolved only where they are used and scrubbed from whatever leaves there.

A tool names the secrets it needs, and the executor alone resolves them; the planner resolves
only the model server's key. The values come from `CHARTER_SECRET_<NAME>` in the
environment or from the secrets file. Every value known here is redacted from tool results,
error messages, this process's log lines and the spans it exports, so a tool that echoes its key
does not leak it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from charter import telemetry
from charter.errors import ConfigError

ENV_PREFIX = "CHARTER_SECRET_"
REDACTED = "[redacted]"
# Shorter values would redact ordinary words and digits; such values are not secrets worth the name.
MIN_LENGTH = 6


class MissingSecret(Exception):
    pass


def _from_file(path: Path) -> dict[str, str]:
    if path.is_dir():
        return {p.name: p.read_text().strip() for p in sorted(path.iterdir()) if p.is_file()}
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"secrets file {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"secrets file {path}: expected a mapping of names to values")
    return {str(k): str(v) for k, v in loaded.items()}


class Secrets:
    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        # Longest first, so a secret that contains another is redacted whole.
        self._known = sorted({v for v in values.values() if len(v) >= MIN_LENGTH}, key=len, reverse=True)

    @classmethod
    def load(cls, file: Path | None, environ: Mapping[str, str] = os.environ) -> Secrets:
        values = _from_file(file) if file is not None else {}
        values.update({k[len(ENV_PREFIX) :]: v for k, v in environ.items() if k.startswith(ENV_PREFIX)})
        # A trailing newline is a common accident of files and mounted secrets, never meant.
        return cls({name: value.rstrip("\r\n") for name, value in values.items()})

    def get(self, name: str) -> str | None:
        return self._values.get(name)

    def resolve(self, names: Iterable[str]) -> dict[str, str]:
        missing = [n for n in names if n not in self._values]
        if missing:
            raise MissingSecret(f"secret(s) not configured: {', '.join(missing)}")
        return {n: self._values[n] for n in names}

    def redact(self, value: Any) -> Any:
        """`value` (a string, or JSON-like data) with every known secret replaced."""
        if not self._known:
            return value
        if isinstance(value, str):
            for secret in self._known:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {self.redact(k): self.redact(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.redact(v) for v in value]
        return value


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with secrets redacted, before any handler formats it."""

    def __init__(self, secrets: Secrets) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self._secrets.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks quote exception messages; a formatter uses exc_text when it is set.
            record.exc_text = self._secrets.redact(logging.Formatter().formatException(record.exc_info))
        return True


def guard_logs(secrets: Secrets) -> None:
    """Redact secrets from every log line this process writes, whichever logger emits it, and from
    every span it exports: a span records an exception's message and traceback as they are."""
    redacting = RedactingFilter(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redacting)
    telemetry.redact_spans(secrets.redact)

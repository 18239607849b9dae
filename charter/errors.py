"""Every failure Charter knows, and what a consumer does with it. Decided here, nowhere else.

    CharterError
    ├── InvalidMessage          bad input: never retried; the record goes to <topic>.dlq with the reason
    │   ├── UndecodableRecord   not Avro single-object bytes, or bytes that do not decode
    │   ├── UnknownSchema       a fingerprint this build does not know
    │   ├── InvalidEvent        decodes, but breaks a rule (bad JSON, unknown approval, ...)
    │   └── ForgedEvent         claims authority it cannot prove: no valid signature of the
    │                           service that alone may write it (see charter.signing)
    ├── TransientError          the world hiccupped (a locked database, a slow dependency):
    │                           retried under RetryPolicy, then dead-lettered with the last error
    ├── ConfigError             bad settings, agent or policy files: the process stops with one line
    │   └── Unavailable         the stack, its broker or its API cannot be reached
    ├── NotFound                a run, approval, agent, user, token or record named that does not exist
    └── Refused                 a person's act with no credential to prove who acts

The CLI's exit code follows from the class (charter.cli.exits).

Anything else raised by a handler is a bug: the consumer treats it as transient, so it is retried
and then dead-lettered rather than silently lost. Broker failures are not caught at all: the
process exits, the supervisor restarts it, and uncommitted offsets are redelivered.
Tool failures are not errors of the pipeline: the executor turns them into ActionFailed events.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


class CharterError(Exception):
    """Base of Charter's own errors."""


class InvalidMessage(CharterError):
    """Input that will never process, however often it is retried."""


class UndecodableRecord(InvalidMessage):
    pass


class UnknownSchema(InvalidMessage):
    pass


class InvalidEvent(InvalidMessage):
    pass


class ForgedEvent(InvalidMessage):
    pass


class TransientError(CharterError):
    """A fault that may pass; the operation is retried."""


class ConfigError(CharterError):
    """Configuration that cannot work; raised at start, reported as one line."""


class Unavailable(ConfigError):
    """The stack is not running where the settings say, or does not answer."""


class NotFound(CharterError):
    """Something named by id or name that does not exist."""


class Refused(CharterError):
    """An act a person may not do as things stand."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff for transient faults, bounded so a partition is never stuck for long."""

    attempts: int = 5
    first_delay_s: float = 0.05
    multiplier: float = 2.0
    max_delay_s: float = 1.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        return float(min(self.max_delay_s, self.first_delay_s * self.multiplier ** (attempt - 1)))

    def jittered(self, attempt: int) -> float:
        """`delay` with full jitter: anywhere from nothing to the backoff, so clients spread out."""
        return random.uniform(0, self.delay(attempt))  # noqa: S311 (timing, not security)

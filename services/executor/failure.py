"""How a tool call failed, in the terms the executor decides on."""

from __future__ import annotations


class ToolFailure(Exception):
    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        error_type: str,
        in_doubt: bool = False,
        transient: bool = False,
        unsent: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.error_type = error_type
        # The call may have reached the tool and acted: a timeout, a connection lost mid-call.
        self.in_doubt = in_doubt
        # The tool is unwell (down, slow, overloaded), as a circuit breaker counts it.
        self.transient = transient
        # Certainly not acted on (never sent, or refused before processing: 429, 503), so even
        # a tool that is not idempotent may be called again.
        self.unsent = unsent

"""Charter: governed autonomy for enterprise AI agents.

The public surface is small and locked by tests/unit/test_exported_members.py.
"""

from charter.client import Client, Received
from charter.config import Settings
from charter.events import (
    Action,
    ActionApproved,
    ActionExecuted,
    ActionFailed,
    ActionProposed,
    ActionRejected,
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequested,
    DeadLettered,
    Decision,
    Envelope,
    Event,
    PolicyReloaded,
    RunCompleted,
    RunFailed,
    RunStarted,
    TriggerReceived,
)
from charter.tools import ToolContext, ToolError, http_tool, tool

__all__ = [
    "Action",
    "ActionApproved",
    "ActionExecuted",
    "ActionFailed",
    "ActionProposed",
    "ActionRejected",
    "ApprovalGranted",
    "ApprovalRejected",
    "ApprovalRequested",
    "Client",
    "DeadLettered",
    "Decision",
    "Envelope",
    "Event",
    "PolicyReloaded",
    "Received",
    "RunCompleted",
    "RunFailed",
    "RunStarted",
    "Settings",
    "ToolContext",
    "ToolError",
    "TriggerReceived",
    "http_tool",
    "tool",
]

"""The public surface is deliberate: adding or removing a name must change this test too."""

import charter


def test_public_names() -> None:
    assert sorted(charter.__all__) == [
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
    for name in charter.__all__:
        assert getattr(charter, name) is not None

"""The approvals service: holds actions that policy says need a human, until one decides."""

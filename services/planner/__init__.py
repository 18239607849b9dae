"""The planner: turns triggers into runs and proposes one action at a time."""

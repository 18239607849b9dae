"""The audit service: every event on every topic, in a hash chain that shows any tampering."""

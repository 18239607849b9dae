"""The audit service: every event on every topic, as the leaves of a Merkle tree whose signed
heads show any tampering."""

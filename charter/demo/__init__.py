"""The demo: two agents' tools against a simulated ledger, and the scenario `charter up --demo` runs."""

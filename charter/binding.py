"""What an approval is bound to: one exact action, in one run, at one step, under one policy set.

A human approves the action they were shown. Its binding is a SHA-256 over the tool, the
resource, the parameters, the environment, the run, the step and the action's own id, and the
hash of the policy set that asked for approval. A decision names the binding it was made on;
one for any other binding (other parameters, another run, a later policy) is refused.
"""

from __future__ import annotations

import hashlib

from charter.events import Action, canonical_json


def action_hash(action: Action, run_id: str, policy_hash: str) -> str:
    bound = {
        "action_id": action.action_id,
        "environment": action.environment,
        "parameters": action.parameters,
        "policy_hash": policy_hash,
        "resource": action.resource,
        "run_id": run_id,
        "step_id": action.step_id,
        "step_index": action.step_index,
        "tool": action.tool,
    }
    return hashlib.sha256(canonical_json(bound).encode()).hexdigest()

"""What each role may do through the API and console.

Built-in roles:
  - admin: everything, including issuing and revoking tokens;
  - operator: publish business events, read runs and approvals, resume and cancel runs, set kill
    switches, read metrics;
  - auditor: read runs, approvals and the audit log, verify and export it;
  - publisher: publish business events (for business systems).
Any other role is an approver role, named by policies (`@approval("finance")`): its holders
see the approvals that role may decide, with their runs, and decide them. Deciding is checked
per approval, against the roles that approval's policy named, by the approvals service.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import StrEnum

BUILTIN = frozenset({"admin", "operator", "auditor", "publisher"})


class Permission(StrEnum):
    PUBLISH = "events:publish"
    READ_RUNS = "runs:read"
    DIRECT_RUNS = "runs:direct"
    READ_APPROVALS = "approvals:read"
    READ_ALL_APPROVALS = "approvals:read-all"
    DECIDE = "approvals:decide"
    READ_AUDIT = "audit:read"
    MANAGE_TOKENS = "tokens:manage"
    READ_METRICS = "metrics:read"
    SET_KILL_SWITCH = "switches:set"


_GRANTS: dict[str, frozenset[Permission]] = {
    "admin": frozenset(Permission),
    "operator": frozenset(
        {
            Permission.PUBLISH,
            Permission.READ_RUNS,
            Permission.DIRECT_RUNS,
            Permission.READ_APPROVALS,
            Permission.READ_ALL_APPROVALS,
            Permission.READ_METRICS,
            Permission.SET_KILL_SWITCH,
        }
    ),
    "auditor": frozenset(
        {
            Permission.READ_RUNS,
            Permission.READ_APPROVALS,
            Permission.READ_ALL_APPROVALS,
            Permission.READ_AUDIT,
        }
    ),
    "publisher": frozenset({Permission.PUBLISH}),
}
_APPROVER = frozenset({Permission.READ_APPROVALS, Permission.DECIDE, Permission.READ_RUNS})


def approver_roles(roles: Collection[str]) -> frozenset[str]:
    return frozenset(roles) - BUILTIN


def allows(roles: Collection[str], permission: Permission) -> bool:
    for role in roles:
        grants = _GRANTS.get(role, _APPROVER)
        if permission in grants:
            return True
    return False

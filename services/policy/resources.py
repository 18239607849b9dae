"""The resource catalog: what each target an action may touch is, and in which environment.

`resources.yaml` in the policy directory lists glob patterns over the resource strings agents'
steps produce; the first pattern that matches gives the resource its environment, its kind and
any other attributes, which Cedar policies see on `resource`. A resource no pattern matches is
unknown, and an action on it is denied: the security team decides what exists.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ResourceRule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    match: str = Field(description="A glob over resource strings, e.g. order/*.")
    environment: str
    kind: str = ""
    attributes: dict[str, str] = Field(default_factory=dict)


class ResourceCatalog(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    resources: list[ResourceRule] = Field(default_factory=list)

    def lookup(self, resource: str) -> dict[str, Any] | None:
        """The resource's attributes for Cedar, or None if the catalog does not know it."""
        for rule in self.resources:
            if fnmatchcase(resource, rule.match):
                kind = rule.kind or resource.split("/", 1)[0]
                return {**rule.attributes, "environment": rule.environment, "kind": kind}
        return None

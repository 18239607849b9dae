"""The Cedar schema Charter's policies are checked against, generated from what exists: the
tools in the registry (each action's `context.parameters` is its parameter model), the agents
and their roles, and the resource catalog's attributes. The proposal's tenant is both
`principal.tenant` and `context.tenant`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from charter.tools import ToolSpec
from services.policy.resources import ResourceCatalog

_SIMPLE = {"integer": {"type": "Long"}, "string": {"type": "String"}, "boolean": {"type": "Boolean"}}
_DECIMAL = {"type": "Extension", "name": "decimal"}


def cedar_schema(tools: Iterable[ToolSpec], resources: ResourceCatalog) -> dict[str, Any]:
    extra = sorted({name for rule in resources.resources for name in rule.attributes})
    resource_attrs: dict[str, dict[str, Any]] = {
        "environment": {"type": "String"},
        "kind": {"type": "String"},
    }
    resource_attrs.update({name: {"type": "String", "required": False} for name in extra})
    actions = {}
    for spec in tools:
        parameters = _record(spec.params.model_json_schema())
        actions[spec.name] = {
            "appliesTo": {
                "principalTypes": ["Agent"],
                "resourceTypes": ["Resource"],
                "context": {
                    "type": "Record",
                    "attributes": {
                        "environment": {"type": "String"},
                        "parameters": parameters,
                        # True when the action undoes an earlier step of its run (a saga).
                        "compensation": {"type": "Boolean"},
                        "tenant": {"type": "String"},
                    },
                },
            }
        }
    return {
        "": {
            "entityTypes": {
                "Role": {},
                "Agent": {
                    "memberOfTypes": ["Role"],
                    "shape": {
                        "type": "Record",
                        "attributes": {
                            "owner": {"type": "String"},
                            "environment": {"type": "String"},
                            "tenant": {"type": "String"},
                        },
                    },
                },
                "Resource": {"shape": {"type": "Record", "attributes": resource_attrs}},
            },
            "actions": actions,
        }
    }


def _record(schema: Mapping[str, Any], defs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    defs = defs if defs is not None else schema.get("$defs", {})
    required = set(schema.get("required", ()))
    attributes = {}
    for name, prop in schema.get("properties", {}).items():
        cedar, nullable = _type(prop, defs)
        if name not in required or nullable:
            cedar = {**cedar, "required": False}
        attributes[name] = cedar
    record: dict[str, Any] = {"type": "Record", "attributes": attributes}
    if schema.get("additionalProperties") not in (None, False):
        record["additionalAttributes"] = True
    return record


def _type(prop: Mapping[str, Any], defs: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """A JSON-schema property as a Cedar type, and whether it may be null (then: optional)."""
    if "$ref" in prop:
        return _type(defs[prop["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in prop:
        options = [p for p in prop["anyOf"] if p.get("type") != "null"]
        nullable = len(options) < len(prop["anyOf"])
        cedar, _ = _type(options[0], defs) if len(options) == 1 else ({"type": "String"}, False)
        return cedar, nullable
    kind = prop.get("type")
    if "enum" in prop or "const" in prop:
        kind = kind or "string"
    if kind in _SIMPLE:
        return dict(_SIMPLE[kind]), False
    if kind == "number":
        return dict(_DECIMAL), False
    if kind == "array":
        element, _ = _type(prop.get("items", {"type": "string"}), defs)
        return {"type": "Set", "element": element}, False
    if kind == "object":
        return _record(prop, defs), False
    # Anything else cannot be described to Cedar; a policy that reads it will not check.
    return {"type": "Record", "attributes": {}, "additionalAttributes": True}, False

"""The policy directory as one versioned bundle: the Cedar policies, the resource catalog
(`resources.yaml`) and the live limits (`limits.yaml`), under one SHA-256.

The hash covers every file that can change a decision, and every decision carries it. A
directory that does not load, in any of its parts, yields a bundle that denies everything,
with the error as the reason: the policy fails closed.

`tenants/<tenant>/` may add a tenant's own `*.cedar` files to the base ones, and its own
`limits.yaml` in place of the base's. Each such tenant gets a set of its own: the base files
and its own (named `tenants/<tenant>/<file>`), under their own hash, so that the files a
`PolicyReloaded` carries rebuild the set its decisions name. A tenant whose set does not load
is denied everything; the base set and every other tenant's are not touched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from charter.limits import LimitsFile
from services.policy.engine import CedarPolicies, PolicyInfo
from services.policy.resources import ResourceCatalog

RESOURCES = "resources.yaml"
LIMITS = "limits.yaml"
TENANTS = "tenants"
# What the service watches: `tenants/*` is each tenant's directory, whose time changes when a
# file is added to it or taken out (the files' own times do not, when one is moved).
PATTERNS = (
    "*.cedar", RESOURCES, LIMITS, f"{TENANTS}/*", f"{TENANTS}/*/*.cedar", f"{TENANTS}/*/{LIMITS}",
)  # fmt: skip


@dataclass(frozen=True)
class PolicyBundle:
    hash: str
    files: tuple[str, ...]
    cedar: CedarPolicies | None
    resources: ResourceCatalog = field(default_factory=ResourceCatalog)
    limits: LimitsFile = field(default_factory=LimitsFile)
    error: str | None = None
    # Every file's text by name, as hashed: recorded with the bundle so it can be rebuilt.
    sources: dict[str, str] = field(default_factory=dict)
    # The tenant whose own files this set adds to the base; None for the base set.
    tenant: str | None = None
    # The sets of the tenants that have files of their own, by tenant (the base set's only).
    tenants: Mapping[str, PolicyBundle] = field(default_factory=dict)

    @property
    def infos(self) -> dict[str, PolicyInfo]:
        return self.cedar.infos if self.cedar else {}

    @property
    def limits_scope(self) -> str | None:
        """The tenant whose usage alone this set's limits count, when they are its own
        `limits.yaml`; None: the base limits, which count every tenant's usage together."""
        if self.tenant is not None and _tenant_file(self.tenant, LIMITS) in self.sources:
            return self.tenant
        return None

    def for_tenant(self, tenant: str) -> PolicyBundle:
        """The set that decides `tenant`'s actions: its own, else this one."""
        return self.tenants.get(tenant, self)

    @classmethod
    def load(cls, directory: Path) -> PolicyBundle:
        base = _read(directory, (RESOURCES, LIMITS))
        tenants = {
            tenant: cls.of(base | own, str(directory / TENANTS / tenant))
            for tenant, own in _tenant_texts(directory).items()
        }
        return replace(cls.of(base, str(directory)), tenants=tenants)

    @classmethod
    def of(cls, texts: dict[str, str], where: str = "the bundle") -> PolicyBundle:
        """The one set these files make, whether read from a directory or from the record."""
        digest = hashlib.sha256()
        for name in sorted(texts):
            digest.update(name.encode() + b"\0" + texts[name].encode() + b"\0")
        files = tuple(sorted(texts))
        owners = sorted({n.split("/")[1] for n in files if n.startswith(f"{TENANTS}/") and n.count("/") == 2})
        tenant = owners[0] if len(owners) == 1 else None
        try:
            if len(owners) > 1:
                raise ValueError(f"{where} mixes the files of tenants {', '.join(owners)}")
            cedar, resources, limits = _parse(texts, tenant, where)
        except (ValueError, yaml.YAMLError) as exc:
            error = _one_line(exc)
            return cls(digest.hexdigest(), files, None, error=error, sources=dict(texts), tenant=tenant)
        return cls(digest.hexdigest(), files, cedar, resources, limits, sources=dict(texts), tenant=tenant)


def _parse(
    texts: dict[str, str], tenant: str | None, where: str
) -> tuple[CedarPolicies, ResourceCatalog, LimitsFile]:
    cedar_files = sorted(n for n in texts if n.endswith(".cedar"))
    if not cedar_files:
        raise ValueError(f"no *.cedar files in {where}")
    own = _tenant_file(tenant, LIMITS) if tenant is not None else LIMITS
    return (
        CedarPolicies([(n, texts[n]) for n in cedar_files]),
        _model(ResourceCatalog, texts, RESOURCES),
        _model(LimitsFile, texts, own if own in texts else LIMITS),
    )


def _read(directory: Path, extras: tuple[str, ...], prefix: str = "") -> dict[str, str]:
    """A directory's `*.cedar` files and those of `extras` it holds, by `prefix` + name."""
    paths = sorted(directory.glob("*.cedar")) if directory.is_dir() else []
    paths += [directory / name for name in extras if (directory / name).is_file()]
    return {prefix + p.name: p.read_text() for p in paths}


def _tenant_texts(directory: Path) -> dict[str, dict[str, str]]:
    """Each tenant's own files, for the tenants that have any (a tenant's resources.yaml is
    not among them: the resource catalog is the base's, for every tenant)."""
    root = directory / TENANTS
    if not root.is_dir():
        return {}
    found = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        own = _read(sub, (LIMITS,), prefix=_tenant_file(sub.name, ""))
        if own:
            found[sub.name] = own
    return found


def _tenant_file(tenant: str, name: str) -> str:
    return f"{TENANTS}/{tenant}/{name}"


M = TypeVar("M", bound=BaseModel)


def _model(model: type[M], texts: dict[str, str], name: str) -> M:
    """A YAML file of the bundle as its model; an absent file is an empty one."""
    try:
        return model.model_validate(yaml.safe_load(texts.get(name, "")) or {})
    except yaml.YAMLError as exc:
        raise ValueError(f"{name}: {_one_line(exc)}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{name}: {where}: {first['msg']}") from exc


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())

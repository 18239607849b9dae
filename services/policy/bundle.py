"""The policy directory as one versioned bundle: the Cedar policies, the resource catalog
(`resources.yaml`) and the live limits (`limits.yaml`), under one SHA-256.

The hash covers every file that can change a decision, and every decision carries it. A
directory that does not load, in any of its parts, yields a bundle that denies everything,
with the error as the reason: the policy fails closed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from charter.limits import LimitsFile
from services.policy.engine import CedarPolicies, PolicyInfo
from services.policy.resources import ResourceCatalog

RESOURCES = "resources.yaml"
LIMITS = "limits.yaml"
PATTERNS = ("*.cedar", RESOURCES, LIMITS)


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

    @property
    def infos(self) -> dict[str, PolicyInfo]:
        return self.cedar.infos if self.cedar else {}

    @classmethod
    def load(cls, directory: Path) -> PolicyBundle:
        paths = sorted(directory.glob("*.cedar")) if directory.is_dir() else []
        extras = [directory / name for name in (RESOURCES, LIMITS) if (directory / name).is_file()]
        return cls.of({p.name: p.read_text() for p in [*paths, *extras]}, str(directory))

    @classmethod
    def of(cls, texts: dict[str, str], where: str = "the bundle") -> PolicyBundle:
        """The bundle these files make, whether read from a directory or from the record."""
        digest = hashlib.sha256()
        for name in sorted(texts):
            digest.update(name.encode() + b"\0" + texts[name].encode() + b"\0")
        files = tuple(sorted(texts))
        cedar_files = [n for n in files if n.endswith(".cedar")]
        try:
            if not cedar_files:
                raise ValueError(f"no *.cedar files in {where}")
            cedar = CedarPolicies([(n, texts[n]) for n in cedar_files])
            resources = _model(ResourceCatalog, texts, RESOURCES)
            limits = _model(LimitsFile, texts, LIMITS)
        except (ValueError, yaml.YAMLError) as exc:
            return cls(digest.hexdigest(), files, None, error=_one_line(exc), sources=dict(texts))
        return cls(digest.hexdigest(), files, cedar, resources, limits, sources=dict(texts))


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

"""Tool declarations: what a tool is called, what it takes and returns, and how it runs.

Python tools are functions decorated with `@tool`; their parameter and result types are the
pydantic models in their signature. HTTP tools are declared with `http_tool` and called by the
executor through httpx, to allowlisted hosts only. The policy service reads the same registry
to know which tools exist; only the executor ever runs them.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_type_hints
from urllib.parse import urlsplit

from pydantic import BaseModel

from charter.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
_ATTR = "__charter_tool__"


class ToolError(Exception):
    """Raised by a tool to say the action failed. `retryable` says whether the same call may
    succeed later (a timeout, a busy system); only idempotent tools are ever called again.
    Any other exception from a tool is a failure that is not retried."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class ToolContext:
    """What a running tool may know about the action it serves."""

    idempotency_key: str
    run_id: str
    agent: str
    environment: str
    data_dir: Path


@dataclass(frozen=True)
class HttpTarget:
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    url: str

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "").lower()


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    params: type[BaseModel]
    result: type[BaseModel] | None
    cost_units: int
    timeout_s: float
    idempotent: bool
    func: Callable[..., Any] | None = None
    http: HttpTarget | None = None


def tool(
    *,
    name: str | None = None,
    description: str = "",
    cost_units: int = 1,
    timeout_s: float = 10.0,
    idempotent: bool = False,
) -> Callable[[F], F]:
    """Declare a Python function `fn(params: Model, ctx: ToolContext) -> ResultModel` a tool."""

    def wrap(fn: F) -> F:
        hints = get_type_hints(fn)
        first = next(iter(inspect.signature(fn).parameters), None)
        params = hints.get(first) if first else None
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise ConfigError(f"tool {fn.__qualname__}: first parameter must be a pydantic model")
        result = hints.get("return")
        spec = ToolSpec(
            name=name or fn.__name__,
            description=description or (inspect.getdoc(fn) or "").split("\n")[0],
            params=params,
            result=result if isinstance(result, type) and issubclass(result, BaseModel) else None,
            cost_units=cost_units,
            timeout_s=timeout_s,
            idempotent=idempotent,
            func=fn,
        )
        setattr(fn, _ATTR, spec)
        return fn

    return wrap


def http_tool(
    name: str,
    *,
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"],
    url: str,
    params: type[BaseModel],
    result: type[BaseModel] | None = None,
    description: str = "",
    cost_units: int = 1,
    timeout_s: float = 10.0,
    idempotent: bool = False,
) -> ToolSpec:
    """Declare an HTTP endpoint a tool. The executor sends the parameters as the JSON body."""
    return ToolSpec(
        name=name,
        description=description,
        params=params,
        result=result,
        cost_units=cost_units,
        timeout_s=timeout_s,
        idempotent=idempotent,
        http=HttpTarget(method, url),
    )


class Registry(Mapping[str, ToolSpec]):
    def __init__(self, specs: Iterable[ToolSpec]) -> None:
        self._specs: dict[str, ToolSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                raise ConfigError(f"tool {spec.name!r} is declared twice")
            self._specs[spec.name] = spec

    def __getitem__(self, name: str) -> ToolSpec:
        return self._specs[name]

    def __iter__(self) -> Any:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)


def _specs_in(module: Any) -> list[ToolSpec]:
    found: list[ToolSpec] = []
    for value in vars(module).values():
        spec = value if isinstance(value, ToolSpec) else getattr(value, _ATTR, None)
        if isinstance(spec, ToolSpec):
            found.append(spec)
    return found


def load(modules: Iterable[str]) -> Registry:
    specs: list[ToolSpec] = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"tool module {module_name!r} cannot be imported: {exc}") from exc
        specs.extend(_specs_in(module))
    return Registry(specs)

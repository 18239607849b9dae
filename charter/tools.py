"""Tool declarations: what a tool is called, what it takes and returns, and how it runs.

Python tools are functions decorated with `@tool`; their parameter and result types are the
pydantic models in their signature. HTTP tools are declared with `http_tool` and called by the
executor through httpx, to their own host only. A tool may name the tool that undoes it
(`compensation`), say what it would do in a dry-run environment (`dry_run`), and name the
secrets it needs; only the executor resolves those. The policy service reads the same registry
to know which tools exist; only the executor ever runs them.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_type_hints
from urllib.parse import urlsplit

from pydantic import BaseModel

from charter.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
_ATTR = "__charter_tool__"
_SECRET_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_POOL = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
SECRET_REF = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")
Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
# "call": the tool only reads, so a dry run may call it for real.
DryRun = Callable[..., Any] | Literal["call"] | None


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
    dry_run: bool = False
    # Only the secrets the tool declared; never printed with the context.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)

    def secret(self, name: str) -> str:
        """A secret the tool declared, resolved by the executor."""
        try:
            return self.secrets[name]
        except KeyError:
            raise ToolError(f"secret {name!r} is not declared by this tool") from None


@dataclass(frozen=True)
class HttpTarget:
    """An HTTP endpoint. `url` may hold `{param}` placeholders; the host it names is the only
    one the tool may reach, plus `hosts`. Private, loopback and link-local addresses are
    refused unless listed in `private` (addresses or networks, e.g. "10.0.0.0/8").
    Header values may refer to secrets as `${NAME}`."""

    method: Method
    url: str
    hosts: frozenset[str] = frozenset()
    private: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    max_response_bytes: int | None = None

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "").lower()

    @property
    def allowed_hosts(self) -> frozenset[str]:
        own = {self.host} if self.host and "{" not in self.host else set()
        return frozenset({*own, *(h.lower() for h in self.hosts)})

    def secret_names(self) -> tuple[str, ...]:
        return tuple(sorted({n for v in self.headers.values() for n in SECRET_REF.findall(v)}))


@dataclass(frozen=True)
class Sandbox:
    """Quotas of a tool run in a subprocess of its own: memory it may allocate beyond what the
    interpreter holds when the call begins, and CPU seconds. Past either, the process is
    stopped and the action fails with the reason; the executor carries on."""

    memory_mb: int = 256
    cpu_s: int = 10

    def __post_init__(self) -> None:
        if self.memory_mb < 1 or self.cpu_s < 1:
            raise ConfigError("a sandbox needs memory_mb >= 1 and cpu_s >= 1")


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
    compensation: str | None = None
    dry_run: DryRun = None
    secrets: tuple[str, ...] = ()
    max_attempts: int = 3
    # Calls of this tool one executor process makes at once (the system behind it has its own
    # limits); None: as many as the executor has in flight.
    max_concurrency: int | None = None
    # The executor pool that runs it (CHARTER_EXECUTOR_POOL); None: the general executors.
    pool: str | None = None
    # Run in a subprocess under these quotas (Python tools only); None: in the executor itself.
    sandbox: Sandbox | None = None

    def __post_init__(self) -> None:
        bad = [n for n in self.secrets if not _SECRET_NAME.match(n)]
        if bad:
            raise ConfigError(f"tool {self.name}: secret names must be UPPER_SNAKE_CASE, not {bad}")
        if self.max_attempts < 1 or self.timeout_s <= 0:
            raise ConfigError(f"tool {self.name}: max_attempts must be >= 1 and timeout_s > 0")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ConfigError(f"tool {self.name}: max_concurrency must be >= 1")
        if self.pool is not None and not _POOL.match(self.pool):
            raise ConfigError(f"tool {self.name}: pool must be a short lowercase name, not {self.pool!r}")
        if self.sandbox is not None and self.func is None:
            raise ConfigError(f"tool {self.name}: only a Python tool runs in a sandbox")


def tool(
    *,
    name: str | None = None,
    description: str = "",
    cost_units: int = 1,
    timeout_s: float = 10.0,
    idempotent: bool = False,
    compensation: str | None = None,
    dry_run: DryRun = None,
    secrets: Iterable[str] = (),
    max_attempts: int = 3,
    max_concurrency: int | None = None,
    pool: str | None = None,
    sandbox: Sandbox | None = None,
) -> Callable[[F], F]:
    """Declare a Python function `fn(params: Model, ctx: ToolContext) -> ResultModel` a tool.

    `compensation` names the tool that undoes it; `dry_run` is `fn(params, ctx)` returning what
    it would have done, or "call" for a tool that only reads; `secrets` are the names it reads
    with `ctx.secret(name)`; `max_attempts` bounds calls of an idempotent tool on transient errors;
    `max_concurrency` bounds its calls at once per executor process (other calls wait for a slot);
    `pool` names the executor pool that alone runs it. A plain function runs in one of the
    executor's threads (CHARTER_TOOL_THREADS), an `async def` on its loop; with `sandbox`, a
    plain function runs in a subprocess of its own under those quotas, stopped past them or its
    timeout.
    """

    def wrap(fn: F) -> F:
        hints = get_type_hints(fn)
        first = next(iter(inspect.signature(fn).parameters), None)
        params = hints.get(first) if first else None
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise ConfigError(f"tool {fn.__qualname__}: first parameter must be a pydantic model")
        result = hints.get("return")
        if sandbox is not None and inspect.iscoroutinefunction(fn):
            raise ConfigError(f"tool {fn.__qualname__}: a sandboxed tool is a plain function, not async")
        spec = ToolSpec(
            name=name or fn.__name__,
            description=description or (inspect.getdoc(fn) or "").split("\n")[0],
            params=params,
            result=result if isinstance(result, type) and issubclass(result, BaseModel) else None,
            cost_units=cost_units,
            timeout_s=timeout_s,
            idempotent=idempotent,
            func=fn,
            compensation=compensation,
            dry_run=dry_run,
            secrets=tuple(secrets),
            max_attempts=max_attempts,
            max_concurrency=max_concurrency,
            pool=pool,
            sandbox=sandbox,
        )
        setattr(fn, _ATTR, spec)
        return fn

    return wrap


def http_tool(
    name: str,
    *,
    method: Method,
    url: str,
    params: type[BaseModel],
    result: type[BaseModel] | None = None,
    description: str = "",
    cost_units: int = 1,
    timeout_s: float = 10.0,
    idempotent: bool = False,
    compensation: str | None = None,
    dry_run: DryRun = None,
    hosts: Iterable[str] = (),
    private: Iterable[str] = (),
    headers: Mapping[str, str] | None = None,
    max_response_bytes: int | None = None,
    max_attempts: int = 3,
    max_concurrency: int | None = None,
    pool: str | None = None,
) -> ToolSpec:
    """Declare an HTTP endpoint a tool. The executor sends the parameters as the JSON body
    (as the query for GET) with the action's `Idempotency-Key`. In a dry run it sends nothing
    and returns the request it would have made, unless `dry_run` says otherwise."""
    target = HttpTarget(
        method,
        url,
        hosts=frozenset(hosts),
        private=tuple(private),
        headers=dict(headers or {}),
        max_response_bytes=max_response_bytes,
    )
    return ToolSpec(
        name=name,
        description=description,
        params=params,
        result=result,
        cost_units=cost_units,
        timeout_s=timeout_s,
        idempotent=idempotent,
        http=target,
        compensation=compensation,
        dry_run=dry_run,
        secrets=target.secret_names(),
        max_attempts=max_attempts,
        max_concurrency=max_concurrency,
        pool=pool,
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


def find(module_name: str, tool_name: str) -> ToolSpec:
    """The tool `tool_name` that module `module_name` declares (a sandbox imports it afresh)."""
    module = importlib.import_module(module_name)
    for spec in _specs_in(module):
        if spec.name == tool_name:
            return spec
    raise ConfigError(f"module {module_name!r} declares no tool {tool_name!r}")


def load(modules: Iterable[str]) -> Registry:
    specs: list[ToolSpec] = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"tool module {module_name!r} cannot be imported: {exc}") from exc
        specs.extend(_specs_in(module))
    registry = Registry(specs)
    for spec in registry.values():
        if spec.compensation is not None and spec.compensation not in registry:
            raise ConfigError(f"tool {spec.name}: compensation {spec.compensation!r} is not a known tool")
    return registry

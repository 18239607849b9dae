"""Python tools run in a subprocess of their own, under memory and CPU-time quotas.

The executor starts `python -m services.executor.sandbox` for each call and hands it the call on
stdin: the tool's module and name, the parameters, and the context with the tool's secrets (never
in argv or the environment, which the host's other processes can read; the child's environment
is the few variables an interpreter needs, none of the executor's settings). The child imports the
tool, then limits itself: its address space to what it holds plus the memory quota, its CPU time
to what it has used plus the CPU quota. Past the memory quota an allocation fails; past the CPU
quota the kernel stops it (SIGXCPU); past the tool's timeout the executor kills it. Unlike a call
in a thread, a sandboxed call that overruns is really stopped, with any process it started, and
whatever it leaked goes with them. What the tool prints goes to the child's stderr, not into its
answer. Each call pays for a fresh interpreter (a few hundred milliseconds).

A call stopped by a quota may have acted before it was stopped: it fails in doubt, and the
in-doubt rules apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from charter import tools
from charter.tools import Sandbox, ToolContext, ToolError, ToolSpec
from services.executor.failure import ToolFailure

MEMORY = "MemoryQuota"
SETUP = "SandboxSetup"  # failed before the tool was called: it cannot have acted
MB = 2**20
# What the child's interpreter needs of the executor's environment; nothing else is passed on.
ENVIRONMENT = ("PATH", "PYTHONPATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


async def run(spec: ToolSpec, params: BaseModel, ctx: ToolContext) -> Any:
    """The tool's result, called in a sandbox; ToolFailure with the reason otherwise."""
    assert spec.func is not None
    assert spec.sandbox is not None
    request = {
        "module": spec.func.__module__,
        "tool": spec.name,
        "parameters": params.model_dump(mode="json"),
        "context": {
            "idempotency_key": ctx.idempotency_key,
            "run_id": ctx.run_id,
            "agent": ctx.agent,
            "environment": ctx.environment,
            "data_dir": str(ctx.data_dir),
            "dry_run": ctx.dry_run,
            "secrets": dict(ctx.secrets),
        },
        "quota": {"memory_mb": spec.sandbox.memory_mb, "cpu_s": spec.sandbox.cpu_s},
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        __name__,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={name: os.environ[name] for name in ENVIRONMENT if name in os.environ},
        start_new_session=True,  # its own process group, so what it starts is stopped with it
    )
    try:
        out, err = await proc.communicate(json.dumps(request).encode())
    except BaseException:
        # The timeout (or the executor stopping): the call is stopped, not abandoned.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything the tool left running
    return _answer(spec.sandbox, proc.returncode, out, err)


def _answer(quota: Sandbox, returncode: int | None, out: bytes, err: bytes) -> Any:
    try:
        answer = json.loads(out) if out else None
    except ValueError:
        answer = None
    if returncode == 0 and isinstance(answer, dict):
        if "ok" in answer:
            return answer["ok"]
        kind, message = str(answer.get("type")), str(answer.get("error"))
        if kind == MEMORY:
            raise ToolFailure(
                f"stopped: past its memory quota of {quota.memory_mb} MB",
                retryable=False,
                error_type="QuotaExceeded",
                in_doubt=True,
            )
        if kind == "ToolError":
            retryable = bool(answer.get("retryable"))
            raise ToolFailure(message, retryable=retryable, error_type=kind, transient=retryable)
        raise ToolFailure(message, retryable=False, error_type=kind, unsent=kind == SETUP)
    if returncode == -signal.SIGXCPU:
        raise ToolFailure(
            f"stopped: past its CPU-time quota of {quota.cpu_s} s",
            retryable=False,
            error_type="QuotaExceeded",
            in_doubt=True,
        )
    if returncode == -signal.SIGKILL:
        raise ToolFailure(
            "killed (SIGKILL): past its CPU-time quota's hard limit, or the host out of memory",
            retryable=False,
            error_type="Killed",
            in_doubt=True,
        )
    last = (err.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
    raise ToolFailure(
        f"the sandbox exited with {returncode}: {last[:200]}",
        retryable=False,
        error_type="SandboxFailed",
        in_doubt=True,
    )


def _limit(memory_mb: int, cpu_s: int) -> None:
    """Quotas on what the call itself uses: the interpreter and the tool's imports are not
    counted against it."""
    held = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (held + memory_mb * MB, held + memory_mb * MB))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime) + cpu_s
    resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))


def _call(request: dict[str, Any]) -> dict[str, Any]:
    try:
        spec = tools.find(request["module"], request["tool"])
        assert spec.func is not None
        params = spec.params.model_validate(request["parameters"])
        context = request["context"]
        ctx = ToolContext(**{**context, "data_dir": Path(context["data_dir"])})
        _limit(**request["quota"])
    except Exception as exc:
        return {"type": SETUP, "error": f"the sandbox could not call the tool: {type(exc).__name__}: {exc}"}
    try:
        result = spec.func(params, ctx)
    except MemoryError:
        return {"type": MEMORY, "error": "memory quota"}
    except ToolError as exc:
        return {"type": "ToolError", "error": str(exc), "retryable": exc.retryable}
    except Exception as exc:
        return {"type": type(exc).__name__, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": result.model_dump(mode="json") if isinstance(result, BaseModel) else result}


def main() -> None:
    # The answer has stdout to itself: what the tool prints goes to stderr.
    answer = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    answer.write(json.dumps(_call(json.loads(sys.stdin.buffer.read())), default=str))
    answer.close()


if __name__ == "__main__":
    main()

"""A sandboxed tool runs in a process of its own: past its memory or CPU-time quota, or its
timeout, that process is stopped and the call fails in doubt with the reason."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from charter.errors import ConfigError
from charter.tools import Sandbox, ToolContext, ToolSpec, tool
from services.executor.failure import ToolFailure
from services.executor.tools import Limits, call
from tests.e2e import isolation_tools as iso


def _call(spec: Any, tmp_path: Path, order: str = "A-1", **secrets: str) -> dict[str, Any]:
    ctx = ToolContext(
        idempotency_key="run:0",
        run_id="run",
        agent="a",
        environment="production",
        data_dir=tmp_path,
        secrets=secrets,
    )
    tool_spec: ToolSpec = spec.__charter_tool__
    return asyncio.run(call(tool_spec, {"order": order}, ctx, http=None, limits=Limits(1_000_000)))


def test_a_sandboxed_tool_answers_from_a_process_of_its_own_with_its_secrets(tmp_path: Path) -> None:
    ran = _call(iso.test_sandboxed, tmp_path, "B-2")
    assert ran["pool"] == "B-2"
    assert ran["pid"] != os.getpid()
    assert _call(iso.test_secretive, tmp_path, TEST_SANDBOX_SECRET="s3cret")["pool"] == "s3cret"


def test_what_a_sandboxed_tool_prints_stays_out_of_its_answer_and_it_gets_no_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHARTER_SECRET_PSP_KEY", "not for this tool")
    ran = _call(iso.test_chatty, tmp_path)
    assert not [name for name in ran["pool"].split(",") if name.startswith("CHARTER_")]


def test_a_call_the_sandbox_could_not_make_is_not_in_doubt(tmp_path: Path) -> None:
    unknown = replace(iso.test_sandboxed.__charter_tool__, name="no_such_tool")  # type: ignore[attr-defined]
    ctx = ToolContext(idempotency_key="k", run_id="r", agent="a", environment="production", data_dir=tmp_path)
    with pytest.raises(ToolFailure, match="could not call the tool: ConfigError") as failed:
        asyncio.run(call(unknown, {"order": "A-1"}, ctx, http=None, limits=Limits(1_000_000)))
    assert (failed.value.in_doubt, failed.value.unsent) == (False, True)


def test_a_tool_past_its_memory_quota_is_stopped_in_doubt(tmp_path: Path) -> None:
    with pytest.raises(ToolFailure, match="past its memory quota of 64 MB") as failed:
        _call(iso.test_hog, tmp_path)
    assert (failed.value.error_type, failed.value.in_doubt, failed.value.retryable) == (
        "QuotaExceeded",
        True,
        False,
    )


def test_a_tool_past_its_cpu_time_quota_is_stopped_in_doubt(tmp_path: Path) -> None:
    with pytest.raises(ToolFailure, match="past its CPU-time quota of 1 s") as failed:
        _call(iso.test_spin, tmp_path)
    assert (failed.value.error_type, failed.value.in_doubt) == ("QuotaExceeded", True)


def test_a_tool_past_its_timeout_is_killed_not_abandoned(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    with pytest.raises(ToolFailure, match="timed out") as failed:
        _call(iso.test_linger, tmp_path, str(pid_file))
    assert failed.value.in_doubt
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # a thread would still be running it
        os.kill(pid, 0)


def test_only_a_plain_python_function_may_be_sandboxed() -> None:
    with pytest.raises(ConfigError, match="plain function"):

        @tool(sandbox=Sandbox())
        async def nope(params: iso.Order, ctx: ToolContext) -> None: ...

    with pytest.raises(ConfigError, match="memory_mb"):
        Sandbox(memory_mb=0)

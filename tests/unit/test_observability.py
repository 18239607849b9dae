"""The metrics endpoint's token, what the planner measures, and how `charter top` reads scrapes."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr
from rich.console import Console

from charter import events as ev
from charter import metrics_server
from charter.cli.top import Scrape, view
from charter.config import Settings
from charter.errors import ConfigError
from charter.http_server import HttpServer
from services.planner.measure import Measure
from tests.factories import NOW, one_of_each


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _at(event: ev.Event, seconds: float) -> ev.Event:
    envelope = event.envelope.model_copy(update={"occurred_at": NOW + timedelta(seconds=seconds)})
    return event.model_copy(update={"envelope": envelope})


def test_the_planner_measures_runs_steps_and_cost() -> None:
    made = {type(e): e for e in one_of_each()}
    started = _at(made[ev.RunStarted], 0)
    proposed = _at(made[ev.ActionProposed], 1)
    executed = _at(made[ev.ActionExecuted], 1.25)
    completed = _at(made[ev.RunCompleted].model_copy(update={"llm_cost": 0.02, "llm_tokens": 300}), 2)
    run = {"agent": "support-refunds", "outcome": "completed"}
    step = {"agent": "support-refunds", "tool": "issue_refund"}
    before = {
        "runs": _sample("charter_runs_total", **run),
        "run_s": _sample("charter_run_seconds_sum", **run),
        "step_s": _sample("charter_step_seconds_sum", **step),
        "steps": _sample("charter_step_seconds_count", **step),
        "tokens": _sample("charter_run_tokens_total", agent="support-refunds"),
    }

    measure = Measure()
    measure.observe(made[ev.TriggerReceived], [started, proposed])
    measure.observe(executed, [completed])
    # A result the planner sees again (its proposal forgotten) is not timed twice.
    measure.observe(executed, [])

    assert _sample("charter_runs_total", **run) == before["runs"] + 1
    assert _sample("charter_run_seconds_sum", **run) == before["run_s"] + 2
    assert _sample("charter_step_seconds_sum", **step) == before["step_s"] + 0.25
    assert _sample("charter_step_seconds_count", **step) == before["steps"] + 1
    assert _sample("charter_run_tokens_total", agent="support-refunds") == before["tokens"] + 300


def test_a_human_instruction_counts_as_an_intervention() -> None:
    made = {type(e): e for e in one_of_each()}
    before = _sample("charter_human_interventions_total", kind="resume")
    Measure().observe(made[ev.RunInstructed], [])
    assert _sample("charter_human_interventions_total", kind="resume") == before + 1


def test_the_metrics_token_is_made_once_and_private(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, keys_dir=tmp_path / "keys")
    first = metrics_server.token(settings)
    assert len(first) >= 32
    assert metrics_server.token(settings) == first
    mode = stat.S_IMODE(os.stat(tmp_path / "keys" / metrics_server.TOKEN_FILE).st_mode)
    assert mode == 0o600
    given = Settings(home=tmp_path, keys_dir=tmp_path / "keys", metrics_token=SecretStr("from-env"))
    assert metrics_server.token(given) == "from-env"


def test_metrics_are_served_only_to_the_token_holder() -> None:
    async def get(headers: dict[str, str]) -> httpx.Response:
        transport = httpx.ASGITransport(app=metrics_server.app("s3cret"))
        async with httpx.AsyncClient(transport=transport, base_url="http://metrics") as client:
            return await client.get("/metrics", headers=headers)

    assert asyncio.run(get({})).status_code == 401
    assert asyncio.run(get({"Authorization": "Bearer wrong"})).status_code == 401
    served = asyncio.run(get({"Authorization": "Bearer s3cret"}))
    assert served.status_code == 200
    assert "charter_runs_total" in served.text
    assert "s3cret" not in served.text


def test_ports_follow_the_base_and_zero_turns_them_off() -> None:
    assert metrics_server.port(Settings(metrics_port=9000), "planner") == 9004
    assert metrics_server.port(Settings(metrics_port=9000), "audit") == 9000
    assert metrics_server.port(Settings(metrics_port=0), "planner") is None


def _scrape(at: float, runs: float, denials: dict[str, float], down: dict[str, str] | None = None) -> Scrape:
    scrape = Scrape(at, down=down or {})
    scrape.values["charter_runs_total"][(("service", "planner"), ("outcome", "completed"))] = runs
    for reason, n in denials.items():
        key = (("outcome", "deny"), ("reason", reason), ("service", "policy"))
        scrape.values["charter_policy_decisions_total"][key] = n
    return scrape


def _render(now: Scrape, before: Scrape | None) -> str:
    console = Console(record=True, width=120)
    console.print(view(now, before))
    return console.export_text()


def test_top_shows_rates_between_scrapes_and_denials_by_reason() -> None:
    shown = _render(
        _scrape(12.0, 40, {"refund-over-limit": 3, "agent-kill-switch": 1}),
        _scrape(10.0, 30, {"refund-over-limit": 1}),
    )
    runs_line = next(line for line in shown.splitlines() if "runs/s ended" in line)
    assert runs_line.split()[-1] == "5.0"
    assert shown.index("refund-over-limit") < shown.index("agent-kill-switch")


def test_top_reads_a_counter_that_went_down_as_a_restart() -> None:
    shown = _render(_scrape(12.0, 2, {}), _scrape(10.0, 30, {}))
    runs_line = next(line for line in shown.splitlines() if "runs/s ended" in line)
    assert runs_line.split()[-1] == "0.0"


def test_top_names_a_service_that_does_not_answer() -> None:
    shown = _render(_scrape(1.0, 0, {}, down={"executor": "not answering on 9462: ConnectError"}), None)
    assert "down: not answering on 9462" in shown


def test_a_metrics_port_in_use_is_a_clear_error_not_an_exit() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HttpServer(metrics_server.app("s3cret"), "127.0.0.1", port, "metrics")
        with pytest.raises(ConfigError, match=f"the metrics cannot listen on http://127.0.0.1:{port}"):
            asyncio.run(server.run(asyncio.Event()))

"""`charter publish --wait`'s follower: it says each change of a run's status once, keeps asking
while the audit has not recorded a run yet, returns once every run has ended, and gives up at
its deadline naming the runs still going."""

from __future__ import annotations

from typing import Any

import pytest

from charter.api_client import ApiCallFailed, ApiClient
from charter.cli.follow import StillRunning, follow


class Answers:
    """The API's answers for each run, in turn; the last one repeats."""

    def __init__(self, **runs: list[str | None]) -> None:
        self.runs = runs
        self.asked: dict[str, int] = {}

    def get(self, path: str) -> dict[str, Any]:
        run_id = path.rsplit("/", 1)[1]
        n = self.asked[run_id] = self.asked.get(run_id, 0) + 1
        answers = self.runs[run_id]
        status = answers[min(n, len(answers)) - 1]
        if status is None:
            raise ApiCallFailed(404, "not_found", f"no run {run_id}")
        return {"run": {"run_id": run_id, "status": status, "last": f"{run_id} is {status}"}}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _follow(api: Answers, runs: list[str], timeout_s: float = 60) -> tuple[dict[str, Any], list[str]]:
    said: list[str] = []
    clock = Clock()
    ended = follow(
        api,  # type: ignore[arg-type]  # only get() is asked of it
        runs,
        timeout_s,
        lambda run: said.append(run["last"]),
        clock=clock,
        sleep=clock.sleep,
    )
    return ended, said


def test_each_change_is_said_once_and_every_run_is_followed_to_its_end() -> None:
    api = Answers(
        a=[None, None, "running", "running", "awaiting approval", "awaiting approval", "completed"],
        b=["running", "failed"],
    )
    ended, said = _follow(api, ["a", "b"])
    assert {r: s["status"] for r, s in ended.items()} == {"a": "completed", "b": "failed"}
    assert said == [
        "b is running",
        "b is failed",
        "a is running",
        "a is awaiting approval",
        "a is completed",
    ]
    assert api.asked["b"] == 2  # an ended run is not asked about again


def test_it_gives_up_at_its_deadline_naming_the_runs_still_going() -> None:
    api = Answers(a=["completed"], b=["awaiting approval"])
    with pytest.raises(StillRunning) as raised:
        _follow(api, ["a", "b"], timeout_s=5)
    assert raised.value.running == ["b"]


def test_an_api_refusal_is_not_taken_for_a_run_not_yet_recorded() -> None:
    class Forbidden(ApiClient):
        def __init__(self) -> None:
            pass

        def get(self, path: str, **params: Any) -> Any:
            raise ApiCallFailed(403, "forbidden", "not yours")

    with pytest.raises(ApiCallFailed):
        follow(Forbidden(), ["a"], 60, lambda run: None, clock=Clock(), sleep=lambda s: None)

"""charter publish | tail | replay"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from charter import topics, triggering
from charter.api_client import ApiClient
from charter.bus import REPLAYED_FROM, Outgoing
from charter.cli import exits, formats
from charter.cli.follow import StillRunning, follow
from charter.cli.output import console, received_json, received_line
from charter.cli.runs import FULL_ID, full_run_id
from charter.client import Client, Received
from charter.clock import as_utc
from charter.config import Settings
from charter.errors import ConfigError

AsJson = Annotated[bool, typer.Option("--json", help="One JSON object per event.")]


def _load_data(data: str) -> dict[str, Any]:
    if data.startswith("@"):
        path = Path(data[1:])
        try:
            data = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ConfigError(f"--data is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError("--data must be a JSON object")
    return value


def publish(
    name: Annotated[str, typer.Argument(help="The business event's type, e.g. support.refund_requested.")],
    data: Annotated[str, typer.Option("--data", help="The event body: a JSON object, or @file with one.")],
    correlation_id: Annotated[
        str | None, typer.Option("--correlation-id", help="Defaults to the new event's id.")
    ] = None,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline",
            help="Straight to the broker, not through the API: as a business system writes it, "
            "with no proven submitter.",
        ),
    ] = False,
    claimed: Annotated[
        str | None,
        typer.Option("--as", help="With --offline: a submitter to name, shown as claimed and never trusted."),
    ] = None,
    tenant: Annotated[
        str | None,
        typer.Option(
            "--tenant",
            envvar="CHARTER_TENANT",
            help="The tenant it is for, one you act for; default your only tenant, else the API's own.",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Follow the runs it starts to their ends (completed, failed, cancelled, escalated), "
            "saying each change; exit 1 unless every one completed.",
        ),
    ] = False,
    wait_timeout: Annotated[
        float, typer.Option("--wait-timeout", min=0, help="With --wait: give up after this many seconds.")
    ] = 300.0,
) -> None:
    """Publish a business event; matching agents start runs. Through the API with your token, so
    the runs name you as their submitter (separation of duties relies on it). Says which agents
    it starts, with their run ids, and plainly when none does."""
    body = _load_data(data)
    settings = Settings()
    topic = topics.name(settings, topics.Topic.TRIGGERS)
    if claimed is not None and not offline:
        raise ConfigError(
            "--as names a submitter nothing proves; use it only with --offline (the API names you)"
        )
    if wait and offline:
        raise ConfigError("--wait follows runs through the API; it cannot be used with --offline")
    if offline:
        event_id = asyncio.run(_publish_offline(settings, name, body, correlation_id, claimed))
        print(f"published {name} as event {event_id} to {topic}")
        for line in (
            triggering.Roster(settings.agents_dir)
            .forecast(name, body, event_id)
            .lines(topics.dlq_name(topic))
        ):
            print(line)
        return
    request: dict[str, Any] = {"name": name, "data": body, "correlation_id": correlation_id, "source": "cli"}
    if tenant is not None:
        request["tenant"] = tenant
    with ApiClient.from_settings(settings) as api:
        accepted = api.post("/v1/events", request)
        if not formats.as_data():
            event_id, by = accepted["event_id"], accepted["submitted_by"]
            print(f"published {name} as event {event_id} to {topic}, submitted by {by}")
            print(accepted["note"])
        if wait:
            started = [s["run_id"] for s in accepted["starts"] or []]
            ended = _follow(api, started, wait_timeout)
            accepted["ended"] = [ended[r] for r in started]
    if formats.as_data():
        formats.data_one(accepted)
    if wait and any(r["status"] != "completed" for r in accepted["ended"]):
        raise typer.Exit(exits.FAILED)


def _follow(api: ApiClient, run_ids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    def said(run: dict[str, Any]) -> None:
        if not formats.as_data():
            print(f"run {run['run_id'][:8]}: {run['status']}: {run['last']}")

    try:
        return follow(api, run_ids, timeout_s, said)
    except StillRunning as exc:
        # The command ran and found its runs unfinished: a failure of what was asked (exit 1).
        print(f"charter: still running after {timeout_s:g}s: run {exc}", file=sys.stderr)
        raise typer.Exit(exits.FAILED) from None


async def _publish_offline(
    settings: Settings, name: str, body: dict[str, Any], correlation_id: str | None, claimed: str | None
) -> str:
    async with Client(settings, source="cli") as client:
        trigger = await client.publish(name, body, correlation_id=correlation_id, submitted_by=claimed)
        return trigger.event_id


def _print(received: Received, as_json: bool, prefix: str) -> None:
    # A stream prints one object a line in either JSON format.
    decoded = formats.as_data(as_json)
    console.print(received_json(received) if decoded else received_line(received, prefix), markup=False)


def tail(
    names: Annotated[
        list[str] | None, typer.Argument(help="Topics to follow (default: all), e.g. runs actions.results.")
    ] = None,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the oldest record, not now.")
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Follow topics, decoded, until Ctrl-C."""
    settings = Settings()
    since = datetime.fromtimestamp(0, UTC) if from_beginning else None

    async def go() -> None:
        async with Client(settings) as client:
            # Any topic on the broker, a replay's sandbox among them; one that is not there is named.
            async for received in client.subscribe(*(names or []), since=since, other_topics=True):
                _print(received, as_json, settings.topic_prefix)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(go())


def _target(settings: Settings, replayed: list[str], to: str | None, into_live: bool) -> str | None:
    """The topic `--to` names, checked: never one replayed, and one the services read only when
    asked for with --into-live."""
    target = topics.resolve(settings, to, other=True) if to else None
    if target and target in (replayed or topics.all_names(settings)):
        raise ConfigError("--to must be another topic than the ones replayed")
    if target and target in topics.all_names(settings) and not into_live:
        raise ConfigError(f"{target} is read by the services; replay into it only with --into-live")
    return target


def replay(
    topic: Annotated[
        list[str] | None,
        typer.Option(
            "--topic", help="A topic to read, e.g. actions.proposed; repeat for more (default: all)."
        ),
    ] = None,
    from_beginning: Annotated[bool, typer.Option("--from-beginning")] = False,
    from_offset: Annotated[
        int | None, typer.Option("--from-offset", min=0, help="Start at this offset in every partition.")
    ] = None,
    to_offset: Annotated[
        int | None, typer.Option("--to-offset", min=0, help="Stop after this offset in every partition.")
    ] = None,
    from_time: Annotated[
        datetime | None, typer.Option("--from-time", help="Start at this time (ISO 8601; UTC if no zone).")
    ] = None,
    until: Annotated[
        datetime | None, typer.Option("--until", help="Stop before this time (ISO 8601; UTC if no zone).")
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run", help="Only this run's events: its id, or its first characters (the API finds it)."
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Publish the records to this topic (any name; made if missing) instead of printing "
            f"them: keys, headers and bytes as they were, marked with a {REPLAYED_FROM} header.",
        ),
    ] = None,
    into_live: Annotated[
        bool,
        typer.Option("--into-live", help="Allow --to to name a topic of the contract, which services read."),
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Replay a range of records, by run, time or offset, through a fresh consumer that commits
    nothing: printed decoded, or published to another topic (--to)."""
    chosen = sum([from_beginning, from_offset is not None, from_time is not None])
    if chosen > 1 or (chosen == 0 and run_id is None):
        raise ConfigError("give one of --from-beginning, --from-offset N, --from-time ISO (or only --run)")
    settings = Settings()
    names = [topics.resolve(settings, t, other=True) for t in topic or []]
    target = _target(settings, names, to, into_live)
    if run_id is not None and len(run_id) < FULL_ID:
        run_id = full_run_id(settings, run_id)
    window = dict(
        from_offset=from_offset,
        from_time=as_utc(from_time) if from_time else None,
        until=as_utc(until) if until else None,
        to_offset=to_offset,
        run_id=run_id,
    )

    async def go() -> int:
        count = 0
        if target:
            await topics.ensure_other(settings, target)
        async with Client(settings) as client:
            async for received in client.replay(*names, **window, other_topics=True):  # type: ignore[arg-type]
                if target:
                    marker = (
                        REPLAYED_FROM,
                        f"{received.topic}:{received.partition}:{received.offset}".encode(),
                    )
                    out = Outgoing(target, received.key, received.value)
                    await client.send_record(out, [*received.headers, marker], as_is=True)
                else:
                    _print(received, as_json, settings.topic_prefix)
                count += 1
        return count

    count = asyncio.run(go())
    if target:
        print(f"-- {count} records replayed to {target}")
    elif not formats.as_data(as_json):
        print(f"-- {count} events")

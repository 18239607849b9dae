"""charter dlq list | show | replay: the records services could not process, and putting them back.

A service that cannot process a record publishes a `DeadLettered` event to `<topic>.dlq` with the
original key and bytes and the reason (charter.runtime.pipeline), and moves on. An original too
big for the broker is kept as its digest, its size and its first bytes (`truncated`). Here an operator reads
those, and, once the cause is fixed, publishes the original (or a corrected event) to the topic
it came from, marked with a `charter-replayed-from: <dlq topic>:<partition>:<offset>` header.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from charter import serde, topics
from charter.bus import REPLAYED_FROM, Outgoing, route
from charter.cli import formats
from charter.cli.output import console, table
from charter.cli.stores import resolve_id
from charter.client import Client, Received
from charter.config import Settings
from charter.errors import ConfigError, InvalidMessage
from charter.events import EVENT_TYPES, DeadLettered, Event

REASON_WIDTH = 80

app = typer.Typer(
    no_args_is_help=True,
    help="Dead letters: records a service could not process, with why; and replaying fixed ones.",
)
LetterId = Annotated[
    str, typer.Argument(help="The dead letter's id (from `charter dlq list`), or its first 4+ characters.")
]


@dataclass(frozen=True)
class Letter:
    """A dead letter and where it sits in its DLQ topic."""

    topic: str
    partition: int
    offset: int
    event: DeadLettered

    @property
    def id(self) -> str:
        return self.event.event_id

    @property
    def position(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"

    def original(self) -> tuple[Event | None, str | None]:
        """The record it carries, decoded; or why that fails."""
        if self.event.truncated:
            return None, f"only its first {len(self.event.value)} bytes were kept"
        try:
            return serde.decode(self.event.value), None
        except InvalidMessage as exc:
            return None, str(exc)


def dlq_topics(settings: Settings, topic: str | None) -> list[str]:
    """Every DLQ topic, or the one a user named (`triggers`, `triggers.dlq` or the full name)."""
    if topic is None:
        return [n for n in topics.all_names(settings) if n.endswith(topics.DLQ_SUFFIX)]
    text = topic if topic.endswith(topics.DLQ_SUFFIX) else topics.dlq_name(topic)
    return [topics.resolve(settings, text)]


async def _read_one(client: Client, name: str) -> list[Received]:
    return [received async for received in client.replay(name)]


def read_letters(settings: Settings, names: list[str]) -> tuple[list[Letter], int]:
    """The dead letters of `names`, oldest first, read to the end; and how many records there were
    not dead letters. A record dead-lettered twice (a redelivery) has one id and is listed once."""

    async def go() -> list[list[Received]]:
        async with Client(settings, source="cli") as client:
            return await asyncio.gather(*(_read_one(client, name) for name in names))

    letters: dict[str, Letter] = {}
    others = 0
    for received in (r for batch in asyncio.run(go()) for r in batch):
        if not isinstance(received.event, DeadLettered):
            others += 1
            continue
        letter = Letter(received.topic, received.partition, received.offset, received.event)
        letters.setdefault(letter.id, letter)
    ordered = sorted(letters.values(), key=lambda x: (x.event.envelope.occurred_at, x.topic, x.offset))
    return ordered, others


def find(settings: Settings, prefix: str) -> Letter:
    letters, _ = read_letters(settings, dlq_topics(settings, None))
    full = resolve_id([x.id for x in letters if x.id.startswith(prefix)], prefix, "dead letter")
    return next(x for x in letters if x.id == full)


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def _key_text(key: bytes | None) -> str | None:
    """A key as text when it is text, else as hex; None when there is none."""
    if key is None:
        return None
    text = _text(key)
    return text if text is not None and text.isprintable() else f"0x{key.hex()}"


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def not_kept(dead: DeadLettered) -> str | None:
    """What is known of an original the letter could not keep whole; None when it is kept."""
    if not dead.truncated:
        return None
    return f"original not kept: {dead.original_size} bytes, {dead.digest}"


def record_json(letter: Letter, with_original: bool = False) -> dict[str, Any]:
    dead, env = letter.event, letter.event.envelope
    body: dict[str, Any] = {
        "id": letter.id,
        "dlq_topic": letter.topic,
        "dlq_partition": letter.partition,
        "dlq_offset": letter.offset,
        "occurred_at": env.occurred_at.isoformat(),
        "service": dead.service,
        "source_topic": dead.source_topic,
        "source_partition": dead.source_partition,
        "source_offset": dead.source_offset,
        "error_type": dead.error_type,
        "reason": dead.reason,
        "tenant": env.tenant,
        "agent": env.agent,
        "run_id": env.run_id,
        "correlation_id": env.correlation_id,
        "causation_id": env.causation_id,
        "key": _text(dead.key),
        "key_base64": _b64(dead.key),
        "value_base64": _b64(dead.value),
        # A letter from before digests were kept has none; `truncated`: value is a prefix.
        "digest": dead.digest,
        "original_size": dead.original_size,
        "truncated": dead.truncated,
    }
    if with_original:
        event, error = letter.original()
        body["original"] = _event_json(event) if event else None
        body["original_error"] = error
    return body


def _event_json(event: Event) -> dict[str, Any]:
    # JSON-valued fields as objects, not strings: easier to read and edit into a --event file.
    dumped: dict[str, Any] = event.model_dump(mode="json", context={"objects": True})
    return dumped


def _source(letter: Letter, prefix: str) -> str:
    dead = letter.event
    return f"{dead.source_topic.removeprefix(prefix)}@{dead.source_partition}:{dead.source_offset}"


def _bracketed(text: str | None) -> str | None:
    return None if text is None else f"[{text}]"


def _cut(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


@app.command("list")
def list_(
    topic: Annotated[
        str | None,
        typer.Argument(help="One source topic's dead letters, e.g. triggers (or triggers.dlq); default all."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per dead letter, the reason in full.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Show only the latest N.")] = 100,
) -> None:
    """Dead letters in every `.dlq` topic (or one), oldest first: id, when, the service that gave
    up, the source record (topic@partition:offset), the error and the reason. Reads to the
    current end of the topics and exits."""
    settings = Settings()
    letters, others = read_letters(settings, dlq_topics(settings, topic))
    shown = letters[-limit:]
    if formats.as_data(as_json):
        formats.data_listing([record_json(letter) for letter in shown], as_json)
        return
    if not letters:
        console.print("no dead letters")
    else:
        rows = [
            [
                x.id[:8],
                x.event.envelope.occurred_at.strftime("%Y-%m-%d %H:%M:%S"),
                x.event.service,
                _source(x, settings.topic_prefix),
                x.event.error_type,
                # Said first, so that cutting the reason to width never hides it.
                _cut(" ".join(filter(None, [_bracketed(not_kept(x.event)), x.event.reason])), REASON_WIDTH),
            ]
            for x in shown
        ]
        table(["id", "when (UTC)", "service", "source", "error", "reason"], rows)
        console.print(f"-- {len(shown)} of {len(letters)} dead letters", markup=False)
    if others:
        console.print(f"-- and {others} records in DLQ topics that are not dead letters", markup=False)


@app.command("show")
def show(
    letter_id: LetterId,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object; the decoded original under `original`.")
    ] = False,
) -> None:
    """One dead letter in full: where it sits, every field, the reason, the key, and the original
    record: as a Charter event in JSON when it decodes, else as base64 and hex with the decode
    error. Ready for a fix: `--json` gives the original under `original`, the shape `replay
    --event` reads."""
    settings = Settings()
    letter = find(settings, letter_id)
    if formats.as_data(as_json):
        formats.data_one(record_json(letter, with_original=True), as_json)
        return
    body = record_json(letter)
    dead = body["source_topic"], body["source_partition"], body["source_offset"]
    fields = {
        **{f: body[f] for f in ("occurred_at", "service", "error_type", "reason")},
        "source": ":".join(str(part) for part in dead),
        **{f: body[f] for f in ("tenant", "agent", "run_id", "correlation_id", "causation_id")},
        "key": _key_text(letter.event.key),
    }
    lines = [f"dead letter {letter.id} at {letter.position}"]
    lines += [f"  {name:<15} {'-' if value is None else value}" for name, value in fields.items()]
    value = letter.event.value
    event, error = letter.original()
    if letter.event.truncated:
        lines.append(
            f"original value ({letter.event.original_size} bytes, {letter.event.digest}) was too big "
            f"for the broker; its first {len(value)} bytes:"
        )
        lines.append(f"  base64 {body['value_base64']}")
        lines.append(f"  hex    {value.hex()}")
    elif event is not None:
        lines.append(f"original value ({len(value)} bytes), a {event.envelope.event_type}:")
        lines.append(json.dumps(_event_json(event), indent=2, ensure_ascii=False))
    else:
        lines.append(f"original value ({len(value)} bytes) does not decode: {error}")
        lines.append(f"  base64 {body['value_base64']}")
        lines.append(f"  hex    {value.hex()}")
    for line in lines:
        console.print(line, markup=False)


def load_event_file(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc


def corrected(settings: Settings, letter: Letter, data: Any) -> tuple[Event, Outgoing]:
    """A corrected event from its JSON form, checked as the services will check it: a known
    type, every field valid, Avro that decodes back to it, and bound for the dead letter's topic."""
    if not isinstance(data, dict):
        raise ConfigError("the corrected event must be a JSON object (as `charter dlq show --json` gives)")
    envelope = data.get("envelope")
    event_type = envelope.get("event_type") if isinstance(envelope, dict) else None
    cls = EVENT_TYPES.get(event_type) if isinstance(event_type, str) else None
    if cls is None:
        known = ", ".join(sorted(EVENT_TYPES))
        raise ConfigError(f"the corrected event needs envelope.event_type, one of: {known}")
    try:
        event = cls.model_validate(data)
        out = route(settings, event)
        serde.decode(out.value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(event)'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ConfigError(f"the corrected {event_type} is not valid: {problems}") from exc
    except (InvalidMessage, ValueError, TypeError) as exc:
        raise ConfigError(f"the corrected {event_type} does not encode: {exc}") from exc
    if out.topic != letter.event.source_topic:
        raise ConfigError(
            f"a {event_type} belongs on {out.topic}, but this dead letter came from "
            f"{letter.event.source_topic}: nothing published"
        )
    original, _ = letter.original()
    if original is not None and original.event_id == event.event_id and original != event:
        # The audit log keeps one entry per event id: a changed event under the old id would be
        # acted on, but never recorded.
        raise ConfigError(
            f"the corrected event keeps the original's id {event.event_id} but changes it; give it a "
            "new envelope.event_id (the audit log already holds the original under that id)"
        )
    return event, out


async def _produce(settings: Settings, out: Outgoing, headers: list[tuple[str, bytes]]) -> Any:
    async with Client(settings, source="cli") as client:
        return await client.send_record(out, headers)


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise ConfigError("not asking without a terminal: add --yes to publish")
    try:
        return typer.confirm(question)
    except typer.Abort:
        return False


@app.command("replay")
def replay(
    letter_id: LetterId,
    event_file: Annotated[
        Path | None,
        typer.Option(
            "--event",
            help="Publish this corrected event (JSON, e.g. the `original` of `dlq show --json`, "
            "edited, with a new envelope.event_id) instead of the original bytes.",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Publish without asking.")] = False,
) -> None:
    """Publish a dead letter's original key and bytes back to the topic it came from, so that
    the services process it again once its cause is fixed (say, an agent or tool file); or, with
    --event, a corrected event instead, which must validate and encode as the services would
    read it and belong on that topic, else nothing is published. The record carries a header
    `charter-replayed-from: <dlq topic>:<partition>:<offset>`. Every call publishes again: nothing
    records that a dead letter was replayed.

    Nothing skips the replay as a duplicate of the first delivery: a record that does not decode
    never reaches a handler, and a service records an event id in its inbox only together with a
    successful outcome. Every service reading the topic sees the record again, and one that fails
    on it again makes a new dead letter. Two memories remain: the audit log keeps one entry per
    event id, so a replayed original that decoded is not logged twice (and a corrected event
    must have a new id); and the executor knows the actions it began by idempotency key, so an
    approval whose tool call had started is reported in doubt, not called again, unless the tool
    is idempotent. Events only a service may sign (approvals, decisions) cannot be corrected
    here: they would be dead-lettered as forged."""
    settings = Settings()
    letter = find(settings, letter_id)
    dead = letter.event
    if event_file is None and dead.truncated:
        raise ConfigError(
            f"dead letter {letter.id[:8]} kept only the first {len(dead.value)} of the original's "
            f"{dead.original_size} bytes ({dead.digest}): publish a corrected event with --event, "
            "or the original again from where it came"
        )
    if event_file is None:
        out = Outgoing(dead.source_topic, dead.key, dead.value, dead.envelope.tenant)
        what = f"the original record ({len(dead.value)} bytes)"
    else:
        event, out = corrected(settings, letter, load_event_file(event_file))
        what = f"{event.envelope.event_type} {event.event_id} from {event_file}"
    marker = (REPLAYED_FROM, letter.position.encode())
    key = _key_text(out.key) or "none"
    console.print(
        f"dead letter {letter.id[:8]} ({dead.service}, {dead.error_type}): {_cut(dead.reason, REASON_WIDTH)}",
        markup=False,
    )
    if not yes and not _confirm(f"publish {what} to {out.topic} with key {key}?"):
        console.print("nothing published", markup=False)
        raise typer.Exit(1)
    sent = asyncio.run(_produce(settings, out, [marker]))
    console.print(
        f"published {what} to {sent.topic}:{sent.partition}:{sent.offset} with key {key}, "
        f"{REPLAYED_FROM}: {letter.position}",
        markup=False,
    )

"""Personal data in the audit log, sealed per data subject so it can be purged (crypto-shredding).

Before an event is appended, the values of personal fields (CHARTER_PERSONAL_FIELDS) inside its
payload objects (trigger data, action parameters, results, run outputs, hand-off and escalation
context), at any depth, are encrypted with the key of the event's data subject, AES-256-GCM bound
to the event id and field. The subject is the run's: the first of CHARTER_SUBJECT_FIELDS found in
any event of the run (its trigger's, which RunStarted names), wherever it nests, so a step's result or the
run's outputs, which seldom name the customer again, are sealed under the same key as the
trigger. The sealed event is what the log stores and what its leaf covers. Purging a subject
deletes its key: the sealed values stay, unreadable by anyone, and every hash still verifies.
Personal fields in a run that names no subject (or not yet, as the audit reads it) are sealed
under the run's own key, `run:<run id>`, tied to the subject once the run names one. Events
outside any run that name no subject are stored as they are.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, Engine, or_, select, text, update

from charter import serde, subjects
from charter.config import Settings
from charter.errors import InvalidMessage
from charter.events import DeadLettered, Event, RunStarted
from services.audit import store
from services.audit.store import subject_keys_table as keys

log = logging.getLogger(__name__)
SEALED = "charter-sealed:v1:"
PURGED = "[purged]"
PAYLOADS = frozenset({"data", "parameters", "result", "outputs", "context"})
NONCE = 12
# Runs (and triggers) whose subject the sealer remembers, for the events of a batch not yet in
# the log; past that the log answers (`store.subject_of_run`).
REMEMBERED = 10_000


def _aad(event_id: str, name: str) -> bytes:
    return f"{event_id}/{name}".encode()


class Sealer:
    def __init__(self, personal: tuple[str, ...], subject_fields: tuple[str, ...]) -> None:
        self._personal = frozenset(personal)
        self._subject_fields = subject_fields
        self._names = [b'"%s"' % name.encode() for name in (*subject_fields, *personal)]
        self._subjects: OrderedDict[tuple[str, str], str] = OrderedDict()

    @classmethod
    def of(cls, settings: Settings) -> Sealer:
        return cls(
            subjects.field_names(settings.personal_fields), subjects.field_names(settings.subject_fields)
        )

    def subject(self, payloads: list[dict[str, Any]]) -> str | None:
        return subjects.named(payloads, self._subject_fields)

    def concerns(self, event: Event, value: bytes) -> bool:
        """Whether the event, whose encoding is `value`, may name a subject, hold a personal
        field, or tie its run to its trigger's subject (RunStarted): payloads are JSON text inside
        the Avro record, so a field name that is not in the bytes is in no payload."""
        return isinstance(event, RunStarted) or any(name in value for name in self._names)

    def seal(self, conn: Connection, event: Event, now_us: int) -> tuple[bytes | None, str | None]:
        """The event's bytes with its personal fields sealed (None if nothing needed sealing),
        and the data subject they are sealed under. A dead letter's original record is sealed
        inside it."""
        if isinstance(event, DeadLettered):
            return self._seal_letter(conn, event, now_us)
        dumped = event.model_dump(context={"objects": True})
        payloads = _payloads(dumped)
        personal = any(self._personal & obj.keys() for obj in subjects.objects(payloads))
        subject = self._subject_of(conn, event, payloads, personal)
        self._remember(event, subject)
        if subject is None and personal:
            log.warning(
                "event %s carries personal fields but is in no run and names no data subject (%s): "
                "stored unsealed",
                event.event_id,
                ", ".join(self._subject_fields),
            )
        if subject is None or not personal:
            return None, subject
        cipher = AESGCM(subject_key(conn, subject, now_us))

        def seal_one(name: str, value: Any) -> str:
            nonce = os.urandom(NONCE)
            sealed = cipher.encrypt(nonce, json.dumps(value).encode(), _aad(event.event_id, name))
            return SEALED + base64.urlsafe_b64encode(nonce + sealed).decode()

        for payload in payloads:
            _replace(payload, self._personal, seal_one)
        return serde.encode(type(event).model_validate(dumped)), subject

    def _subject_of(
        self, conn: Connection, event: Event, payloads: list[dict[str, Any]], personal: bool
    ) -> str | None:
        """The run's subject wins over one the event names itself, so that purging the run's
        subject leaves none of the run's personal data readable. The audit reads the run's topics
        in no fixed order, so a step's result may come before the RunStarted that names the
        subject: it is sealed under the run's own key, which is tied to the subject once the run
        names it (and purged with it)."""
        found = self._of_run(conn, event)
        if found is not None and not found.startswith(store.RUN_KEY):
            return found
        named = self._named(conn, event, payloads)
        if named is not None:
            if found is not None:
                self._tie(conn, found, named)
            return named
        if found is None and personal and event.run_id:
            return store.RUN_KEY + event.run_id
        return found

    @staticmethod
    def _tie(conn: Connection, run_key: str, subject: str) -> None:
        """Tie the run's own key to its subject. If the subject was purged after the run's key
        was made, the run's key goes too: nothing recorded before a purge stays readable."""
        purged = conn.execute(
            select(keys.c.purged_at_us, keys.c.purged_by).where(
                keys.c.subject == subject, keys.c.purged_at_us.is_not(None)
            )
        ).first()
        tie = update(keys).where(keys.c.subject == run_key)
        conn.execute(tie.values(belongs_to=subject))
        if purged is not None:
            conn.execute(
                tie.where(keys.c.created_at_us <= purged.purged_at_us).values(
                    key=None, purged_at_us=purged.purged_at_us, purged_by=purged.purged_by
                )
            )

    def _of_run(self, conn: Connection, event: Event) -> str | None:
        if not event.run_id:
            return None
        return self._recall(("run", event.run_id)) or store.subject_of_run(conn, event.run_id)

    def _named(self, conn: Connection, event: Event, payloads: list[dict[str, Any]]) -> str | None:
        """The subject the event names: RunStarted's (else the one found for the trigger that
        starts it, in runs started before RunStarted named it), or the first subject field in
        its payloads."""
        if isinstance(event, RunStarted):
            trigger = event.trigger_event_id
            found = event.subject or self._recall(("event", trigger)) or store.subject_of_event(conn, trigger)
            if found is not None:
                return found
        return self.subject(payloads)

    def _recall(self, key: tuple[str, str]) -> str | None:
        found = self._subjects.get(key)
        if found is not None:
            self._subjects.move_to_end(key)
        return found

    def _remember(self, event: Event, subject: str | None) -> None:
        if subject is None:
            return
        # An event outside any run (a trigger) is remembered for the runs it starts.
        key = ("run", event.run_id) if event.run_id else ("event", event.event_id)
        self._subjects[key] = subject
        self._subjects.move_to_end(key)
        while len(self._subjects) > REMEMBERED:
            self._subjects.popitem(last=False)

    def _seal_letter(
        self, conn: Connection, letter: DeadLettered, now_us: int
    ) -> tuple[bytes | None, str | None]:
        try:
            original = serde.decode(letter.value)
        except InvalidMessage:
            return None, None  # not an event at all: nothing to find a subject in
        sealed, subject = self.seal(conn, original, now_us)
        if sealed is None:
            return None, subject
        return serde.encode(letter.model_copy(update={"value": sealed})), subject


def _payloads(dumped: Any) -> list[dict[str, Any]]:
    """The payload objects of a dumped event, wherever they are nested (never the envelope)."""
    found: list[dict[str, Any]] = []
    if isinstance(dumped, dict):
        for key, value in dumped.items():
            if key == "envelope":
                continue
            if key in PAYLOADS and isinstance(value, dict):
                found.append(value)
            else:
                found.extend(_payloads(value))
    elif isinstance(dumped, list):
        for item in dumped:
            found.extend(_payloads(item))
    return found


def _replace(obj: Any, personal: frozenset[str], change: Callable[[str, Any], Any]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in personal:
                obj[key] = change(key, value)
            else:
                _replace(value, personal, change)
    elif isinstance(obj, list):
        for item in obj:
            _replace(item, personal, change)


def subject_key(conn: Connection, subject: str, now_us: int) -> bytes:
    """The subject's key, made on first use (and made afresh for data recorded after a purge)."""
    row = conn.execute(select(keys.c.key).where(keys.c.subject == subject)).first()
    if row is not None and row.key is not None:
        return bytes(row.key)
    key = AESGCM.generate_key(bit_length=256)
    if row is None:
        conn.execute(keys.insert().values(subject=subject, key=key, created_at_us=now_us))
    else:
        conn.execute(update(keys).where(keys.c.subject == subject).values(key=key, created_at_us=now_us))
    return key


def unseal(conn: Connection, event_id: str, obj: Any, subject: str | None) -> Any:
    """A decoded event's JSON with sealed values opened, or shown as purged once the key is gone."""
    key = None
    if subject is not None:
        key = conn.execute(select(keys.c.key).where(keys.c.subject == subject)).scalar()

    def open_one(name: str, value: Any) -> Any:
        if not (isinstance(value, str) and value.startswith(SEALED)):
            return value
        if key is None:
            return PURGED
        blob = base64.urlsafe_b64decode(value[len(SEALED) :].encode())
        try:
            plain = AESGCM(bytes(key)).decrypt(blob[:NONCE], blob[NONCE:], _aad(event_id, name))
        except InvalidTag:
            return PURGED  # sealed under an earlier key of the subject, purged since
        return json.loads(plain)

    _replace_sealed(obj, open_one)
    return obj


def history(conn: Connection) -> tuple[list[Event], int]:
    """Every event the log still holds, in log order, decoded with its personal fields opened:
    what the services saw, so that deciding it again means something. Events whose subject was
    purged cannot be opened and are left out; the second value counts them."""
    events, purged = [], 0
    for _, value, subject in store.values(conn):
        try:
            event = serde.decode(value)
        except InvalidMessage:
            continue
        if subject is not None:
            dumped = unseal(conn, event.event_id, event.model_dump(context={"objects": True}), subject)
            if PURGED in json.dumps(dumped, default=str):
                purged += 1
                continue
            event = type(event).model_validate(dumped)
        events.append(event)
    return events, purged


def _replace_sealed(obj: Any, change: Callable[[str, Any], Any]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, str) and value.startswith(SEALED):
                obj[key] = change(key, value)
            else:
                _replace_sealed(value, change)
    elif isinstance(obj, list):
        for item in obj:
            _replace_sealed(item, change)


@dataclass(frozen=True)
class Purged:
    found: bool  # the subject had a key, now deleted
    scrubbed: bool  # its bytes are gone from the database's files as far as the database can tell


def purge(engine: Engine, subject: str, by: str) -> Purged:
    """Delete the subject's key, and the keys of its runs that were read before they named it,
    so nobody can read its sealed data again.

    The key's bytes are also scrubbed from the database's files where the database allows:
    SQLite overwrites deleted content (secure_delete) and its write-ahead log is checkpointed and
    truncated (retried while a reader holds it); PostgreSQL's VACUUM removes the old row
    version. Backups, replicas and PostgreSQL's WAL archive keep what they had until they cycle."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("PRAGMA secure_delete=ON"))
        done = conn.execute(
            update(keys)
            .where(or_(keys.c.subject == subject, keys.c.belongs_to == subject), keys.c.key.is_not(None))
            .values(key=None, purged_at_us=time.time_ns() // 1000, purged_by=by)
        ).rowcount
    if engine.dialect.name != "sqlite":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"VACUUM {keys.name}"))
        return Purged(bool(done), True)
    for _ in range(50):
        with engine.connect() as conn:
            busy = conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)")).first()
        if busy is not None and busy[0] == 0:
            return Purged(bool(done), True)
        time.sleep(0.1)  # a reader (the audit service, the API) holds the log for a moment
    return Purged(bool(done), False)

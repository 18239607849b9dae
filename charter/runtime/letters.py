"""Dead letters: a record that could not be handled, with why, kept on `<topic>.dlq`.

A letter is made to fit the producer's max request size: a letter the broker refuses would be
lost, and the record with it (and a service that cannot send it would stop). The original's
digest and size are always kept; its bytes only where they fit, else their first KEPT_PREFIX
(`truncated`). Should even that not fit (a huge key, or a reason quoting the record), the key
and reason are cut too, and the envelope keeps nothing of the original but where it was.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime

from charter import serde
from charter.config import Settings
from charter.events import DeadLettered, Event
from charter.runtime.delivery import Delivery
from charter.runtime.keys import tenant_of

log = logging.getLogger(__name__)

# Room a dead letter leaves under the producer's max request size for what the broker adds
# around its bytes: the record and batch overhead, the key and the headers (trace context,
# origin), a few hundred bytes in all.
LETTER_HEADROOM = 4096
# How much of an original too big to keep a dead letter still shows, and of its reason and key.
KEPT_PREFIX = 1024


def letter(
    settings: Settings,
    *,
    event_id: str,
    now: datetime,
    delivery: Delivery,
    event: Event | None,
    reason: str,
    error_type: str,
    service: str,
) -> DeadLettered:
    """The dead letter of `delivery` (decoded as `event`, if it was), fitted to the broker."""
    position = f"{delivery.topic}:{delivery.partition}:{delivery.offset}"
    env = event.envelope if event else None
    made = DeadLettered.create(
        event_id=event_id,
        now=now,
        # A record that does not decode keeps the tenant its header names, if any.
        tenant=env.tenant if env else (tenant_of(delivery) or settings.tenant),
        agent=env.agent if env else None,
        run_id=env.run_id if env else None,
        correlation_id=env.correlation_id if env else position,
        causation_id=env.event_id if env else None,
        source_topic=delivery.topic,
        source_partition=delivery.partition,
        source_offset=delivery.offset,
        key=delivery.key,
        value=delivery.value,
        reason=reason,
        error_type=error_type,
        service=service,
        digest="sha256:" + hashlib.sha256(delivery.value).hexdigest(),
        original_size=len(delivery.value),
    )
    return _fitted(made, position, settings)


def _fitted(letter: DeadLettered, position: str, settings: Settings) -> DeadLettered:
    budget = settings.max_message_bytes - LETTER_HEADROOM
    if _size(letter) <= budget:
        return letter
    log.warning(
        "dead letter of %s is too big for the broker: keeping the first %d of %d bytes and the digest",
        position,
        KEPT_PREFIX,
        len(letter.value),
    )
    letter = letter.model_copy(update={"value": letter.value[:KEPT_PREFIX], "truncated": True})
    if _size(letter) <= budget:
        return letter
    env = letter.envelope.model_copy(
        update={
            "tenant": settings.tenant,
            "agent": None,
            "run_id": None,
            "causation_id": None,
            "correlation_id": position,
        }
    )
    key = letter.key[:KEPT_PREFIX] if letter.key is not None else None
    return letter.model_copy(update={"envelope": env, "key": key, "reason": letter.reason[:KEPT_PREFIX]})


def _size(letter: DeadLettered) -> int:
    return len(serde.encode(letter)) + len(letter.key or b"")

"""Webhook notifications: an approval is waiting for someone, or a run needs a human.

A notification is written to the store with the event that calls for it (an outbox), then
delivered by a background task: POST of a JSON body to CHARTER_WEBHOOK_URL, retried with
exponential backoff until the receiver answers 2xx, or marked failed after `MAX_ATTEMPTS`.
Each body carries a link to the console. Receivers tell deliveries apart by the
`X-Charter-Delivery` header (a retry repeats it) and check `X-Charter-Signature`, an
HMAC-SHA256 of the body under CHARTER_WEBHOOK_SECRET, when one is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Connection, Engine, insert, or_, select, update

from charter.clock import Clock, as_utc
from charter.config import Settings
from charter.errors import RetryPolicy
from charter.events import ApprovalRequested, RunEscalated
from services.approvals.store import notifications

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 12
BACKOFF = RetryPolicy(attempts=MAX_ATTEMPTS, first_delay_s=1.0, multiplier=2.0, max_delay_s=300.0)
CLAIM = timedelta(seconds=30)
POLL_S = 0.5
TIMEOUT_S = 5.0


def approval_requested(request: ApprovalRequested, expires_at: datetime, console_url: str) -> dict[str, Any]:
    action = request.action
    return {
        "type": "approval.requested",
        "approval_id": request.approval_id,
        "tenant": request.envelope.tenant,
        "run_id": request.envelope.run_id,
        "agent": request.envelope.agent,
        "tool": action.tool,
        "resource": action.resource,
        "parameters": action.parameters,
        "roles": request.decision.approval_roles,
        "approvals_required": request.decision.approvals_required,
        "reasons": request.decision.reasons,
        "requested_at": request.envelope.occurred_at.isoformat(),
        "expires_at": expires_at.isoformat(),
        "link": f"{console_url}/console/approvals/{request.approval_id}",
    }


def run_escalated(event: RunEscalated, console_url: str) -> dict[str, Any]:
    return {
        "type": "run.escalated",
        "tenant": event.envelope.tenant,
        "run_id": event.envelope.run_id,
        "agent": event.envelope.agent,
        "cause": event.cause,
        "reason": event.reason,
        "step": event.step,
        "escalated_at": event.envelope.occurred_at.isoformat(),
        "link": f"{console_url}/console/runs/{event.envelope.run_id}",
    }


def enqueue(conn: Connection, notification_id: str, payload: dict[str, Any], now: datetime) -> None:
    """Owe a delivery; a second call with the same id (a redelivered event) owes nothing more."""
    exists = conn.execute(
        select(notifications.c.notification_id).where(notifications.c.notification_id == notification_id)
    ).first()
    if exists:
        return
    conn.execute(
        insert(notifications).values(
            notification_id=notification_id,
            kind=payload["type"],
            payload=json.dumps(payload, sort_keys=True),
            created_at=now,
            attempts=0,
            next_attempt_at=now,
        )
    )


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Notifier:
    def __init__(self, settings: Settings, engine: Engine, clock: Clock) -> None:
        self._url = settings.webhook_url
        self._secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        self._engine = engine
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self._url is not None

    async def run(self, stop: asyncio.Event) -> None:
        if self._url is None:
            return
        async with httpx.AsyncClient(timeout=TIMEOUT_S, follow_redirects=False) as http:
            while not stop.is_set():
                while await self.deliver_one(http):
                    pass
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=POLL_S)

    async def deliver_one(self, http: httpx.AsyncClient) -> bool:
        """Deliver the oldest notification that is due; False if none was."""
        claimed = self._claim()
        if claimed is None:
            return False
        notification_id, kind, body, attempt = claimed
        error = await self._post(http, notification_id, kind, body)
        self._settle(notification_id, kind, attempt, error)
        return True

    def _settle(self, notification_id: str, kind: str, attempt: int, error: str | None) -> None:
        now = self._clock.now()
        short = notification_id[:8]
        if error is None:
            done: dict[str, datetime | None] = {"delivered_at": now}
            log.info("webhook %s delivered (%s, attempt %d)", short, kind, attempt)
        elif attempt >= MAX_ATTEMPTS:
            done = {"failed_at": now}
            log.error("webhook %s failed for good after %d attempts: %s", short, attempt, error)
        else:
            done = {"next_attempt_at": now + timedelta(seconds=BACKOFF.delay(attempt)), "claimed_until": None}
            log.warning("webhook %s attempt %d failed, will retry: %s", short, attempt, error)
        with self._engine.begin() as conn:
            conn.execute(
                update(notifications)
                .where(notifications.c.notification_id == notification_id)
                .values(attempts=attempt, last_error=error, **done)
            )

    def _claim(self) -> tuple[str, str, bytes, int] | None:
        """Take the oldest due notification for CLAIM, so a second replica does not send it too."""
        now = self._clock.now()
        with self._engine.begin() as conn:
            row = conn.execute(
                select(notifications)
                .where(
                    notifications.c.delivered_at.is_(None),
                    notifications.c.failed_at.is_(None),
                    notifications.c.next_attempt_at <= now,
                    or_(notifications.c.claimed_until.is_(None), notifications.c.claimed_until < now),
                )
                .order_by(notifications.c.next_attempt_at)
                .limit(1)
            ).first()
            if row is None:
                return None
            taken = conn.execute(
                update(notifications)
                .where(
                    notifications.c.notification_id == row.notification_id,
                    or_(notifications.c.claimed_until.is_(None), notifications.c.claimed_until < now),
                )
                .values(claimed_until=now + CLAIM)
            )
            if taken.rowcount != 1:
                return None
        return row.notification_id, row.kind, row.payload.encode(), row.attempts + 1

    async def _post(self, http: httpx.AsyncClient, delivery: str, kind: str, body: bytes) -> str | None:
        assert self._url is not None
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "charter-approvals",
            "X-Charter-Event": kind,
            "X-Charter-Delivery": delivery,
        }
        if self._secret:
            headers["X-Charter-Signature"] = signature(self._secret, body)
        try:
            response = await http.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.is_success:
            return None
        return f"HTTP {response.status_code}"


def pending_deliveries(conn: Connection) -> list[dict[str, Any]]:
    """Every notification with its state, oldest first: for tests and operators."""
    rows = conn.execute(select(notifications).order_by(notifications.c.created_at))
    return [
        {
            **row._mapping,
            "created_at": as_utc(row.created_at),
            "payload": json.loads(row.payload),
        }
        for row in rows
    ]


def counts(conn: Connection) -> dict[str, int]:
    """Notifications delivered, failed for good, and still owed."""
    n = notifications.c
    rows = conn.execute(select(n.delivered_at.is_not(None), n.failed_at.is_not(None))).all()
    delivered = sum(1 for d, _ in rows if d)
    failed = sum(1 for d, f in rows if f and not d)
    return {"delivered": delivered, "failed": failed, "owed": len(rows) - delivered - failed}

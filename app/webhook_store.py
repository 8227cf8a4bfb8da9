"""Webhook data access: announcing jobs that reached a terminal status, claiming due deliveries,
recording attempts, and tenants' signing secrets. Keyword-only functions taking the session.

A job with a ``callback_url`` is ``callback_pending`` until its terminal status has been turned into a
delivery row; that happens here, whichever process set the status (worker, reaper, API cancel), in the
same transaction that clears the flag, so a message is neither lost nor queued twice.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from app import crud
from app.models import (
    TERMINAL_STATUSES,
    Job,
    Tenant,
    WebhookDelivery,
    WebhookDeliveryState,
    utcnow,
)
from app.schemas import job_public
from app.webhook_signing import new_message_id, new_webhook_secret

EVENT_PREFIX = "job."
BACKOFF_FACTOR = 3


def queue_finished_jobs(session: Session, *, now: datetime | None = None, limit: int = 100) -> list[str]:
    """Turn terminal jobs still ``callback_pending`` into deliveries; returns the new message ids."""
    now = now or utcnow()
    jobs = session.scalars(
        select(Job)
        .where(Job.callback_pending.is_(True), Job.status.in_([s.value for s in TERMINAL_STATUSES]))
        .order_by(Job.seq)
        .limit(limit)
    ).all()
    return [message_id for job in jobs if (message_id := _queue(session, job, now)) is not None]


def queue_before_delete(session: Session, *, tenant_id: str, job_id: str) -> str | None:
    """Queue the webhook of a finished job about to be deleted (the delivery keeps its own copy)."""
    job = session.scalar(
        select(Job).where(
            Job.id == job_id,
            Job.tenant_id == tenant_id,
            Job.callback_pending.is_(True),
            Job.status.in_([s.value for s in TERMINAL_STATUSES]),
        )
    )
    return _queue(session, job, utcnow()) if job is not None else None


def _queue(session: Session, job: Job, now: datetime) -> str | None:
    """Clear the job's pending flag and add its delivery in one transaction; None if another process
    did it first."""
    claimed = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.callback_pending.is_(True), Job.status == job.status)
        .values(callback_pending=False)
    )
    if _rowcount(claimed) != 1 or job.callback_url is None:
        session.commit()
        return None
    delivery = WebhookDelivery(
        id=new_message_id(),
        tenant_id=job.tenant_id,
        job_id=job.id,
        event=EVENT_PREFIX + job.status,
        url=job.callback_url,
        body=webhook_body(job),
        next_attempt_at=now,
        created_at=now,
    )
    session.add(delivery)
    session.commit()
    return delivery.id


def webhook_body(job: Job) -> str:
    """What a webhook POSTs: the job object, as ``GET /jobs/{id}`` returns it (compact JSON)."""
    return json.dumps(job_public(job).model_dump(mode="json"), separators=(",", ":"))


@dataclass(frozen=True)
class DueDelivery:
    """A claimed delivery and the tenant's current secret to sign it with."""

    id: str
    job_id: str
    url: str
    body: str
    attempts: int
    secret: str


def claim_due_deliveries(
    session: Session, *, lease_seconds: float, limit: int = 20, now: datetime | None = None
) -> list[DueDelivery]:
    """Pending deliveries whose next attempt is due, each locked for ``lease_seconds`` to this caller."""
    now = now or utcnow()
    candidates = session.execute(
        select(WebhookDelivery, Tenant.webhook_secret)
        .join(Tenant, Tenant.id == WebhookDelivery.tenant_id)
        .where(
            WebhookDelivery.state == WebhookDeliveryState.PENDING.value,
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(limit)
    ).all()
    claimed = []
    for delivery, secret in candidates:
        result = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.seq == delivery.seq,
                WebhookDelivery.state == WebhookDeliveryState.PENDING.value,
                or_(WebhookDelivery.locked_until.is_(None), WebhookDelivery.locked_until < now),
            )
            .values(locked_until=now + timedelta(seconds=lease_seconds))
        )
        session.commit()
        if _rowcount(result) == 1:
            claimed.append(
                DueDelivery(
                    delivery.id, delivery.job_id, delivery.url, delivery.body, delivery.attempts, secret
                )
            )
    return claimed


class Outcome(enum.Enum):
    """How an attempt ended: delivered (2xx), worth retrying, or never to be retried (refused)."""

    DELIVERED = "delivered"
    RETRY = "retry"
    REFUSED = "refused"


@dataclass(frozen=True)
class Attempt:
    outcome: Outcome
    status_code: int | None = None
    error: str | None = None


def record_attempt(
    session: Session,
    *,
    delivery_id: str,
    attempt: Attempt,
    max_attempts: int,
    retry_seconds: float,
    now: datetime | None = None,
) -> str:
    """Store an attempt's outcome and schedule the next one (``retry_seconds`` x 3^n later) until
    ``max_attempts``; returns the delivery's state."""
    now = now or utcnow()
    delivery = session.scalars(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)).one()
    attempts = delivery.attempts + 1
    values: dict[str, object] = {
        "attempts": attempts,
        "locked_until": None,
        "last_status_code": attempt.status_code,
        "last_error": attempt.error[:2000] if attempt.error else None,
    }
    if attempt.outcome is Outcome.DELIVERED:
        values.update(state=WebhookDeliveryState.DELIVERED.value, finished_at=now)
    elif attempt.outcome is Outcome.REFUSED or attempts >= max_attempts:
        values.update(state=WebhookDeliveryState.FAILED.value, finished_at=now)
    else:
        delay = retry_seconds * BACKOFF_FACTOR ** (attempts - 1)
        values.update(next_attempt_at=now + timedelta(seconds=delay))
    session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values))
    session.commit()
    return str(values.get("state", WebhookDeliveryState.PENDING.value))


def prune_finished_deliveries(session: Session, *, older_than: datetime) -> int:
    """Delete delivered and failed deliveries that finished before ``older_than``."""
    result = session.execute(
        delete(WebhookDelivery).where(
            WebhookDelivery.state != WebhookDeliveryState.PENDING.value,
            WebhookDelivery.finished_at < older_than,
        )
    )
    session.commit()
    return _rowcount(result)


def list_deliveries(session: Session, *, job_id: str) -> list[WebhookDelivery]:
    """A job's deliveries, oldest first."""
    return list(
        session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.job_id == job_id).order_by(WebhookDelivery.seq)
        )
    )


def webhook_secret(session: Session, *, tenant_name: str, rotate: bool = False) -> str:
    """The tenant's signing secret (the tenant is created if new); ``rotate`` replaces it first."""
    tenant = crud.get_or_create_tenant(session, name=tenant_name)
    if rotate:
        secret = new_webhook_secret()
        session.execute(update(Tenant).where(Tenant.id == tenant.id).values(webhook_secret=secret))
        session.commit()
        return secret
    return tenant.webhook_secret


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)

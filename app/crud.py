"""Data access shared by the API and the workers: keyword-only functions taking the session.

Every state change of a job is one conditional UPDATE (``WHERE status = ... AND lease_owner = ...``),
so concurrent API processes, workers and reapers never overwrite each other: the loser sees 0 rows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import security
from app.models import ApiKey, Dataset, Job, JobStatus, Tenant, utcnow

LOCAL_TENANT = "local"


class JobConflict(Exception):
    """The job's status does not allow the requested change (maps to 409)."""


class DatasetInUse(Exception):
    """A queued or running job reads the dataset (maps to 409)."""


# --- tenants and keys ---------------------------------------------------------------------------


def get_or_create_tenant(session: Session, *, name: str) -> Tenant:
    """The tenant called ``name``, created on first use."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is not None:
        return tenant
    tenant = Tenant(name=name)
    session.add(tenant)
    try:
        session.commit()
    except IntegrityError:  # created concurrently
        session.rollback()
        tenant = session.scalars(select(Tenant).where(Tenant.name == name)).one()
    return tenant


def create_api_key(session: Session, *, tenant_name: str) -> tuple[ApiKey, str]:
    """A new key for ``tenant_name`` (tenant created if needed): the row and the token, shown once."""
    tenant = get_or_create_tenant(session, name=tenant_name)
    new = security.generate_api_key()
    key = ApiKey(id=new.key_id, tenant_id=tenant.id, secret_sha256=new.secret_sha256)
    session.add(key)
    session.commit()
    return key, new.token


def authenticate(session: Session, *, token: str) -> Tenant | None:
    """The tenant of a valid, unrevoked key; None otherwise."""
    parts = security.split_token(token)
    if parts is None:
        return None
    key = session.get(ApiKey, parts[0])
    if key is None or key.revoked_at is not None or not security.secret_matches(parts[1], key.secret_sha256):
        return None
    return session.get(Tenant, key.tenant_id)


def any_api_keys(session: Session) -> bool:
    """Whether at least one unrevoked key exists (then anonymous access ends)."""
    return bool(session.scalar(select(exists().where(ApiKey.revoked_at.is_(None)))))


def list_api_keys(session: Session) -> list[tuple[ApiKey, str]]:
    """Every key with its tenant's name, oldest first."""
    rows = session.execute(
        select(ApiKey, Tenant.name).join(Tenant, Tenant.id == ApiKey.tenant_id).order_by(ApiKey.created_at)
    )
    return [(key, name) for key, name in rows.tuples()]


def revoke_api_key(session: Session, *, key_id: str, now: datetime | None = None) -> bool:
    """Revoke a key by its public id; False when there is no such active key."""
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
    )
    session.commit()
    return _rowcount(result) == 1


# --- jobs: API side ------------------------------------------------------------------------------


def create_job(session: Session, *, job: Job) -> tuple[Job, bool]:
    """Insert ``job``; with an idempotency key already used by the tenant, return that job instead.

    Returns ``(job, created)``.
    """
    session.add(job)
    try:
        session.commit()
        return job, True
    except IntegrityError:
        session.rollback()
        if job.idempotency_key is None:
            raise
        existing = get_job_by_idempotency_key(session, tenant_id=job.tenant_id, key=job.idempotency_key)
        if existing is None:
            raise
        return existing, False


def get_job(session: Session, *, tenant_id: str, job_id: str) -> Job | None:
    """The tenant's job, None when absent or another tenant's."""
    return session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))


def get_job_by_id(session: Session, *, job_id: str) -> Job | None:
    """Any tenant's job by id (workers only)."""
    return session.scalar(select(Job).where(Job.id == job_id))


def get_job_by_idempotency_key(session: Session, *, tenant_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


def list_jobs(
    session: Session,
    *,
    tenant_id: str,
    limit: int,
    before_seq: int | None = None,
    status: JobStatus | None = None,
) -> list[Job]:
    """The tenant's jobs newest first, those older than ``before_seq`` when given."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if before_seq is not None:
        query = query.where(Job.seq < before_seq)
    if status is not None:
        query = query.where(Job.status == status.value)
    return list(session.scalars(query.order_by(Job.seq.desc()).limit(limit)))


def cancel_job(session: Session, *, tenant_id: str, job_id: str, now: datetime | None = None) -> Job | None:
    """Cancel: a queued job becomes ``cancelled`` now; a running one is asked to stop at its next
    progress point (its worker then marks it). Cancelling a cancelled job is a no-op; a finished one
    raises JobConflict. None when there is no such job."""
    now = now or utcnow()
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.CANCELLED.value, cancel_requested=True, finished_at=now, updated_at=now)
    )
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status == JobStatus.RUNNING.value)
        .values(cancel_requested=True, updated_at=now)
    )
    session.commit()
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    if job is not None:
        session.refresh(job)
        if job.status in (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value):
            raise JobConflict(
                f"job {job_id} already {job.status}; only queued or running jobs can be cancelled"
            )
    return job


def delete_job(session: Session, *, tenant_id: str, job_id: str) -> Job | None:
    """Delete a job that is not running (JobConflict while running); None when there is no such job.
    The caller removes its artifacts (``job.storage_prefix``)."""
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    if job is None:
        return None
    result = session.execute(
        delete(Job).where(Job.id == job_id, Job.tenant_id == tenant_id, Job.status != JobStatus.RUNNING.value)
    )
    session.commit()
    if _rowcount(result) == 0:
        if get_job(session, tenant_id=tenant_id, job_id=job_id) is None:
            return None
        raise JobConflict(f"job {job_id} is running; cancel it first, then delete it once it has stopped")
    return job


# --- jobs: worker side ---------------------------------------------------------------------------


class Lease(enum.Enum):
    """What a heartbeat learned: the worker still owns the job, was asked to stop, or lost it."""

    OWNED = "owned"
    CANCEL_REQUESTED = "cancel_requested"
    LOST = "lost"


def mark_enqueued(session: Session, *, job_id: str, now: datetime | None = None) -> None:
    """Record that a task for the job was handed to the broker."""
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=now or utcnow()))
    session.commit()


def next_queued_job_ids(session: Session, *, queues: list[str], limit: int = 10) -> list[str]:
    """Oldest queued jobs on ``queues`` (the embedded worker's view of the queue)."""
    query = (
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED.value, Job.queue.in_(queues))
        .order_by(Job.seq)
        .limit(limit)
    )
    return list(session.scalars(query))


def claim_job(
    session: Session, *, job_id: str, owner: str, lease_seconds: float, now: datetime | None = None
) -> Job | None:
    """Take a queued job: it becomes ``running`` under ``owner``'s lease. None when it is not queued
    (cancelled, deleted, already taken): then the caller must not run it."""
    now = now or utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
        .values(
            status=JobStatus.RUNNING.value,
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
            stage="starting",
            fraction=0.0,
            updated_at=now,
        )
    )
    session.commit()
    if _rowcount(result) == 0:
        return None
    job = get_job_by_id(session, job_id=job_id)
    if job is not None:
        session.refresh(job)
    return job


def heartbeat(
    session: Session,
    *,
    job_id: str,
    owner: str,
    lease_seconds: float,
    stage: str | None = None,
    fraction: float | None = None,
    now: datetime | None = None,
) -> Lease:
    """Extend ``owner``'s lease and record progress; say whether to go on."""
    now = now or utcnow()
    values: dict[str, Any] = {
        "heartbeat_at": now,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "updated_at": now,
    }
    if stage is not None:
        values["stage"] = stage[:64]
    if fraction is not None:
        values["fraction"] = min(max(float(fraction), 0.0), 1.0)
    result = session.execute(update(Job).where(*_owned(job_id, owner)).values(**values))
    session.commit()
    if _rowcount(result) == 0:
        return Lease.LOST
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return Lease.CANCEL_REQUESTED if cancel else Lease.OWNED


@dataclass(frozen=True)
class JobOutputs:
    """What a successful run stored."""

    output_key: str
    output_filename: str
    output_format: str
    output_sha256: str
    output_bytes: int
    report_key: str
    result: dict[str, Any]
    artifacts: dict[str, Any] | None = None


def finish_job(
    session: Session,
    *,
    job_id: str,
    owner: str,
    status: JobStatus,
    error_code: str | None = None,
    error_message: str | None = None,
    outputs: JobOutputs | None = None,
    now: datetime | None = None,
) -> bool:
    """End ``owner``'s run with a terminal status; False when the lease was lost meanwhile."""
    assert status.terminal, "finish_job takes a terminal status"
    now = now or utcnow()
    values: dict[str, Any] = {
        "status": status.value,
        "finished_at": now,
        "updated_at": now,
        "lease_owner": None,
        "lease_expires_at": None,
        "error_code": error_code,
        "error_message": error_message,
    }
    if status == JobStatus.SUCCEEDED:
        values["fraction"] = 1.0
        values["stage"] = "done"
    if outputs is not None:
        values.update(
            output_key=outputs.output_key,
            output_filename=outputs.output_filename,
            output_format=outputs.output_format,
            output_sha256=outputs.output_sha256,
            output_bytes=outputs.output_bytes,
            report_key=outputs.report_key,
            result=outputs.result,
            artifacts=outputs.artifacts,
        )
    result = session.execute(update(Job).where(*_owned(job_id, owner)).values(**values))
    session.commit()
    return _rowcount(result) == 1


def release_job(session: Session, *, job_id: str, owner: str, now: datetime | None = None) -> bool:
    """Give a running job back to the queue (worker shutting down); the attempt still counts."""
    now = now or utcnow()
    result = session.execute(
        update(Job)
        .where(*_owned(job_id, owner))
        .values(
            status=JobStatus.QUEUED.value,
            lease_owner=None,
            lease_expires_at=None,
            stage="queued",
            fraction=0.0,
            updated_at=now,
            enqueued_at=None,
        )
    )
    session.commit()
    return _rowcount(result) == 1


def reap_expired_leases(session: Session, *, max_attempts: int, now: datetime | None = None) -> list[Job]:
    """Deal with running jobs whose worker stopped heart-beating: cancel those asked to stop, fail
    those out of attempts, re-queue the rest (returned, to be enqueued again)."""
    now = now or utcnow()
    expired = session.scalars(
        select(Job).where(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now)
    ).all()
    requeued: list[Job] = []
    for job in expired:
        base = update(Job).where(
            Job.id == job.id,
            Job.status == JobStatus.RUNNING.value,
            Job.lease_owner == job.lease_owner,
            Job.lease_expires_at < now,
        )
        cleared: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None, "updated_at": now}
        if job.cancel_requested:
            values: dict[str, Any] = {**cleared, "status": JobStatus.CANCELLED.value, "finished_at": now}
        elif job.attempts >= max_attempts:
            values = {
                **cleared,
                "status": JobStatus.FAILED.value,
                "finished_at": now,
                "error_code": "worker_lost",
                "error_message": (
                    f"the worker running this job stopped responding {job.attempts} times "
                    f"(limit {max_attempts}); the job may crash its worker"
                ),
            }
        else:
            values = {**cleared, "status": JobStatus.QUEUED.value, "stage": "queued", "fraction": 0.0}
        result = session.execute(base.values(**values))
        session.commit()
        if _rowcount(result) == 1 and values["status"] == JobStatus.QUEUED.value:
            requeued.append(job)
    return requeued


def stale_queued_jobs(session: Session, *, older_than: datetime) -> list[Job]:
    """Queued jobs not handed to the broker since ``older_than`` (lost or never-sent messages)."""
    query = select(Job).where(
        Job.status == JobStatus.QUEUED.value,
        (Job.enqueued_at.is_(None) & (Job.created_at < older_than)) | (Job.enqueued_at < older_than),
    )
    return list(session.scalars(query))


# --- datasets --------------------------------------------------------------------------------


def create_dataset(session: Session, *, dataset: Dataset) -> Dataset:
    """Insert a dataset row."""
    session.add(dataset)
    session.commit()
    return dataset


def get_dataset(session: Session, *, tenant_id: str, dataset_id: str) -> Dataset | None:
    """The tenant's dataset, None when absent or another tenant's."""
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id))


def list_datasets(
    session: Session, *, tenant_id: str, limit: int, before_seq: int | None = None
) -> list[Dataset]:
    """The tenant's datasets newest first, those older than ``before_seq`` when given."""
    query = select(Dataset).where(Dataset.tenant_id == tenant_id)
    if before_seq is not None:
        query = query.where(Dataset.seq < before_seq)
    return list(session.scalars(query.order_by(Dataset.seq.desc()).limit(limit)))


def delete_dataset(session: Session, *, tenant_id: str, dataset_id: str) -> Dataset | None:
    """Delete a dataset no queued or running job reads (DatasetInUse otherwise); None when there is no
    such dataset. Finished jobs keep their record of it (their reference becomes null). The caller
    removes its file (``dataset.storage_prefix``)."""
    dataset = get_dataset(session, tenant_id=tenant_id, dataset_id=dataset_id)
    if dataset is None:
        return None
    active = (
        select(Job.id)
        .where(
            (Job.dataset_id == dataset_id) | (Job.eval_dataset_id == dataset_id),
            Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]),
        )
        .limit(1)
    )
    result = session.execute(
        delete(Dataset).where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id, ~exists(active))
    )
    session.commit()
    if _rowcount(result) == 0:
        if get_dataset(session, tenant_id=tenant_id, dataset_id=dataset_id) is None:
            return None
        job_id = session.scalar(active)
        raise DatasetInUse(
            f"dataset {dataset_id} is used by job {job_id}, which is queued or running; delete it once "
            "the job has finished or been cancelled"
        )
    return dataset


# --- metrics ---------------------------------------------------------------------------------


def job_counts_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).tuples()
    return {status: count for status, count in rows}


def queue_depths(session: Session) -> dict[str, int]:
    """Queued jobs per queue."""
    rows = session.execute(
        select(Job.queue, func.count()).where(Job.status == JobStatus.QUEUED.value).group_by(Job.queue)
    ).tuples()
    return {queue: count for queue, count in rows}


def finished_job_durations(session: Session, *, since: datetime) -> list[tuple[str, float]]:
    """``(status, seconds from start to finish)`` of jobs that ran and finished after ``since``."""
    rows = session.execute(
        select(Job.status, Job.started_at, Job.finished_at).where(
            Job.finished_at >= since, Job.started_at.is_not(None)
        )
    ).tuples()
    return [(status, (end - start).total_seconds()) for status, start, end in rows if start and end]


def _owned(job_id: str, owner: str) -> tuple[Any, ...]:
    return (Job.id == job_id, Job.status == JobStatus.RUNNING.value, Job.lease_owner == owner)


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)

"""Handing a job id to the workers: a Celery message in distributed mode, nothing in embedded mode
(the local worker finds queued jobs in the database)."""

from __future__ import annotations

from typing import Protocol

from app.config import Settings


class JobDispatcher(Protocol):
    def dispatch(self, job_id: str, queue: str) -> None:
        """Ask a worker on ``queue`` to run the job (at least once; the claim prevents twice)."""

    def check(self) -> None:
        """Raise when the broker cannot be reached (readiness probe)."""


class DatabaseDispatcher:
    """Embedded mode: the ``jobs`` table is the queue, polled by the local worker."""

    def dispatch(self, job_id: str, queue: str) -> None:
        return None

    def check(self) -> None:
        return None


class CeleryDispatcher:
    """Distributed mode: one Celery task per job, carrying only the job id, on the job's queue."""

    def __init__(self, settings: Settings) -> None:
        from worker.celery_app import create_celery

        self._celery = create_celery(settings)

    def dispatch(self, job_id: str, queue: str) -> None:
        from worker.celery_app import TASK_RUN_JOB

        self._celery.send_task(TASK_RUN_JOB, args=[job_id], queue=queue)

    def check(self) -> None:
        with self._celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)


def create_dispatcher(settings: Settings) -> JobDispatcher:
    return DatabaseDispatcher() if settings.embedded else CeleryDispatcher(settings)

"""The Celery task: one per job, carrying only the job id; the pipeline re-reads the row by id."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from worker.celery_app import TASK_RUN_JOB
from worker.pipeline import execute_job


@shared_task(bind=True, name=TASK_RUN_JOB, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(self: Any, job_id: str) -> str:
    """Claim and run job ``job_id`` (a no-op unless it is queued: a redelivered task never runs twice)."""
    return execute_job(self.app.worker_context(), job_id)

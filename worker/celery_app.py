"""The Celery app, built from Settings: Redis broker, ``cpu`` and ``gpu`` queues, one job per child."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from celery import Celery
from kombu import Queue

from app.config import Settings

if TYPE_CHECKING:
    from worker.context import WorkerContext

TASK_RUN_JOB = "specprune.run_job"
QUEUES = ("cpu", "gpu")


class SpecpruneCelery(Celery):
    """A Celery app that carries its Settings and builds one WorkerContext per process (after fork)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("specprune", broker=settings.broker_url, set_as_current=True)
        self.settings = settings
        self._context: WorkerContext | None = None
        self._context_pid = -1

    def worker_context(self) -> WorkerContext:
        """The database sessions and storage of this process, made on first use in each process."""
        if self._context is None or self._context_pid != os.getpid():
            from worker.context import WorkerContext

            self._context = WorkerContext.from_settings(self.settings)
            self._context_pid = os.getpid()
        return self._context


def create_celery(settings: Settings) -> SpecpruneCelery:
    """The Celery app for ``settings`` (which must name a broker)."""
    if not settings.broker_url:
        raise ValueError("Celery needs SPECPRUNE_BROKER_URL; without it the embedded local worker runs jobs")
    app = SpecpruneCelery(settings)
    transport: dict[str, object] = {"visibility_timeout": settings.broker_visibility_timeout_seconds}
    if settings.broker_namespace:
        transport["global_keyprefix"] = settings.broker_namespace
    app.conf.update(
        include=["worker.tasks"],
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="cpu",
        # Nothing lost: a task is acknowledged only when done, and re-delivered if its process dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A fresh process per job: memory (and any GPU context) is returned after each one.
        worker_max_tasks_per_child=1,
        worker_concurrency=settings.worker_concurrency,
        task_time_limit=settings.task_time_limit_seconds,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app

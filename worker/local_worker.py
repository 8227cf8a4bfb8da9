"""The embedded worker: polls the database for queued jobs and runs them one at a time, with the same
pipeline as the Celery task. ``specprune serve`` starts it as a child process when there is no broker."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from app import crud
from app.config import Settings
from app.db import session_scope
from worker.context import WorkerContext
from worker.pipeline import execute_job

logger = logging.getLogger(__name__)


def run_local_worker(settings: Settings, stop: threading.Event) -> None:
    """Run queued jobs from ``settings.queues`` until ``stop`` is set."""
    ctx = WorkerContext.from_settings(settings)
    logger.info("local worker polling %s for queues %s", settings.database_url, settings.queues)
    while not stop.is_set():
        with session_scope(ctx.sessions) as session:
            candidates = crud.next_queued_job_ids(session, queues=settings.queues)
        ran = False
        for job_id in candidates:
            if stop.is_set():
                break
            if execute_job(ctx, job_id, stop=stop) != "skipped":
                ran = True
                break  # re-read the queue: oldest first
        if not ran:
            stop.wait(settings.poll_interval_seconds)


def install_stop_signals(stop: threading.Event) -> None:
    """SIGTERM/SIGINT set ``stop``: the running job is released to the queue, then the loop ends."""

    def handle(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal %d: stopping the local worker", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)

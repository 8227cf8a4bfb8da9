"""The reaper: re-queues jobs whose worker died (lease expired), within bounded attempts, and
re-sends jobs whose broker message was lost. Safe to run in several processes at once."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from app import crud
from app.config import Settings
from app.db import SessionFactory, session_scope
from app.models import utcnow
from worker.dispatch import JobDispatcher

logger = logging.getLogger(__name__)


class Reaper:
    def __init__(self, settings: Settings, sessions: SessionFactory, dispatcher: JobDispatcher) -> None:
        self.settings = settings
        self.sessions = sessions
        self.dispatcher = dispatcher

    def run_once(self) -> list[str]:
        """One pass; returns the ids of the jobs handed to the workers again."""
        now = utcnow()
        with session_scope(self.sessions) as session:
            requeued = crud.reap_expired_leases(session, max_attempts=self.settings.max_attempts, now=now)
            stale = []
            if not self.settings.embedded:
                older_than = now - timedelta(seconds=self.settings.requeue_after_seconds)
                stale = crud.stale_queued_jobs(session, older_than=older_than)
        for job in requeued:
            logger.warning("job %s: worker lost (attempt %d); re-queued", job.id, job.attempts)
        sent = []
        for job in [*requeued, *stale]:
            try:
                self.dispatcher.dispatch(job.id, job.queue)
            except Exception:
                logger.exception("could not enqueue job %s; will retry", job.id)
                continue
            with session_scope(self.sessions) as session:
                crud.mark_enqueued(session, job_id=job.id, now=now)
            sent.append(job.id)
        return sent

    def run_forever(self, stop: threading.Event) -> None:
        """Pass every ``reaper_interval_seconds`` until ``stop`` is set; errors are logged, never fatal."""
        while not stop.wait(self.settings.reaper_interval_seconds):
            try:
                self.run_once()
            except Exception:
                logger.exception("reaper pass failed")

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run_forever, args=(stop,), name="specprune-reaper", daemon=True)
        thread.start()
        return thread

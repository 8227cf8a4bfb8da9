"""Builds the FastAPI application from Settings."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.main import api_router
from app.config import Settings
from app.db import create_db_engine, create_session_factory
from app.metrics import Metrics, RequestLatencyMiddleware
from app.problems import register_problem_handlers
from app.storage import create_storage
from worker.dispatch import create_dispatcher
from worker.reaper import Reaper
from worker.webhooks import WebhookDeliverer

DESCRIPTION = (
    "Compress trained networks by spectral pruning. POST a model and calibration data to /jobs, follow "
    "the job, download the compressed model and its report. Errors are RFC 9457 problem+json."
)


def create_app(settings: Settings | None = None, *, run_reaper: bool = True) -> FastAPI:
    """The API for ``settings``: database, storage, dispatcher, metrics and (optionally) the reaper
    and the webhook deliverer.

    The schema must already be migrated (``specprune db upgrade``; ``specprune serve`` does it).
    """
    settings = settings or Settings()
    engine = create_db_engine(settings)
    sessions = create_session_factory(engine)
    storage = create_storage(settings)
    dispatcher = create_dispatcher(settings)
    metrics = Metrics(sessions, settings.metrics_duration_window_seconds)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        storage.prepare()
        stop = threading.Event()
        reaper = Reaper(settings, sessions, dispatcher).start(stop) if run_reaper else None
        webhooks = WebhookDeliverer(settings, sessions).start(stop) if run_reaper else None
        try:
            yield
        finally:
            stop.set()
            for thread in (reaper, webhooks):
                if thread is not None:
                    thread.join(timeout=5)
            engine.dispose()

    app = FastAPI(title="specprune", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.storage = storage
    app.state.inspection_slots = threading.BoundedSemaphore(settings.dataset_inspections)
    app.state.dispatcher = dispatcher
    app.state.metrics = metrics
    register_problem_handlers(app)
    app.include_router(api_router)
    app.add_middleware(RequestLatencyMiddleware, metrics=metrics)
    return app

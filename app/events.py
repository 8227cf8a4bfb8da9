"""Server-sent events for one job: an event per status or progress change, ending at a terminal status.

The stream re-reads the job row (progress lives there, written by whichever worker runs the job), so
any API replica can serve it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from starlette.concurrency import run_in_threadpool

from app.schemas import JobPublic

RETRY_MILLISECONDS = 2000


def format_event(event: str, data: str, event_id: int) -> str:
    """One SSE message (``data`` is a single JSON line)."""
    return f"id: {event_id}\nevent: {event}\ndata: {data}\n\n"


async def job_event_stream(
    load: Callable[[], JobPublic | None], *, poll_seconds: float, keepalive_seconds: float
) -> AsyncIterator[str]:
    """``status`` events when the status changes, ``progress`` events when stage or fraction does,
    a ``deleted`` event if the job disappears; keep-alive comments in between."""
    yield f"retry: {RETRY_MILLISECONDS}\n\n"
    last_status = None
    last_progress = None
    event_id = 0
    last_sent = time.monotonic()
    while True:
        job = await run_in_threadpool(load)
        if job is None:
            event_id += 1
            yield format_event("deleted", "{}", event_id)
            return
        progress = (job.progress.stage, job.progress.fraction)
        kind = "status" if job.status != last_status else "progress" if progress != last_progress else None
        if kind is not None:
            event_id += 1
            last_status, last_progress, last_sent = job.status, progress, time.monotonic()
            yield format_event(kind, job.model_dump_json(), event_id)
        elif time.monotonic() - last_sent >= keepalive_seconds:
            last_sent = time.monotonic()
            yield ": keep-alive\n\n"
        if job.status.terminal:
            return
        await asyncio.sleep(poll_seconds)

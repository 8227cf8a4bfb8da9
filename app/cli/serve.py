"""``specprune serve``: migrate, start the API, and (unless ``--no-worker``) a worker process beside it.

Embedded by default (SQLite, local storage, a local worker); with SPECPRUNE_BROKER_URL the worker it
starts is a Celery worker, and ``--no-worker`` leaves the jobs to ``specprune worker`` elsewhere.
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

from app.cli.supervisor import WorkerSupervisor

if TYPE_CHECKING:
    from app.config import Settings


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser("serve", help="run the HTTP API (and a local worker)")
    parser.add_argument("--host", help="address to bind (default SPECPRUNE_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default SPECPRUNE_PORT, 8000)")
    parser.add_argument("--no-worker", action="store_true", help="do not start a worker process")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from app.config import Settings
    from app.db import upgrade_database
    from app.main import create_app

    overrides = {
        name: value for name, value in (("host", args.host), ("port", args.port)) if value is not None
    }
    settings = Settings(**overrides)
    upgrade_database(settings)
    refusal = open_bind_refusal(settings)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    supervisor = None if args.no_worker else WorkerSupervisor().start()
    signal.signal(signal.SIGTERM, _exit_after_shutdown)
    try:
        uvicorn.run(
            create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level
        )
    finally:
        if supervisor is not None:
            supervisor.stop()
    return 0


def _exit_after_shutdown(signum: int, _frame: FrameType | None) -> None:
    """uvicorn drains on SIGTERM, then raises it again: exit through ``finally`` so the worker is stopped
    (it releases its job) instead of the process dying with the worker left to the parent-death signal."""
    raise SystemExit(128 + signum)


def open_bind_refusal(settings: Settings) -> str | None:
    """Why the API must not start: bound beyond loopback with no API key to protect it."""
    from app import crud
    from app.db import create_db_engine, create_session_factory, session_scope

    if settings.binds_loopback():
        return None
    engine = create_db_engine(settings)
    try:
        with session_scope(create_session_factory(engine)) as session:
            if crud.any_api_keys(session):
                return None
    finally:
        engine.dispose()
    return (
        f"refusing to serve on {settings.host}: no API key exists, so anyone reaching this address could use "
        "the service. Create one first: specprune keys create --tenant NAME"
    )

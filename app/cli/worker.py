"""``specprune worker``: run jobs. With a broker, a Celery worker; without, the embedded local worker."""

from __future__ import annotations

import argparse
import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.config import Settings

logger = logging.getLogger(__name__)


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser("worker", help="run jobs (Celery with SPECPRUNE_BROKER_URL, else local)")
    parser.add_argument("--queues", help="comma-separated queues to consume: cpu, gpu (default: both)")
    parser.add_argument("--concurrency", type=int, help="jobs in parallel (default 1: one per GPU)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from app.config import Settings

    overrides: dict[str, Any] = {}
    if args.queues:
        overrides["worker_queues"] = args.queues
    if args.concurrency:
        overrides["worker_concurrency"] = args.concurrency
    settings = Settings(**overrides)
    if settings.embedded:
        return _run_local(settings)
    return _run_celery(settings)


def _run_local(settings: Settings) -> int:
    from worker.local_worker import install_stop_signals, run_local_worker

    stop = threading.Event()
    install_stop_signals(stop)
    run_local_worker(settings, stop)
    return 0


def _run_celery(settings: Settings) -> int:
    from worker.celery_app import create_celery

    celery = create_celery(settings)
    celery.worker_main(
        [
            "worker",
            f"--loglevel={settings.log_level.upper()}",
            f"--queues={','.join(settings.queues)}",
            f"--concurrency={settings.worker_concurrency}",
            "--pool=prefork",
            f"--hostname=specprune-{uuid.uuid4().hex[:6]}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0

"""``specprune jobs list|show|cancel|delete``: the caller's jobs on the service."""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.cli.failures import guarded
from app.cli.remote import add_server_options, client_from_args, info, translate_error
from client import Job

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser("jobs", help="list, show, cancel or delete jobs on the service")
    actions = parser.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="the newest jobs first")
    listing.add_argument("--status", choices=STATUSES, help="only jobs with this status")
    listing.add_argument("--limit", type=int, default=20, metavar="N", help="at most N jobs (default 20)")
    listing.add_argument("--json", action="store_true", help="one job object per line")
    listing.set_defaults(func=guarded("jobs list", run_list, translate_error))

    for name, helptext, func in (
        ("show", "print a job (JSON)", run_show),
        ("cancel", "cancel a queued or running job", run_cancel),
        ("delete", "delete a job and its files", run_delete),
    ):
        action = actions.add_parser(name, help=helptext)
        action.add_argument("job_id", metavar="JOB")
        add_server_options(action)
        action.set_defaults(func=guarded(f"jobs {name}", func, translate_error))
    add_server_options(listing)


def run_list(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        jobs = list(client.jobs(status=args.status, limit=max(args.limit, 0)))
    if args.json:
        for job in jobs:
            print(json.dumps(job.data))
        return 0
    rows = [["ID", "STATUS", "PROGRESS", "CREATED", "MODEL"]] + [_row(job) for job in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _row(job: Job) -> list[str]:
    progress = f"{job.stage} {job.fraction:.0%}" if job.status == "running" else ""
    model = job.data.get("model") or {}
    return [
        job.id,
        job.status,
        progress,
        str(job.data.get("created_at", ""))[:19],
        str(model.get("filename", "")),
    ]


def run_show(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        print(json.dumps(client.job(args.job_id).data, indent=2))
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        job = client.job(args.job_id).cancel()
    info(
        f"job {job.id}: {job.status}"
        + (" (stops at its next progress point)" if job.status == "running" else "")
    )
    return 0


def run_delete(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        client.job(args.job_id).delete()
    info(f"job {args.job_id} deleted")
    return 0

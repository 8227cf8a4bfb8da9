"""``specprune download JOB -o OUT [--report REPORT.json]``: a finished job's model (and report)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from app.cli.failures import guarded
from app.cli.remote import add_server_options, client_from_args, info, translate_error


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser("download", help="download a finished job's model and report")
    parser.add_argument("job_id", metavar="JOB")
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="a file, or a directory to keep the server's name",
    )
    parser.add_argument("--report", metavar="REPORT.json", help="also save core's report here")
    parser.add_argument(
        "--format", choices=("safetensors",), help="safetensors: the weights alone instead of the model"
    )
    parser.add_argument("--pruned", action="store_true", help="the model before recovery")
    add_server_options(parser)
    parser.set_defaults(func=guarded("download", run, translate_error))


def run(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        job = client.job(args.job_id)
        written = job.download(args.output, format=args.format, variant="pruned" if args.pruned else None)
        info(f"wrote {written}")
        if args.report:
            Path(args.report).write_text(json.dumps(job.report(), indent=2) + "\n")
            info(f"wrote {args.report}")
    return 0

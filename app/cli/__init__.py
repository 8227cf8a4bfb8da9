"""The ``specprune`` command. Each subcommand lives in its own module with a ``register(subparsers)``
function; add a module to COMMANDS to add a subcommand."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from app.cli import compress, datasets, db, download, jobs, keys, serve, submit, webhooks, worker

COMMANDS = (compress, submit, jobs, download, datasets, serve, worker, db, keys, webhooks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="specprune", description="Spectral pruning of trained networks: service, workers and tools."
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subcommands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

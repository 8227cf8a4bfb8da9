"""``specprune db upgrade``: apply the Alembic migrations to the configured database."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser("db", help="database schema")
    actions = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = actions.add_parser("upgrade", help="apply migrations (SPECPRUNE_DATABASE_URL)")
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    upgrade.set_defaults(func=run_upgrade)


def run_upgrade(args: argparse.Namespace) -> int:
    from app.config import Settings
    from app.db import upgrade_database

    settings = Settings()
    upgrade_database(settings, args.revision)
    print(f"database at revision {args.revision}: {_display_url(settings.database_url)}", file=sys.stderr)
    return 0


def _display_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)

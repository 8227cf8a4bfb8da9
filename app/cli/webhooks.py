"""``specprune webhooks secret --tenant NAME [--rotate]``: the secret that signs a tenant's webhooks."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser("webhooks", help="webhook signing secrets")
    actions = parser.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    secret = actions.add_parser(
        "secret", help="print a tenant's signing secret (whsec_...); the local tenant is called 'local'"
    )
    secret.add_argument("--tenant", required=True, help="tenant name (created if new)")
    secret.add_argument(
        "--rotate", action="store_true", help="replace the secret first (old one stops working)"
    )
    secret.set_defaults(func=run_secret)


def run_secret(args: argparse.Namespace) -> int:
    from app import webhook_store
    from app.config import Settings
    from app.db import create_db_engine, create_session_factory, session_scope, upgrade_database

    tenant = args.tenant.strip()
    if not tenant:
        print("--tenant must not be empty", file=sys.stderr)
        return 2
    settings = Settings()
    upgrade_database(settings)
    engine = create_db_engine(settings)
    try:
        with session_scope(create_session_factory(engine)) as session:
            secret = webhook_store.webhook_secret(session, tenant_name=tenant, rotate=args.rotate)
    finally:
        engine.dispose()
    action = "new signing secret" if args.rotate else "signing secret"
    print(f"webhook {action} of tenant {tenant!r} (verify webhook-signature with it):", file=sys.stderr)
    print(secret)
    return 0

"""``specprune keys create|list|revoke``: API keys, stored hashed; a new key is printed once."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.config import Settings


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser("keys", help="API keys")
    actions = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a key for a tenant (created if new); printed once")
    create.add_argument("--tenant", required=True, help="tenant name")
    create.set_defaults(func=run_create)
    listing = actions.add_parser("list", help="list keys (ids and tenants; secrets are not stored)")
    listing.set_defaults(func=run_list)
    revoke = actions.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=run_revoke)


def _sessions(settings: Settings) -> Any:
    from app.db import create_db_engine, create_session_factory, upgrade_database

    upgrade_database(settings)
    return create_session_factory(create_db_engine(settings))


def run_create(args: argparse.Namespace) -> int:
    from app import crud, webhook_store
    from app.config import Settings
    from app.db import session_scope

    tenant = args.tenant.strip()
    if not tenant:
        print("--tenant must not be empty", file=sys.stderr)
        return 2
    with session_scope(_sessions(Settings())) as session:
        key, token = crud.create_api_key(session, tenant_name=tenant)
        secret = webhook_store.webhook_secret(session, tenant_name=tenant)
    print(
        f"webhook signing secret of tenant {tenant!r} (again: specprune webhooks secret --tenant {tenant}): "
        f"{secret}",
        file=sys.stderr,
    )
    print(f"API key {key.id} for tenant {tenant!r}; store it now, it is not shown again:", file=sys.stderr)
    print(token)
    return 0


def run_list(_args: argparse.Namespace) -> int:
    from app import crud
    from app.config import Settings
    from app.db import session_scope

    with session_scope(_sessions(Settings())) as session:
        for key, tenant in crud.list_api_keys(session):
            state = "revoked" if key.revoked_at else "active"
            print(f"{key.id}\t{tenant}\t{state}\t{key.created_at.isoformat()}")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    from app import crud
    from app.config import Settings
    from app.db import session_scope

    with session_scope(_sessions(Settings())) as session:
        if not crud.revoke_api_key(session, key_id=args.key_id):
            print(f"no active key {args.key_id}", file=sys.stderr)
            return 1
    print(f"revoked {args.key_id}", file=sys.stderr)
    return 0

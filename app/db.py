"""Database engine and sessions built from Settings, and schema upgrades through Alembic."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

SessionFactory = sessionmaker[Session]


def create_db_engine(settings: Settings) -> Engine:
    """An engine for ``settings.database_url``; SQLite gets WAL, a busy timeout and foreign keys."""
    if settings.is_sqlite:
        settings.home.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            settings.database_url, connect_args={"timeout": 30, "check_same_thread": False}
        )
        event.listen(engine, "connect", _configure_sqlite)
        return engine
    return create_engine(settings.database_url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_session_factory(engine: Engine) -> SessionFactory:
    """Sessions that keep loaded attributes after commit (rows are read, then turned into schemas)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: SessionFactory) -> Iterator[Session]:
    """A session that is closed on exit; callers commit explicitly."""
    session = factory()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(settings: Settings) -> Any:
    """Alembic's Config pointing at ``migrations/`` with the settings handed to env.py."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["settings"] = settings
    return config


def upgrade_database(settings: Settings, revision: str = "head") -> None:
    """Apply the Alembic migrations up to ``revision`` (the only way the schema is created)."""
    from alembic import command

    if settings.is_sqlite:
        settings.home.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(settings), revision)

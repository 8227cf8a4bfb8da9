"""The schema comes only from Alembic migrations, on SQLite and on PostgreSQL, and matches the models."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from app.config import Settings
from app.db import alembic_config, create_db_engine, upgrade_database
from app.models import Base
from tests.service.conftest import POSTGRES_SERVER, make_settings, require_service


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        yield make_settings(tmp_path)
        return
    require_service("PostgreSQL", "127.0.0.1", 5432)
    name = f"specprune_migrations_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_settings(tmp_path, database_url=f"{POSTGRES_SERVER}/{name}")
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_upgrade_creates_exactly_the_models_schema_and_downgrade_removes_it(empty_database: Settings) -> None:
    upgrade_database(empty_database)
    upgrade_database(empty_database)  # idempotent
    engine = create_db_engine(empty_database)
    try:
        assert {"tenants", "api_keys", "jobs", "alembic_version"} <= set(inspect(engine).get_table_names())
        with engine.connect() as connection:
            differences = compare_metadata(
                MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
            )
        assert differences == [], differences
        command.downgrade(alembic_config(empty_database), "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()

"""What a worker process needs to run jobs, built from Settings once per process."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.db import SessionFactory, create_db_engine, create_session_factory
from app.storage import Storage, create_storage


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    sessions: SessionFactory
    storage: Storage

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerContext:
        storage = create_storage(settings)
        storage.prepare()
        return cls(settings, create_session_factory(create_db_engine(settings)), storage)

"""Fixtures for the service tests: real SQLite and PostgreSQL databases, real storage, a real exported
model, and helpers to reach the real PostgreSQL/Redis/moto processes (fail under CI=true if down)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app import crud
from app.config import Settings
from app.db import SessionFactory, create_db_engine, create_session_factory, session_scope, upgrade_database
from app.main import create_app
from app.storage import Storage, create_storage

POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379"


def require_service(name: str, host: str, port: int) -> None:
    """Skip when a service is down, except under CI=true, where that is a failure."""
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        message = f"{name} at {host}:{port} is not reachable: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[Any] | None = None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


# --- files ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN (plain torch.nn) exported with torch.export and saved with torch.export.save."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).eval()
    program = torch.export.export(model, (torch.randn(2, 3, 8, 8),))
    path = tmp_path_factory.mktemp("model") / "tiny_cnn.pt2"
    torch.export.save(program, str(path))
    return path


@pytest.fixture(scope="session")
def dataset_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Calibration data for model_file: 64 samples of 3x8x8 with labels."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "calibration.npz"
    np.savez(path, x=rng.standard_normal((64, 3, 8, 8)).astype(np.float32), y=rng.integers(0, 10, 64))
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- databases ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database on the real PostgreSQL server, migrated, dropped after the session."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    from sqlalchemy import create_engine, text

    name = f"specprune_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{POSTGRES_SERVER}/{name}"
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def make_settings(home: Path, **overrides: Any) -> Settings:
    """Settings for a test: everything under ``home``; no environment variables involved."""
    return Settings(home=home, **overrides)


@dataclass
class Api:
    """A running app (TestClient) with direct access to its database and storage."""

    client: TestClient
    settings: Settings
    sessions: SessionFactory
    storage: Storage

    def new_tenant(self) -> dict[str, str]:
        """Authorization headers for a fresh tenant."""
        with session_scope(self.sessions) as session:
            _key, token = crud.create_api_key(session, tenant_name=f"tenant-{uuid.uuid4().hex[:8]}")
        return {"Authorization": f"Bearer {token}"}

    def submit(
        self,
        headers: dict[str, str],
        model: bytes | Path,
        dataset: bytes | Path,
        config: str | None = None,
        extra_headers: dict[str, str] | None = None,
        **fields: str,
    ) -> Any:
        files = {
            "model": ("tiny_cnn.pt2", _content(model), "application/octet-stream"),
            "dataset": ("calibration.npz", _content(dataset), "application/octet-stream"),
        }
        data = dict(fields)
        if config is not None:
            data["config"] = config
        return self.client.post("/jobs", headers={**headers, **(extra_headers or {})}, files=files, data=data)

    def stored_keys(self, prefix: str) -> list[str]:
        """Files under a storage prefix (local storage)."""
        assert self.settings.storage_dir is not None
        root = self.settings.storage_dir / prefix
        return sorted(str(p.relative_to(self.settings.storage_dir)) for p in root.rglob("*") if p.is_file())


def _content(value: bytes | Path) -> io.BytesIO:
    return io.BytesIO(value if isinstance(value, bytes) else value.read_bytes())


@pytest.fixture
def api_factory(tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Build apps on fresh SQLite (or a given database URL) with settings overrides."""
    clients: list[TestClient] = []

    def build(**overrides: Any) -> Api:
        home = tmp_path / f"home-{len(clients)}"
        settings = make_settings(home, **overrides)
        upgrade_database(settings)
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return Api(client, settings, client.app.state.sessions, client.app.state.storage)  # type: ignore[attr-defined]

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, api_factory: Callable[..., Api]) -> Api:
    """The app on SQLite and on PostgreSQL (a database shared by the session; tenants keep tests apart)."""
    if request.param == "postgresql":
        return api_factory(database_url=request.getfixturevalue("postgres_url"))
    return api_factory()


@pytest.fixture
def sqlite_api(api_factory: Callable[..., Api]) -> Api:
    return api_factory()


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECPRUNE_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"SPECPRUNE_{name.upper()}"] = str(value)
    return env


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) on loopback, for the session."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture
def s3_settings(tmp_path: Path, moto_endpoint: str) -> Settings:
    return make_settings(
        tmp_path,
        storage_backend="s3",
        s3_endpoint_url=moto_endpoint,
        s3_bucket=f"bucket-{uuid.uuid4().hex[:8]}",
        s3_access_key_id="testing",
        s3_secret_access_key="testing-secret",
    )


def storage_for(settings: Settings) -> Storage:
    storage = create_storage(settings)
    storage.prepare()
    return storage


def sessions_for(settings: Settings) -> SessionFactory:
    return create_session_factory(create_db_engine(settings))


PROBLEM_MEDIA_TYPE = "application/problem+json"


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem of this kind; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body: dict[str, Any] = response.json()
    assert body["type"] == f"/problems/{slug}"
    assert body["status"] == status
    assert body["title"] and body["detail"]
    return body


def children_of(parent: int) -> list[int]:
    """Process ids whose parent is ``parent`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            found.append(int(entry))
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""

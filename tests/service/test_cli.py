"""The `specprune` command: keys, migrations, and serve's refusal to expose an unprotected API."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy import inspect

from app import crud
from app.cli import build_parser
from app.db import session_scope
from tests.service.conftest import free_port, make_settings, require_service, sessions_for, wait_for_port

SPECPRUNE = Path(sys.executable).with_name("specprune")


def run_cli(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECPRUNE_")}
    env["SPECPRUNE_HOME"] = str(home)
    command = [str(SPECPRUNE)] if SPECPRUNE.exists() else [sys.executable, "-m", "app.cli"]
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_keys_create_prints_the_key_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    created = run_cli(tmp_path, "keys", "create", "--tenant", "acme")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("spk_") and "\n" not in token
    assert "acme" in created.stderr and "not shown again" in created.stderr
    database = (tmp_path / "specprune.db").read_bytes()
    assert token.split("_", 2)[2].encode() not in database
    sessions = sessions_for(make_settings(tmp_path))
    with session_scope(sessions) as session:
        tenant = crud.authenticate(session, token=token)
        assert tenant is not None and tenant.name == "acme"
    key_id = token.split("_")[1]
    listed = run_cli(tmp_path, "keys", "list")
    assert listed.returncode == 0 and f"{key_id}\tacme\tactive" in listed.stdout
    assert run_cli(tmp_path, "keys", "revoke", key_id).returncode == 0
    assert run_cli(tmp_path, "keys", "revoke", key_id).returncode == 1
    with session_scope(sessions) as session:
        assert crud.authenticate(session, token=token) is None


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    engine = sessions_for(make_settings(tmp_path)).kw["bind"]
    assert {"tenants", "api_keys", "jobs"} <= set(inspect(engine).get_table_names())


def test_serve_refuses_a_public_address_without_keys_then_requires_them(tmp_path: Path) -> None:
    port = free_port()
    refused = run_cli(tmp_path, "serve", "--host", "0.0.0.0", "--port", str(port), "--no-worker")
    assert refused.returncode == 2
    assert "refusing to serve on 0.0.0.0" in refused.stderr and "keys create" in refused.stderr
    token = run_cli(tmp_path, "keys", "create", "--tenant", "ops").stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECPRUNE_")} | {
        "SPECPRUNE_HOME": str(tmp_path)
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--host", "0.0.0.0", "--port", str(port), "--no-worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, server, timeout=60)
        assert httpx.get(f"http://127.0.0.1:{port}/jobs").status_code == 401
        authorised = httpx.get(f"http://127.0.0.1:{port}/jobs", headers={"Authorization": f"Bearer {token}"})
        assert authorised.status_code == 200 and authorised.json() == {"items": [], "next_after": None}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.parametrize(
    "argv",
    [
        ["serve"],
        ["serve", "--host", "0.0.0.0", "--port", "8080", "--no-worker"],
        ["worker", "--queues", "gpu", "--concurrency", "2"],
        ["db", "upgrade"],
        ["keys", "create", "--tenant", "x"],
        ["keys", "list"],
        ["keys", "revoke", "abc"],
    ],
)
def test_parser_accepts_the_documented_commands(argv: list[str]) -> None:
    assert callable(build_parser().parse_args(argv).func)


def test_parser_rejects_unknown_commands() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["frobnicate"])


def test_integration_services_are_mandatory_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()  # nothing listens there
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="not reachable"):
        require_service("PostgreSQL", "127.0.0.1", port)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        require_service("PostgreSQL", "127.0.0.1", port)

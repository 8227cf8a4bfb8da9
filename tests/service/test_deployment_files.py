"""docker-compose.yml and the Dockerfile only use commands and settings that exist in the project
(no Docker engine runs here, so the files are checked against the code)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from app.cli import build_parser
from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def check_command(command: list[str] | str) -> None:
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    assert argv[0] == "specprune", argv
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse exits on unknown commands or options
        pytest.fail(f"`{' '.join(argv)}` is not a valid specprune command ({exc})")


def test_compose_wires_api_worker_postgres_and_redis() -> None:
    services = compose()["services"]
    assert {"api", "worker", "postgres", "redis"} <= set(services)
    assert "--no-worker" in services["api"]["command"]
    assert services["worker"]["command"][:2] == ["specprune", "worker"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] for device in devices)


def test_compose_commands_exist() -> None:
    for name, service in compose()["services"].items():
        command = service.get("command")
        if command and (command[0] if isinstance(command, list) else command).startswith("specprune"):
            check_command(command)
        else:
            assert name in ("postgres", "redis"), f"{name} runs something other than specprune"


def test_compose_settings_exist_and_validate() -> None:
    fields = set(Settings.model_fields)
    for name, service in compose()["services"].items():
        environment = service.get("environment") or {}
        for variable, _value in environment.items():
            if not variable.startswith("SPECPRUNE_"):
                continue
            field = variable.removeprefix("SPECPRUNE_").lower()
            assert field in fields, f"{name}: {variable} is not a setting"
        values = {
            k.removeprefix("SPECPRUNE_").lower(): re.sub(r"\$\{[^}]*\}", "secret", str(v))
            for k, v in environment.items()
            if k.startswith("SPECPRUNE_")
        }
        if values:
            Settings.model_validate(values)  # the values parse too


def test_dockerfile_pins_torch_and_runs_the_cli() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG TORCH_VERSION=2\.13\.0$", dockerfile, re.M)
    assert '"torch==${TORCH_VERSION}"' in dockerfile and "--index-url" in dockerfile
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd is not None
    check_command(yaml.safe_load(cmd.group(1)))
    for copied in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert (ROOT / copied).exists() or copied == "README.md", f"Dockerfile copies missing {copied}"
    args = set(re.findall(r"^ARG (\w+)=", dockerfile, re.M))
    for service in compose()["services"].values():
        build = service.get("build") or {}
        assert set(build.get("args") or {}) <= args

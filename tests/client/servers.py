"""Real processes and endpoints for the client and CLI tests: `specprune serve` on a free port with its
own SPECPRUNE_HOME, the `specprune` command, a tiny exported CNN with its data, and a webhook receiver
(http.server on 127.0.0.1 in a thread) that records what it is sent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from tests.service.conftest import free_port, wait_for_port

SPECPRUNE = Path(sys.executable).with_name("specprune")
MAX_UPLOAD_BYTES = 1024 * 1024
SERVER_ENV = {
    "SPECPRUNE_JOB_MEASURE_LATENCY": "false",
    "SPECPRUNE_POLL_INTERVAL_SECONDS": "0.2",
    "SPECPRUNE_EVENTS_POLL_SECONDS": "0.2",
    "SPECPRUNE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
    "SPECPRUNE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    "SPECPRUNE_WEBHOOK_RETRY_SECONDS": "0.5",
    "SPECPRUNE_WEBHOOK_POLL_SECONDS": "0.2",
    "SPECPRUNE_JOB_THREADS": "1",
}


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any SPECPRUNE_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECPRUNE_")}
    env.update(extra)
    return env


def run_specprune(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The `specprune` command in a subprocess."""
    command = [str(SPECPRUNE)] if SPECPRUNE.exists() else [sys.executable, "-m", "app.cli"]
    return subprocess.run(
        [*command, *args], env=env or clean_env(), capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


@dataclass
class Served:
    """A running `specprune serve`: its URL, home and log."""

    url: str
    home: Path
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a command talking to this server (and reading its database)."""
        return clean_env(SPECPRUNE_URL=self.url, SPECPRUNE_HOME=str(self.home), **extra)

    def webhook_secret(self, tenant: str = "local") -> str:
        result = run_specprune("webhooks", "secret", "--tenant", tenant, env=self.env())
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


@contextmanager
def serve(home: Path, **settings: str) -> Iterator[Served]:
    """`specprune serve` (embedded: SQLite, local storage, a local worker) until the block ends."""
    port = free_port()
    env = clean_env(SPECPRUNE_HOME=str(home), **SERVER_ENV, **settings)
    log = home / "serve.log"
    home.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, stdout=out, stderr=out
        )
    try:
        wait_for_port(port, process, timeout=60)
        yield Served(f"http://127.0.0.1:{port}", home, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_model_and_data(directory: Path, samples: int = 64) -> tuple[Path, Path]:
    """A tiny CNN exported with a dynamic batch (``model.pt2``) and labelled data (``data.npz``)."""
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
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 3, 8, 8)).astype(np.float32)
    program = torch.export.export(
        model, (torch.from_numpy(x[:4]),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    directory.mkdir(parents=True, exist_ok=True)
    model_path, data_path = directory / "model.pt2", directory / "data.npz"
    torch.export.save(program, str(model_path))
    np.savez(data_path, x=x, y=rng.integers(0, 10, samples))
    return model_path, data_path


@dataclass
class Delivery:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records every POST; answers each with the next status queued for its path (then 200)."""

    port: int
    statuses: dict[str, list[int]] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def for_path(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.deliveries if d.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 30.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.for_path(path)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(
            f"{path}: {len(self.for_path(path))} deliveries after {timeout} s, expected {count}"
        )


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    """A real HTTP server on 127.0.0.1 in a thread."""
    receiver = Receiver(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with receiver.lock:
                receiver.deliveries.append(
                    Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                )
                queued = receiver.statuses.get(self.path)
                status = queued.pop(0) if queued else 200
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()

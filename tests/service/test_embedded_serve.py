"""The embedded default end to end: `specprune serve` (SQLite, local storage, a local worker process)
on a free port, driven over real HTTP; a killed worker loses no job; uploads do not grow memory."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import children_of, cmdline, free_port, wait_for_port


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    home: Path
    log: Path

    def worker_pids(self) -> list[int]:
        return [pid for pid in children_of(self.process.pid) if b"app.cli\x00worker" in cmdline(pid)]


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("serve-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECPRUNE_")}
    env.update(
        SPECPRUNE_HOME=str(home),
        SPECPRUNE_LEASE_SECONDS="3",
        SPECPRUNE_HEARTBEAT_SECONDS="0.3",
        SPECPRUNE_REAPER_INTERVAL_SECONDS="0.5",
        SPECPRUNE_POLL_INTERVAL_SECONDS="0.2",
        SPECPRUNE_EVENTS_POLL_SECONDS="0.2",
        SPECPRUNE_MAX_UPLOAD_BYTES=str(512 * 1024 * 1024),
    )
    log = home / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(port)], env=env, stdout=out, stderr=out
        )
    try:
        wait_for_port(port, process, timeout=60)
        yield Served(process, f"http://127.0.0.1:{port}", home, log)
    finally:
        workers = Served(process, "", home, log).worker_pids()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM
        # serve stopped and reaped its worker itself (not left to the parent-death signal)
        assert not any(Path(f"/proc/{pid}").exists() and b"app.cli" in cmdline(pid) for pid in workers)


def _submit(served: Served, model_file: Path, dataset_file: Path) -> dict:
    with model_file.open("rb") as model, dataset_file.open("rb") as data:
        response = httpx.post(
            f"{served.url}/jobs",
            files={"model": ("tiny_cnn.pt2", model), "dataset": ("calibration.npz", data)},
            data={"config": json.dumps({"flops_ratio": 0.5})},
            timeout=30,
        )
    assert response.status_code == 202, response.text
    return response.json()


def _follow_events(served: Served, job_id: str) -> list[dict]:
    events = []
    with httpx.stream("GET", f"{served.url}/jobs/{job_id}/events", timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    return events


def test_serve_runs_a_job_end_to_end(
    served: Served, model_file: Path, dataset_file: Path, tmp_path: Path
) -> None:
    job = _submit(served, model_file, dataset_file)
    events = _follow_events(served, job["id"])
    statuses = [event["status"] for event in events]
    assert statuses[0] in ("queued", "running") and statuses[-1] == "succeeded", events[-1]
    assert any(event["progress"]["stage"] not in ("queued", "done") for event in events)
    download = httpx.get(f"{served.url}/jobs/{job['id']}/model", timeout=30)
    assert download.status_code == 200
    assert download.headers["etag"] == f'"{hashlib.sha256(download.content).hexdigest()}"'
    assert int(download.headers["content-length"]) == len(download.content)
    path = tmp_path / "tiny_cnn.pruned.pt2"
    path.write_bytes(download.content)
    check = (
        "import sys, torch; p = torch.export.load(sys.argv[1]); "
        "y = p.module()(torch.randn(2, 3, 8, 8)); print(tuple(y.shape))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", check, str(path)], capture_output=True, text=True, timeout=120
    )
    assert loaded.stdout.strip() == "(2, 10)", loaded.stderr
    assert httpx.get(f"{served.url}/readyz").json()["checks"]["database"] == "ok"


def test_a_killed_local_worker_loses_no_job(served: Served, model_file: Path, dataset_file: Path) -> None:
    job = _submit(served, model_file, dataset_file)
    deadline = time.monotonic() + 60
    while httpx.get(f"{served.url}/jobs/{job['id']}").json()["status"] != "running":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.05)
    [worker] = served.worker_pids()
    sandboxes = children_of(worker)
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while (status := httpx.get(f"{served.url}/jobs/{job['id']}").json())["status"] not in (
        "succeeded",
        "failed",
    ):
        assert time.monotonic() < deadline, f"job stuck: {status}"
        time.sleep(0.2)
    assert status["status"] == "succeeded", status["error"]
    with sqlite3.connect(served.home / "specprune.db") as db:
        (attempts,) = db.execute("SELECT attempts FROM jobs WHERE id = ?", (job["id"],)).fetchone()
    assert attempts == 2  # re-queued once by the reaper, run once more, never concurrently
    assert served.worker_pids() and served.worker_pids() != [worker]  # serve restarted its worker
    assert not any(Path(f"/proc/{pid}").exists() and cmdline(pid) for pid in sandboxes)  # died with it


def test_uploads_stream_without_growing_the_api_memory(
    served: Served, dataset_file: Path, tmp_path: Path
) -> None:
    big = tmp_path / "big.bin"
    with big.open("wb") as handle:
        handle.truncate(300 * 1024 * 1024)  # 300 MiB of zeros (sparse on disk)
    before = _peak_rss_kib(served.process.pid)
    with big.open("rb") as model, dataset_file.open("rb") as data:
        response = httpx.post(
            f"{served.url}/jobs", files={"model": ("big.bin", model), "dataset": ("d.npz", data)}, timeout=120
        )
    assert response.status_code == 415  # streamed to storage whole, then recognised as no model
    growth_mib = (_peak_rss_kib(served.process.pid) - before) / 1024
    assert growth_mib < 64, f"API peak memory grew by {growth_mib:.0f} MiB for a 300 MiB upload"
    assert not list((served.home / "artifacts" / "tenants").rglob("big*"))

"""Service benchmark: time from POST to a downloadable result, GET latency under 50 concurrent pollers,
and the API's resident memory while a 1 GiB upload streams in.

    python -m bench.service

Starts real servers on loopback only: the embedded default (SQLite, local worker) and the distributed
setup (PostgreSQL database created for the run and dropped after, Redis broker, a `specprune worker`).
Writes ``bench/results/service.json``.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import torch
from torch import nn

from bench.quality import RESULTS

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _inputs(directory: Path) -> tuple[bytes, bytes]:
    """A small exported CNN and a 256-sample .npz."""
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()
    x = np.random.default_rng(0).standard_normal((256, 3, 32, 32)).astype(np.float32)
    program = torch.export.export(
        model, (torch.from_numpy(x[:8]),), dynamic_shapes=({0: torch.export.Dim("b")},)
    )
    torch.export.save(program, directory / "model.pt2")
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=np.random.default_rng(1).integers(0, 10, 256))
    return (directory / "model.pt2").read_bytes(), buffer.getvalue()


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", *args], env=env, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def _post_to_download(url: str, model: bytes, data: bytes, runs: int) -> list[float]:
    """Seconds from POST /jobs to the compressed model fully downloaded, ``runs`` times."""
    times = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for _ in range(runs):
            start = time.perf_counter()
            job = client.post(
                "/jobs",
                files={"model": ("m.pt2", model), "dataset": ("d.npz", data)},
                data={"config": json.dumps({"flops_ratio": 0.5})},
            ).json()
            while (status := client.get(f"/jobs/{job['id']}").json()["status"]) in ("queued", "running"):
                time.sleep(0.05)
            assert status == "succeeded", client.get(f"/jobs/{job['id']}").json()
            assert client.get(f"/jobs/{job['id']}/model").status_code == 200
            times.append(time.perf_counter() - start)
    return times


async def _poll(url: str, job: str, pollers: int, requests: int) -> list[float]:
    latencies: list[float] = []
    async with httpx.AsyncClient(
        base_url=url, timeout=30, limits=httpx.Limits(max_connections=pollers)
    ) as client:

        async def poller() -> None:
            for _ in range(requests):
                start = time.perf_counter()
                response = await client.get(f"/jobs/{job}")
                latencies.append(time.perf_counter() - start)
                assert response.status_code == 200

        await asyncio.gather(*(poller() for _ in range(pollers)))
    return latencies


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _upload_memory(url: str, pid: int, size: int) -> dict[str, float]:
    """Peak RSS of the API process while ``size`` bytes stream in as a multipart model upload."""
    boundary = uuid.uuid4().hex
    chunk = os.urandom(1 << 20)

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="big.pt2"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        for _ in range(size // len(chunk)):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    baseline, peak, stop = _rss(pid), 0, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    response = httpx.post(
        f"{url}/jobs",
        content=body(),
        timeout=600,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    return {
        "status": response.status_code,
        "baseline_mib": baseline / 2**20,
        "peak_mib": peak / 2**20,
        "growth_mib": (peak - baseline) / 2**20,
        "seconds": seconds,
    }


def _summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "max": ordered[-1],
    }


def main() -> None:
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, data = _inputs(root)
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("SPECPRUNE_")}

        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = base_env | {"SPECPRUNE_HOME": str(root / "embedded")}
        with _process(
            ["serve", "--host", "127.0.0.1", "--port", str(port)], env, root / "embedded.log"
        ) as proc:
            _wait_ready(url)
            results["embedded_post_to_download_s"] = _summary(_post_to_download(url, model, data, runs=5))
            job = httpx.get(f"{url}/jobs").json()["items"][0]["id"]
            results["get_job_latency_50_pollers_s"] = _summary(asyncio.run(_poll(url, job, 50, 40)))
            results["upload_1gib"] = _upload_memory(url, proc.pid, 1 << 30)
        print(json.dumps(results, indent=1), flush=True)

        from sqlalchemy import create_engine, text

        name = f"specprune_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            env = base_env | {
                "SPECPRUNE_HOME": str(root / "distributed"),
                "SPECPRUNE_DATABASE_URL": f"{POSTGRES}/{name}",
                "SPECPRUNE_BROKER_URL": "redis://127.0.0.1:6379/0",
                "SPECPRUNE_BROKER_NAMESPACE": f"specprune-bench-{name}:",
            }
            serve = ["serve", "--host", "127.0.0.1", "--port", str(port), "--no-worker"]
            with (
                _process(serve, env, root / "api.log"),
                _process(["worker", "--queues", "cpu"], env, root / "worker.log"),
            ):
                _wait_ready(url)
                results["distributed_post_to_download_s"] = _summary(
                    _post_to_download(url, model, data, runs=5)
                )
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    print(json.dumps(results, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "service.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

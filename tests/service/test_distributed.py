"""Distributed mode end to end: a real `specprune worker` (Celery, Redis broker) and the API on a real
PostgreSQL database; a real exported model goes in, a loadable compressed model comes out."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import crud
from app.config import Settings
from app.db import session_scope, upgrade_database
from app.main import create_app
from tests.service.conftest import REDIS_URL, children_of, make_settings, require_service, settings_env
from worker.celery_app import create_celery

pytestmark = pytest.mark.integration


@dataclass
class Cluster:
    settings: Settings
    client: TestClient
    worker: subprocess.Popen[bytes]
    log: Path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Cluster]:
    require_service("Redis", "127.0.0.1", 6379)
    home = tmp_path_factory.mktemp("cluster")
    settings = make_settings(
        home,
        database_url=postgres_url,
        broker_url=f"{REDIS_URL}/0",
        broker_namespace=f"specprune-test-{uuid.uuid4().hex[:8]}:",
        lease_seconds=3.0,
        heartbeat_seconds=0.3,
        reaper_interval_seconds=0.5,
        job_memory_bytes=4 * 2**30,
    )
    upgrade_database(settings)
    log = home / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--queues", "cpu"],
            env=settings_env(settings),
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 60
        while b"ready." not in log.read_bytes():
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "celery worker not ready:\n" + log.read_text()
            time.sleep(0.2)
        with TestClient(create_app(settings)) as client:
            with session_scope(client.app.state.sessions) as session:  # type: ignore[attr-defined]
                _key, token = crud.create_api_key(session, tenant_name=f"cluster-{uuid.uuid4().hex[:8]}")
            client.headers["Authorization"] = f"Bearer {token}"
            yield Cluster(settings, client, worker, log)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        _forget_broker_keys(settings)


def _forget_broker_keys(settings: Settings) -> None:
    """Remove this run's keys (all under its namespace) from the shared Redis."""
    import redis

    client = redis.Redis.from_url(str(settings.broker_url))
    keys = list(client.scan_iter(match=f"{settings.broker_namespace}*"))
    if keys:
        client.delete(*keys)
    client.close()


def _submit(cluster: Cluster, model_file: Path, dataset_file: Path) -> str:
    response = cluster.client.post(
        "/jobs",
        files={
            "model": ("tiny_cnn.pt2", model_file.read_bytes()),
            "dataset": ("c.npz", dataset_file.read_bytes()),
        },
        data={"config": '{"flops_ratio": 0.5, "device": "cpu"}'},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _wait_terminal(cluster: Cluster, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (job := cluster.client.get(f"/jobs/{job_id}").json())["status"] not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, f"job stuck: {job}\n{cluster.log.read_text()[-3000:]}"
        time.sleep(0.2)
    return job


def test_celery_worker_compresses_a_real_model(
    cluster: Cluster, model_file: Path, dataset_file: Path, tmp_path: Path
) -> None:
    assert cluster.client.get("/readyz").json()["checks"] == {
        "database": "ok",
        "broker": "ok",
        "storage": "ok",
    }
    job_id = _submit(cluster, model_file, dataset_file)
    job = _wait_terminal(cluster, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["compressed"]["flops"] < job["result"]["original"]["flops"]
    download = cluster.client.get(f"/jobs/{job_id}/model")
    assert download.status_code == 200
    path = tmp_path / "out.pt2"
    path.write_bytes(download.content)
    check = (
        "import sys, torch; p = torch.export.load(sys.argv[1]); "
        "print(tuple(p.module()(torch.randn(2, 3, 8, 8)).shape))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", check, str(path)], capture_output=True, text=True, timeout=120
    )
    assert loaded.stdout.strip() == "(2, 10)", loaded.stderr
    assert "succeeded" in cluster.log.read_text()


def test_a_killed_celery_process_loses_no_job(cluster: Cluster, model_file: Path, dataset_file: Path) -> None:
    job_id = _submit(cluster, model_file, dataset_file)
    deadline = time.monotonic() + 60
    while cluster.client.get(f"/jobs/{job_id}").json()["status"] != "running":
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.05)
    while not (pool := [pid for pid in children_of(cluster.worker.pid) if children_of(pid)]):
        assert time.monotonic() < deadline, "no pool process started a sandbox"  # the one running the job
        time.sleep(0.05)
    assert len(pool) == 1, children_of(cluster.worker.pid)
    os.kill(pool[0], signal.SIGKILL)
    job = _wait_terminal(cluster, job_id)
    assert job["status"] == "succeeded", job["error"]
    from sqlalchemy import create_engine, text

    engine = create_engine(cluster.settings.database_url)
    with engine.connect() as connection:
        attempts = connection.execute(
            text("SELECT attempts FROM jobs WHERE id = :id"), {"id": job_id}
        ).scalar()
    engine.dispose()
    assert attempts == 2


def test_celery_configuration_keeps_jobs_safe() -> None:
    settings = Settings(broker_url="redis://127.0.0.1:6379/0", job_wall_seconds=7200)
    conf = create_celery(settings).conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_max_tasks_per_child == 1
    assert {queue.name for queue in conf.task_queues} == {"cpu", "gpu"}
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit > 7200

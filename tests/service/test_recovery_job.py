"""Recovery in a job: validated config, progress as the ``recovery`` stage (SSE included), cancellation
while training, a checkpoint in storage that lets a retried job resume after its worker was killed, and
both the recovered and the pre-recovery model downloadable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from app import crud
from app.db import session_scope
from app.models import job_storage_prefix
from tests.service.conftest import Api, assert_problem, settings_env
from tests.service.files import FAST, cnn, random_data, run_job, save_pt2, submit, wait_for
from worker.checkpoints import checkpoint_prefix

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Enough epochs that the first attempt is still training when it is killed.
DISTILL = {"flops_ratio": 0.5, "recovery": {"mode": "distill", "epochs": 50, "batch_size": 16, "lr": 0.005}}


@pytest.fixture
def recovery_api(api_factory) -> Api:
    return api_factory(**{**FAST, "lease_seconds": 2.0, "reaper_interval_seconds": 0.5})


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pt2(cnn(width=16), (2, 3, 16, 16), tmp_path_factory.mktemp("recovery") / "net.pt2")


DATA = random_data(256, shape=(3, 16, 16), seed=3)


def test_recovery_config_is_validated(sqlite_api: Api, model: Path) -> None:
    for recovery, loc in [
        ({"mode": "distill", "warmup": 3}, ["body", "config", "recovery", "warmup"]),
        ({"mode": "retrain"}, ["body", "config", "recovery", "mode"]),
        ({"mode": "distill", "lr": 0}, ["body", "config", "recovery", "lr"]),
        ({"mode": "distill", "batch_size": 0}, ["body", "config", "recovery", "batch_size"]),
        ({"mode": "distill", "epochs": 2, "steps": 10}, ["body", "config", "recovery"]),
        ({"mode": "distill", "stages": 21}, ["body", "config", "recovery", "stages"]),
    ]:
        config = json.dumps({"flops_ratio": 0.5, "recovery": recovery})
        body = assert_problem(submit(sqlite_api, model, dataset=DATA, config=config), 422, "validation-error")
        assert body["errors"][0]["loc"] == loc, (recovery, body)
    iterative_without_target = json.dumps({"alpha": 0.9, "recovery": {"mode": "distill", "stages": 2}})
    body = assert_problem(
        submit(sqlite_api, model, dataset=DATA, config=iterative_without_target), 422, "validation-error"
    )
    assert "stages" in body["detail"]  # core's own rule, checked at submission
    accepted = submit(sqlite_api, model, dataset=DATA, config=json.dumps(DISTILL))
    assert accepted.json()["config"]["recovery"]["mode"] == "distill"
    assert accepted.json()["config"]["recovery"]["optimizer"] == "sgd"


def _worker(api: Api, job_id: str) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from app.config import Settings; from worker.context import WorkerContext; "
        "from worker.pipeline import execute_job; print(execute_job(WorkerContext.from_settings(Settings()), sys.argv[1]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, job_id],
        cwd=PROJECT_ROOT,
        env=settings_env(api.settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _job(api: Api, job_id: str) -> dict:
    return api.client.get(f"/jobs/{job_id}").json()


def test_a_killed_worker_resumes_recovery_from_its_stored_checkpoint(recovery_api: Api, model: Path) -> None:
    job_id = submit(recovery_api, model, dataset=DATA, name="net.pt2", config=json.dumps(DISTILL)).json()[
        "id"
    ]
    with session_scope(recovery_api.sessions) as session:
        tenant = crud.get_job_by_id(session, job_id=job_id).tenant_id  # type: ignore[union-attr]
    manifest = checkpoint_prefix(job_storage_prefix(tenant, job_id)) + "manifest.json"
    worker = _worker(recovery_api, job_id)
    try:  # first attempt: killed, with its sandbox, once a recovery checkpoint is in storage
        wait_for(lambda: recovery_api.storage.exists(manifest), timeout=120)
        assert _job(recovery_api, job_id)["progress"]["stage"] == "recovery"
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait()
    stored = json.loads(recovery_api.storage.read_bytes(manifest))
    assert stored["files"] == ["stage0/optimizer.pt", "stage0/state.json", "stage0/weights.safetensors"]
    # the lease lapses and the service's reaper hands the job out again
    wait_for(lambda: _job(recovery_api, job_id)["status"] == "queued", timeout=30)

    stages: list[str] = []
    done: dict[str, str] = {}
    second = threading.Thread(target=lambda: done.update(outcome=run_job(recovery_api, job_id)[0]))
    second.start()
    with recovery_api.client.stream("GET", f"/jobs/{job_id}/events") as events:
        for line in events.iter_lines():
            if line.startswith("data: "):
                stages.append(json.loads(line.removeprefix("data: "))["progress"]["stage"])
    second.join(timeout=120)
    job = _job(recovery_api, job_id)
    assert done["outcome"] == "succeeded", job["error"]
    assert "recovery" in stages and stages[-1] == "done"

    report = recovery_api.client.get(f"/jobs/{job_id}/report").json()
    resumed_at = report["recovery_resume"]["steps"]["stage0"]
    per_epoch = 256 // 16
    assert resumed_at > 0 and resumed_at % per_epoch == 0  # a whole-epoch checkpoint of the first attempt
    curve = report["training_curve"]
    assert [point["step"] for point in curve] == [per_epoch * (i + 1) for i in range(50)]
    assert all(point["agreement"] is not None and point["loss"] >= 0 for point in curve)
    assert job["result"]["recovered"]["flops"] == job["result"]["compressed"]["flops"]
    assert job["result"]["recovered"]["agreement"] is not None
    assert not recovery_api.storage.exists(manifest)  # the checkpoint is dropped once the job has ended

    recovered = recovery_api.client.get(f"/jobs/{job_id}/model")
    pruned = recovery_api.client.get(f"/jobs/{job_id}/model", params={"variant": "pruned"})
    assert 'filename="net.recovered.pt2"' in recovered.headers["content-disposition"]
    assert 'filename="net.pruned.pt2"' in pruned.headers["content-disposition"]
    assert recovered.content != pruned.content and recovered.headers["etag"] != pruned.headers["etag"]
    weights = recovery_api.client.get(
        f"/jobs/{job_id}/model", params={"variant": "pruned", "format": "safetensors"}
    )
    assert 'filename="net.pruned.safetensors"' in weights.headers["content-disposition"]


def test_cancelling_during_recovery_stops_between_steps(recovery_api: Api, model: Path) -> None:
    job_id = submit(recovery_api, model, dataset=DATA, config=json.dumps(DISTILL)).json()["id"]
    done: dict[str, str] = {}
    worker = threading.Thread(target=lambda: done.update(outcome=run_job(recovery_api, job_id)[0]))
    worker.start()
    wait_for(lambda: _job(recovery_api, job_id)["progress"]["stage"] == "recovery", timeout=120)
    assert recovery_api.client.post(f"/jobs/{job_id}/cancel").status_code == 202
    worker.join(timeout=60)
    job = _job(recovery_api, job_id)
    assert done["outcome"] == "cancelled" and job["status"] == "cancelled" and job["result"] is None
    assert not any("checkpoint" in key for key in recovery_api.stored_keys("tenants"))

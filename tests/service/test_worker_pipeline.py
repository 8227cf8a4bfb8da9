"""The job pipeline with a real sandboxed child process: success, readable failures, limits, cancel,
and the lease/reaper rules that keep jobs from being lost or run twice."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from app import crud
from app.db import session_scope
from app.models import utcnow
from tests.service.conftest import Api
from worker.context import WorkerContext
from worker.dispatch import DatabaseDispatcher
from worker.pipeline import execute_job, output_filename, sweep_orphaned_job_dirs
from worker.reaper import Reaper
from worker.sandbox import SandboxLimits, describe_exit

FAST = {
    "heartbeat_seconds": 0.2,
    "lease_seconds": 5.0,
    "job_memory_bytes": 3 * 2**30,
    "job_measure_latency": False,
}


@pytest.fixture
def worker_api(api_factory) -> Api:
    return api_factory(**FAST)


def run(api: Api, job_id: str, **kwargs) -> tuple[str, dict]:
    outcome = execute_job(WorkerContext.from_settings(api.settings), job_id, **kwargs)
    return outcome, api.client.get(f"/jobs/{job_id}").json()


def test_a_job_runs_in_the_sandbox_and_stores_its_results(
    worker_api: Api, model_file: Path, dataset_file: Path
) -> None:
    job_id = worker_api.submit({}, model_file, dataset_file, config='{"flops_ratio": 0.5}').json()["id"]
    outcome, job = run(worker_api, job_id)
    assert outcome == "succeeded", job["error"]
    assert job["status"] == "succeeded" and job["progress"] == {"stage": "done", "fraction": 1.0}
    assert job["started_at"] <= job["finished_at"]
    result = job["result"]
    assert result["compressed"]["flops"] < result["original"]["flops"]
    assert result["original"]["params"] > result["compressed"]["params"] > 0
    assert result["layers"] and set(result["layers"][0]) == {
        "name",
        "width_before",
        "width_after",
        "head_dim",
        "dof",
        "retained",
    }
    report = worker_api.client.get(f"/jobs/{job_id}/report").json()
    assert [layer["name"] for layer in report["layers"]] == [layer["name"] for layer in result["layers"]]
    model = worker_api.client.get(f"/jobs/{job_id}/model")
    assert model.status_code == 200 and model.content[:2] == b"PK"
    assert model.headers["content-disposition"].startswith('attachment; filename="tiny_cnn.pruned.pt2"')
    assert execute_job(WorkerContext.from_settings(worker_api.settings), job_id) == "skipped"  # never twice


def _fake_pt2() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("m/archive_format", "pt2")
        archive.writestr("m/models/model.json", "{not a program")
    return buffer.getvalue()


def test_a_broken_model_fails_its_job_with_a_reason_and_the_worker_goes_on(
    worker_api: Api, dataset_file: Path, model_file: Path
) -> None:
    broken = worker_api.submit({}, _fake_pt2(), dataset_file).json()["id"]
    outcome, job = run(worker_api, broken)
    assert outcome == "failed" and job["status"] == "failed"
    assert job["error"]["code"] == "corrupt_model"  # core.formats: a pt2 layout with parts missing
    assert "torch.export" in job["error"]["message"]
    wrong_shape = io.BytesIO()
    np.savez(wrong_shape, x=np.zeros((4, 5), dtype=np.float32))
    mismatched = worker_api.submit({}, model_file, wrong_shape.getvalue()).json()["id"]
    outcome, job = run(worker_api, mismatched)
    assert outcome == "failed" and job["error"]["code"] in {"invalid_calibration", "unsupported_model"}
    assert job["error"]["message"]


def test_a_dataset_declaring_more_than_it_holds_fails_readably(
    api_factory, model_file: Path, tmp_path: Path
) -> None:
    api = api_factory(**{**FAST, "job_memory_bytes": 2 * 2**30})
    huge = tmp_path / "huge.npz"
    with zipfile.ZipFile(huge, "w") as archive, archive.open("x.npy", "w") as entry:
        header = {"descr": "<f4", "fortran_order": False, "shape": (1_000_000_000, 3, 8, 8)}
        np.lib.format.write_array_header_1_0(entry, header)  # declares 768 GB, holds nothing
    job_id = api.submit({}, model_file, huge).json()["id"]
    outcome, job = run(api, job_id)
    assert outcome == "failed"
    assert job["error"]["code"] == "invalid_dataset", job["error"]  # refused before anything is allocated
    assert "truncated" in job["error"]["message"]


def test_wall_clock_timeout_kills_the_child(api_factory, model_file: Path, dataset_file: Path) -> None:
    api = api_factory(**{**FAST, "job_wall_seconds": 0.5})
    job_id = api.submit({}, model_file, dataset_file).json()["id"]
    started = time.monotonic()
    outcome, job = run(api, job_id)
    assert time.monotonic() - started < 10
    assert outcome == "failed" and job["error"]["code"] == "timeout"
    assert "0.5 s" in job["error"]["message"]
    assert 'allocation="spectrum"' in job["error"]["message"]  # what to change


def test_a_pt2_model_can_be_written_as_onnx(worker_api: Api, model_file: Path, dataset_file: Path) -> None:
    job_id = worker_api.submit({}, model_file, dataset_file, config='{"output_format": "onnx"}').json()["id"]
    outcome, job = run(worker_api, job_id)
    assert outcome == "succeeded", job["error"]  # the formats library writes ONNX
    download = worker_api.client.get(f"/jobs/{job_id}/model")
    assert 'filename="tiny_cnn.pruned.onnx"' in download.headers["content-disposition"]
    assert download.content[:1] == b"\x08"  # an ONNX ModelProto starts with its ir_version field


def test_cancel_stops_a_running_job_at_its_next_progress_point(
    worker_api: Api, model_file: Path, dataset_file: Path
) -> None:
    job_id = worker_api.submit({}, model_file, dataset_file).json()["id"]
    result: dict[str, str] = {}
    thread = threading.Thread(target=lambda: result.update(outcome=run(worker_api, job_id)[0]))
    thread.start()
    _wait_for(lambda: worker_api.client.get(f"/jobs/{job_id}").json()["status"] == "running")
    response = worker_api.client.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 202
    thread.join(timeout=30)
    assert result["outcome"] == "cancelled"
    job = worker_api.client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["result"] is None and job["finished_at"]
    assert worker_api.client.delete(f"/jobs/{job_id}").status_code == 204


def test_shutdown_releases_the_running_job_to_the_queue(
    worker_api: Api, model_file: Path, dataset_file: Path
) -> None:
    job_id = worker_api.submit({}, model_file, dataset_file).json()["id"]
    stop = threading.Event()
    result: dict[str, str] = {}
    thread = threading.Thread(target=lambda: result.update(outcome=run(worker_api, job_id, stop=stop)[0]))
    thread.start()
    _wait_for(lambda: worker_api.client.get(f"/jobs/{job_id}").json()["status"] == "running")
    stop.set()
    thread.join(timeout=30)
    assert result["outcome"] == "released"
    assert worker_api.client.get(f"/jobs/{job_id}").json()["status"] == "queued"


def test_reaper_requeues_lost_jobs_then_fails_them_after_max_attempts(
    api: Api, model_file: Path, dataset_file: Path
) -> None:
    headers = api.new_tenant()
    job_id = api.submit(headers, model_file, dataset_file).json()["id"]
    cancel_id = api.submit(headers, model_file, dataset_file).json()["id"]
    reaper = Reaper(api.settings, api.sessions, DatabaseDispatcher())
    past = utcnow() - timedelta(seconds=2 * api.settings.lease_seconds)
    for attempt in range(1, api.settings.max_attempts + 1):
        with session_scope(api.sessions) as session:  # a worker claims it, then dies (no heartbeat)
            assert crud.claim_job(session, job_id=job_id, owner=f"dead-{attempt}", lease_seconds=1, now=past)
            assert (
                crud.heartbeat(session, job_id=job_id, owner="someone-else", lease_seconds=1)
                is crud.Lease.LOST
            )
        requeued = reaper.run_once()
        status = api.client.get(f"/jobs/{job_id}", headers=headers).json()
        if attempt < api.settings.max_attempts:
            assert job_id in requeued and status["status"] == "queued"
        else:
            assert job_id not in requeued and status["status"] == "failed"
            assert status["error"]["code"] == "worker_lost"
            assert f"{attempt} times" in status["error"]["message"]
    with session_scope(api.sessions) as session:
        crud.claim_job(session, job_id=cancel_id, owner="dead", lease_seconds=1, now=past)
    api.client.post(f"/jobs/{cancel_id}/cancel", headers=headers)
    reaper.run_once()
    assert api.client.get(f"/jobs/{cancel_id}", headers=headers).json()["status"] == "cancelled"


def test_a_live_lease_is_left_alone(api: Api, model_file: Path, dataset_file: Path) -> None:
    headers = api.new_tenant()
    job_id = api.submit(headers, model_file, dataset_file).json()["id"]
    with session_scope(api.sessions) as session:
        crud.claim_job(session, job_id=job_id, owner="alive", lease_seconds=60)
    assert job_id not in Reaper(api.settings, api.sessions, DatabaseDispatcher()).run_once()
    with session_scope(api.sessions) as session:
        assert crud.heartbeat(session, job_id=job_id, owner="alive", lease_seconds=60) is crud.Lease.OWNED
    assert api.client.get(f"/jobs/{job_id}", headers=headers).json()["status"] == "running"


def test_worker_processes_never_import_torch() -> None:
    code = (
        "import sys, worker.tasks, worker.pipeline, worker.local_worker, worker.reaper, app.cli;"
        "from worker.celery_app import create_celery; from app.config import Settings;"
        "create_celery(Settings(broker_url='redis://127.0.0.1:1/0'));"
        "assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_exit_descriptions_are_readable() -> None:
    limits = SandboxLimits(memory_bytes=2**31, cpu_seconds=60, wall_seconds=10, output_bytes=2**20)
    assert describe_exit(-signal.SIGKILL, limits, "")[0] == "out_of_memory"
    assert "2.0 GiB" in describe_exit(-signal.SIGKILL, limits, "")[1]
    assert describe_exit(-signal.SIGXCPU, limits, "")[0] == "cpu_time_limit"
    code, message = describe_exit(-signal.SIGSEGV, limits, "Fatal Python error")
    assert code == "sandbox_crashed" and "SIGSEGV" in message and "Fatal Python error" in message
    assert "status 3" in describe_exit(3, limits, "")[1]
    assert output_filename("resnet.v2.pt2", "pt2") == "resnet.v2.pruned.pt2"
    assert output_filename("model", "onnx") == "model.pruned.onnx"
    assert json.dumps(describe_exit(1, limits, ""))  # plain strings


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def test_job_directories_of_dead_workers_are_swept(tmp_path: Path) -> None:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    orphan = tmp_path / f"specprune-job-{finished.pid}-abc"
    live = tmp_path / f"specprune-job-{os.getpid()}-def"
    unrelated = tmp_path / "specprune-job-notapid"
    for folder in (orphan, live, unrelated):
        (folder / "out").mkdir(parents=True)
    assert sweep_orphaned_job_dirs(tmp_path) == [orphan]
    assert not orphan.exists() and live.exists() and unrelated.exists()

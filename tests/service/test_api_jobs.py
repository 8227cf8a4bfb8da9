"""The /jobs API against real SQLite and PostgreSQL databases and real local storage."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from app import crud
from app.db import session_scope
from app.models import JobStatus
from tests.service.conftest import Api, assert_problem, sha256_of


def test_submit_returns_202_with_the_job_and_its_location(
    api: Api, model_file: Path, dataset_file: Path
) -> None:
    headers = api.new_tenant()
    response = api.submit(headers, model_file, dataset_file, config='{"params_ratio": 0.4, "seed": 7}')
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["progress"] == {"stage": "queued", "fraction": 0.0}
    assert job["model"] == {
        "filename": "tiny_cnn.pt2",
        "format": "pt2",
        "sha256": sha256_of(model_file),
        "bytes": model_file.stat().st_size,
    }
    assert job["config"]["params_ratio"] == 0.4 and job["config"]["flops_ratio"] is None
    assert job["config"]["seed"] == 7 and job["config"]["method"] == "spectral"
    assert job["config"]["calibration_samples"] == 1024 and job["config"]["output_format"] == "same"
    assert job["result"] is None and job["error"] is None and job["started_at"] is None
    assert set(job) == {
        "id",
        "status",
        "progress",
        "created_at",
        "started_at",
        "finished_at",
        "config",
        "model",
        "data",
        "callback_url",
        "result",
        "error",
    }
    assert job["data"]["filename"] == "calibration.npz" and job["data"]["sha256"] == sha256_of(dataset_file)
    assert job["data"]["dataset_id"] is None and job["data"]["eval_fraction"] == 0.0
    shown = api.client.get(f"/jobs/{job['id']}", headers=headers)
    assert shown.status_code == 200 and shown.json() == job
    stored = api.stored_keys(f"tenants/{_tenant_id(api, job['id'])}/jobs/{job['id']}")
    assert [Path(k).name for k in stored] == ["dataset", "model"]


def test_default_config_is_half_the_flops(api: Api, model_file: Path, dataset_file: Path) -> None:
    job = api.submit(api.new_tenant(), model_file, dataset_file).json()
    assert job["config"]["flops_ratio"] == 0.5
    assert job["config"]["device"] == "auto"


@pytest.mark.parametrize(
    ("config", "loc"),
    [
        ('{"flops_ratio": 0.5, "colour": "red"}', ["body", "config", "colour"]),
        ('{"flops_ratio": 0.5, "alpha": 0.9}', ["body", "config"]),
        ('{"flops_ratio": 1.5}', ["body", "config", "flops_ratio"]),
        ('{"method": "magic"}', ["body", "config", "method"]),
        ('{"output_format": "h5"}', ["body", "config", "output_format"]),
        ('{"device": "tpu"}', ["body", "config", "device"]),
        ('{"widths": {"0": 0}}', ["body", "config", "widths"]),
        ("{not json", ["body", "config"]),
    ],
)
def test_bad_config_is_refused_with_422(
    sqlite_api: Api, model_file: Path, dataset_file: Path, config: str, loc: list[str]
) -> None:
    headers = sqlite_api.new_tenant()
    body = assert_problem(
        sqlite_api.submit(headers, model_file, dataset_file, config=config), 422, "validation-error"
    )
    assert any(error["loc"][: len(loc)] == loc for error in body["errors"]), body
    assert sqlite_api.client.get("/jobs", headers=headers).json()["items"] == []
    assert sqlite_api.stored_keys("tenants") == []


def test_missing_and_conflicting_inputs_are_422(
    sqlite_api: Api, model_file: Path, dataset_file: Path
) -> None:
    headers = sqlite_api.new_tenant()
    only_model = sqlite_api.client.post(
        "/jobs", headers=headers, files={"model": ("m.pt2", model_file.read_bytes())}
    )
    assert assert_problem(only_model, 422, "validation-error")["errors"][0]["loc"] == ["body", "dataset"]
    only_data = sqlite_api.client.post(
        "/jobs", headers=headers, files={"dataset": ("d.npz", dataset_file.read_bytes())}
    )
    assert ["body", "model"] in [
        e["loc"] for e in assert_problem(only_data, 422, "validation-error")["errors"]
    ]
    both = sqlite_api.submit(headers, model_file, dataset_file, dataset_uri="s3://bucket/data.npz")
    assert "exactly one" in assert_problem(both, 422, "validation-error")["detail"]
    unknown_field = sqlite_api.submit(headers, model_file, dataset_file, callback="http://x")
    assert assert_problem(unknown_field, 422, "validation-error")["errors"][0]["loc"] == ["body", "callback"]
    unknown_dataset = sqlite_api.client.post(
        "/jobs",
        headers=headers,
        files={"model": ("m.pt2", model_file.read_bytes())},
        data={"dataset_id": "nope"},
    )
    assert assert_problem(unknown_dataset, 422, "validation-error")["errors"][0]["loc"] == [
        "body",
        "dataset_id",
    ]
    assert sqlite_api.stored_keys("tenants") == []


def test_body_must_be_multipart(sqlite_api: Api) -> None:
    response = sqlite_api.client.post("/jobs", headers=sqlite_api.new_tenant(), json={"model": "x"})
    assert_problem(response, 415, "unsupported-media-type")


def test_truncated_multipart_is_400(sqlite_api: Api, model_file: Path) -> None:
    boundary = "xyz"
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="model"; filename="m.pt2"\r\n\r\n'.encode()
    body += model_file.read_bytes()[:100]
    response = sqlite_api.client.post(
        "/jobs",
        headers={**sqlite_api.new_tenant(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
        content=body,
    )
    assert_problem(response, 400, "bad-request")
    assert sqlite_api.stored_keys("tenants") == []


def test_unrecognised_files_are_415(
    sqlite_api: Api, model_file: Path, dataset_file: Path, tmp_path: Path
) -> None:
    headers = sqlite_api.new_tenant()
    not_a_model = sqlite_api.submit(headers, b"\x80\x04not a torch.export archive" * 100, dataset_file)
    assert "torch.export.save" in assert_problem(not_a_model, 415, "unsupported-model-format")["detail"]
    empty = sqlite_api.submit(headers, b"", dataset_file)
    assert_problem(empty, 415, "unsupported-model-format")
    csv = sqlite_api.submit(headers, model_file, b"1,2,3\n4,5,6\n")
    assert "numpy.savez" in assert_problem(csv, 415, "unsupported-dataset-format")["detail"]
    assert sqlite_api.stored_keys("tenants") == []


def test_upload_over_the_limit_is_413_and_nothing_is_kept(
    api_factory, model_file: Path, dataset_file: Path
) -> None:
    limited = api_factory(max_upload_bytes=model_file.stat().st_size - 1)
    headers = limited.new_tenant()
    body = assert_problem(limited.submit(headers, model_file, dataset_file), 413, "payload-too-large")
    assert body["limit_bytes"] == model_file.stat().st_size - 1
    assert limited.stored_keys("tenants") == []
    assert limited.stored_keys(".incoming") == []
    # a file exactly at the limit is accepted
    exact = api_factory(max_upload_bytes=max(model_file.stat().st_size, dataset_file.stat().st_size))
    assert exact.submit(exact.new_tenant(), model_file, dataset_file).status_code == 202


def test_idempotency_key_returns_the_same_job(api: Api, model_file: Path, dataset_file: Path) -> None:
    headers = api.new_tenant()
    key = {"Idempotency-Key": "upload-42"}
    first = api.submit(headers, model_file, dataset_file, config='{"alpha": 0.9}', extra_headers=key)
    again = api.submit(headers, model_file, dataset_file, config='{"alpha": 0.9}', extra_headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert len(api.client.get("/jobs", headers=headers).json()["items"]) == 1
    changed = api.submit(headers, model_file, dataset_file, config='{"alpha": 0.8}', extra_headers=key)
    assert assert_problem(changed, 422, "idempotency-key-reused")["job_id"] == first.json()["id"]
    # the same key belongs to each tenant separately
    other = api.submit(api.new_tenant(), model_file, dataset_file, config='{"alpha": 0.9}', extra_headers=key)
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    job_prefix = f"tenants/{_tenant_id(api, first.json()['id'])}/jobs"
    assert len({Path(k).parts[3] for k in api.stored_keys(job_prefix)}) == 1  # replays kept no files


def test_list_is_newest_first_with_cursor_pagination_and_status_filter(
    api: Api, model_file: Path, dataset_file: Path
) -> None:
    headers = api.new_tenant()
    ids = [api.submit(headers, model_file, dataset_file).json()["id"] for _ in range(5)]
    pages, after = [], None
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = api.client.get("/jobs", headers=headers, params=params).json()
        pages.append([job["id"] for job in page["items"]])
        after = page["next_after"]
        if after is None:
            break
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[0:1]]
    api.client.post(f"/jobs/{ids[1]}/cancel", headers=headers)
    cancelled = api.client.get("/jobs", headers=headers, params={"status": "cancelled"}).json()
    assert [job["id"] for job in cancelled["items"]] == [ids[1]]
    queued = api.client.get("/jobs", headers=headers, params={"status": "queued"}).json()["items"]
    assert len(queued) == 4
    assert_problem(api.client.get("/jobs", headers=headers, params={"after": "garbage!"}), 400, "bad-request")
    assert_problem(api.client.get("/jobs", headers=headers, params={"limit": 0}), 422, "validation-error")
    assert_problem(
        api.client.get("/jobs", headers=headers, params={"status": "lost"}), 422, "validation-error"
    )


def test_tenants_never_see_each_others_jobs(api: Api, model_file: Path, dataset_file: Path) -> None:
    owner, stranger = api.new_tenant(), api.new_tenant()
    job_id = api.submit(owner, model_file, dataset_file).json()["id"]
    _succeed(api, job_id)
    for method, path in [
        ("GET", f"/jobs/{job_id}"),
        ("POST", f"/jobs/{job_id}/cancel"),
        ("DELETE", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/events"),
        ("GET", f"/jobs/{job_id}/model"),
        ("GET", f"/jobs/{job_id}/report"),
    ]:
        assert_problem(api.client.request(method, path, headers=stranger), 404, "not-found")
    assert api.client.get("/jobs", headers=stranger).json()["items"] == []
    assert api.client.get(f"/jobs/{job_id}", headers=owner).json()["status"] == "succeeded"


def test_cancel_semantics(api: Api, model_file: Path, dataset_file: Path) -> None:
    headers = api.new_tenant()
    queued = api.submit(headers, model_file, dataset_file).json()["id"]
    response = api.client.post(f"/jobs/{queued}/cancel", headers=headers)
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["finished_at"] is not None
    assert api.client.post(f"/jobs/{queued}/cancel", headers=headers).status_code == 200
    with session_scope(api.sessions) as session:  # a cancelled job can never be claimed
        assert crud.claim_job(session, job_id=queued, owner="w", lease_seconds=30) is None

    running = api.submit(headers, model_file, dataset_file).json()["id"]
    with session_scope(api.sessions) as session:
        assert crud.claim_job(session, job_id=running, owner="w1", lease_seconds=30) is not None
    response = api.client.post(f"/jobs/{running}/cancel", headers=headers)
    assert response.status_code == 202 and response.json()["status"] == "running"
    with session_scope(api.sessions) as session:  # the worker learns it at its next progress point
        lease = crud.heartbeat(session, job_id=running, owner="w1", lease_seconds=30, stage="statistics")
        assert lease is crud.Lease.CANCEL_REQUESTED
        assert crud.finish_job(session, job_id=running, owner="w1", status=JobStatus.CANCELLED)
    assert api.client.get(f"/jobs/{running}", headers=headers).json()["status"] == "cancelled"

    done = api.submit(headers, model_file, dataset_file).json()["id"]
    _succeed(api, done)
    assert_problem(api.client.post(f"/jobs/{done}/cancel", headers=headers), 409, "job-conflict")


def test_delete_removes_the_job_and_its_artifacts_but_not_while_running(
    api: Api, model_file: Path, dataset_file: Path
) -> None:
    headers = api.new_tenant()
    job_id = api.submit(headers, model_file, dataset_file).json()["id"]
    prefix = f"tenants/{_tenant_id(api, job_id)}/jobs/{job_id}"
    _succeed(api, job_id)
    assert len(api.stored_keys(prefix)) == 4  # model, dataset, output model, report
    assert api.client.delete(f"/jobs/{job_id}", headers=headers).status_code == 204
    assert_problem(api.client.get(f"/jobs/{job_id}", headers=headers), 404, "not-found")
    assert api.stored_keys(prefix) == []
    assert_problem(api.client.delete(f"/jobs/{job_id}", headers=headers), 404, "not-found")

    running = api.submit(headers, model_file, dataset_file).json()["id"]
    with session_scope(api.sessions) as session:
        crud.claim_job(session, job_id=running, owner="w", lease_seconds=30)
    assert_problem(api.client.delete(f"/jobs/{running}", headers=headers), 409, "job-conflict")
    assert api.client.get(f"/jobs/{running}", headers=headers).status_code == 200

    queued = api.submit(headers, model_file, dataset_file).json()["id"]
    assert api.client.delete(f"/jobs/{queued}", headers=headers).status_code == 204
    with session_scope(api.sessions) as session:  # a deleted job is never run
        assert crud.claim_job(session, job_id=queued, owner="w", lease_seconds=30) is None


def test_model_download_streams_with_etag_range_and_filename(
    api: Api, model_file: Path, dataset_file: Path
) -> None:
    headers = api.new_tenant()
    job_id = api.submit(headers, model_file, dataset_file).json()["id"]
    assert_problem(api.client.get(f"/jobs/{job_id}/model", headers=headers), 409, "job-conflict")
    assert_problem(api.client.get(f"/jobs/{job_id}/report", headers=headers), 409, "job-conflict")
    content = bytes(range(256)) * 40  # 10240 bytes
    _succeed(api, job_id, content)
    url = f"/jobs/{job_id}/model"
    full = api.client.get(url, headers=headers)
    assert full.status_code == 200 and full.content == content
    etag = full.headers["etag"]
    assert etag == f'"{__import__("hashlib").sha256(content).hexdigest()}"'
    assert full.headers["content-length"] == str(len(content))
    assert full.headers["accept-ranges"] == "bytes"
    assert full.headers["content-disposition"].startswith('attachment; filename="tiny_cnn.pruned.pt2"')
    part = api.client.get(url, headers={**headers, "Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(content)}"
    assert part.headers["content-length"] == "100"
    tail = api.client.get(url, headers={**headers, "Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == content[-10:]
    rest = api.client.get(url, headers={**headers, "Range": "bytes=10000-"})
    assert rest.status_code == 206 and rest.content == content[10000:]
    outside = api.client.get(url, headers={**headers, "Range": "bytes=20000-"})
    assert_problem(outside, 416, "range-not-satisfiable")
    assert outside.headers["content-range"] == f"bytes */{len(content)}"
    assert api.client.get(url, headers={**headers, "If-None-Match": etag}).status_code == 304
    stale = api.client.get(url, headers={**headers, "Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == content
    report = api.client.get(f"/jobs/{job_id}/report", headers=headers)
    assert report.status_code == 200 and report.json()["layers"][0]["name"] == "conv"


def test_events_stream_status_changes_and_ends_at_a_terminal_status(
    api: Api, model_file: Path, dataset_file: Path
) -> None:
    headers = api.new_tenant()
    job_id = api.submit(headers, model_file, dataset_file).json()["id"]
    with session_scope(api.sessions) as session:
        crud.claim_job(session, job_id=job_id, owner="w", lease_seconds=30)
    events: list[tuple[str, dict]] = []
    progress_seen = threading.Event()

    def progress_then_finish() -> None:
        with session_scope(api.sessions) as session:
            crud.heartbeat(
                session, job_id=job_id, owner="w", lease_seconds=30, stage="statistics", fraction=0.5
            )
        assert progress_seen.wait(10)
        with session_scope(api.sessions) as session:
            crud.finish_job(
                session, job_id=job_id, owner="w", status=JobStatus.FAILED, error_code="x", error_message="y"
            )

    with api.client.stream("GET", f"/jobs/{job_id}/events", headers=headers) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind or "", json.loads(line.removeprefix("data: "))))
                if len(events) == 1:
                    threading.Thread(target=progress_then_finish).start()
                if kind == "progress":
                    progress_seen.set()
    assert events[0][0] == "status" and events[0][1]["status"] == "running"
    assert ("progress", "statistics", 0.5) in [
        (k, e["progress"]["stage"], e["progress"]["fraction"]) for k, e in events
    ]
    assert events[-1][0] == "status" and events[-1][1]["status"] == "failed"
    assert events[-1][1]["error"] == {"code": "x", "message": "y"}


def _tenant_id(api: Api, job_id: str) -> str:
    with session_scope(api.sessions) as session:
        job = crud.get_job_by_id(session, job_id=job_id)
        assert job is not None
        return job.tenant_id


def _succeed(api: Api, job_id: str, content: bytes = b"compressed model bytes") -> None:
    """Finish a job the way a worker does: claim, store outputs, mark succeeded."""
    with session_scope(api.sessions) as session:
        job = crud.claim_job(session, job_id=job_id, owner="test-worker", lease_seconds=30)
        assert job is not None
        model = api.storage.put_stream(f"{job.storage_prefix}output/model.pt2", [content])
        report = {"original": {"params": 10}, "compressed": {"params": 5}, "layers": [{"name": "conv"}]}
        stored_report = api.storage.put_stream(
            f"{job.storage_prefix}output/report.json", [json.dumps(report).encode()]
        )
        outputs = crud.JobOutputs(
            output_key=model.key,
            output_filename="tiny_cnn.pruned.pt2",
            output_format="pt2",
            output_sha256=model.sha256,
            output_bytes=model.bytes,
            report_key=stored_report.key,
            result={"original": {"params": 10}, "compressed": {"params": 5}, "layers": []},
        )
        assert crud.finish_job(
            session, job_id=job_id, owner="test-worker", status=JobStatus.SUCCEEDED, outputs=outputs
        )


def test_the_api_works_on_s3_storage(api_factory, s3_settings, model_file: Path, dataset_file: Path) -> None:
    s3 = api_factory(
        **{
            k: getattr(s3_settings, k)
            for k in (
                "storage_backend",
                "s3_endpoint_url",
                "s3_bucket",
                "s3_access_key_id",
                "s3_secret_access_key",
            )
        }
    )
    headers = s3.new_tenant()
    job_id = s3.submit(headers, model_file, dataset_file).json()["id"]
    tenant = _tenant_id(s3, job_id)
    assert s3.storage.size(f"tenants/{tenant}/jobs/{job_id}/input/model") == model_file.stat().st_size
    _succeed(s3, job_id, b"0123456789" * 1000)
    part = s3.client.get(f"/jobs/{job_id}/model", headers={**headers, "Range": "bytes=5-14"})
    assert part.status_code == 206 and part.content == b"5678901234"
    assert s3.client.delete(f"/jobs/{job_id}", headers=headers).status_code == 204
    assert not s3.storage.exists(f"tenants/{tenant}/jobs/{job_id}/input/model")
    assert_problem(s3.submit(headers, b"junk", dataset_file), 415, "unsupported-model-format")

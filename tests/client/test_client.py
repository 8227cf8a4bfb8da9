"""The Python client against a real `specprune serve`: submit, wait (events), download (streamed,
resumed after a cut), report, list, cancel, delete, typed errors, and idempotent retries."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from client import (
    Client,
    Conflict,
    JobCancelled,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
    WaitTimeout,
)
from tests.client.conftest import FinishedJob
from tests.client.servers import MAX_UPLOAD_BYTES, Receiver, Served


def _loads_in_fresh_process(path: Path) -> dict[str, int]:
    """Load the file with plain torch in a new interpreter; its parameter count and output shape."""
    code = (
        "import json, sys, torch\n"
        "m = torch.export.load(sys.argv[1]).module()\n"
        "out = m(torch.randn(5, 3, 8, 8))\n"
        "print(json.dumps({'params': sum(p.numel() for p in m.parameters()), 'rows': out.shape[0], 'cols': out.shape[1]}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_a_job_is_followed_to_success_then_downloaded_and_reported(
    finished_job: FinishedJob, model_and_data: tuple[Path, Path], tmp_path: Path
) -> None:
    job = finished_job.job
    assert job.status == "succeeded" and job.done and job.fraction == 1.0
    stages = [stage for status, stage, _ in finished_job.seen if status == "running"]
    assert len(set(stages)) >= 2, finished_job.seen  # progress arrived as the job moved through stages
    assert finished_job.seen[-1][0] == "succeeded"
    assert job.result is not None and job.result["compressed"]["flops"] < job.result["original"]["flops"]

    written = job.download(tmp_path)  # a directory: the server's file name
    assert written == tmp_path / "model.pruned.pt2"
    assert not list(tmp_path.glob("*.part"))
    loaded = _loads_in_fresh_process(written)
    assert loaded["rows"] == 5 and loaded["cols"] == 10
    assert loaded["params"] == job.result["compressed"]["params"]

    report = job.report()
    assert report["compressed"]["params"] == loaded["params"]
    assert [layer["name"] for layer in report["layers"]] and report["data"]["evaluation_samples"] == 16

    weights = job.download(tmp_path / "weights.safetensors", format="safetensors")
    assert weights.read_bytes()[:8] and weights.stat().st_size > 0


def test_an_onnx_model_with_its_weights_beside_it_is_sent_as_one_upload(
    served: Served, model_and_data: tuple[Path, Path], tmp_path: Path
) -> None:
    import torch

    model, data = model_and_data
    onnx_path = tmp_path / "net.onnx"
    program = torch.export.load(model)  # a test fixture of our own, not an upload
    torch.onnx.export(program, (), str(onnx_path), dynamo=True, external_data=True)
    assert (tmp_path / "net.onnx.data").is_file()
    job = Client(served.url).submit(onnx_path, dataset=data, config={"flops_ratio": 0.5})
    assert job.data["model"]["format"] == "onnx" and job.data["model"]["filename"] == "net.zip"
    job.wait(progress=False, timeout=120)
    (tmp_path / "out").mkdir()
    assert job.download(tmp_path / "out").name == "net.pruned.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx", "net.onnx.data", "out"]  # no zip left


def test_download_resumes_with_range_after_the_connection_breaks(
    finished_job: FinishedJob, tmp_path: Path
) -> None:
    requests: list[httpx.Request] = []

    class CutOnce(httpx.HTTPTransport):
        """Forwards to the real server; the first model download breaks after 1000 bytes."""

        cut = True

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            requests.append(request)
            response = super().handle_request(request)
            if not (self.cut and request.url.path.endswith("/model")):
                return response
            self.cut = False
            inner = response.stream

            class Broken(httpx.SyncByteStream):
                def __iter__(self) -> Iterator[bytes]:
                    for chunk in inner:  # type: ignore[union-attr]
                        yield chunk[:1000]
                        raise httpx.ReadError("connection reset")

                def close(self) -> None:
                    inner.close()  # type: ignore[union-attr]

            return httpx.Response(response.status_code, headers=response.headers, stream=Broken())

    client = Client(finished_job.job._client.url, http_client=httpx.Client(transport=CutOnce()))
    path = client.job(finished_job.job.id).download(tmp_path / "resumed.pt2")
    downloads = [r for r in requests if r.url.path.endswith("/model")]
    assert len(downloads) == 2
    assert "range" not in downloads[0].headers
    assert downloads[1].headers["range"] == "bytes=1000-"
    etag = downloads[1].headers["if-range"].strip('"')
    assert hashlib.sha256(path.read_bytes()).hexdigest() == etag
    reference = finished_job.job.download(tmp_path / "whole.pt2")
    assert path.read_bytes() == reference.read_bytes()


def test_jobs_are_listed_newest_first_page_by_page_cancelled_and_deleted(
    served: Served, model_and_data: tuple[Path, Path]
) -> None:
    model, data = model_and_data
    client = Client(served.url)
    first = client.submit(model, dataset=data)
    second = client.submit(model, dataset=data)
    with pytest.raises(WaitTimeout):
        second.wait(progress=False, timeout=0.3)
    for job in (second, first):
        assert job.cancel().status in ("cancelled", "running")
    for job in (first, second):
        with pytest.raises(JobCancelled) as cancelled:
            job.wait(progress=False, timeout=60)
        assert cancelled.value.job.status == "cancelled"

    listed = [job.id for job in client.jobs(page_size=1, limit=2)]
    assert listed == [second.id, first.id]
    assert second.id in [job.id for job in client.jobs(status="cancelled")]

    with pytest.raises(Conflict) as conflict:
        first.download("never.pt2")
    assert conflict.value.status == 409 and conflict.value.problem["job_status"] == "cancelled"
    first.delete()
    with pytest.raises(NotFound):
        client.job(first.id)
    with pytest.raises(NotFound):
        first.delete()
    second.delete()


def test_a_failed_job_raises_job_failed_with_its_error_and_posts_its_webhook(
    served: Served, model_and_data: tuple[Path, Path], tmp_path: Path, receiver: Receiver
) -> None:
    wrong_channels = tmp_path / "five_channels.npz"
    np.savez(wrong_channels, x=np.zeros((16, 5, 8, 8), dtype=np.float32))
    client = Client(served.url)
    job = client.submit(model_and_data[0], dataset=wrong_channels, callback_url=receiver.url("/failed"))
    with pytest.raises(JobFailed) as failed:
        job.wait(progress=False, timeout=120)
    assert failed.value.job is job and job.status == "failed"
    assert failed.value.code == job.error["code"] and failed.value.code != "internal_error"
    assert "shape" in failed.value.message
    (delivery,) = receiver.wait_for("/failed", 1)
    assert delivery.json()["status"] == "failed" and delivery.json()["error"] == job.error


def test_api_errors_are_typed_and_carry_the_problem_document(
    served: Served, model_and_data: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = model_and_data
    client = Client(served.url)

    with pytest.raises(NotFound) as missing:
        client.job(str(uuid.uuid4()))
    assert missing.value.status == 404 and missing.value.problem["type"] == "/problems/not-found"

    with pytest.raises(ValidationFailed) as invalid:
        client.submit(model, dataset=data, config={"flops_ratio": 5})
    assert invalid.value.status == 422
    assert invalid.value.errors[0]["loc"] == ["body", "config", "flops_ratio"]

    with pytest.raises(ValidationFailed) as internal:
        client.submit(model, dataset=data, callback_url="http://10.1.2.3/hook")
    assert internal.value.errors[0]["loc"] == ["body", "callback_url"]

    big = tmp_path / "big.npz"
    big.write_bytes(b"\0" * (MAX_UPLOAD_BYTES * 2))
    with pytest.raises(PayloadTooLarge) as too_large:
        client.submit(model, dataset=big)
    assert too_large.value.status == 413 and too_large.value.problem["type"] == "/problems/payload-too-large"

    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("not a model\n" * 100)
    with pytest.raises(UnsupportedMediaType) as unsupported:
        client.submit(not_a_model, dataset=data)
    assert unsupported.value.status == 415

    with pytest.raises(Unauthorized) as unauthorized:
        Client(served.url, api_key="spk_000000000000_wrong").job("anything")
    assert unauthorized.value.status == 401

    with pytest.raises(FileNotFoundError):
        client.submit(tmp_path / "absent.pt2", dataset=data)


def test_a_submission_retried_after_a_lost_response_keeps_its_idempotency_key(
    served: Served, model_and_data: tuple[Path, Path]
) -> None:
    keys: list[str] = []

    class LoseFirstResponse(httpx.HTTPTransport):
        """The first POST reaches the server (the job is created) but its answer never arrives."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            response = super().handle_request(request)
            if request.method == "POST" and request.url.path == "/jobs":
                keys.append(request.headers["idempotency-key"])
                if len(keys) == 1:
                    response.close()
                    raise httpx.ReadError("connection reset before the response")
            return response

    model, data = model_and_data
    plain = Client(served.url)
    before = {job.id for job in plain.jobs(limit=50)}
    client = Client(served.url, backoff_seconds=0.05, http_client=httpx.Client(transport=LoseFirstResponse()))
    job = client.submit(model, dataset=data)
    created = [found for found in plain.jobs(limit=50) if found.id not in before]
    assert len(keys) == 2 and keys[0] == keys[1] and uuid.UUID(keys[0]).version == 4
    assert [found.id for found in created] == [job.id]
    job.cancel()
    with pytest.raises(JobCancelled):
        job.wait(progress=False, timeout=60)
    job.delete()


def test_wait_falls_back_to_polling_when_the_event_stream_is_unavailable(finished_job: FinishedJob) -> None:
    paths: list[str] = []

    class NoEvents(httpx.HTTPTransport):
        """A proxy in front of the server that does not pass event streams."""

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            paths.append(request.url.path)
            if request.url.path.endswith("/events"):
                return httpx.Response(502, text="Bad Gateway", request=request)
            return super().handle_request(request)

    client = Client(finished_job.job._client.url, retries=0, http_client=httpx.Client(transport=NoEvents()))
    job = client.job(finished_job.job.id)
    assert job.wait(progress=False, timeout=30) is job and job.status == "succeeded"
    job_path = f"/jobs/{job.id}"
    assert paths == [job_path, f"{job_path}/events", job_path]

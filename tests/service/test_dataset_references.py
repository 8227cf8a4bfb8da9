"""Dataset references: file:// only under allowed roots (traversal and symbolic links out refused),
http(s):// only to allowed hosts (size-limited while streaming, no redirects), s3:// only in allowed
buckets; jobs that read them, the real CIFAR-10 archive, and a dataset larger than the sandbox's memory."""

from __future__ import annotations

import http.server
import os
import threading
import uuid
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from app.dataset_uris import DatasetUriError, fetch_dataset_uri, parse_dataset_uri
from tests.service.conftest import assert_problem, make_settings
from tests.service.files import FAST, cnn, random_data, run_job, save_pt2, submit

CIFAR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10" / "cifar10-jpg.tar.gz"


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    secret = tmp_path / "secret.npz"
    secret.write_bytes(random_data(4))
    (allowed / "sub" / "data.npz").write_bytes(random_data(8))
    (allowed / "link_out.npz").symlink_to(secret)
    (allowed / "link_in.npz").symlink_to(allowed / "sub" / "data.npz")
    return {"allowed": allowed, "secret": secret}


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/data.npz")
            self.end_headers()
            return
        super().do_GET()


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    folder = tmp_path / "www"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


def test_file_references_stay_under_the_allowed_roots(tmp_path: Path, roots: dict[str, Path]) -> None:
    settings = make_settings(tmp_path / "home", dataset_file_roots=str(roots["allowed"]))
    allowed = roots["allowed"]
    assert parse_dataset_uri(f"file://{allowed}/sub/data.npz", settings).path == allowed / "sub" / "data.npz"
    assert parse_dataset_uri(f"file://{allowed}/link_in.npz", settings).path == allowed / "sub" / "data.npz"
    for uri, reason in [
        (f"file://{allowed}/sub/../../secret.npz", "outside"),
        (f"file://{allowed}/link_out.npz", "outside"),
        (f"file://{roots['secret']}", "outside"),
        (f"file://{allowed}/sub", "not a regular file"),
        (f"file://{allowed}/missing.npz", "no such file"),
        ("file://otherhost/etc/passwd", "local path"),
        ("file:relative.npz", "absolute"),
    ]:
        with pytest.raises(DatasetUriError, match=reason):
            parse_dataset_uri(uri, settings)
    with pytest.raises(DatasetUriError, match="not enabled"):
        parse_dataset_uri(f"file://{allowed}/sub/data.npz", make_settings(tmp_path / "h2"))
    target = tmp_path / "job" / "dataset.bin"
    target.parent.mkdir()
    uri = parse_dataset_uri(f"file://{allowed}/sub/data.npz", settings)
    fetch_dataset_uri(uri, settings, target, limit=None)
    assert target.read_bytes() == (allowed / "sub" / "data.npz").read_bytes()
    assert os.stat(target).st_ino == os.stat(allowed / "sub" / "data.npz").st_ino  # linked, not copied
    (allowed / "sub" / "data.npz").unlink()  # swapped for a link out after the check: refused at fetch
    (allowed / "sub" / "data.npz").symlink_to(roots["secret"])
    with pytest.raises(DatasetUriError):
        fetch_dataset_uri(uri, settings, tmp_path / "job" / "again.bin", limit=None)
    assert not (tmp_path / "job" / "again.bin").exists()


def test_http_references_only_to_allowed_hosts_and_size_limited(
    tmp_path: Path, http_root: tuple[str, Path]
) -> None:
    base, folder = http_root
    (folder / "data.npz").write_bytes(random_data(16))
    settings = make_settings(tmp_path / "home", dataset_http_hosts="127.0.0.1")
    target = tmp_path / "d.bin"
    fetch_dataset_uri(parse_dataset_uri(f"{base}/data.npz", settings), settings, target, limit=10**6)
    assert target.read_bytes() == (folder / "data.npz").read_bytes()
    with pytest.raises(DatasetUriError, match="larger than the limit") as too_large:
        fetch_dataset_uri(
            parse_dataset_uri(f"{base}/data.npz", settings), settings, tmp_path / "x", limit=100
        )
    assert too_large.value.code == "dataset_too_large"
    with pytest.raises(DatasetUriError, match="redirect"):
        fetch_dataset_uri(parse_dataset_uri(f"{base}/moved", settings), settings, tmp_path / "y", limit=10**6)
    with pytest.raises(DatasetUriError, match="HTTP 404"):
        fetch_dataset_uri(
            parse_dataset_uri(f"{base}/missing", settings), settings, tmp_path / "z", limit=10**6
        )
    for uri in ("http://localhost:1/data.npz", "https://example.com/d.npz", "http://user:pw@127.0.0.1/d"):
        with pytest.raises(DatasetUriError):
            parse_dataset_uri(uri, settings)


def test_s3_references_only_in_allowed_buckets_never_the_artifact_bucket(tmp_path: Path, s3_settings) -> None:
    settings = s3_settings.model_copy(update={"dataset_s3_buckets": f"data-bucket,{s3_settings.s3_bucket}"})
    with pytest.raises(DatasetUriError, match="artifact bucket"):
        parse_dataset_uri(f"s3://{settings.s3_bucket}/tenants/someone/jobs/x/input/dataset", settings)
    with pytest.raises(DatasetUriError, match="allow"):
        parse_dataset_uri("s3://elsewhere/data.npz", settings)
    with pytest.raises(DatasetUriError, match="bucket and a key"):
        parse_dataset_uri("s3://data-bucket/", settings)
    assert parse_dataset_uri("s3://data-bucket/a/b.npz", settings).key == "a/b.npz"


def test_refused_references_are_422_at_submission(api_factory, roots: dict[str, Path]) -> None:
    api = api_factory(dataset_file_roots=str(roots["allowed"]))
    model = save_pt2(cnn(), (2, 3, 8, 8), roots["allowed"].parent / "m.pt2")
    for uri in (
        f"file://{roots['allowed']}/link_out.npz",
        "s3://not-allowed/x.npz",
        "http://127.0.0.1/x.npz",
        "gopher://x",
    ):
        body = assert_problem(submit(api, model, dataset_uri=uri), 422, "validation-error")
        assert body["errors"][0]["loc"] == ["body", "dataset_uri"], uri
    accepted = submit(api, model, dataset_uri=f"file://{roots['allowed']}/sub/data.npz")
    assert accepted.status_code == 202 and accepted.json()["data"]["filename"] == "data.npz"
    imported = api.client.post("/datasets", files={"uri": (None, f"file://{roots['allowed']}/sub/data.npz")})
    assert imported.status_code == 201, imported.text
    assert imported.json()["source_uri"] == f"file://{roots['allowed']}/sub/data.npz"
    assert imported.json()["samples"] == 8
    refused = api.client.post("/datasets", files={"uri": (None, f"file://{roots['allowed']}/link_out.npz")})
    assert assert_problem(refused, 422, "validation-error")["errors"][0]["loc"] == ["body", "uri"]


def test_a_job_reads_s3_data_and_evaluates_on_an_http_dataset(
    api_factory, s3_settings, http_root: tuple[str, Path], tmp_path: Path
) -> None:
    import boto3

    base, folder = http_root
    bucket = f"data-{uuid.uuid4().hex[:8]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_settings.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
    )
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="train/data.npz", Body=random_data(48, seed=1))
    (folder / "test.npz").write_bytes(random_data(20, seed=2))
    api = api_factory(
        **FAST,
        s3_endpoint_url=s3_settings.s3_endpoint_url,
        s3_access_key_id="testing",
        s3_secret_access_key="testing-secret",
        dataset_s3_buckets=bucket,
        dataset_http_hosts="127.0.0.1",
    )
    model = save_pt2(cnn(), (2, 3, 8, 8), tmp_path / "m.pt2")
    response = submit(
        api, model, dataset_uri=f"s3://{bucket}/train/data.npz", eval_dataset_uri=f"{base}/test.npz"
    )
    assert response.status_code == 202, response.text
    outcome, job = run_job(api, response.json()["id"])
    assert outcome == "succeeded", job["error"]
    assert job["result"]["data"]["evaluation_source"] == "eval_dataset"
    assert (job["result"]["data"]["calibration_samples"], job["result"]["data"]["evaluation_samples"]) == (
        48,
        20,
    )
    (folder / "test.npz").unlink()  # the reference is read when the job runs: gone means a readable failure
    again = submit(
        api, model, dataset_uri=f"s3://{bucket}/train/data.npz", eval_dataset_uri=f"{base}/test.npz"
    )
    outcome, job = run_job(api, again.json()["id"])
    assert outcome == "failed" and job["error"]["code"] == "dataset_unavailable"
    assert "HTTP 404" in job["error"]["message"]


@pytest.mark.slow
def test_the_cifar10_archive_by_file_reference(api_factory, tmp_path: Path) -> None:
    assert CIFAR.exists(), f"the shared CIFAR-10 archive is missing: {CIFAR} (see ../shared/data/README.md)"
    api = api_factory(**FAST, dataset_file_roots=str(CIFAR.parent.parent), eval_samples=200)
    model = save_pt2(cnn(), (2, 3, 32, 32), tmp_path / "cifar_cnn.pt2")
    preprocess = '{"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]}'
    response = submit(
        api, model, dataset_uri=CIFAR.as_uri(), preprocess=preprocess, config='{"calibration_samples": 64}'
    )
    assert response.status_code == 202, response.text
    outcome, job = run_job(api, response.json()["id"])
    assert outcome == "succeeded", job["error"]
    assert job["result"]["data"] == {
        "calibration_samples": 64,
        "evaluation_samples": 200,
        "evaluation_source": "test_split",
        "training_samples": None,
    }
    report = api.client.get(f"/jobs/{job['id']}/report").json()
    assert report["data"]["dataset"] == {
        "format": "tar.gz",
        "samples": 60_000,
        "input_shape": [3, 32, 32],
        "classes": 10,
        "splits": {"test": 10_000, "train": 50_000},
    }
    assert report["data"]["calibration_split"] == "train"
    assert (
        0.0 <= job["result"]["original"]["top1"] <= 1.0
        and job["result"]["compressed"]["agreement"] is not None
    )


def test_a_dataset_larger_than_the_sandbox_memory_streams_through(api_factory, tmp_path: Path) -> None:
    memory = 512 * 2**20
    block, blocks = 20_000, 10  # 200,000 samples of 3x16x16 float32: 614 MB, over the sandbox's 512 MiB
    root = tmp_path / "data"
    root.mkdir()
    big = root / "big.npz"
    rows = np.random.default_rng(0).standard_normal((block, 3, 16, 16), dtype=np.float32).tobytes()
    with (
        zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as archive,
        archive.open("x.npy", "w", force_zip64=True) as entry,
    ):
        header = {"descr": "<f4", "fortran_order": False, "shape": (block * blocks, 3, 16, 16)}
        np.lib.format.write_array_header_1_0(entry, header)
        for _ in range(blocks):
            entry.write(rows)
    assert big.stat().st_size > memory
    api = api_factory(**{**FAST, "job_memory_bytes": memory}, dataset_file_roots=str(root))
    model = save_pt2(cnn(), (2, 3, 16, 16), tmp_path / "m.pt2")
    response = submit(api, model, dataset_uri=big.as_uri(), eval_fraction="0.001")
    outcome, job = run_job(api, response.json()["id"])
    assert outcome == "succeeded", job["error"]
    assert job["result"]["data"]["calibration_samples"] == 1024
    assert job["result"]["data"]["evaluation_samples"] == 200

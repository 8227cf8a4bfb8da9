"""/datasets and jobs that read stored or referenced data: uploads inspected in the sandbox, per-tenant
access, 409 while a job reads a dataset, splits that never overlap, the sample counts in the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.service.conftest import Api, assert_problem, sha256_of
from tests.service.files import FAST, cnn, image_folder, npz_bytes, random_data, run_job, save_pt2, submit


@pytest.fixture
def data_api(api_factory) -> Api:
    return api_factory(**FAST)


@pytest.fixture(scope="module")
def cnn_pt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pt2(cnn(), (2, 3, 8, 8), tmp_path_factory.mktemp("cnn") / "cnn.pt2")


def _upload(api: Api, headers: dict[str, str], content: bytes, name: str = "data.npz", **fields: str):
    return api.client.post("/datasets", headers=headers, files={"file": (name, content)}, data=fields)


def test_upload_list_show_and_delete_per_tenant(api: Api, tmp_path: Path) -> None:
    owner, stranger = api.new_tenant(), api.new_tenant()
    content = random_data(40, classes=5)
    response = _upload(api, owner, content)
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert response.headers["location"] == f"/datasets/{dataset['id']}"
    assert {k: dataset[k] for k in ("format", "samples", "input_shape", "classes", "labelled", "bytes")} == {
        "format": "npz",
        "samples": 40,
        "input_shape": [3, 8, 8],
        "classes": 5,
        "labelled": True,
        "bytes": len(content),
    }
    path = tmp_path / "d.npz"
    path.write_bytes(content)
    assert (
        dataset["sha256"] == sha256_of(path) and dataset["splits"] == {} and dataset["filename"] == "data.npz"
    )
    assert api.client.get(f"/datasets/{dataset['id']}", headers=owner).json() == dataset
    assert [d["id"] for d in api.client.get("/datasets", headers=owner).json()["items"]] == [dataset["id"]]
    assert api.client.get("/datasets", headers=stranger).json() == {"items": [], "next_after": None}
    for method in ("GET", "DELETE"):
        assert_problem(
            api.client.request(method, f"/datasets/{dataset['id']}", headers=stranger), 404, "not-found"
        )
    prefix = f"tenants/{_tenant(api, owner)}/datasets/{dataset['id']}"
    assert api.stored_keys(prefix) == [f"{prefix}/data"]
    assert api.client.delete(f"/datasets/{dataset['id']}", headers=owner).status_code == 204
    assert api.stored_keys(prefix) == []
    assert_problem(api.client.get(f"/datasets/{dataset['id']}", headers=owner), 404, "not-found")


def test_a_dataset_a_job_reads_cannot_be_deleted_until_the_job_ends(sqlite_api: Api, cnn_pt2: Path) -> None:
    headers = sqlite_api.new_tenant()
    dataset = _upload(sqlite_api, headers, random_data(16)).json()
    job = sqlite_api.client.post(
        "/jobs",
        headers=headers,
        files={"model": ("cnn.pt2", cnn_pt2.read_bytes())},
        data={"dataset_id": dataset["id"]},
    ).json()
    assert job["data"]["dataset_id"] == dataset["id"] and job["data"]["sha256"] == dataset["sha256"]
    conflict = assert_problem(
        sqlite_api.client.delete(f"/datasets/{dataset['id']}", headers=headers), 409, "dataset-in-use"
    )
    assert job["id"] in conflict["detail"]
    sqlite_api.client.post(f"/jobs/{job['id']}/cancel", headers=headers)
    assert sqlite_api.client.delete(f"/datasets/{dataset['id']}", headers=headers).status_code == 204
    assert sqlite_api.client.get(f"/jobs/{job['id']}", headers=headers).json()["data"]["dataset_id"] is None
    other = sqlite_api.new_tenant()  # another tenant's dataset id is no dataset at all
    mine = _upload(sqlite_api, headers, random_data(16)).json()["id"]
    refused = sqlite_api.client.post(
        "/jobs", headers=other, files={"model": ("cnn.pt2", cnn_pt2.read_bytes())}, data={"dataset_id": mine}
    )
    assert assert_problem(refused, 422, "validation-error")["errors"][0]["loc"] == ["body", "dataset_id"]


def test_an_image_folder_is_described_with_its_preprocessing(sqlite_api: Api, tmp_path: Path) -> None:
    archive = image_folder(
        tmp_path / "pets.tar.gz", {"train": {"cat": 3, "dog": 2}, "test": {"cat": 1, "dog": 1}}
    )
    response = _upload(
        sqlite_api,
        {},
        archive.read_bytes(),
        "pets.tar.gz",
        preprocess='{"resize": 12, "center_crop": 8, "mean": 0.5, "std": 0.25}',
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["format"], body["samples"], body["input_shape"]) == ("tar.gz", 7, [3, 8, 8])
    assert body["classes"] == ["cat", "dog"] and body["splits"] == {"test": 2, "train": 5}
    assert body["preprocess"]["center_crop"] == 8 and body["preprocess"]["mean"] == [0.5]


def test_unusable_uploads_are_refused_and_nothing_is_kept(sqlite_api: Api, tmp_path: Path) -> None:
    csv = assert_problem(
        _upload(sqlite_api, {}, b"1,2,3\n4,5,6\n", "data.csv"), 415, "unsupported-dataset-format"
    )
    assert "numpy.savez" in csv["detail"] and csv["hint"]
    assert_problem(_upload(sqlite_api, {}, b""), 415, "unsupported-dataset-format")
    nan = np.zeros((4, 3, 8, 8), dtype=np.float32)
    nan[2, 0, 1, 1] = np.nan
    refused = assert_problem(_upload(sqlite_api, {}, npz_bytes(nan)), 422, "invalid-dataset")
    assert refused["code"] == "dataset_nan" and "sample 2" in refused["detail"]
    empty_zip = tmp_path / "e.zip"
    with __import__("zipfile").ZipFile(empty_zip, "w") as archive:
        archive.writestr("readme.txt", "no images")
    assert (
        assert_problem(_upload(sqlite_api, {}, empty_zip.read_bytes(), "e.zip"), 422, "invalid-dataset")[
            "code"
        ]
        == "empty_dataset"
    )
    preprocessed = _upload(sqlite_api, {}, random_data(4), preprocess='{"resize": 8}')
    assert assert_problem(preprocessed, 422, "validation-error")["errors"][0]["loc"] == ["body", "preprocess"]
    typo = _upload(sqlite_api, {}, random_data(4), preprocess='{"resise": 8}')
    assert "unknown preprocess keys: resise" in assert_problem(typo, 422, "validation-error")["detail"]
    both = sqlite_api.client.post(
        "/datasets", files={"file": ("d.npz", random_data(4))}, data={"uri": "file:///x"}
    )
    assert "exactly one" in assert_problem(both, 422, "validation-error")["detail"]
    assert sqlite_api.stored_keys("tenants") == []


def test_uploads_over_the_limit_are_413(api_factory) -> None:
    api = api_factory(max_upload_bytes=1000)
    body = assert_problem(_upload(api, {}, random_data(4)), 413, "payload-too-large")
    assert body["limit_bytes"] == 1000
    assert api.stored_keys("tenants") == []


def test_a_job_on_a_stored_image_folder_evaluates_on_its_test_split(data_api: Api, tmp_path: Path) -> None:
    archive = image_folder(
        tmp_path / "f.tar.gz", {"train": {"a": 20, "b": 20}, "test": {"a": 6, "b": 6}}, size=8
    )
    dataset = _upload(data_api, {}, archive.read_bytes(), "f.tar.gz").json()
    model = save_pt2(cnn(classes=2), (2, 3, 8, 8), tmp_path / "m.pt2")
    job_id = submit(data_api, model, dataset_id=dataset["id"], config='{"calibration_samples": 32}').json()[
        "id"
    ]
    outcome, job = run_job(data_api, job_id)
    assert outcome == "succeeded", job["error"]
    assert job["result"]["data"] == {
        "calibration_samples": 32,
        "evaluation_samples": 12,
        "evaluation_source": "test_split",
        "training_samples": None,
    }
    assert (
        job["result"]["original"]["top1"] is not None and job["result"]["compressed"]["agreement"] is not None
    )
    report = data_api.client.get(f"/jobs/{job_id}/report").json()
    assert report["data"]["calibration_split"] == "train" and report["data"]["evaluation_split"] == "test"
    assert report["evaluation"]["samples"] == 12 and report["data"]["dataset"]["splits"] == {
        "test": 12,
        "train": 40,
    }


def test_a_held_out_fraction_is_kept_apart_from_calibration(data_api: Api, cnn_pt2: Path) -> None:
    response = submit(data_api, cnn_pt2, dataset=random_data(64), eval_fraction="0.25")
    assert response.json()["data"]["eval_fraction"] == 0.25
    outcome, job = run_job(data_api, response.json()["id"])
    assert outcome == "succeeded", job["error"]
    counts = job["result"]["data"]
    assert (counts["calibration_samples"], counts["evaluation_samples"], counts["evaluation_source"]) == (
        48,
        16,
        "held_out",
    )
    data_warnings, target_warnings = [], []
    for w in job["result"]["warnings"]:
        (target_warnings if w.startswith("FLOPs kept") else data_warnings).append(w)
    assert data_warnings == []
    assert len(target_warnings) == 1  # each of this tiny CNN's channels is 5-12% of its FLOPs


def test_bad_data_fields_are_422(sqlite_api: Api, cnn_pt2: Path) -> None:
    for fields, loc in [
        ({"eval_fraction": "1.5"}, "eval_fraction"),
        ({"eval_fraction": "nan"}, "eval_fraction"),
        ({"eval_dataset_id": "nope"}, "eval_dataset_id"),
        ({"preprocess": "{oops"}, "preprocess"),
        ({"preprocess": '{"resize": 8}'}, "preprocess"),  # an npz holds preprocessed arrays
        ({"eval_dataset_uri": "ftp://host/data.npz"}, "eval_dataset_uri"),
    ]:
        body = assert_problem(
            submit(sqlite_api, cnn_pt2, dataset=random_data(8), **fields), 422, "validation-error"
        )
        assert body["errors"][0]["loc"] == ["body", loc], (fields, body)
    both = submit(
        sqlite_api, cnn_pt2, dataset=random_data(8), eval_dataset_uri="s3://b/k", eval_dataset_id="x"
    )
    assert "not both" in assert_problem(both, 422, "validation-error")["detail"]
    assert sqlite_api.stored_keys("tenants") == []


def _tenant(api: Api, headers: dict[str, str]) -> str:
    from app import crud
    from app.db import session_scope

    token = headers["Authorization"].removeprefix("Bearer ")
    with session_scope(api.sessions) as session:
        tenant = crud.authenticate(session, token=token)
        assert tenant is not None
        return tenant.id


def test_uploads_wait_for_an_inspection_slot_then_get_503(api_factory) -> None:
    api = api_factory(dataset_inspections=1, dataset_inspect_wait_seconds=0.2)
    headers = api.new_tenant()
    slots = api.client.app.state.inspection_slots  # type: ignore[attr-defined]
    assert slots.acquire(timeout=1)  # another upload is being inspected
    try:
        response = _upload(api, headers, random_data(8))
        busy = assert_problem(response, 503, "busy")
        assert "inspection slot" in busy["detail"] and response.headers["retry-after"] == "1"
    finally:
        slots.release()
    assert _upload(api, headers, random_data(8)).status_code == 201  # the slot is free again
    assert api.client.get("/datasets", headers=headers).json()["items"][0]["samples"] == 8

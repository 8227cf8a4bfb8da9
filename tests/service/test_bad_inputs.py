"""Every bad input gets a clear answer -- a 4xx problem at submission or a failed job with a readable
message and a stable code -- while the service stays up and the next job still finishes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.service.conftest import Api, assert_problem
from tests.service.files import FAST, cnn, npz_bytes, random_data, run_job, save_onnx, save_pt2, submit


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real exported models, each wrong for a reason of its own."""
    from torch import nn

    folder = tmp_path_factory.mktemp("bad-models")
    group_norm = nn.Sequential(  # most FLOPs sit in a layer that cannot be pruned (GroupNorm on both sides)
        nn.Conv2d(3, 48, 3, padding=1),
        nn.GroupNorm(4, 48),
        nn.Conv2d(48, 48, 3, padding=1),
        nn.GroupNorm(4, 48),
        nn.ReLU(),
        nn.Conv2d(48, 32, 1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()
    hungry = nn.Sequential(  # a tiny file whose activations take 1 GiB per sample
        nn.Upsample(scale_factor=256),
        nn.Conv2d(3, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    ).eval()
    onnx = save_onnx(cnn(), (2, 3, 8, 8), folder / "cnn.onnx")
    truncated = folder / "truncated.onnx"
    truncated.write_bytes(onnx.read_bytes()[: onnx.stat().st_size * 2 // 3])
    return {
        "cnn": save_pt2(cnn(), (2, 3, 8, 8), folder / "cnn.pt2"),
        "linear": save_pt2(
            nn.Sequential(nn.Flatten(), nn.Linear(192, 10)).eval(), (2, 3, 8, 8), folder / "linear.pt2"
        ),
        "group_norm": save_pt2(group_norm, (2, 3, 8, 8), folder / "group_norm.pt2"),
        "hungry": save_pt2(hungry, (2, 3, 8, 8), folder / "hungry.pt2"),
        "truncated_onnx": truncated,
    }


@pytest.fixture(scope="module")
def bad_api(tmp_path_factory: pytest.TempPathFactory) -> Api:
    """One service for the whole module: the failures below must not disturb it."""
    from fastapi.testclient import TestClient

    from app.db import upgrade_database
    from app.main import create_app
    from tests.service.conftest import make_settings

    settings = make_settings(tmp_path_factory.mktemp("bad-home"), **{**FAST, "job_memory_bytes": 2**30})
    upgrade_database(settings)
    with TestClient(create_app(settings)) as client:
        yield Api(client, settings, client.app.state.sessions, client.app.state.storage)  # type: ignore[attr-defined]


def _fails(api: Api, response, code: str, *phrases: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == 202, response.text
    outcome, job = run_job(api, response.json()["id"])
    assert outcome == "failed" and job["status"] == "failed", job
    assert job["error"]["code"] == code, job["error"]
    for phrase in phrases:
        assert phrase in job["error"]["message"], (phrase, job["error"]["message"])
    assert api.client.get("/healthz").status_code == 200
    return job


def test_a_damaged_model_fails_its_job(bad_api: Api, models: dict[str, Path]) -> None:
    response = submit(bad_api, models["truncated_onnx"], dataset=random_data(32), name="cnn.onnx")
    assert response.json()["model"]["format"] == "onnx"  # its first bytes are ONNX's; the rest is missing
    _fails(bad_api, response, "corrupt_model", "ONNX", "truncated or damaged")


def test_data_of_the_wrong_shape_fails_naming_both_shapes(bad_api: Api, models: dict[str, Path]) -> None:
    grey = random_data(32, shape=(1, 8, 8))
    _fails(
        bad_api,
        submit(bad_api, models["cnn"], dataset=grey),
        "invalid_calibration",
        "(N, 3, 8, 8)",
        "(2, 1, 8, 8)",
    )


def test_data_with_nan_or_inf_fails(bad_api: Api, models: dict[str, Path]) -> None:
    x = np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32)
    x[7, 1, 2, 3] = np.inf
    _fails(
        bad_api,
        submit(bad_api, models["cnn"], dataset=npz_bytes(x)),
        "dataset_nan",
        "NaN or infinite",
        "sample 7",
    )


def test_labels_out_of_range_fail(bad_api: Api, models: dict[str, Path]) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((32, 3, 8, 8)).astype(np.float32), rng.integers(0, 20, 32)
    _fails(
        bad_api, submit(bad_api, models["cnn"], dataset=npz_bytes(x, y)), "labels_out_of_range", "10 classes"
    )


def test_fine_tuning_asked_without_labels_fails_and_points_to_distillation(
    bad_api: Api, models: dict[str, Path]
) -> None:
    config = '{"recovery": {"mode": "finetune", "steps": 2}}'
    unlabelled = random_data(32, classes=None)
    _fails(
        bad_api,
        submit(bad_api, models["cnn"], dataset=unlabelled, config=config),
        "invalid_labels",
        "distill",
    )
    stored = bad_api.client.post("/datasets", files={"file": ("u.npz", unlabelled)}).json()
    refused = submit(
        bad_api, models["cnn"], dataset_id=stored["id"], config=config
    )  # known at once for a stored one
    assert "distill" in assert_problem(refused, 422, "validation-error")["detail"]


def test_an_unreachable_target_names_the_layers_that_limit_it(bad_api: Api, models: dict[str, Path]) -> None:
    response = submit(bad_api, models["group_norm"], dataset=random_data(32), config='{"flops_ratio": 0.3}')
    _fails(bad_api, response, "target_unreachable", "cannot be met", "layers that cannot be pruned: 2")


def test_a_model_that_exhausts_the_sandbox_memory_fails_its_job(
    bad_api: Api, models: dict[str, Path]
) -> None:
    _fails(bad_api, submit(bad_api, models["hungry"], dataset=random_data(8)), "out_of_memory", "memory")


def test_bad_config_is_422(bad_api: Api, models: dict[str, Path]) -> None:
    for config, loc in [
        ('{"flops_ratio": 0.5, "prune_harder": true}', ["body", "config", "prune_harder"]),
        ('{"flops_ratio": 0}', ["body", "config", "flops_ratio"]),
        ('{"calibration_samples": 0}', ["body", "config", "calibration_samples"]),
        ('{"output_format": "tflite"}', ["body", "config", "output_format"]),
    ]:
        body = assert_problem(
            submit(bad_api, models["cnn"], dataset=random_data(8), config=config), 422, "validation-error"
        )
        assert body["errors"][0]["loc"] == loc, (config, body)


def test_a_model_with_nothing_to_prune_succeeds_and_says_so_and_the_service_goes_on(
    bad_api: Api, models: dict[str, Path]
) -> None:
    response = submit(bad_api, models["linear"], dataset=random_data(32))
    outcome, job = run_job(bad_api, response.json()["id"])
    assert outcome == "succeeded", job["error"]
    assert job["result"]["layers"] == []
    assert any("nothing in this model can be pruned" in w for w in job["result"]["warnings"])
    assert job["result"]["compressed"]["params"] == job["result"]["original"]["params"]
    ok = submit(bad_api, models["cnn"], dataset=random_data(32))  # after all the failures above
    outcome, job = run_job(bad_api, ok.json()["id"])
    assert (
        outcome == "succeeded" and job["result"]["compressed"]["flops"] < job["result"]["original"]["flops"]
    )

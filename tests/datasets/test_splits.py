"""Calibration / evaluation splits: sources, disjointness, seeding and counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.datasets import EmptyDatasetError, SplitError, make_splits, open_dataset
from tests.datasets.builders import image_folder, write_archive


@pytest.fixture
def npz(tmp_path: Path) -> Path:
    x = np.arange(100, dtype=np.float32).reshape(100, 1)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(100) % 4)
    return tmp_path / "d.npz"


def test_held_out_fraction_is_disjoint_and_seeded(npz: Path) -> None:
    with open_dataset(npz) as ds:
        plan = make_splits(ds, calibration_samples=50, eval_fraction=0.2, seed=7)
        again = make_splits(ds, calibration_samples=50, eval_fraction=0.2, seed=7)
        other = make_splits(ds, calibration_samples=50, eval_fraction=0.2, seed=8)
        x_calib = np.concatenate([x.numpy() for x, _ in ds.iter_batches(plan.calibration, 16)]).ravel()
    assert plan.report() == {
        "calibration_samples": 50,
        "calibration_requested": 50,
        "calibration_split": None,
        "evaluation_samples": 20,
        "evaluation_source": "held_out",
        "evaluation_split": None,
    }
    assert len(np.intersect1d(plan.calibration, plan.evaluation)) == 0
    assert len(np.unique(plan.calibration)) == 50
    np.testing.assert_array_equal(plan.calibration, again.calibration)
    np.testing.assert_array_equal(plan.evaluation, again.evaluation)
    assert not np.array_equal(plan.calibration, other.calibration)
    np.testing.assert_array_equal(x_calib, plan.calibration)  # x[i] == i: the batches hold those samples


def test_calibration_takes_what_there_is(npz: Path) -> None:
    with open_dataset(npz) as ds:
        plan = make_splits(ds, calibration_samples=1000, eval_fraction=0.1)
        none = make_splits(ds, calibration_samples=10)
    assert (len(plan.calibration), len(plan.evaluation)) == (90, 10)
    assert plan.report()["calibration_requested"] == 1000
    assert none.evaluation_source == "none" and len(none.evaluation) == 0 and len(none.calibration) == 10


def test_archive_test_split_is_the_evaluation_set(tmp_path: Path) -> None:
    files, _ = image_folder(
        np.random.default_rng(0), {"train": {"a": 6, "b": 6}, "test": {"a": 2, "b": 3}}, size=(4, 4)
    )
    with open_dataset(write_archive(tmp_path / "d.zip", files, "zip")) as ds:
        plan = make_splits(ds, calibration_samples=5, eval_fraction=0.5, seed=1)
        test_idx, train_idx = ds.split_indices()["test"], ds.split_indices()["train"]
    assert (plan.evaluation_source, plan.evaluation_split, plan.calibration_split) == (
        "test_split",
        "test",
        "train",
    )
    np.testing.assert_array_equal(plan.evaluation, test_idx)
    assert set(plan.calibration) <= set(train_idx) and len(plan.calibration) == 5


def test_separate_eval_dataset(tmp_path: Path, npz: Path) -> None:
    np.savez(tmp_path / "e.npz", x=np.zeros((30, 1), np.float32))
    with open_dataset(npz) as ds, open_dataset(tmp_path / "e.npz") as eval_ds:
        plan = make_splits(ds, calibration_samples=200, eval_dataset=eval_ds, evaluation_samples=12, seed=3)
    assert plan.evaluation_source == "eval_dataset"
    assert len(plan.calibration) == 100  # all of the upload: nothing is held out of it
    assert len(plan.evaluation) == 12 and plan.evaluation.max() < 30


def test_splits_without_train_fall_back_to_the_rest(tmp_path: Path) -> None:
    files, _ = image_folder(np.random.default_rng(0), {"val": {"a": 3}, "calibration": {"a": 4}}, size=(4, 4))
    with open_dataset(write_archive(tmp_path / "d.tar", files, "tar")) as ds:
        plan = make_splits(ds, calibration_samples=100)
        calibration_idx = ds.split_indices()["calibration"]
    assert (plan.evaluation_split, plan.calibration_split) == ("val", "calibration")
    np.testing.assert_array_equal(plan.calibration, calibration_idx)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"calibration_samples": 0}, SplitError, "calibration_samples"),
        ({"calibration_samples": 5, "eval_fraction": 1.0}, SplitError, "eval_fraction"),
        ({"calibration_samples": 5, "eval_fraction": -0.1}, SplitError, "eval_fraction"),
        ({"calibration_samples": 5, "evaluation_samples": 0}, SplitError, "evaluation_samples"),
    ],
)
def test_bad_split_requests(npz: Path, kwargs: dict, error: type, message: str) -> None:
    with open_dataset(npz) as ds, pytest.raises(error, match=message):
        make_splits(ds, **kwargs)


def test_only_a_test_split_leaves_nothing_to_calibrate(tmp_path: Path) -> None:
    files, _ = image_folder(np.random.default_rng(0), {"test": {"a": 3}}, size=(4, 4))
    with (
        open_dataset(write_archive(tmp_path / "d.zip", files, "zip")) as ds,
        pytest.raises(EmptyDatasetError),
    ):
        make_splits(ds, calibration_samples=10)


def test_tiny_upload_cannot_hold_out(tmp_path: Path) -> None:
    np.savez(tmp_path / "one.npz", x=np.zeros((1, 2), np.float32))
    with open_dataset(tmp_path / "one.npz") as ds, pytest.raises(SplitError, match="leaves none"):
        make_splits(ds, calibration_samples=1, eval_fraction=0.5)


def test_out_of_range_indices_are_refused(npz: Path) -> None:
    with open_dataset(npz) as ds, pytest.raises(SplitError, match=r"\[0, 100\)"):
        next(ds.iter_batches([0, 100], 4))


def test_streams_are_reiterable_with_labels(npz: Path) -> None:
    with open_dataset(npz) as ds:
        plan = make_splits(ds, calibration_samples=10, seed=0)
        stream = ds.stream(plan.calibration, batch_size=4)
        inputs = stream.inputs()
        first = [x.numpy().ravel() for x in inputs]
        second = [x.numpy().ravel() for x in inputs]
        labels = stream.labels()
    assert len(stream) == len(inputs) == 3 and stream.samples == 10
    assert [len(x) for x in first] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(second))
    np.testing.assert_array_equal(np.concatenate(first), plan.calibration)
    assert labels is not None and labels.tolist() == (plan.calibration % 4).tolist()

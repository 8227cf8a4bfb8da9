"""npz and safetensors datasets: values, labels, formats by content, and refusal of bad arrays."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import save_file as save_torch

from core.datasets import (
    DatasetError,
    DatasetNaNError,
    EmptyDatasetError,
    LabelsOutOfRangeError,
    Preprocess,
    UnsupportedDatasetFormatError,
    check_labels,
    dataset_info,
    file_digest,
    open_dataset,
)
from core.errors import SpecpruneError


@pytest.fixture
def arrays() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((37, 3, 4, 4)).astype(np.float32), rng.integers(0, 5, size=37)


def read_all(ds, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray | None]:
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    for x, y in ds.iter_batches(np.arange(ds.samples), batch_size):
        assert x.dtype == torch.float32 and x.shape[0] <= batch_size
        xs.append(x.numpy())
        if y is not None:
            ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys) if ys else None


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_roundtrip(tmp_path: Path, arrays, compressed: bool) -> None:
    x, y = arrays
    path = tmp_path / "data.bin"  # the name says nothing: the content decides
    (np.savez_compressed if compressed else np.savez)(path, x=x, y=y)
    path = path.with_suffix(".bin.npz")
    work = tmp_path / "work"
    work.mkdir()
    with open_dataset(path, work_dir=work) as ds:
        assert (ds.format, ds.samples, ds.input_shape, ds.has_labels) == ("npz", 37, (3, 4, 4), True)
        assert ds.classes == int(y.max()) + 1
        assert ds.splits == frozenset()
        got_x, got_y = read_all(ds)
        np.testing.assert_array_equal(got_x, x)
        np.testing.assert_array_equal(got_y, y)
        picked_x, picked_y = ds.read(np.array([5, 1, 30]))
        np.testing.assert_array_equal(picked_x, x[[5, 1, 30]])
        np.testing.assert_array_equal(picked_y, y[[5, 1, 30]])
        assert bool(list(work.iterdir())) == compressed  # only a deflated x is extracted
        info = dataset_info(path, ds)
    assert list(work.iterdir()) == []  # the private extraction folder is gone after close
    assert info == {
        "format": "npz",
        "samples": 37,
        "input_shape": [3, 4, 4],
        "classes": 5,
        "sha256": file_digest(path)[0],
        "bytes": path.stat().st_size,
    }


def test_npz_without_labels_and_float64_x(tmp_path: Path) -> None:
    x = np.linspace(-1, 1, 20).reshape(10, 2)  # float64: read back as float32
    np.savez(tmp_path / "d.npz", x=x)
    with open_dataset(tmp_path / "d.npz") as ds:
        assert not ds.has_labels and ds.classes is None
        got_x, got_y = read_all(ds, batch_size=3)
    assert got_y is None and got_x.dtype == np.float32
    np.testing.assert_allclose(got_x, x.astype(np.float32))


def test_safetensors_roundtrip(tmp_path: Path, arrays) -> None:
    x, y = arrays
    save_numpy({"x": x, "y": y.astype(np.int32)}, str(tmp_path / "d.safetensors"))
    with open_dataset(tmp_path / "d.safetensors") as ds:
        assert (ds.format, ds.samples, ds.input_shape, ds.classes) == ("safetensors", 37, (3, 4, 4), 5)
        got_x, got_y = read_all(ds)
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_y, y)


def test_safetensors_bfloat16_is_widened_exactly(tmp_path: Path) -> None:
    x = torch.randn(6, 5).to(torch.bfloat16)
    save_torch({"x": x}, str(tmp_path / "d.safetensors"))
    with open_dataset(tmp_path / "d.safetensors") as ds:
        got_x, _ = read_all(ds, batch_size=4)
    np.testing.assert_array_equal(got_x, x.float().numpy())


def test_bfloat16_nan_is_found(tmp_path: Path) -> None:
    x = torch.zeros(4, 3, dtype=torch.bfloat16)
    x[2, 1] = float("nan")
    save_torch({"x": x}, str(tmp_path / "d.safetensors"))
    with pytest.raises(DatasetNaNError, match="sample 2"):
        open_dataset(tmp_path / "d.safetensors")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_x_is_refused_with_the_sample(tmp_path: Path, bad: float) -> None:
    x = np.zeros((50, 4), dtype=np.float32)
    x[33, 2] = bad
    np.savez(tmp_path / "d.npz", x=x)
    with pytest.raises(DatasetNaNError, match="sample 33") as err:
        open_dataset(tmp_path / "d.npz")
    assert err.value.code == "dataset_nan" and isinstance(err.value, SpecpruneError)


def test_object_array_is_refused_without_unpickling(tmp_path: Path) -> None:
    x = np.empty(3, dtype=object)
    x[:] = [{"a": 1}, [2], "3"]
    np.savez(tmp_path / "d.npz", x=x)  # numpy pickles object arrays into the npz
    with pytest.raises(DatasetError, match="object array") as err:
        open_dataset(tmp_path / "d.npz")
    assert err.value.code == "invalid_dataset"


def test_object_labels_are_refused(tmp_path: Path) -> None:
    y = np.empty(2, dtype=object)
    y[:] = [1, 2]
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3), np.float32), y=y)
    with pytest.raises(DatasetError, match="pickle"):
        open_dataset(tmp_path / "d.npz")


@pytest.mark.parametrize(
    ("contents", "error", "message"),
    [
        ({"x": np.zeros((0, 3), np.float32)}, EmptyDatasetError, "no samples"),
        ({"y": np.zeros(3, np.int64)}, DatasetError, "no array named 'x'"),
        ({"x": np.zeros((4, 3), np.uint8)}, DatasetError, "float32"),
        ({"x": np.zeros(4, np.float32)}, DatasetError, "shape"),
        ({"x": np.zeros((4, 3), np.float32), "y": np.zeros(3, np.int64)}, DatasetError, "3 labels"),
        ({"x": np.zeros((4, 3), np.float32), "y": np.zeros(4, np.float32)}, DatasetError, "integer"),
        ({"x": np.zeros((4, 3), np.float32), "y": np.array([0, 1, -1, 2])}, LabelsOutOfRangeError, ">= 0"),
    ],
)
def test_bad_arrays_are_refused(tmp_path: Path, contents, error, message) -> None:
    np.savez(tmp_path / "d.npz", **contents)
    with pytest.raises(error, match=message):
        open_dataset(tmp_path / "d.npz")


def test_labels_beyond_the_models_classes(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3), np.float32), y=np.array([0, 1, 9, 2]))
    with open_dataset(tmp_path / "d.npz") as ds:
        check_labels(ds, num_classes=10)
        with pytest.raises(LabelsOutOfRangeError, match=r"0\.\.9") as err:
            check_labels(ds, num_classes=5)
    assert err.value.code == "labels_out_of_range"


def test_safetensors_without_x_and_corrupt_header(tmp_path: Path) -> None:
    save_numpy({"images": np.zeros((2, 2), np.float32)}, str(tmp_path / "a.safetensors"))
    with pytest.raises(DatasetError, match="no tensor named 'x'"):
        open_dataset(tmp_path / "a.safetensors")
    good = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "b.safetensors").write_bytes(good[:8] + b"{" + b"\xff" * (len(good) - 9))
    with pytest.raises(DatasetError, match="JSON"):
        open_dataset(tmp_path / "b.safetensors")


def test_unrecognised_content(tmp_path: Path) -> None:
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "text.npz").write_bytes(b"just some text, not a dataset\n")
    (tmp_path / "npz.gz").write_bytes(gzip.compress(b"not a tar" * 100))
    for name in ("empty.npz", "text.npz", "npz.gz"):
        with pytest.raises(UnsupportedDatasetFormatError) as err:
            open_dataset(tmp_path / name)
        assert err.value.code == "unsupported_dataset_format"


def test_preprocess_is_refused_for_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3), np.float32))
    with pytest.raises(DatasetError, match="image archives"):
        open_dataset(tmp_path / "d.npz", preprocess=Preprocess(resize=4))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint16])
def test_token_ids_are_read_as_int64(tmp_path: Path, dtype: type) -> None:
    ids = np.arange(24).reshape(4, 6).astype(dtype)
    np.savez(tmp_path / "d.npz", x=ids)
    with open_dataset(tmp_path / "d.npz") as ds:
        x, y = ds.read(np.array([2, 0]))
    assert x.dtype == np.int64 and np.array_equal(x, ids[[2, 0]]) and y is None

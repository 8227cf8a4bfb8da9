"""The real upload: ``../shared/data/cifar10/cifar10-jpg.tar.gz`` (train/<class>/*.jpg, test/<class>/*.jpg).

Opened as a worker opens a validated upload (``check_images=False``: the header scan is covered on small
archives); a few hundred images are decoded through the dataset and compared with an independent
Pillow decode of the same archive members.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.datasets import Dataset, Preprocess, dataset_info, make_splits, open_dataset

ARCHIVE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cifar10" / "cifar10-jpg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dataset]:
    assert ARCHIVE.exists(), (
        f"the shared CIFAR-10 archive is missing: {ARCHIVE} (see ../shared/data/README.md)"
    )
    work = tmp_path_factory.mktemp("cifar-work")
    with open_dataset(ARCHIVE, Preprocess(mean=MEAN, std=STD), work_dir=work, check_images=False) as ds:
        yield ds
    assert list(work.iterdir()) == []


def test_layout_classes_and_splits(cifar: Dataset) -> None:
    assert (cifar.format, cifar.samples, cifar.input_shape) == ("tar.gz", 60_000, (3, 32, 32))
    assert cifar.classes == CLASSES
    assert cifar.split_counts() == {"test": 10_000, "train": 50_000}
    labels = cifar.labels()
    assert labels is not None
    for split, per_class in (("train", 5_000), ("test", 1_000)):
        counts = np.bincount(labels[cifar.split_indices()[split]], minlength=10)
        assert counts.tolist() == [per_class] * 10
    info = dataset_info(ARCHIVE, cifar)
    assert info["samples"] == 60_000 and info["bytes"] == ARCHIVE.stat().st_size and len(info["sha256"]) == 64


def test_decoded_pixels_match_an_independent_decode(cifar: Dataset) -> None:
    rng = np.random.default_rng(0)
    splits = cifar.split_indices()
    picked = np.concatenate(
        [rng.choice(splits["train"], 150, replace=False), rng.choice(splits["test"], 150, replace=False)]
    )
    names = {cifar.source_name(int(i)): n for n, i in enumerate(picked)}  # type: ignore[attr-defined]
    expected = np.zeros((len(picked), 3, 32, 32), dtype=np.float32)
    with tarfile.open(ARCHIVE, "r:gz") as tar:
        for member in tar:
            if member.name in names:
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0
                expected[names[member.name]] = ((pixels - MEAN) / STD).transpose(2, 0, 1)
    got_x, got_y = [], []
    for x, y in cifar.iter_batches(picked, batch_size=64):
        got_x.append(x.numpy())
        got_y.append(y.numpy())  # type: ignore[union-attr]
    np.testing.assert_allclose(np.concatenate(got_x), expected, atol=1e-5)
    labels = np.concatenate(got_y)
    assert [CLASSES[label] for label in labels] == [n.split("/")[1] for n in names]


def test_test_split_evaluates_and_train_calibrates(cifar: Dataset) -> None:
    plan = make_splits(cifar, calibration_samples=512, eval_fraction=0.1, seed=0)
    assert plan.report()["evaluation_source"] == "test_split"
    assert (len(plan.calibration), len(plan.evaluation)) == (512, 10_000)
    assert set(plan.calibration) <= set(cifar.split_indices()["train"])

"""``Dataset``: what every reader returns -- sizes, labels, splits and lazy batches."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypedDict

import numpy as np
import torch

from core.datasets.batches import Batch, BatchStream
from core.datasets.errors import LabelsOutOfRangeError, SplitError


class DatasetInfo(TypedDict):
    """What the API reports about a stored dataset."""

    format: str
    samples: int
    input_shape: list[int]
    classes: list[str] | int | None
    sha256: str
    bytes: int


class Dataset(ABC):
    """An opened dataset. Subclasses read samples lazily, so memory follows the batch, not the file.

    - ``format``: the detected format (``npz``, ``safetensors``, ``zip``, ``tar``, ``tar.gz``, ...).
    - ``samples``: number of samples over all splits.
    - ``input_shape``: per-sample shape, without the batch dimension.
    - ``classes``: sorted class names (image folders), a class count (arrays with ``y``), or None.
    - ``splits``: named splits found in the file (e.g. ``{'train', 'test'}``); empty when there are none.

    Use as a context manager (or call ``close``) to release files and private extraction directories.
    """

    format: str
    input_shape: tuple[int, ...]
    classes: list[str] | int | None

    @property
    @abstractmethod
    def samples(self) -> int:
        """Number of samples over all splits."""

    @abstractmethod
    def labels(self) -> np.ndarray | None:
        """All labels as int64 (N,), or None when the dataset has none. Small: one integer per sample."""

    @abstractmethod
    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Samples at ``indices`` (in that order): x float32 (B, *input_shape), or int64 for integer arrays
        (token ids); y int64 (B,) or None."""

    @property
    def has_labels(self) -> bool:
        return self.labels() is not None

    @property
    def splits(self) -> frozenset[str]:
        """Named splits in the file; array formats have none."""
        return frozenset(self.split_indices())

    def split_indices(self) -> dict[str, np.ndarray]:
        """Sample indices (sorted int64) per named split; empty for files without splits."""
        return {}

    def split_counts(self) -> dict[str, int]:
        """Samples per named split, for reports."""
        return {name: len(idx) for name, idx in sorted(self.split_indices().items())}

    def iter_batches(self, indices: Sequence[int] | np.ndarray, batch_size: int) -> Iterator[Batch]:
        """``(x, y)`` tensors for ``indices`` in order, ``batch_size`` at a time, decoded batch by batch."""
        order = self._checked_indices(indices)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(order), batch_size):
            x, y = self.read(order[start : start + batch_size])
            yield torch.from_numpy(x), None if y is None else torch.from_numpy(y)

    def stream(self, indices: Sequence[int] | np.ndarray, batch_size: int) -> BatchStream:
        """A re-iterable view of ``iter_batches`` (an engine may pass over calibration data twice)."""
        return BatchStream(self, self._checked_indices(indices), batch_size)

    @abstractmethod
    def close(self) -> None:
        """Release open files and private directories; the dataset is unusable afterwards."""

    def __enter__(self) -> Dataset:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _checked_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        order = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(order) and (order.min() < 0 or order.max() >= self.samples):
            raise SplitError(
                f"sample indices must lie in [0, {self.samples}), got {order.min()}..{order.max()}"
            )
        return order


def check_labels(dataset: Dataset, num_classes: int) -> None:
    """Refuse labels outside ``[0, num_classes)`` -- e.g. a 10-class model evaluated on 100 classes."""
    labels = dataset.labels()
    if labels is None or len(labels) == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise LabelsOutOfRangeError(
            f"labels span {low}..{high}, but the model predicts {num_classes} classes (labels must be in "
            f"0..{num_classes - 1})"
        )
    if isinstance(dataset.classes, list) and len(dataset.classes) > num_classes:
        raise LabelsOutOfRangeError(
            f"the dataset has {len(dataset.classes)} class folders but the model predicts {num_classes} classes"
        )


def file_digest(path: Path, chunk: int = 1 << 20) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def dataset_info(path: Path, dataset: Dataset) -> DatasetInfo:
    """The API's description of ``dataset`` opened from ``path``."""
    sha256, size = file_digest(path)
    return DatasetInfo(
        format=dataset.format,
        samples=dataset.samples,
        input_shape=list(dataset.input_shape),
        classes=dataset.classes,
        sha256=sha256,
        bytes=size,
    )

"""Batches: ``(x, y)`` tensor pairs, and re-iterable streams of them over fixed indices.

An engine may pass over its calibration data more than once (statistics, then reconstruction), so the
streams here are iterables that start again from disk on every ``iter()``, never one-shot generators.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

Batch = tuple[torch.Tensor, torch.Tensor | None]


class BatchSource(Protocol):
    """Anything that yields batches for given indices and knows its labels (a ``Dataset``)."""

    def iter_batches(self, indices: Sequence[int] | np.ndarray, batch_size: int) -> Iterator[Batch]: ...

    def labels(self) -> np.ndarray | None: ...


class BatchStream:
    """``(x, y)`` batches of fixed indices, ``batch_size`` at a time; each ``iter()`` reads them afresh."""

    def __init__(self, dataset: BatchSource, indices: np.ndarray, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.indices = indices
        self.batch_size = batch_size

    @property
    def samples(self) -> int:
        return len(self.indices)

    def __len__(self) -> int:
        """Number of batches."""
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self.dataset.iter_batches(self.indices, self.batch_size)

    def inputs(self) -> InputStream:
        """The same batches without labels: the ``Iterable[Tensor]`` calibration form of ``core.compress``."""
        return InputStream(self)

    def labels(self) -> torch.Tensor | None:
        """All labels of these indices at once (one integer per sample), or None without labels."""
        labels = self.dataset.labels()
        return None if labels is None else torch.from_numpy(labels[self.indices])


class InputStream:
    """Re-iterable ``x`` tensors of a ``BatchStream``."""

    def __init__(self, batches: BatchStream):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for x, _ in self.batches:
            yield x

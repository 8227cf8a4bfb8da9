"""Calibration and evaluation data: checked, capped, and cut into batches the model accepts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from core.errors import CalibrationError, LabelError

Batch = tuple[torch.Tensor, ...]
InputSpec = tuple[tuple[int | None, ...], torch.dtype]


@dataclass
class Samples:
    """Model inputs (one tensor per model input, all with the same first dim) and optional labels."""

    inputs: Batch
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.inputs[0].shape[0]

    def batches(self, size: int) -> list[Batch]:
        n = len(self)
        return [tuple(x[i : i + size] for x in self.inputs) for i in range(0, n, size)]

    def take(self, index: torch.Tensor) -> Samples:
        labels = self.labels[index] if self.labels is not None else None
        return Samples(tuple(x[index] for x in self.inputs), labels)


def _as_tuple(batch: object) -> Batch:
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, list | tuple) and batch and all(isinstance(x, torch.Tensor) for x in batch):
        return tuple(batch)
    raise CalibrationError(
        f"calibration batches must be tensors or tuples of tensors, got {type(batch).__name__}"
    )


def gather(data: torch.Tensor | Iterable, limit: int | None = None) -> Samples:
    """Concatenate a tensor or an iterable of batches into Samples (stopping once ``limit`` is reached)."""
    if isinstance(data, torch.Tensor):
        return Samples((data,))
    parts: list[Batch] = []
    count = 0
    for batch in data:
        b = _as_tuple(batch)
        parts.append(b)
        count += b[0].shape[0]
        if limit is not None and count >= limit:
            break
    if not parts:
        raise CalibrationError("calibration data is empty")
    if len({len(p) for p in parts}) != 1:
        raise CalibrationError("every calibration batch must hold the same number of model inputs")
    return Samples(tuple(torch.cat([p[i] for p in parts]) for i in range(len(parts[0]))))


def check(samples: Samples, specs: list[InputSpec], what: str = "calibration") -> None:
    """Refuse data the model cannot take: wrong count, rank, static dims, dtype kind, NaN/Inf, empty."""
    if len(samples) == 0:
        raise CalibrationError(f"{what} data is empty")
    if len(samples.inputs) != len(specs):
        raise CalibrationError(
            f"the model takes {len(specs)} input(s), {what} data gives {len(samples.inputs)}"
        )
    for i, (x, (shape, dtype)) in enumerate(zip(samples.inputs, specs, strict=True)):
        want = "x".join("N" if d is None else str(d) for d in shape)
        if x.dim() != len(shape) or any(
            d is not None and d != s for d, s in zip(shape[1:], x.shape[1:], strict=True)
        ):
            raise CalibrationError(
                f"input {i}: the model expects shape {want}, {what} data has {'x'.join(map(str, x.shape))}"
            )
        if dtype.is_floating_point and not x.is_floating_point():
            raise CalibrationError(f"input {i}: the model expects {dtype}, {what} data is {x.dtype}")
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise CalibrationError(f"input {i}: {what} data contains NaN or Inf values")
    if samples.labels is not None:
        if samples.labels.shape[:1] != (len(samples),):
            raise LabelError(f"{len(samples.labels)} labels for {len(samples)} {what} samples")
        if samples.labels.is_floating_point():
            raise LabelError("labels must be integer class indices")


def conform(samples: Samples, specs: list[InputSpec]) -> Samples:
    """Cast inputs to the dtypes the model was exported with."""
    return Samples(
        tuple(x.to(dtype) for x, (_, dtype) in zip(samples.inputs, specs, strict=True)), samples.labels
    )


def subsample(samples: Samples, limit: int, seed: int) -> Samples:
    """At most ``limit`` samples, drawn without replacement by ``seed`` (order kept)."""
    n = len(samples)
    if n <= limit:
        return samples
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(n, generator=gen)[:limit].sort().values
    return samples.take(index)


def batch_size(specs: list[InputSpec], requested: int) -> int:
    """A static batch dim in the exported program fixes the batch size; otherwise ``requested``."""
    static = specs[0][0][0] if specs and specs[0][0] else None
    return static if static is not None else requested

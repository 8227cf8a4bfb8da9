"""Values flowing through a converted ONNX graph: tensors, or small integer vectors for shape math.

ONNX computes shapes with tensors (``Shape`` -> ``Gather`` -> ``Concat`` -> ``Reshape``). Under
``torch.export`` those must stay Python integers (``SymInt`` for a dynamic batch) or the program
would depend on tensor data, so small integer constants and shape results travel as :class:`Ints`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.formats.errors import UnsupportedFormatError

MAX_INTS = 1024
"""Integer constants up to this many elements are kept as :class:`Ints` rather than tensors."""

ONNX_DTYPES: dict[int, torch.dtype] = {
    1: torch.float32,
    2: torch.uint8,
    3: torch.int8,
    5: torch.int16,
    6: torch.int32,
    7: torch.int64,
    9: torch.bool,
    10: torch.float16,
    11: torch.float64,
    16: torch.bfloat16,
}


@dataclass(frozen=True)
class Ints:
    """A rank-0 (``scalar``) or rank-1 integer tensor whose entries are known while tracing:
    Python ints, or ``SymInt`` for dynamic dimensions."""

    values: tuple[Any, ...]
    scalar: bool = False

    def __post_init__(self) -> None:
        assert not self.scalar or len(self.values) == 1, "a scalar Ints holds exactly one value"


Value = torch.Tensor | Ints | None


def from_numpy(array: np.ndarray) -> Ints | torch.Tensor:
    """A constant as :class:`Ints` when it is a small integer scalar/vector, else a tensor."""
    if array.dtype.kind in "iu" and array.ndim <= 1 and array.size <= MAX_INTS:
        return Ints(tuple(int(v) for v in array.reshape(-1)), scalar=array.ndim == 0)
    return torch.from_numpy(np.ascontiguousarray(array).copy())


def to_tensor(value: Value) -> torch.Tensor:
    """The value as a tensor (an :class:`Ints` becomes an int64 tensor)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Ints):
        if not all(isinstance(v, int) for v in value.values):
            raise UnsupportedFormatError(
                "the ONNX graph feeds a dynamic dimension into tensor arithmetic, which is not supported."
            )
        tensor = torch.tensor(value.values, dtype=torch.int64)
        return tensor.reshape(()) if value.scalar else tensor
    raise UnsupportedFormatError("the ONNX graph leaves a required input empty.")


def to_ints(value: Value, what: str) -> Ints:
    """The value as :class:`Ints`; a tensor computed from data cannot be a shape under export."""
    if isinstance(value, Ints):
        return value
    raise UnsupportedFormatError(f"the ONNX graph computes {what} from tensor data, which is not supported.")


def ints_list(value: Value, what: str) -> list[Any]:
    return list(to_ints(value, what).values)


def ints_binary(fn: Callable[[Any, Any], Any], a: Ints, b: Ints) -> Ints:
    """Element-wise ``fn`` with ONNX broadcasting of length-1 operands."""
    left, right = list(a.values), list(b.values)
    if len(left) == 1 and len(right) > 1:
        left = left * len(right)
    if len(right) == 1 and len(left) > 1:
        right = right * len(left)
    if len(left) != len(right):
        raise UnsupportedFormatError("the ONNX graph combines integer vectors of different lengths.")
    return Ints(tuple(fn(x, y) for x, y in zip(left, right, strict=True)), scalar=a.scalar and b.scalar)


def ints_index(value: Ints, index: Ints) -> Ints:
    """``Gather`` on an integer vector."""
    size = len(value.values)
    picked = tuple(value.values[i + size if i < 0 else i] for i in index.values)
    return Ints(picked, scalar=index.scalar)

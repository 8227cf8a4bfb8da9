"""The one verb: ``compress(program, calibration, config) -> CompressionResult``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from core.config import CompressionConfig

Progress = Callable[[str, float], None]


@dataclass
class CompressionResult:
    program: torch.export.ExportedProgram
    report: dict[str, Any]


def compress(
    program: torch.export.ExportedProgram,
    calibration: torch.Tensor | Iterable[torch.Tensor],
    config: CompressionConfig | None = None,
    labels: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> CompressionResult:
    raise NotImplementedError("engine being written")

"""The weights alone, as safetensors: every parameter, buffer and tensor constant of a program."""

from __future__ import annotations

import os

import torch
from safetensors.torch import save_file
from torch.export import ExportedProgram


def program_tensors(program: ExportedProgram) -> dict[str, torch.Tensor]:
    """Parameters and buffers by their flattened names (``features.0.weight``), then tensor
    constants not already named, each a contiguous copy (safetensors refuses shared storage)."""
    tensors = {name: t.detach().contiguous().clone() for name, t in program.state_dict.items()}
    for name, value in program.constants.items():
        if isinstance(value, torch.Tensor) and name not in tensors:
            tensors[name] = value.detach().contiguous().clone()
    return tensors


def save_safetensors(program: ExportedProgram, path: str | os.PathLike[str]) -> None:
    """Write the program's weights to ``path`` in the safetensors format."""
    save_file(program_tensors(program), os.fspath(path), metadata={"format": "pt", "producer": "specprune"})

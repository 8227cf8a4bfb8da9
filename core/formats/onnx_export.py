"""ExportedProgram -> ONNX with the dynamo exporter, weights inside the file, batch kept dynamic."""

from __future__ import annotations

import contextlib
import io
import os

import torch
from torch.export import ExportedProgram

from core.formats.program import user_input_nodes

BATCH_AXIS_NAME = "batch"


def save_onnx(program: ExportedProgram, path: str | os.PathLike[str]) -> None:
    """Write ``program`` as a single self-contained ONNX file (no external data). A dynamic leading
    input dimension stays symbolic and is named ``batch``."""
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress lines
        onnx_program = torch.onnx.export(program, (), dynamo=True, external_data=False, verbose=False)
    assert onnx_program is not None
    batch = _batch_symbol(program)
    if batch is not None:
        onnx_program.rename_axes({batch: BATCH_AXIS_NAME})
    onnx_program.save(os.fspath(path), external_data=False)


def _batch_symbol(program: ExportedProgram) -> str | None:
    """The name of the symbol for the first input's leading dimension, when it is dynamic."""
    nodes = user_input_nodes(program)
    if not nodes:
        return None
    value = nodes[0].meta.get("val")
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return None
    first = value.shape[0]
    return str(first) if isinstance(first, torch.SymInt) else None

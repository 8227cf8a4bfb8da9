"""ONNX -> ``torch.export.ExportedProgram``: our own converter to standard torch modules.

The graph is read with the ``onnx`` protobuf classes (parsing runs no code), refused when it points
at external data or uses operators outside :data:`core.formats.onnx_module.SUPPORTED_OPS`, rewritten
(``Gemm``/``MatMul`` + bias -> ``Linear``, erf-GELU -> ``Gelu``), built as an :class:`OnnxModule`,
exported with a dynamic batch dimension when the ONNX input's first dimension is symbolic, and finally
checked against onnxruntime on the same inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.export import ExportedProgram

from core.errors import CalibrationError, SpecpruneError
from core.formats.errors import (
    CorruptModelError,
    ExampleInputRequiredError,
    UnsupportedFormatError,
    first_line,
)
from core.formats.onnx_graph import GraphSpec, fuse_erf_gelu, fuse_linear, read_graph
from core.formats.onnx_module import SUPPORTED_OPS, OnnxModule
from core.formats.onnx_values import ONNX_DTYPES
from core.formats.program import export_module, input_shapes, run_program, with_batch

_EXAMPLE_BATCH = 2
_ATOL, _RTOL = 1e-4, 1e-3


def load_onnx(
    model: Any, *, example_inputs: Sequence[torch.Tensor] | None = None, verify: bool = True
) -> ExportedProgram:
    """The program for an ``onnx.ModelProto``. ``example_inputs`` fill symbolic dimensions other than
    the batch (and must match the static ones); ``verify`` compares with onnxruntime."""
    graph = read_graph(model, SUPPORTED_OPS)
    fuse_linear(graph)
    fuse_erf_gelu(graph)
    module = OnnxModule(graph).eval()
    inputs, dynamic_dims = _export_inputs(graph, example_inputs)
    try:
        program = export_module(module, inputs, dynamic_dims)
    except SpecpruneError:
        raise
    except Exception as exc:  # torch.export raises many error types
        raise UnsupportedFormatError(
            f"the ONNX graph could not be converted to a torch program ({type(exc).__name__}: {first_line(exc)})."
        ) from exc
    if verify:
        verify_with_onnxruntime(model, program, inputs)
    return program


def _export_inputs(
    graph: GraphSpec, given: Sequence[torch.Tensor] | None
) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Tensors to trace with, and per input the dimensions that are symbolic in the ONNX file."""
    if given is not None and len(given) != len(graph.inputs):
        raise CalibrationError(f"the ONNX model takes {len(graph.inputs)} inputs, {len(given)} were given.")
    tensors: list[torch.Tensor] = []
    dynamic: list[list[int]] = []
    generator = torch.Generator().manual_seed(0)
    for index, (name, elem_type, dims) in enumerate(graph.inputs):
        example = given[index] if given is not None else None
        shape = _input_shape(name, dims, example)
        dtype = ONNX_DTYPES.get(elem_type)
        if dtype is None:
            raise UnsupportedFormatError(
                f"the ONNX input {name!r} has element type {elem_type}, which is not supported."
            )
        if example is not None and tuple(example.shape) == tuple(shape):
            tensors.append(example.detach().to(dtype))
        elif dtype.is_floating_point:
            tensors.append(torch.randn(shape, generator=generator, dtype=dtype))
        else:
            tensors.append(torch.zeros(shape, dtype=dtype))
        dynamic.append([i for i, d in enumerate(dims or []) if d is None])
    return tensors, dynamic


def _input_shape(name: str, dims: list[int | None] | None, example: torch.Tensor | None) -> list[int]:
    if example is None:
        if dims is None or any(d is None for d in dims[1:]):
            raise ExampleInputRequiredError(
                f"the ONNX input {name!r} has dimensions {dims} that are not fixed in the file.",
                "Pass an example input with the shape the model takes.",
            )
        return [(_EXAMPLE_BATCH if d is None else d) for d in dims]
    if dims is None:
        return list(example.shape)
    if len(dims) != example.dim() or any(
        d is not None and d != s for d, s in zip(dims[1:], example.shape[1:], strict=True)
    ):
        raise CalibrationError(
            f"the ONNX input {name!r} takes shape {_show(dims)}, the data has shape {tuple(example.shape)}."
        )
    return [s if d is None else d for d, s in zip(dims, example.shape, strict=True)]


def verify_with_onnxruntime(model: Any, program: ExportedProgram, inputs: Sequence[torch.Tensor]) -> None:
    """The converted program must match onnxruntime on ``inputs`` (and on another batch size when the
    batch is dynamic); a mismatch means the conversion is not faithful and is refused."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise CorruptModelError(f"onnxruntime cannot load the model ({first_line(exc)}).", hint="") from exc
    batches = [list(inputs)]
    if inputs and inputs[0].dim() > 0 and _has_dynamic_batch(program):
        batches.append(list(with_batch(inputs, inputs[0].shape[0] + 1)))
    for batch in batches:
        feeds = {arg.name: t.numpy() for arg, t in zip(session.get_inputs(), batch, strict=True)}
        try:
            expected = session.run(None, feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CorruptModelError(
                f"onnxruntime cannot run the model ({first_line(exc)}).", hint=""
            ) from exc
        _compare(expected, run_program(program, batch))


def _compare(expected: list[np.ndarray], actual: list[torch.Tensor]) -> None:
    if len(expected) != len(actual):
        raise UnsupportedFormatError(
            f"the converted ONNX graph returns {len(actual)} outputs, onnxruntime {len(expected)}."
        )
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        reference = torch.from_numpy(np.asarray(want))
        if tuple(reference.shape) != tuple(got.shape):
            raise UnsupportedFormatError(
                f"the converted ONNX graph's output {index} has shape {tuple(got.shape)}, onnxruntime's {tuple(reference.shape)}."
            )
        if reference.numel() == 0:
            continue
        error = (got.double() - reference.double()).abs().max().item()
        scale = reference.double().abs().max().item()
        if not error <= _ATOL + _RTOL * scale:
            raise UnsupportedFormatError(
                f"the converted ONNX graph differs from onnxruntime by {error:.3g} on output {index}; "
                "some operator is not converted faithfully.",
                hint="Please report the model; exporting it with torch.export (.pt2) avoids the conversion.",
            )


def _has_dynamic_batch(program: ExportedProgram) -> bool:
    shapes = input_shapes(program)
    return bool(shapes) and bool(shapes[0]) and shapes[0][0] is None


def _show(dims: list[int | None]) -> str:
    return "(" + ", ".join("N" if d is None else str(d) for d in dims) + ")"

"""The two verbs: ``load_model(path)`` -> :class:`LoadedModel` and ``save_model(program, path, format)``.

Loading detects the format from the content and reads it with the safe loader for that format.
Saving writes to a temporary file next to ``path``, reloads it with the format's standard runtime
(``torch.export`` program reader, ``torch.jit.load``, onnxruntime, safetensors), checks that it
reproduces the program's outputs (also at a second batch size when the batch is dynamic) and only
then moves it into place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.export import ExportedProgram

from core.errors import CalibrationError, SpecpruneError
from core.formats.archive_safety import DEFAULT_LIMITS, ArchiveLimits
from core.formats.detect import Detection, inspect_model_file
from core.formats.errors import CorruptModelError, ExportError, UnsupportedFormatError, first_line
from core.formats.onnx_export import save_onnx
from core.formats.onnx_graph import files_beside, inline_external_data
from core.formats.onnx_import import load_onnx
from core.formats.program import (
    LoadedModel,
    example_inputs,
    input_dtypes,
    input_shapes,
    run_program,
    with_batch,
)
from core.formats.pt2 import load_pt2, save_pt2
from core.formats.safetensors_out import program_tensors, save_safetensors
from core.formats.torchscript import load_torchscript, save_torchscript

OUTPUT_FORMATS: tuple[str, ...] = ("pt2", "onnx", "torchscript", "safetensors")
EXTENSIONS: dict[str, str] = {
    ".pt2": "pt2",
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".ts": "torchscript",
    ".torchscript": "torchscript",
    ".safetensors": "safetensors",
}
_TOLERANCE = {"pt2": (1e-5, 1e-5), "torchscript": (1e-5, 1e-5), "onnx": (1e-4, 1e-3)}  # (atol, rtol)

ExampleInput = torch.Tensor | Sequence[torch.Tensor] | None


def load_model(
    path: str | os.PathLike[str],
    *,
    example_input: ExampleInput = None,
    limits: ArchiveLimits = DEFAULT_LIMITS,
    external_data: bool = False,
) -> LoadedModel:
    """Read a model file of any accepted format as an ``ExportedProgram``.

    ``external_data``: read an ONNX model's external tensors from files beside it (local files the
    caller trusts as much as the model; the service never sets it, so uploads stay single files).

    ``example_input`` (a tensor, or one per model input, batch first) is needed for TorchScript and
    for ONNX files with symbolic non-batch dimensions; when given it must fit the model's input shape
    (:class:`core.errors.CalibrationError` otherwise). Refusals raise the errors of
    :mod:`core.formats.errors`, each with a hint on how to export instead.
    """
    detection = inspect_model_file(path, limits=limits)
    examples = _as_inputs(example_input)
    try:
        if external_data and detection.format == "onnx":
            inline_external_data(detection.onnx_model, files_beside(Path(path).parent))
        program = _load_detected(path, detection, examples, limits)
    except (SpecpruneError, MemoryError):
        raise
    except Exception as exc:  # anything else a damaged file provokes inside torch/onnx
        raise CorruptModelError(
            f"the {detection.format} file could not be read ({type(exc).__name__}: {first_line(exc)})."
        ) from exc
    loaded = LoadedModel.describe(program, detection.format)
    if examples is not None:
        check_inputs_fit(loaded, examples)
    return loaded


def _load_detected(
    path: str | os.PathLike[str],
    detection: Detection,
    examples: list[torch.Tensor] | None,
    limits: ArchiveLimits,
) -> ExportedProgram:
    if detection.format == "pt2":
        return load_pt2(path, archive=detection.pt2_archive, limits=limits)
    if detection.format == "onnx":
        return load_onnx(detection.onnx_model, example_inputs=examples)
    return load_torchscript(path, inventory=detection.inventory, example_inputs=examples, limits=limits)


def check_inputs_fit(loaded: LoadedModel, inputs: Sequence[torch.Tensor]) -> None:
    """Raise :class:`CalibrationError` unless ``inputs`` match the model's inputs in number, rank,
    every fixed dimension and kind (integers for a float input are refused)."""
    if len(inputs) != len(loaded.input_shapes):
        raise CalibrationError(
            f"the model takes {len(loaded.input_shapes)} inputs, {len(inputs)} were given."
        )
    for index, (shape, tensor) in enumerate(zip(loaded.input_shapes, inputs, strict=True)):
        fixed = all(want is None or want == got for want, got in zip(shape, tensor.shape, strict=False))
        if tensor.dim() != len(shape) or not fixed:
            expected = "(" + ", ".join("N" if d is None else str(d) for d in shape) + ")"
            raise CalibrationError(
                f"model input {index} takes shape {expected}, the data has shape {tuple(tensor.shape)}."
            )
    for index, (dtype, tensor) in enumerate(zip(input_dtypes(loaded.program), inputs, strict=False)):
        if dtype.is_floating_point and not tensor.is_floating_point():
            raise CalibrationError(
                f"model input {index} takes {dtype}, the data is {tensor.dtype}: integer data (token ids) "
                "fits integer inputs only; save preprocessed float32 inputs for this model."
            )


def format_from_extension(path: str | os.PathLike[str]) -> str:
    """The output format a file name asks for (``model.onnx`` -> ``'onnx'``)."""
    suffix = Path(path).suffix.lower()
    if suffix not in EXTENSIONS:
        raise UnsupportedFormatError(
            f"no output format has the extension {suffix or '(none)'!r}.",
            f"Use one of {', '.join(EXTENSIONS)}.",
        )
    return EXTENSIONS[suffix]


def save_model(
    program: ExportedProgram,
    path: str | os.PathLike[str],
    format: str,
    *,
    inputs: Sequence[torch.Tensor] | None = None,
    verify: bool = True,
) -> None:
    """Write ``program`` to ``path`` as ``'pt2'``, ``'onnx'``, ``'torchscript'`` or
    ``'safetensors'`` (weights only). ``inputs`` (default: the program's example inputs) are used to
    trace TorchScript and to verify the written file; :class:`ExportError` when it does not
    reproduce the program."""
    if format not in OUTPUT_FORMATS:
        raise UnsupportedFormatError(
            f"unknown output format {format!r}.", f"Use one of {', '.join(OUTPUT_FORMATS)}."
        )
    args = tuple(inputs) if inputs is not None else example_inputs(program)
    destination = Path(path)
    suffix = {"torchscript": ".pt"}.get(format, f".{format}")  # torch.export.save wants .pt2
    handle, temporary = tempfile.mkstemp(
        dir=destination.parent, prefix=f".{destination.name}.", suffix=suffix
    )
    os.close(handle)
    try:
        _write(program, temporary, format, args)
        if verify:
            verify_saved(program, temporary, format, args)
        os.replace(temporary, destination)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _write(program: ExportedProgram, path: str, format: str, args: tuple[torch.Tensor, ...]) -> None:
    try:
        if format == "pt2":
            save_pt2(program, path)
        elif format == "onnx":
            save_onnx(program, path)
        elif format == "torchscript":
            save_torchscript(program, path, args)
        else:
            save_safetensors(program, path)
    except Exception as exc:  # each exporter raises its own error types
        raise ExportError(
            f"writing the model as {format} failed ({type(exc).__name__}: {first_line(exc)})."
        ) from exc


def verify_saved(program: ExportedProgram, path: str, format: str, args: Sequence[torch.Tensor]) -> None:
    """Reload ``path`` with the format's runtime and compare with the program; raise ExportError."""
    if format == "safetensors":
        _verify_safetensors(program, path)
        return
    try:
        runner = _runner(path, format)
    except Exception as exc:  # the runtime refuses the file (onnxruntime has no CPU bfloat16 Conv)
        raise ExportError(
            f"the written {format} file does not load in its runtime ({first_line(exc)})."
            + (" Ask for pt2, or export the model in float32 or float16." if _bfloat16(program, args) else "")
        ) from exc
    batches = [tuple(args)]
    shapes = input_shapes(program)
    if args and args[0].dim() > 0 and shapes and shapes[0] and shapes[0][0] is None:
        batches.append(with_batch(args, args[0].shape[0] + 1))
    atol, rtol = _TOLERANCE[format]
    for batch in batches:
        expected = run_program(program, batch)
        try:
            actual = runner(batch)
        except Exception as exc:  # any runtime failure means the file is not usable
            raise ExportError(f"the written {format} file does not run ({first_line(exc)}).") from exc
        _compare(format, expected, actual, atol, rtol)


def _bfloat16(program: ExportedProgram, args: Sequence[torch.Tensor]) -> bool:
    return any(t.dtype == torch.bfloat16 for t in [*args, *program.state_dict.values()])


def _runner(path: str, format: str) -> Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]:
    if format == "pt2":
        reloaded = load_pt2(path)
        return lambda batch: run_program(reloaded, batch)
    if format == "torchscript":
        scripted = torch.jit.load(path, map_location="cpu")
        return lambda batch: _flatten(scripted(*batch))
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [arg.name for arg in session.get_inputs()]
    return lambda batch: [
        torch.from_numpy(out)
        for out in session.run(None, {n: t.numpy() for n, t in zip(names, batch, strict=True)})
    ]


def _flatten(outputs: object) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, list | tuple):
        return [t for item in outputs for t in _flatten(item)]
    return []


def _compare(
    format: str, expected: list[torch.Tensor], actual: list[torch.Tensor], atol: float, rtol: float
) -> None:
    if len(expected) != len(actual):
        raise ExportError(
            f"the written {format} file returns {len(actual)} outputs instead of {len(expected)}."
        )
    for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
        if tuple(want.shape) != tuple(got.shape):
            raise ExportError(
                f"the written {format} file's output {index} has shape {tuple(got.shape)} instead of {tuple(want.shape)}."
            )
        if not torch.allclose(got.double(), want.double(), atol=atol, rtol=rtol):
            error = (got.double() - want.double()).abs().max().item()
            raise ExportError(
                f"the written {format} file's output {index} differs from the program by {error:.3g}."
            )


def _verify_safetensors(program: ExportedProgram, path: str) -> None:
    from safetensors.torch import load_file

    written = load_file(path)
    for name, tensor in program_tensors(program).items():
        if name not in written or not torch.equal(written[name], tensor):
            raise ExportError(f"the written safetensors file lacks or alters tensor {name!r}.")


def _as_inputs(example: ExampleInput) -> list[torch.Tensor] | None:
    if example is None:
        return None
    if isinstance(example, torch.Tensor):
        return [example]
    return list(example)

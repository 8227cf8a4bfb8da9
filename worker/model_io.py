"""Model files inside the sandbox, through ``core.formats`` only: nothing else reads an uploaded model.

``load`` hands ``core.formats.load_model`` the first calibration samples as the example input
(TorchScript is traced with it, ONNX shapes are fixed by it, and it proves the data fits the model); a
model exported for a fixed batch size gets an example of exactly that size. ``save_outputs`` writes the
compressed model in the requested format and its weights as safetensors -- and, after recovery, the
pre-recovery model as well -- each reloaded with its standard runtime and checked before it is kept.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch.export import ExportedProgram

from core.errors import CalibrationError
from core.formats import ExampleInputRequiredError, LoadedModel, check_inputs_fit, load_model, save_model

OUTPUT_FORMATS = ("pt2", "onnx", "torchscript")
EXTENSIONS = {"pt2": ".pt2", "onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
EXAMPLE_SAMPLES = 2

# n -> the first n calibration samples (fewer when the data has fewer)
ExampleSource = Callable[[int], torch.Tensor]


def load(path: Path, examples: ExampleSource) -> tuple[LoadedModel, torch.Tensor]:
    """The model in ``path`` and an example batch it accepts; CalibrationError when the data does not fit."""
    example = examples(EXAMPLE_SAMPLES)
    try:
        return load_model(path, example_input=example), example
    except CalibrationError as mismatch:
        try:
            loaded = load_model(path)  # a model with a fixed batch size says which
        except ExampleInputRequiredError:
            raise mismatch from None
        batch = loaded.input_shape[0] if loaded.input_shape else None
        if batch is None or batch == example.shape[0]:
            raise mismatch from None
        example = examples(batch)
        if example.shape[0] != batch:
            raise CalibrationError(
                f"the model was exported for batches of exactly {batch} samples; the data has only "
                f"{example.shape[0]}. Export it with a dynamic batch: "
                "dynamic_shapes=({0: torch.export.Dim('batch')},)"
            ) from None
        check_inputs_fit(loaded, [example])
        return loaded, example


def resolve_output_format(requested: str, input_format: str) -> str:
    """The format to write: the input's for ``same``."""
    fmt = input_format if requested == "same" else requested
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be same or one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    return fmt


def save_outputs(
    program: ExportedProgram,
    pruned: ExportedProgram | None,
    out: Path,
    fmt: str,
    example: torch.Tensor,
) -> dict[str, str]:
    """Write the model (``fmt``) and its weights, and ``pruned`` likewise when given; returns the files
    by artifact name (``model``, ``safetensors``, ``pruned``, ``pruned_safetensors``) relative to
    ``out``'s parent."""
    out.mkdir(exist_ok=True)
    files = {"model": _save(program, out / f"model{EXTENSIONS[fmt]}", fmt, example)}
    files["safetensors"] = _save(program, out / "model.safetensors", "safetensors", example)
    if pruned is not None:
        files["pruned"] = _save(pruned, out / f"pruned{EXTENSIONS[fmt]}", fmt, example)
        files["pruned_safetensors"] = _save(pruned, out / "pruned.safetensors", "safetensors", example)
    return files


def _save(program: ExportedProgram, path: Path, fmt: str, example: torch.Tensor) -> str:
    save_model(program, path, fmt, inputs=[example])
    return f"{path.parent.name}/{path.name}"

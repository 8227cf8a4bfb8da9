"""Reading and writing models and calibration data inside the sandbox (never in the API or the worker).

``load_model`` / ``save_model`` are the one place model formats are handled, so the formats library
can replace them whole. Only ``torch.export`` programs (``.pt2``) for now; no unpickling of any kind.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from core.errors import CalibrationError, SpecpruneError, UnsupportedModelError

OUTPUT_FORMATS = ("pt2",)
EXTENSIONS = {"pt2": ".pt2", "onnx": ".onnx", "torchscript": ".pt"}


class OutputFormatError(SpecpruneError, ValueError):
    """The requested output format cannot be written."""

    code = "unsupported_output_format"


def load_model(path: Path) -> tuple[torch.export.ExportedProgram, str]:
    """The program in ``path`` and its format."""
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise UnsupportedModelError(
            f"the model could not be read as a torch.export program ({type(exc).__name__}: {exc}); "
            "export it with torch.export.export(model, example_inputs) and save it with torch.export.save"
        ) from None
    return program, "pt2"


def resolve_output_format(requested: str, input_format: str) -> str:
    """The format to write: the input's for ``same``; refused up front when it cannot be written."""
    fmt = input_format if requested == "same" else requested
    if fmt not in OUTPUT_FORMATS:
        raise OutputFormatError(
            f"output_format {fmt!r} is not available on this server; available: {', '.join(OUTPUT_FORMATS)}"
        )
    return fmt


def save_model(program: torch.export.ExportedProgram, path: Path, fmt: str) -> None:
    """Write ``program`` to ``path`` in ``fmt`` (one of OUTPUT_FORMATS)."""
    if fmt != "pt2":
        raise OutputFormatError(f"cannot write {fmt!r}")
    torch.export.save(program, str(path))


def load_calibration(path: Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, y)`` from an ``.npz`` with ``x`` (samples first) and optional integer labels ``y``."""
    if not zipfile.is_zipfile(path):
        raise CalibrationError("the dataset must be an .npz archive with an array 'x' (and optional 'y')")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise CalibrationError(f"the dataset .npz has no array 'x' (it has {sorted(archive.files)})")
            x = archive["x"]
            y = archive["y"] if "y" in archive.files else None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(f"the dataset .npz could not be read: {exc}") from None
    if x.dtype.kind not in "fiu" or x.ndim < 1 or x.shape[0] == 0:
        raise CalibrationError(f"'x' must be a non-empty numeric array, got dtype {x.dtype} shape {x.shape}")
    labels = None
    if y is not None:
        if y.dtype.kind not in "iu" or y.shape != (x.shape[0],):
            raise CalibrationError(
                f"'y' must hold one integer label per sample ({x.shape[0]}), got dtype {y.dtype} shape {y.shape}"
            )
        labels = torch.from_numpy(y.astype(np.int64))
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), labels

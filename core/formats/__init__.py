"""Model files in and out, read without running anything from an untrusted file.

    from core.formats import load_model, save_model, detect_format
    loaded = load_model("upload.bin", example_input=batch)   # pt2, ONNX or TorchScript, by content
    loaded.program, loaded.input_shape                         # ExportedProgram, e.g. (None, 3, 32, 32)
    save_model(loaded.program, "out.onnx", "onnx")             # or "pt2", "torchscript", "safetensors"

In: ``torch.export`` archives (``.pt2``), ONNX, TorchScript. Everything else is refused with a
:class:`UnsupportedFormatError` whose message says how to export instead. Error codes:
``unsupported_format``, ``corrupt_model``, ``unsafe_archive``, ``example_input_required`` (all
:class:`ModelFileError`) and ``export_failed`` (:class:`ExportError`).
"""

import torch
from torch.torch_version import TorchVersion

if TorchVersion(torch.__version__) < "2.10":  # older releases have known weights_only bypasses
    raise ImportError(f"core.formats needs torch >= 2.10, found {torch.__version__}")

from core.formats.archive_safety import DEFAULT_LIMITS, ArchiveLimits, check_zip
from core.formats.detect import FORMATS, detect_format
from core.formats.errors import (
    CorruptModelError,
    ExampleInputRequiredError,
    ExportError,
    ModelFileError,
    UnsafeArchiveError,
    UnsupportedFormatError,
)
from core.formats.model_io import (
    EXTENSIONS,
    OUTPUT_FORMATS,
    check_inputs_fit,
    format_from_extension,
    load_model,
    save_model,
)
from core.formats.program import LoadedModel, Shape
from core.formats.safetensors_out import save_safetensors

__all__ = [
    "DEFAULT_LIMITS",
    "EXTENSIONS",
    "FORMATS",
    "OUTPUT_FORMATS",
    "ArchiveLimits",
    "CorruptModelError",
    "ExampleInputRequiredError",
    "ExportError",
    "LoadedModel",
    "ModelFileError",
    "Shape",
    "UnsafeArchiveError",
    "UnsupportedFormatError",
    "check_inputs_fit",
    "check_zip",
    "detect_format",
    "format_from_extension",
    "load_model",
    "save_model",
    "save_safetensors",
]

"""Errors raised while reading or writing model files; each has a stable ``code`` and a ``hint``.

The service maps ``code`` to a problem type (``unsupported_format`` -> 415, the others -> 422); the
message says what was found, the ``hint`` says what to upload instead.
"""

from __future__ import annotations

from core.errors import SpecpruneError

EXPORT_HINT = (
    "Export the model instead: "
    'torch.export.save(torch.export.export(model.eval(), (example,)), "model.pt2"), or '
    'torch.onnx.export(model.eval(), (example,), "model.onnx", dynamo=True), or '
    'torch.jit.save(torch.jit.trace(model.eval(), example), "model.pt").'
)


class ModelFileError(SpecpruneError, ValueError):
    """A model file that cannot be used. ``str(error)`` is ``reason`` followed by ``hint``: what was
    found, then how to produce a file that can be used (``hint`` may be empty)."""

    code = "invalid_model_file"

    def __init__(self, reason: str, hint: str = EXPORT_HINT) -> None:
        self.reason = reason
        self.hint = hint
        super().__init__(f"{reason} {hint}" if hint else reason)


class UnsupportedFormatError(ModelFileError):
    """Not one of the accepted formats (pt2, ONNX, TorchScript), or a construct inside one we refuse."""

    code = "unsupported_format"


class CorruptModelError(ModelFileError):
    """Looks like an accepted format but is truncated or damaged."""

    code = "corrupt_model"


class UnsafeArchiveError(ModelFileError):
    """An archive that breaks the safety limits: decompressed size, entry count, path traversal."""

    code = "unsafe_archive"


class ExampleInputRequiredError(ModelFileError):
    """The model's input shape cannot be read from the file and no example input was given."""

    code = "example_input_required"


class ExportError(SpecpruneError, RuntimeError):
    """Writing a program in the requested format failed, or the written file did not reproduce it."""

    code = "export_failed"


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (library errors can run to pages)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]

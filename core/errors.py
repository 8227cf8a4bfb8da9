"""Errors raised by the core library; each carries a stable machine-readable ``code``."""

from __future__ import annotations


class SpecpruneError(Exception):
    """Base class: ``code`` is stable (the service maps it to a problem type), the message is for people."""

    code = "specprune_error"


class ConfigError(SpecpruneError, ValueError):
    """A CompressionConfig that cannot be honoured as written."""

    code = "invalid_config"


class TargetUnreachableError(SpecpruneError, ValueError):
    """The FLOPs/params target is below what the prunable layers can reach; names the limiting layers."""

    code = "target_unreachable"


class CalibrationError(SpecpruneError, ValueError):
    """Calibration data that the model cannot consume (shape, dtype, NaN/Inf, empty)."""

    code = "invalid_calibration"


class LabelError(SpecpruneError, ValueError):
    """Labels that do not fit the model's outputs (count, range, dtype)."""

    code = "invalid_labels"


class UnsupportedModelError(SpecpruneError, ValueError):
    """A model the library cannot analyse at all (not an ExportedProgram, training-mode graph, ...)."""

    code = "unsupported_model"


class CancelledError(SpecpruneError):
    """Raised from inside ``compress`` when the progress callback asks to stop."""

    code = "cancelled"

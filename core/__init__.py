"""specprune core: spectral pruning of exported PyTorch programs.

    from core import compress, CompressionConfig
    result = compress(program, calibration, CompressionConfig(flops_ratio=0.5))
    result.program  # a narrower torch.export.ExportedProgram
    result.report   # JSON-serialisable dict: widths, spectra, FLOPs, params, accuracy, latency

Importing this package imports neither the web stack nor CUDA.
"""

from core.compress import CompressionResult, compress
from core.config import CompressionConfig
from core.errors import (
    CalibrationError,
    CancelledError,
    ConfigError,
    LabelError,
    SpecpruneError,
    TargetUnreachableError,
    UnsupportedModelError,
)

__all__ = [
    "CalibrationError",
    "CancelledError",
    "CompressionConfig",
    "CompressionResult",
    "ConfigError",
    "LabelError",
    "SpecpruneError",
    "TargetUnreachableError",
    "UnsupportedModelError",
    "compress",
]

"""Dataset errors: each a ``SpecpruneError`` with a stable ``code`` the service maps to a problem type."""

from __future__ import annotations

from core.errors import SpecpruneError


class DatasetError(SpecpruneError, ValueError):
    """A dataset that cannot be used as given (the catch-all; subclasses say more precisely why)."""

    code = "invalid_dataset"


class UnsupportedDatasetFormatError(DatasetError):
    """The file's content is none of the supported formats (npz, safetensors, zip/tar image folders)."""

    code = "unsupported_dataset_format"


class EmptyDatasetError(DatasetError):
    """No samples: an empty array, or an archive without any image in a class folder."""

    code = "empty_dataset"


class DatasetNaNError(DatasetError):
    """``x`` holds NaN or infinite values."""

    code = "dataset_nan"


class LabelsOutOfRangeError(DatasetError):
    """Labels negative, or not below the number of classes the model predicts."""

    code = "labels_out_of_range"


class UnsafeArchiveError(DatasetError):
    """An archive member with an absolute or ``..`` path, a link, a device, or another non-regular entry."""

    code = "unsafe_archive"


class DatasetTooLargeError(DatasetError):
    """Decompressed bytes, member count or image pixels beyond the configured limits."""

    code = "dataset_too_large"


class ImageDecodeError(DatasetError):
    """An image Pillow cannot decode, or whose decoded shape differs from the others."""

    code = "invalid_image"


class PreprocessError(DatasetError):
    """A preprocessing description that is inconsistent or does not fit the images."""

    code = "invalid_preprocess"


class SplitError(DatasetError):
    """Calibration / evaluation splits that cannot be drawn as asked."""

    code = "invalid_split"

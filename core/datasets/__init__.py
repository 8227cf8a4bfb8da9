"""Datasets for calibration and evaluation: readers, preprocessing, splits and bounded-memory batches.

    from core.datasets import open_dataset, make_splits, Preprocess
    with open_dataset(path, Preprocess(resize=36, center_crop=32, mean=[0.5] * 3, std=[0.25] * 3)) as ds:
        plan = make_splits(ds, calibration_samples=1024, eval_fraction=0.1, seed=0)
        calibration = ds.stream(plan.calibration, batch_size=256)  # re-iterable (x, y) batches
        result = compress(program, calibration.inputs(), config, labels=calibration.labels())

Formats are recognised by content: ``.npz`` / ``.safetensors`` with ``x`` (N, ...) float and optional
``y`` integer labels; image folders (``<split>/<class>/<image>`` or ``<class>/<image>``) as zip, tar,
tar.gz, tar.bz2 or tar.xz. Errors are ``core.datasets.errors.DatasetError`` subclasses with stable codes.
"""

from core.datasets.base import Dataset, DatasetInfo, check_labels, dataset_info, file_digest
from core.datasets.batches import Batch, BatchStream, InputStream
from core.datasets.errors import (
    DatasetError,
    DatasetNaNError,
    DatasetTooLargeError,
    EmptyDatasetError,
    ImageDecodeError,
    LabelsOutOfRangeError,
    PreprocessError,
    SplitError,
    UnsafeArchiveError,
    UnsupportedDatasetFormatError,
)
from core.datasets.limits import DatasetLimits
from core.datasets.preprocess import Preprocess
from core.datasets.readers import FORMATS, detect_format, open_dataset
from core.datasets.splits import SplitPlan, make_splits

__all__ = [
    "FORMATS",
    "Batch",
    "BatchStream",
    "Dataset",
    "DatasetError",
    "DatasetInfo",
    "DatasetLimits",
    "DatasetNaNError",
    "DatasetTooLargeError",
    "EmptyDatasetError",
    "ImageDecodeError",
    "InputStream",
    "LabelsOutOfRangeError",
    "Preprocess",
    "PreprocessError",
    "SplitError",
    "SplitPlan",
    "UnsafeArchiveError",
    "UnsupportedDatasetFormatError",
    "check_labels",
    "dataset_info",
    "detect_format",
    "file_digest",
    "make_splits",
    "open_dataset",
]

"""Describing an uploaded dataset -- format, samples, input shape, classes, splits -- by opening it with
``core.datasets`` in a sandboxed child process (``worker.sandbox``), never in the API process."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import Settings
from app.storage import Storage
from worker.pipeline import JOB_DIR_PREFIX
from worker.sandbox import SandboxLimits, run_sandbox

MAX_INFO_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class DatasetDescription:
    """What the sandbox found in a dataset file."""

    format: str
    samples: int
    input_shape: list[int]
    classes: list[str] | int | None
    splits: dict[str, int]
    labelled: bool


class InspectionFailed(Exception):
    """The dataset could not be opened; ``code`` is core.datasets' (or the sandbox's) error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def inspect_dataset(
    settings: Settings, storage: Storage, key: str, preprocess: dict[str, Any] | None
) -> DatasetDescription:
    """Open the stored dataset ``key`` in the sandbox, every image header checked; InspectionFailed
    when it cannot be used."""
    with tempfile.TemporaryDirectory(prefix=f"{JOB_DIR_PREFIX}{os.getpid()}-") as tmp:
        job_dir = Path(tmp)
        storage.download_to(key, job_dir / "dataset.bin")
        spec = {"task": "inspect_dataset", "dataset": "dataset.bin", "preprocess": preprocess}
        (job_dir / "job.json").write_text(json.dumps(spec))
        outcome = run_sandbox(job_dir, _limits(settings), lambda _stage, _fraction: None, 5.0)
        if outcome.status != "ok":
            raise InspectionFailed(outcome.code or "invalid_dataset", outcome.message)
        info_path = (job_dir / str(outcome.done.get("info", ""))).resolve()
        if job_dir.resolve() not in info_path.parents or not info_path.is_file():
            raise InspectionFailed("invalid_dataset", "the dataset inspection wrote no description")
        if info_path.stat().st_size > MAX_INFO_BYTES:
            raise InspectionFailed(
                "dataset_too_large", "the dataset's description is too large (too many classes)"
            )
        info = json.loads(info_path.read_text())
    return DatasetDescription(
        format=str(info["format"]),
        samples=int(info["samples"]),
        input_shape=[int(d) for d in info["input_shape"]],
        classes=info["classes"],
        splits={str(k): int(v) for k, v in info["splits"].items()},
        labelled=bool(info["labelled"]),
    )


def _limits(settings: Settings) -> SandboxLimits:
    return SandboxLimits(
        memory_bytes=settings.job_memory_bytes,
        cpu_seconds=settings.job_cpu_seconds,
        wall_seconds=settings.dataset_inspect_seconds,
        output_bytes=settings.job_output_bytes,
        threads=settings.job_threads,
    )

"""A job's data inside the sandbox, through ``core.datasets``: open, split, stream, hand to the engine.

Calibration samples stream from disk in batches. The evaluation split (at most ``evaluation_samples``,
a seeded draw) and, for recovery, a training split (at most ``training_samples``) are read batch by batch
into memory, because the engine passes over them many times. So memory follows those caps and the batch
size, never the size of the dataset. Calibration and evaluation never overlap (``core.datasets.splits``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

from core.datasets import (
    Dataset,
    InputStream,
    Preprocess,
    SplitPlan,
    check_labels,
    make_splits,
    open_dataset,
)


@dataclass
class JobData:
    """The job's dataset (and evaluation dataset) opened, with the split plan drawn."""

    dataset: Dataset
    eval_dataset: Dataset | None
    plan: SplitPlan
    options: dict[str, Any]
    seed: int
    labelled_outputs: bool = True
    warnings: list[str] = field(default_factory=list)
    training_samples: int = 0

    @classmethod
    def open(cls, job_dir: Path, data: dict[str, Any], calibration_samples: int, seed: int) -> JobData:
        """Open the files ``data`` names (paths relative to ``job_dir``) and draw the splits."""
        dataset = _open(job_dir, data["dataset"])
        eval_dataset = None
        try:
            if data.get("eval_dataset"):
                eval_dataset = _open(job_dir, data["eval_dataset"])
            plan = make_splits(
                dataset,
                calibration_samples,
                eval_fraction=float(data.get("eval_fraction") or 0.0),
                seed=seed,
                eval_dataset=eval_dataset,
                evaluation_samples=int(data["evaluation_samples"]),
            )
        except BaseException:
            dataset.close()
            if eval_dataset is not None:
                eval_dataset.close()
            raise
        return cls(dataset, eval_dataset, plan, data, seed)

    def __enter__(self) -> JobData:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.dataset.close()
        if self.eval_dataset is not None:
            self.eval_dataset.close()

    @property
    def batch_size(self) -> int:
        return int(self.options["batch_size"])

    @property
    def evaluation_source(self) -> Dataset:
        """The dataset the evaluation indices point into."""
        if self.plan.evaluation_source == "eval_dataset" and self.eval_dataset is not None:
            return self.eval_dataset
        return self.dataset

    def examples(self, count: int) -> torch.Tensor:
        """The first ``count`` calibration samples (fewer when there are fewer)."""
        x, _ = self.dataset.read(self.plan.calibration[:count])
        return torch.from_numpy(x)

    def check_labels(self, classes: int | None) -> None:
        """Refuse labels the model cannot predict; without (N, C) outputs accuracy is not measured."""
        if classes is None:
            self.labelled_outputs = False
            if self.dataset.has_labels or (self.eval_dataset is not None and self.eval_dataset.has_labels):
                self.warnings.append(
                    "the model's output is not (samples, classes): accuracy is not measured, only the "
                    "agreement and output error of the compressed model"
                )
            return
        for dataset in (self.dataset, self.eval_dataset):
            if dataset is not None and dataset.has_labels:
                check_labels(dataset, classes)

    def calibration(self) -> tuple[InputStream, torch.Tensor | None]:
        """Calibration inputs streamed from disk, and their labels."""
        stream = self.dataset.stream(self.plan.calibration, self.batch_size)
        return stream.inputs(), stream.labels() if self.labelled_outputs else None

    def evaluation(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The evaluation split in memory, or None when there is none (core then measures on the
        calibration samples, and the report says so)."""
        if len(self.plan.evaluation) == 0:
            self.warnings.append(
                "no evaluation data: accuracy and agreement were measured on the calibration samples; give "
                "eval_fraction, an evaluation dataset or an archive with a test split for an honest measure"
            )
            return None
        return self._read(self.evaluation_source, self.plan.evaluation)

    def training(self, limit: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Up to ``limit`` samples of the calibration split (never evaluation samples), for recovery."""
        plan = make_splits(
            self.dataset,
            limit,
            eval_fraction=float(self.options.get("eval_fraction") or 0.0),
            seed=self.seed,
            eval_dataset=self.eval_dataset,
            evaluation_samples=int(self.options["evaluation_samples"]),
        )
        if plan.evaluation_source != "eval_dataset":
            assert len(np.intersect1d(plan.calibration, self.plan.evaluation)) == 0, (
                "training overlaps evaluation"
            )
        self.training_samples = len(plan.calibration)
        return self._read(self.dataset, plan.calibration)

    def _read(self, dataset: Dataset, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        xs, ys = [], []
        for x, y in dataset.iter_batches(indices, self.batch_size):
            xs.append(x)
            if y is not None:
                ys.append(y)
        labels = torch.cat(ys) if ys and self.labelled_outputs else None
        return torch.cat(xs), labels

    def report(self) -> dict[str, Any]:
        """Sample counts and what was read, for the job's report."""
        return {
            **self.plan.report(),
            "training_samples": self.training_samples or None,
            "dataset": describe(self.dataset),
            "eval_dataset": describe(self.eval_dataset) if self.eval_dataset is not None else None,
            "eval_fraction": float(self.options.get("eval_fraction") or 0.0),
        }


def _open(job_dir: Path, source: dict[str, Any]) -> Dataset:
    preprocess = Preprocess.from_dict(source["preprocess"]) if source.get("preprocess") else None
    work = job_dir / "tmp"
    work.mkdir(exist_ok=True)
    return open_dataset(
        job_dir / source["path"], preprocess, work_dir=work, check_images=not source.get("validated", False)
    )


def describe(dataset: Dataset) -> dict[str, Any]:
    """What a dataset holds: format, samples, input shape, classes, splits."""
    classes = dataset.classes
    return {
        "format": dataset.format,
        "samples": dataset.samples,
        "input_shape": list(dataset.input_shape),
        "classes": len(classes) if isinstance(classes, list) else classes,
        "splits": dataset.split_counts(),
    }

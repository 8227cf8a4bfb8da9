"""Calibration and evaluation splits that never overlap.

- Evaluation: an ``eval_dataset`` when given (its test split if it has one, else all of it); otherwise
  the archive's test split (``test``, ``testing``, ``eval``, ``validation``, ``val``, ``valid``, first
  found); otherwise a seeded held-out ``eval_fraction`` of the upload; otherwise none.
- Calibration: a seeded draw of ``calibration_samples`` from the calibration split (``calibration``,
  ``calib``, ``train``, ``training``, first found), else from everything not held out for evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from core.datasets.base import Dataset
from core.datasets.errors import EmptyDatasetError, SplitError

EvaluationSource = Literal["eval_dataset", "test_split", "held_out", "none"]
CALIBRATION_SPLITS: tuple[str, ...] = ("calibration", "calib", "train", "training")
EVALUATION_SPLITS: tuple[str, ...] = ("test", "testing", "eval", "validation", "val", "valid")


@dataclass(frozen=True)
class SplitPlan:
    """Sample indices for calibration (into the dataset) and evaluation (into ``evaluation_source``'s data).

    When ``evaluation_source`` is ``eval_dataset`` the evaluation indices point into the eval dataset,
    otherwise into the same dataset as the calibration indices.
    """

    calibration: np.ndarray
    evaluation: np.ndarray
    evaluation_source: EvaluationSource
    calibration_split: str | None
    evaluation_split: str | None
    calibration_requested: int

    def report(self) -> dict[str, Any]:
        """Counts for the job report."""
        return {
            "calibration_samples": len(self.calibration),
            "calibration_requested": self.calibration_requested,
            "calibration_split": self.calibration_split,
            "evaluation_samples": len(self.evaluation),
            "evaluation_source": self.evaluation_source,
            "evaluation_split": self.evaluation_split,
        }


def _first_split(dataset: Dataset, names: tuple[str, ...]) -> tuple[str, np.ndarray] | None:
    splits = dataset.split_indices()
    return next(((name, splits[name]) for name in names if name in splits), None)


def _draw(rng: np.random.Generator, pool: np.ndarray, count: int) -> np.ndarray:
    """``count`` distinct members of ``pool``, seeded, returned sorted (sequential reads are cheaper)."""
    if count >= len(pool):
        return np.sort(pool)
    return np.sort(rng.choice(pool, size=count, replace=False))


def make_splits(
    dataset: Dataset,
    calibration_samples: int,
    eval_fraction: float = 0.0,
    seed: int = 0,
    eval_dataset: Dataset | None = None,
    evaluation_samples: int | None = None,
) -> SplitPlan:
    """Draw disjoint calibration and evaluation indices (see the module docstring for the rules).

    ``eval_fraction`` is only used when neither an ``eval_dataset`` nor a test split exists;
    ``evaluation_samples`` caps the evaluation set by a seeded draw.
    """
    if calibration_samples < 1:
        raise SplitError(f"calibration_samples must be >= 1, got {calibration_samples}")
    if not (0.0 <= eval_fraction < 1.0 and math.isfinite(eval_fraction)):
        raise SplitError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if evaluation_samples is not None and evaluation_samples < 1:
        raise SplitError(f"evaluation_samples must be >= 1, got {evaluation_samples}")
    rng = np.random.default_rng(seed)
    everything = np.arange(dataset.samples, dtype=np.int64)
    source: EvaluationSource
    eval_split: str | None = None
    if eval_dataset is not None:
        source = "eval_dataset"
        found = _first_split(eval_dataset, EVALUATION_SPLITS)
        eval_split = found[0] if found else None
        evaluation = found[1] if found else np.arange(eval_dataset.samples, dtype=np.int64)
        held_out = np.empty(0, dtype=np.int64)
    elif (found := _first_split(dataset, EVALUATION_SPLITS)) is not None:
        source, (eval_split, evaluation) = "test_split", found
        held_out = evaluation
    elif eval_fraction > 0:
        source = "held_out"
        count = max(1, round(eval_fraction * dataset.samples))
        if count >= dataset.samples:
            raise SplitError(
                f"eval_fraction {eval_fraction} of {dataset.samples} samples leaves none for calibration"
            )
        evaluation = held_out = _draw(rng, everything, count)
    else:
        source, evaluation, held_out = "none", np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)

    calib_found = _first_split(dataset, CALIBRATION_SPLITS)
    calib_split = calib_found[0] if calib_found else None
    pool = calib_found[1] if calib_found else np.setdiff1d(everything, held_out, assume_unique=True)
    pool = np.setdiff1d(pool, held_out, assume_unique=True)  # a file listing one sample twice stays disjoint
    if len(pool) == 0:
        raise EmptyDatasetError(
            "no samples are left for calibration once the evaluation samples are set aside"
        )
    calibration = _draw(rng, pool, calibration_samples)
    if evaluation_samples is not None:
        evaluation = _draw(rng, evaluation, evaluation_samples)
    return SplitPlan(
        calibration=calibration,
        evaluation=np.sort(evaluation),
        evaluation_source=source,
        calibration_split=calib_split,
        evaluation_split=eval_split,
        calibration_requested=calibration_samples,
    )

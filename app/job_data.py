"""A submitted job's data: which dataset it reads (an upload, ``dataset_id`` or ``dataset_uri``), which
evaluation data (``eval_dataset_id`` / ``eval_dataset_uri`` or a held-out ``eval_fraction``) and how
images are preprocessed. Checked at submission without reading any data: references must exist (per
tenant) or be allowed; an upload must look like a dataset from its first bytes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app import crud, sniff
from app.config import Settings
from app.dataset_uris import DatasetUriError, parse_dataset_uri
from app.models import Job
from app.problems import Problem, validation_problem
from app.schemas import JobConfig
from app.storage import Storage
from app.uploads import ReceivedFile, ReceivedForm

SOURCES = ("dataset", "dataset_id", "dataset_uri")
DATA_TEXT_FIELDS = {
    "dataset_id": 256,
    "dataset_uri": 4096,
    "eval_dataset_id": 256,
    "eval_dataset_uri": 4096,
    "eval_fraction": 64,
    "preprocess": 16 * 1024,
}
ARRAY_FORMATS = ("npz", "safetensors")
ARRAY_PREPROCESS = "preprocess applies to image archives; an .npz or .safetensors holds preprocessed arrays"
STORED_PREPROCESS = "a stored dataset is read with the preprocess given when it was uploaded"
FINETUNE_NEEDS_LABELS = (
    "recovery mode 'finetune' needs labels and dataset {id} has none; use mode 'distill', which needs none"
)


@dataclass(frozen=True)
class JobDataChoice:
    """The validated data fields of a job, ready to be written to its row."""

    dataset_key: str | None
    filename: str | None
    sha256: str | None
    bytes: int | None
    dataset_id: str | None
    dataset_uri: str | None
    eval_dataset_id: str | None
    eval_dataset_uri: str | None
    eval_fraction: float
    preprocess: dict[str, Any] | None

    def identity(self) -> dict[str, Any]:
        """What an Idempotency-Key is bound to, besides the model and the config."""
        return {
            "dataset": self.sha256 if self.dataset_key else None,
            "dataset_id": self.dataset_id,
            "dataset_uri": self.dataset_uri,
            "eval_dataset_id": self.eval_dataset_id,
            "eval_dataset_uri": self.eval_dataset_uri,
            "eval_fraction": self.eval_fraction,
            "preprocess": self.preprocess,
        }

    def columns(self) -> dict[str, Any]:
        """The Job columns this choice fills."""
        return {
            "dataset_key": self.dataset_key,
            "dataset_filename": self.filename,
            "dataset_sha256": self.sha256,
            "dataset_bytes": self.bytes,
            "dataset_id": self.dataset_id,
            "dataset_uri": self.dataset_uri,
            "eval_dataset_id": self.eval_dataset_id,
            "eval_dataset_uri": self.eval_dataset_uri,
            "data_options": {"eval_fraction": self.eval_fraction, "preprocess": self.preprocess},
        }


def check_sources(form: ReceivedForm) -> None:
    """422 unless the form has a model and exactly one dataset source (before anything is read)."""
    errors: list[dict[str, Any]] = []
    if "model" not in form.files:
        errors.append({"loc": ["body", "model"], "msg": "a model file is required", "type": "missing"})
    given = [name for name in SOURCES if name in form.files or name in form.texts]
    if len(given) != 1:
        msg = f"give exactly one of dataset (a file), dataset_id or dataset_uri; got {', '.join(given) or 'none'}"
        errors.append({"loc": ["body", "dataset"], "msg": msg, "type": "missing"})
    evals = [name for name in ("eval_dataset_id", "eval_dataset_uri") if name in form.texts]
    if len(evals) > 1:
        errors.append(
            _error("eval_dataset_id", "give eval_dataset_id or eval_dataset_uri, not both", "conflict")
        )
    if errors:
        raise validation_problem(errors)


def choose_job_data(
    form: ReceivedForm,
    config: JobConfig,
    *,
    session: Session,
    settings: Settings,
    storage: Storage,
    tenant_id: str,
) -> JobDataChoice:
    """Validate the form's data fields (``check_sources`` first); Problem 415 or 422 otherwise."""
    texts = form.texts
    eval_fraction = _eval_fraction(texts.get("eval_fraction"))
    preprocess = parse_preprocess(texts.get("preprocess"))
    eval_dataset_id = _dataset(session, tenant_id, texts.get("eval_dataset_id"), "eval_dataset_id")
    eval_uri = _uri(texts.get("eval_dataset_uri"), settings, "eval_dataset_uri")
    if eval_fraction and (eval_dataset_id or eval_uri):
        raise validation_problem(
            [_error("eval_fraction", "give eval_fraction or an evaluation dataset, not both", "conflict")]
        )
    if "dataset" in form.files:
        source = _uploaded(form.files["dataset"], storage, preprocess)
    elif "dataset_id" in texts:
        source = _stored(session, tenant_id, texts["dataset_id"], preprocess, config)
    else:
        source = _referenced(texts["dataset_uri"], settings)
    return JobDataChoice(
        **source,
        eval_dataset_id=eval_dataset_id,
        eval_dataset_uri=eval_uri,
        eval_fraction=eval_fraction,
        preprocess=preprocess,
    )


def apply(choice: JobDataChoice, job: Job) -> None:
    """Write the chosen data fields to a new job row."""
    for name, value in choice.columns().items():
        setattr(job, name, value)


def _uploaded(upload: ReceivedFile, storage: Storage, preprocess: dict[str, Any] | None) -> dict[str, Any]:
    stored = upload.stored
    try:
        fmt = sniff.sniff_dataset(storage, stored.key, stored.bytes)
    except sniff.Refused as exc:
        raise Problem("unsupported-dataset-format", f"{upload.filename}: {exc}", hint=exc.hint) from None
    if preprocess is not None and fmt in ARRAY_FORMATS:
        raise validation_problem([_error("preprocess", ARRAY_PREPROCESS, "not_applicable")])
    return _source(key=stored.key, filename=upload.filename, sha256=stored.sha256, size=stored.bytes)


def _stored(
    session: Session, tenant_id: str, raw_id: str, preprocess: dict[str, Any] | None, config: JobConfig
) -> dict[str, Any]:
    row = crud.get_dataset(session, tenant_id=tenant_id, dataset_id=raw_id.strip())
    if row is None:
        raise validation_problem([_error("dataset_id", "no such dataset", "not_found")])
    if preprocess is not None:
        raise validation_problem([_error("preprocess", STORED_PREPROCESS, "not_applicable")])
    if config.recovery.mode == "finetune" and not row.labelled:
        raise validation_problem(
            [_error("config", FINETUNE_NEEDS_LABELS.format(id=row.id), "labels_required")]
        )
    return _source(dataset_id=row.id, filename=row.filename, sha256=row.sha256, size=row.bytes)


def _referenced(raw: str, settings: Settings) -> dict[str, Any]:
    uri = _uri(raw, settings, "dataset_uri")
    assert uri is not None
    return _source(uri=uri, filename=parse_dataset_uri(uri, settings).filename)


def _source(
    *,
    key: str | None = None,
    dataset_id: str | None = None,
    uri: str | None = None,
    filename: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
) -> dict[str, Any]:
    return {
        "dataset_key": key,
        "dataset_id": dataset_id,
        "dataset_uri": uri,
        "filename": filename,
        "sha256": sha256,
        "bytes": size,
    }


def _eval_fraction(raw: str | None) -> float:
    if raw is None or not raw.strip():
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise validation_problem(
            [_error("eval_fraction", f"must be a number in [0, 1), got {raw!r}", "range")]
        )
    return value


def parse_preprocess(raw: str | None) -> dict[str, Any] | None:
    """The ``preprocess`` JSON object, validated by core.datasets (unknown keys refused)."""
    if raw is None or not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise validation_problem([_error("preprocess", f"not valid JSON: {exc}", "json_invalid")]) from None
    from core.datasets import Preprocess, PreprocessError

    try:
        return Preprocess.from_dict(data).to_dict()
    except (PreprocessError, TypeError) as exc:
        raise validation_problem([_error("preprocess", str(exc), "value_error")]) from None


def _dataset(session: Session, tenant_id: str, raw: str | None, field: str) -> str | None:
    if raw is None:
        return None
    row = crud.get_dataset(session, tenant_id=tenant_id, dataset_id=raw.strip())
    if row is None:
        raise validation_problem([_error(field, "no such dataset", "not_found")])
    return row.id


def _uri(raw: str | None, settings: Settings, field: str) -> str | None:
    if raw is None:
        return None
    try:
        return parse_dataset_uri(raw, settings).raw
    except DatasetUriError as exc:
        raise validation_problem([_error(field, str(exc), exc.code)]) from None


def _error(name: str, msg: str, kind: str) -> dict[str, Any]:
    return {"loc": ["body", name], "msg": msg, "type": kind}

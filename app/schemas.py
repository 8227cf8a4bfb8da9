"""API schemas: the job's config (validated, unknown keys refused), jobs and datasets as the API shows them."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.models import Dataset, Job, JobStatus

WIDTH_RULES = ("flops_ratio", "params_ratio", "alpha", "widths")
CORE_FIELDS = (
    "method",
    *WIDTH_RULES,
    "theta",
    "ridge",
    "refit",
    "rectified_steps",
    "allocation",
    "probe_samples",
    "probe_tflops",
    "residual",
    "calibration_samples",
    "device",
    "seed",
    "recovery",
)
OutputFormat = Literal["same", "pt2", "onnx", "torchscript"]


# `recovery` in the job config: fine-tuning or distillation after pruning (core's RecoveryConfig)
class RecoveryOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["none", "finetune", "distill"] = "none"
    epochs: int | None = Field(default=None, ge=1, le=10_000)
    steps: int | None = Field(default=None, ge=1, le=100_000_000)
    lr: float = Field(default=0.01, gt=0, lt=10)
    batch_size: int = Field(default=64, ge=1, le=65536)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    weight_decay: float = Field(default=5e-4, ge=0, lt=1)
    temperature: float = Field(default=4.0, gt=0, le=100)
    augment: bool = False
    stages: int = Field(default=1, ge=1, le=20)

    @field_validator("lr", "weight_decay", "temperature")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _epochs_or_steps(self) -> RecoveryOptions:
        if self.epochs is not None and self.steps is not None:
            raise ValueError("give epochs or steps, not both")
        return self


# The `config` form field of POST /jobs: what to compress and how; unknown keys are refused.
class JobConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["spectral", "l1", "random"] = "spectral"
    flops_ratio: float | None = Field(default=None, gt=0, le=1)
    params_ratio: float | None = Field(default=None, gt=0, le=1)
    alpha: float | None = Field(default=None, gt=0, le=1)
    widths: dict[str, int] | None = None
    theta: float = Field(default=0.3, ge=0, le=1)
    ridge: float = Field(default=1e-5, gt=0, lt=1)
    refit: Literal["output", "sequential", "independent"] = "output"
    rectified_steps: int = Field(default=2, ge=0, le=10)
    allocation: Literal["sensitivity", "spectrum"] = "sensitivity"
    probe_samples: int = Field(default=512, ge=1)
    probe_tflops: float | None = Field(default=50.0, gt=0)
    residual: Literal["prune", "keep"] = "prune"
    calibration_samples: int = Field(default=1024, ge=1)
    output_format: OutputFormat = "same"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = Field(default=0, ge=0, le=2**63 - 1)
    recovery: RecoveryOptions = Field(default_factory=RecoveryOptions)

    @field_validator("flops_ratio", "params_ratio", "alpha", "theta", "ridge", "probe_tflops")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("widths")
    @classmethod
    def _positive_widths(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None:
            if not value:
                raise ValueError("must name at least one layer group")
            bad = sorted(name for name, width in value.items() if width < 1)
            if bad:
                raise ValueError(f"widths must be >= 1 (got {', '.join(bad)})")
        return value

    @model_validator(mode="after")
    def _one_width_rule(self) -> JobConfig:
        given = [rule for rule in WIDTH_RULES if getattr(self, rule) is not None]
        if len(given) > 1:
            raise ValueError(f"give exactly one of {', '.join(WIDTH_RULES)}; got {', '.join(given)}")
        if not given:
            self.flops_ratio = 0.5
        self.to_core()  # core has the last word on what it can honour
        return self

    def core_dict(self) -> dict[str, Any]:
        """The fields that form core's CompressionConfig (everything but ``output_format``)."""
        values = {name: getattr(self, name) for name in CORE_FIELDS}
        values["recovery"] = self.recovery.model_dump()
        return values

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> JobConfig:
        """A job row's config (validated when the job was submitted) without validating it again."""
        recovery = RecoveryOptions.model_construct(**(stored.get("recovery") or {}))
        return cls.model_construct(**{**stored, "recovery": recovery})

    def to_core(self) -> Any:
        """core.CompressionConfig for this config (raises core's ConfigError, a ValueError)."""
        from core.config import CompressionConfig

        return CompressionConfig.from_dict(self.core_dict())


# progress of a job: the stage it is in and how far through it (0..1)
class JobProgress(BaseModel):
    stage: str
    fraction: float


# the uploaded model: its name, detected format, content hash and size
class ModelInfo(BaseModel):
    filename: str
    format: str | None
    sha256: str
    bytes: int


# one side (original or compressed) of the result; null where not measured. latency_ms is the
# single-sample latency; the report has every measured batch size.
class ModelMetrics(BaseModel):
    params: int | None = None
    flops: float | None = None
    top1: float | None = None
    top5: float | None = None
    agreement: float | None = None
    latency_ms: float | None = None


# one pruned layer group, with core's report names
class LayerSummary(BaseModel):
    name: str
    width_before: int | None = None
    width_after: int | None = None
    head_dim: int | None = None  # attention heads: the widths count heads of this many rows
    dof: float | None = None
    retained: float | None = None


# how many samples each part of the run used, and where the evaluation samples came from
class SampleCounts(BaseModel):
    calibration_samples: int | None = None
    evaluation_samples: int | None = None
    evaluation_source: str | None = None
    training_samples: int | None = None


# the job's outcome summary; GET /jobs/{id}/report has core's full report. `recovered` is measured
# after recovery (null without it); `warnings` repeats the report's (e.g. nothing could be pruned).
class JobResult(BaseModel):
    original: ModelMetrics
    compressed: ModelMetrics
    recovered: ModelMetrics | None = None
    layers: list[LayerSummary]
    warnings: list[str] = Field(default_factory=list)
    data: SampleCounts | None = None


# why a job failed: a stable code and a message for people
class JobError(BaseModel):
    code: str
    message: str


# where a job's data comes from: an upload (filename, sha256, bytes), a stored dataset or a URI,
# optionally a separate evaluation dataset, a held-out fraction and image preprocessing
class JobData(BaseModel):
    dataset_id: str | None = None
    dataset_uri: str | None = None
    filename: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    eval_dataset_id: str | None = None
    eval_dataset_uri: str | None = None
    eval_fraction: float = 0.0
    preprocess: dict[str, Any] | None = None


# a job as the API returns it
class JobPublic(BaseModel):
    id: str
    status: JobStatus
    progress: JobProgress
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    config: JobConfig
    model: ModelInfo
    data: JobData
    result: JobResult | None
    error: JobError | None
    # where a signed POST of this object goes when the job ends (null: no webhook)
    callback_url: str | None = None


# one page of GET /jobs, newest first; pass next_after as ?after= for the next page
class JobList(BaseModel):
    items: list[JobPublic]
    next_after: str | None


# GET /healthz and /readyz bodies
class HealthStatus(BaseModel):
    status: Literal["ok", "ready"]
    checks: dict[str, str] = Field(default_factory=dict)


def summarise_report(report: dict[str, Any]) -> dict[str, Any]:
    """The job's ``result`` from core's report: both sides' metrics and the layer widths."""
    layers = [
        LayerSummary.model_validate({k: layer.get(k) for k in LayerSummary.model_fields}).model_dump()
        for layer in report.get("layers") or []
        if isinstance(layer, dict) and isinstance(layer.get("name"), str)
    ]
    data = report.get("data")
    warnings = report.get("warnings")
    counts = None
    if isinstance(data, dict):
        counts = SampleCounts.model_validate({k: data.get(k) for k in SampleCounts.model_fields}).model_dump()
    return {
        "original": _side(report.get("original")),
        "compressed": _side(report.get("compressed")),
        "recovered": _side(report["recovered"]) if isinstance(report.get("recovered"), dict) else None,
        "layers": layers,
        "warnings": [str(w) for w in warnings] if isinstance(warnings, list) else [],
        "data": counts,
    }


def _side(data: Any) -> dict[str, Any]:
    data = data if isinstance(data, dict) else {}
    values = {k: data.get(k) for k in ModelMetrics.model_fields}
    values["latency_ms"] = _scalar_latency(data.get("latency_ms"))
    return ModelMetrics.model_validate(values).model_dump()


def _scalar_latency(value: Any) -> float | None:
    """core reports latency per batch size (``{"batch_1": ms, "batch_32": ms, "device": ...}``); the
    job shows the smallest batch's."""
    if value is None or isinstance(value, int | float):
        return value
    if isinstance(value, dict):
        batches = []
        for key, ms in value.items():
            size = key.removeprefix("batch_")
            if key.startswith("batch_") and size.isdigit() and isinstance(ms, int | float):
                batches.append((int(size), float(ms)))
        return min(batches)[1] if batches else None
    return None


def job_public(job: Job) -> JobPublic:
    """The API view of a job row."""
    return JobPublic(
        id=job.id,
        status=JobStatus(job.status),
        progress=JobProgress(stage=job.stage, fraction=job.fraction),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        config=JobConfig.from_stored(job.config),
        model=ModelInfo(
            filename=job.model_filename,
            format=job.model_format,
            sha256=job.model_sha256,
            bytes=job.model_bytes,
        ),
        data=job_data(job),
        result=JobResult.model_validate(job.result) if job.result else None,
        error=JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        callback_url=job.callback_url,
    )


def job_data(job: Job) -> JobData:
    """The API view of a job's data sources."""
    options = job.data_options or {}
    return JobData(
        dataset_id=job.dataset_id,
        dataset_uri=job.dataset_uri,
        filename=job.dataset_filename,
        sha256=job.dataset_sha256,
        bytes=job.dataset_bytes,
        eval_dataset_id=job.eval_dataset_id,
        eval_dataset_uri=job.eval_dataset_uri,
        eval_fraction=float(options.get("eval_fraction") or 0.0),
        preprocess=options.get("preprocess"),
    )


# a stored dataset as the API returns it: what inspecting it in the sandbox found
class DatasetPublic(BaseModel):
    id: str
    filename: str
    source_uri: str | None
    format: str
    samples: int
    input_shape: list[int]
    classes: list[str] | int | None
    splits: dict[str, int]
    labelled: bool
    preprocess: dict[str, Any] | None
    sha256: str
    bytes: int
    created_at: datetime


# one page of GET /datasets, newest first; pass next_after as ?after= for the next page
class DatasetList(BaseModel):
    items: list[DatasetPublic]
    next_after: str | None


def dataset_public(dataset: Dataset) -> DatasetPublic:
    """The API view of a dataset row."""
    return DatasetPublic(
        id=dataset.id,
        filename=dataset.filename,
        source_uri=dataset.source_uri,
        format=dataset.format,
        samples=dataset.samples,
        input_shape=list(dataset.input_shape),
        classes=dataset.classes,
        splits=dict(dataset.splits or {}),
        labelled=dataset.labelled,
        preprocess=dataset.preprocess,
        sha256=dataset.sha256,
        bytes=dataset.bytes,
        created_at=dataset.created_at,
    )

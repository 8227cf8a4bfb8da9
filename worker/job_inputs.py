"""A job's inputs in its sandbox directory: the model, its data and ``job.json`` describing the run.

The data is an upload (stored with the job), a stored dataset (``dataset_id``) or a reference
(``dataset_uri``: fetched now, re-checked against the operator's allow-lists), and optionally an
evaluation dataset given either way. Nothing here reads the content: the sandbox does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app import crud
from app.dataset_uris import DatasetUriError, fetch_dataset_uri, parse_dataset_uri
from app.db import session_scope
from app.models import Job
from worker.context import WorkerContext

MODEL_FILE = "model.bin"


class InputError(Exception):
    """A job input that cannot be fetched; the job fails with ``code`` and the message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def prepare_job_dir(ctx: WorkerContext, job: Job, job_dir: Path) -> None:
    """Fetch the job's files into ``job_dir`` and write ``job.json`` for the sandbox."""
    ctx.storage.download_to(job.model_key, job_dir / MODEL_FILE)
    options = job.data_options or {}
    preprocess = options.get("preprocess")
    dataset = _fetch(
        ctx, job, job_dir / "dataset.bin", job.dataset_key, job.dataset_id, job.dataset_uri, preprocess
    )
    if dataset is None:
        raise InputError("dataset_unavailable", "the job's dataset no longer exists")
    eval_dataset = _fetch(
        ctx, job, job_dir / "eval.bin", None, job.eval_dataset_id, job.eval_dataset_uri, preprocess
    )
    config = dict(job.config)
    settings = ctx.settings
    spec = {
        "task": "compress",
        "model": MODEL_FILE,
        "data": {
            "dataset": dataset,
            "eval_dataset": eval_dataset,
            "eval_fraction": float(options.get("eval_fraction") or 0.0),
            "evaluation_samples": settings.eval_samples,
            "training_samples": settings.recovery_samples,
            "batch_size": settings.data_batch_size,
        },
        "output_format": config.pop("output_format", "same"),
        "config": config,
        "threads": settings.job_threads,
        "measure_latency": settings.job_measure_latency,
    }
    (job_dir / "job.json").write_text(json.dumps(spec))


def _fetch(
    ctx: WorkerContext,
    job: Job,
    target: Path,
    key: str | None,
    dataset_id: str | None,
    uri: str | None,
    preprocess: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Place one dataset at ``target``; its entry in job.json, None when the job names none."""
    if key is not None:
        ctx.storage.download_to(key, target)
        return {"path": target.name, "preprocess": preprocess, "validated": False}
    if dataset_id is not None:
        with session_scope(ctx.sessions) as session:
            dataset = crud.get_dataset(session, tenant_id=job.tenant_id, dataset_id=dataset_id)
        if dataset is None:
            raise InputError("dataset_unavailable", f"dataset {dataset_id} no longer exists")
        ctx.storage.download_to(dataset.storage_key, target)
        return {"path": target.name, "preprocess": dataset.preprocess, "validated": True}
    if uri is not None:
        try:
            parsed = parse_dataset_uri(uri, ctx.settings)
            limit = None if parsed.scheme == "file" else ctx.settings.max_upload_bytes
            fetch_dataset_uri(parsed, ctx.settings, target, limit=limit)
        except DatasetUriError as exc:
            raise InputError(
                "dataset_unavailable" if exc.code == "dataset_uri_refused" else exc.code, str(exc)
            ) from None
        return {"path": target.name, "preprocess": preprocess, "validated": False}
    return None

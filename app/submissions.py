"""Submitting a job: check the received form, recognise the files, honour the Idempotency-Key, insert
the row and hand its id to the workers. Runs after the upload has streamed to storage."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app import crud, sniff
from app.config import Settings
from app.db import SessionFactory, session_scope
from app.models import Job
from app.problems import Problem, validation_problem
from app.schemas import JobConfig
from app.storage import Storage
from app.uploads import FormSpec, ReceivedForm
from worker.dispatch import JobDispatcher

logger = logging.getLogger(__name__)

CONFIG_MAX_BYTES = 64 * 1024
MODEL_FORMAT_HELP = (
    "the model must be a torch.export program: program = torch.export.export(model.eval(), "
    "example_inputs); torch.export.save(program, 'model.pt2')"
)


def job_form_spec(settings: Settings) -> FormSpec:
    """The fields of POST /jobs."""
    return FormSpec(
        files=frozenset({"model", "dataset"}),
        texts={"config": CONFIG_MAX_BYTES, "dataset_id": 256, "dataset_uri": 4096},
        max_file_bytes=settings.max_upload_bytes,
    )


@dataclass(frozen=True)
class Submission:
    job: Job
    created: bool  # False: an earlier job returned for the same Idempotency-Key and payload


@dataclass
class JobSubmitter:
    settings: Settings
    sessions: SessionFactory
    storage: Storage
    dispatcher: JobDispatcher

    def submit(
        self, *, job_id: str, tenant_id: str, form: ReceivedForm, idempotency_key: str | None
    ) -> Submission:
        """Validate and create the job (uploads already stored under the job's prefix)."""
        config = parse_config(form.texts.get("config"))
        _check_sources(form)
        model, dataset = form.files["model"], form.files["dataset"]
        payload = payload_sha256(model.stored.sha256, dataset.stored.sha256, config)
        if idempotency_key is not None:
            with session_scope(self.sessions) as session:
                earlier = crud.get_job_by_idempotency_key(session, tenant_id=tenant_id, key=idempotency_key)
            if earlier is not None:
                return Submission(_same_payload(earlier, payload), created=False)
        model_format = sniff.detect_model_format(self.storage, model.stored.key, model.stored.bytes)
        if model_format is None:
            raise Problem("unsupported-model-format", f"{model.filename}: {MODEL_FORMAT_HELP}")
        if not sniff.is_npz(self.storage, dataset.stored.key, dataset.stored.bytes):
            raise Problem(
                "unsupported-dataset-format",
                f"{dataset.filename}: the dataset must be an .npz archive with an array 'x' (samples first) "
                "and optionally integer labels 'y': numpy.savez('data.npz', x=x, y=y)",
            )
        job = Job(
            id=job_id,
            tenant_id=tenant_id,
            queue=self.queue_for(config),
            config=config.model_dump(mode="json"),
            model_filename=model.filename,
            model_format=model_format,
            model_sha256=model.stored.sha256,
            model_bytes=model.stored.bytes,
            model_key=model.stored.key,
            dataset_filename=dataset.filename,
            dataset_sha256=dataset.stored.sha256,
            dataset_bytes=dataset.stored.bytes,
            dataset_key=dataset.stored.key,
            idempotency_key=idempotency_key,
            payload_sha256=payload,
        )
        with session_scope(self.sessions) as session:
            job, created = crud.create_job(session, job=job)
        if not created:
            return Submission(_same_payload(job, payload), created=False)
        self._dispatch(job)
        return Submission(job, created=True)

    def queue_for(self, config: JobConfig) -> str:
        """``gpu`` for CUDA jobs (and ``auto`` ones where the deployment says so), else ``cpu``."""
        if config.device == "cuda" or (config.device == "auto" and self.settings.auto_device_queue == "gpu"):
            return "gpu"
        return "cpu"

    def _dispatch(self, job: Job) -> None:
        try:
            self.dispatcher.dispatch(job.id, job.queue)
        except Exception:  # the job is stored; the reaper sends it again
            logger.exception("could not enqueue job %s now; the reaper will retry", job.id)
            return
        with session_scope(self.sessions) as session:
            crud.mark_enqueued(session, job_id=job.id)


def parse_config(raw: str | None) -> JobConfig:
    """The ``config`` field as a JobConfig (defaults when absent); 422 with the errors otherwise."""
    try:
        return JobConfig.model_validate_json(raw) if raw and raw.strip() else JobConfig()
    except ValidationError as exc:
        raise validation_problem(
            [{"loc": ["body", "config", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        ) from None


def _check_sources(form: ReceivedForm) -> None:
    errors: list[dict[str, Any]] = []
    if "model" not in form.files:
        errors.append({"loc": ["body", "model"], "msg": "a model file is required", "type": "missing"})
    sources = [
        name for name in ("dataset", "dataset_id", "dataset_uri") if name in form.files or name in form.texts
    ]
    if len(sources) != 1:
        msg = "give exactly one of dataset (a file), dataset_id or dataset_uri"
        errors.append(
            {
                "loc": ["body", "dataset"],
                "msg": f"{msg}; got {', '.join(sources) or 'none'}",
                "type": "missing",
            }
        )
    elif sources[0] == "dataset_id":
        errors.append({"loc": ["body", "dataset_id"], "msg": "no such dataset", "type": "not_found"})
    elif sources[0] == "dataset_uri":
        errors.append(
            {
                "loc": ["body", "dataset_uri"],
                "msg": "dataset references are not enabled on this server",
                "type": "unsupported",
            }
        )
    if errors:
        raise validation_problem(errors)


def payload_sha256(model_sha256: str, dataset_sha256: str, config: JobConfig) -> str:
    """What an Idempotency-Key is bound to: the files' contents and the validated config."""
    canonical = json.dumps(
        {"model": model_sha256, "dataset": dataset_sha256, "config": config.model_dump(mode="json")},
        sort_keys=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _same_payload(job: Job, payload: str) -> Job:
    if job.payload_sha256 != payload:
        raise Problem(
            "idempotency-key-reused",
            "this Idempotency-Key was already used with a different model, dataset or config",
            job_id=job.id,
        )
    return job

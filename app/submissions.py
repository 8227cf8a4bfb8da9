"""Submitting a job: check the received form, recognise the files, honour the Idempotency-Key, insert
the row and hand its id to the workers. Runs after the upload has streamed to storage."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from app import crud, job_callbacks, job_data, sniff
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


def job_form_spec(settings: Settings) -> FormSpec:
    """The fields of POST /jobs."""
    return FormSpec(
        files=frozenset({"model", "dataset"}),
        texts={"config": CONFIG_MAX_BYTES, **job_data.DATA_TEXT_FIELDS, **job_callbacks.TEXT_FIELDS},
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
        callback = job_callbacks.job_callback(form, self.settings)
        job_data.check_sources(form)
        model = form.files["model"]
        with session_scope(self.sessions) as session:
            data = job_data.choose_job_data(
                form,
                config,
                session=session,
                settings=self.settings,
                storage=self.storage,
                tenant_id=tenant_id,
            )
        payload = payload_sha256(model.stored.sha256, data.identity(), config, callback.url)
        if idempotency_key is not None:
            with session_scope(self.sessions) as session:
                earlier = crud.get_job_by_idempotency_key(session, tenant_id=tenant_id, key=idempotency_key)
            if earlier is not None:
                return Submission(_same_payload(earlier, payload), created=False)
        try:
            model_format = sniff.sniff_model(self.storage, model.stored.key, model.stored.bytes)
        except sniff.Refused as exc:
            raise Problem("unsupported-model-format", f"{model.filename}: {exc}", hint=exc.hint) from None
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
            idempotency_key=idempotency_key,
            payload_sha256=payload,
        )
        job_data.apply(data, job)
        callback.apply(job)
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


def payload_sha256(
    model_sha256: str, data: dict[str, Any], config: JobConfig, callback_url: str | None = None
) -> str:
    """What an Idempotency-Key is bound to: the model's content, the data (an upload's content or the
    references), the validated config and the callback URL."""
    payload = {"model": model_sha256, "data": data, "config": config.model_dump(mode="json")}
    if callback_url is not None:
        payload["callback_url"] = callback_url
    canonical = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _same_payload(job: Job, payload: str) -> Job:
    if job.payload_sha256 != payload:
        raise Problem(
            "idempotency-key-reused",
            "this Idempotency-Key was already used with a different model, dataset or config",
            job_id=job.id,
        )
    return job

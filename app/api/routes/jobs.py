"""/jobs: submit, list, show, cancel, delete, follow (SSE) and download compressed models and reports."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app import crud, webhook_store
from app.api.deps import CurrentTenant, DispatcherDep, SessionDep, SessionFactoryDep, SettingsDep, StorageDep
from app.cursors import decode_cursor, encode_cursor
from app.db import session_scope
from app.events import job_event_stream
from app.models import Job, JobStatus, job_storage_prefix, new_id
from app.problems import Problem
from app.ranges import parse_range
from app.schemas import JobList, JobPublic, job_public
from app.submissions import JobSubmitter, job_form_spec
from app.uploads import receive_form

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/jobs", tags=["jobs"])

JOB_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model"],
    "properties": {
        "model": {
            "type": "string",
            "format": "binary",
            "description": "A torch.export program (.pt2), an ONNX model or a TorchScript archive "
            "(recognised from the content).",
        },
        "dataset": {
            "type": "string",
            "format": "binary",
            "description": "The data: an .npz/.safetensors with 'x' (and optional labels 'y'), or an image "
            "folder archive (.zip, .tar, .tar.gz).",
        },
        "dataset_id": {
            "type": "string",
            "description": "A dataset from POST /datasets (instead of 'dataset').",
        },
        "dataset_uri": {
            "type": "string",
            "description": "s3://, file:// or https:// reference, operator-allowed (instead of 'dataset').",
        },
        "eval_dataset_id": {"type": "string", "description": "A stored dataset to evaluate on."},
        "eval_dataset_uri": {"type": "string", "description": "A dataset reference to evaluate on."},
        "eval_fraction": {
            "type": "string",
            "description": "Hold out this fraction of the data for evaluation (when it has no test split).",
        },
        "preprocess": {"type": "string", "description": "Image preprocessing JSON for image archives."},
        "config": {"type": "string", "description": "JSON object: see the JobConfig schema."},
        "callback_url": {
            "type": "string",
            "description": "http(s) URL that receives the job object, signed (Standard Webhooks), when "
            "the job succeeds, fails or is cancelled.",
        },
    },
}
PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}
DownloadFormat = Literal["pt2", "onnx", "torchscript", "safetensors"]


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    summary="Submit a compression job",
    openapi_extra={
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": JOB_FORM_SCHEMA}}}
    },
    responses={413: PROBLEM, 415: PROBLEM, 422: PROBLEM},
)
async def submit_job(
    request: Request,
    tenant: CurrentTenant,
    settings: SettingsDep,
    sessions: SessionFactoryDep,
    storage: StorageDep,
    dispatcher: DispatcherDep,
    idempotency_key: Annotated[
        str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)
    ] = None,
) -> Response:
    """Upload a model and its calibration data; the job is queued and its id returned at once."""
    job_id = new_id()
    prefix = job_storage_prefix(tenant.id, job_id)
    form = await receive_form(
        content_type=request.headers.get("content-type"),
        content_length=request.headers.get("content-length"),
        body=request.stream(),
        spec=job_form_spec(settings),
        storage=storage,
        key_for=lambda field: f"{prefix}input/{field}",
    )
    submitter = JobSubmitter(settings, sessions, storage, dispatcher)
    try:
        submission = await run_in_threadpool(
            lambda: submitter.submit(
                job_id=job_id, tenant_id=tenant.id, form=form, idempotency_key=idempotency_key
            )
        )
    except BaseException:
        await run_in_threadpool(storage.delete_prefix, prefix)
        raise
    headers = {"Location": f"/jobs/{submission.job.id}"}
    if not submission.created:
        await run_in_threadpool(storage.delete_prefix, prefix)
        headers["Idempotent-Replayed"] = "true"
    body = job_public(submission.job).model_dump(mode="json")
    return JSONResponse(body, status_code=202, headers=headers)


@router.get("", response_model=JobList, summary="List the caller's jobs, newest first")
def list_jobs(
    session: SessionDep,
    tenant: CurrentTenant,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="next_after from the previous page")] = None,
    status: JobStatus | None = None,
) -> JobList:
    before_seq = decode_cursor("job", after) if after else None
    jobs = crud.list_jobs(session, tenant_id=tenant.id, limit=limit + 1, before_seq=before_seq, status=status)
    page = jobs[:limit]
    next_after = encode_cursor("job", page[-1].seq) if len(jobs) > limit else None
    return JobList(items=[job_public(job) for job in page], next_after=next_after)


@router.get("/{job_id}", response_model=JobPublic, responses={404: PROBLEM}, summary="Show a job")
def get_job(job_id: str, session: SessionDep, tenant: CurrentTenant) -> JobPublic:
    return job_public(_tenant_job(session, tenant.id, job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    responses={202: {"model": JobPublic}, 404: PROBLEM, 409: PROBLEM},
    summary="Cancel a job",
)
def cancel_job(job_id: str, session: SessionDep, tenant: CurrentTenant) -> Response:
    """A queued job is cancelled at once (200); a running one stops at its next progress point (202)."""
    try:
        job = crud.cancel_job(session, tenant_id=tenant.id, job_id=job_id)
    except crud.JobConflict as exc:
        raise Problem("job-conflict", str(exc)) from None
    if job is None:
        raise _not_found(job_id)
    status_code = 202 if job.status == JobStatus.RUNNING.value else 200
    return JSONResponse(job_public(job).model_dump(mode="json"), status_code=status_code)


@router.delete("/{job_id}", status_code=204, responses={404: PROBLEM, 409: PROBLEM}, summary="Delete a job")
def delete_job(job_id: str, session: SessionDep, tenant: CurrentTenant, storage: StorageDep) -> Response:
    """Remove the job and all its artifacts (409 while it is running)."""
    webhook_store.queue_before_delete(session, tenant_id=tenant.id, job_id=job_id)
    try:
        job = crud.delete_job(session, tenant_id=tenant.id, job_id=job_id)
    except crud.JobConflict as exc:
        raise Problem("job-conflict", str(exc)) from None
    if job is None:
        raise _not_found(job_id)
    try:
        storage.delete_prefix(job_storage_prefix(tenant.id, job_id))
    except Exception:
        logger.exception("job %s deleted but its artifacts could not all be removed", job_id)
    return Response(status_code=204)


@router.get(
    "/{job_id}/events",
    responses={200: {"content": {"text/event-stream": {}}}, 404: PROBLEM},
    summary="Follow a job (server-sent events)",
)
def job_events(
    job_id: str,
    session: SessionDep,
    tenant: CurrentTenant,
    sessions: SessionFactoryDep,
    settings: SettingsDep,
) -> StreamingResponse:
    """One event per status or progress change (the job object as data); the stream ends with the job."""
    _tenant_job(session, tenant.id, job_id)
    tenant_id = tenant.id

    def load() -> JobPublic | None:
        with session_scope(sessions) as fresh:
            job = crud.get_job(fresh, tenant_id=tenant_id, job_id=job_id)
            return None if job is None else job_public(job)

    stream = job_event_stream(
        load, poll_seconds=settings.events_poll_seconds, keepalive_seconds=settings.events_keepalive_seconds
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/{job_id}/model",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}},
        206: {"description": "Partial content"},
        404: PROBLEM,
        409: PROBLEM,
        416: PROBLEM,
    },
    summary="Download the compressed model",
)
def download_model(
    job_id: str,
    session: SessionDep,
    tenant: CurrentTenant,
    storage: StorageDep,
    format: Annotated[
        DownloadFormat | None,
        Query(description="safetensors: the weights alone; default: the job's output format"),
    ] = None,
    variant: Annotated[
        Literal["pruned"] | None,
        Query(description="pruned: the model before recovery (the same as the default without recovery)"),
    ] = None,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match")] = None,
    if_range: Annotated[str | None, Header(alias="If-Range")] = None,
) -> Response:
    """The file, streamed; ``ETag`` is its SHA-256, ``Range`` gives 206 with one byte range."""
    job = _finished_job(session, tenant.id, job_id)
    artifact = model_artifact(job, format, variant)
    etag = f'"{artifact.sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": content_disposition(artifact.filename),
    }
    if (if_none_match and etag in [tag.strip() for tag in if_none_match.split(",")]) or if_none_match == "*":
        return Response(status_code=304, headers=headers)
    size = artifact.bytes
    byte_range = parse_range(range_header, size) if (if_range is None or if_range.strip() == etag) else None
    if byte_range is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(
            storage.iter_range(artifact.key), media_type="application/octet-stream", headers=headers
        )
    start, end = byte_range
    headers["Content-Length"] = str(end - start + 1)
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(
        storage.iter_range(artifact.key, start, end),
        status_code=206,
        media_type="application/octet-stream",
        headers=headers,
    )


@router.get(
    "/{job_id}/report",
    responses={200: {"content": {"application/json": {}}}, 404: PROBLEM, 409: PROBLEM},
    summary="Core's full compression report",
)
def get_report(job_id: str, session: SessionDep, tenant: CurrentTenant, storage: StorageDep) -> Response:
    job = _finished_job(session, tenant.id, job_id)
    assert job.report_key is not None
    return StreamingResponse(storage.iter_range(job.report_key), media_type="application/json")


@dataclass(frozen=True)
class Artifact:
    """One downloadable file of a finished job."""

    key: str
    filename: str
    sha256: str
    bytes: int


def model_artifact(job: Job, fmt: str | None, variant: str | None) -> Artifact:
    """The model file asked for: the job's model (after recovery when it ran) or, with ``variant``
    ``pruned``, the one before recovery; in the job's output format or, with ``safetensors``, as
    weights alone. 404 when the job has no such file."""
    assert job.output_key and job.output_sha256 and job.output_filename and job.output_bytes is not None
    artifacts = job.artifacts or {}
    pruned = variant == "pruned" and "pruned" in artifacts
    name: str | None
    if fmt == "safetensors":
        name = "pruned_safetensors" if pruned else "safetensors"
    elif fmt in (None, job.output_format):
        name = "pruned" if pruned else None
    else:
        raise Problem(
            "not-found",
            f"job {job.id} wrote its model as {job.output_format}; submit with output_format '{fmt}' to get "
            "that format, or ask for format=safetensors for the weights alone",
        )
    if name is None:
        return Artifact(job.output_key, job.output_filename, job.output_sha256, job.output_bytes)
    item = artifacts.get(name)
    if not isinstance(item, dict):
        raise Problem("not-found", f"job {job.id} has no {name.replace('_', ' ')} download")
    return Artifact(str(item["key"]), str(item["filename"]), str(item["sha256"]), int(item["bytes"]))


def _tenant_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = crud.get_job(session, tenant_id=tenant_id, job_id=job_id)
    if job is None:
        raise _not_found(job_id)
    return job


def _finished_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = _tenant_job(session, tenant_id, job_id)
    if job.status != JobStatus.SUCCEEDED.value or job.output_key is None:
        raise Problem(
            "job-conflict",
            f"job {job_id} is {job.status}; results exist once it has succeeded",
            job_status=job.status,
        )
    return job


def _not_found(job_id: str) -> Problem:
    return Problem("not-found", f"no job {job_id}")


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact UTF-8 one (RFC 6266)."""
    ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"

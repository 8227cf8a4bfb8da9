"""One job, start to finish: claim it, fetch its inputs, compress in the sandbox, store the results.

The same code runs under a Celery task (distributed mode) and under the embedded local worker.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import crud
from app.db import session_scope
from app.models import Job, JobStatus
from app.schemas import summarise_report
from worker.checkpoints import CheckpointSync
from worker.context import WorkerContext
from worker.job_inputs import InputError, prepare_job_dir
from worker.sandbox import SandboxLimits, SandboxOutcome, TickCallback, run_sandbox

logger = logging.getLogger(__name__)

MAX_REPORT_BYTES = 64 * 1024 * 1024
# Downloads besides the model: its weights alone, and after recovery the pre-recovery model.
ARTIFACTS = ("safetensors", "pruned", "pruned_safetensors")
# Progress rows are written at most this often (stage changes are always written).
PROGRESS_WRITE_SECONDS = 0.5
# Job directories are named <prefix><worker pid>-<random> so that orphans of dead workers can be found.
JOB_DIR_PREFIX = "specprune-job-"
TIMEOUT_HINT = (  # what a user whose large model ran out of time can change (README, "Settings")
    " (SPECPRUNE_JOB_WALL_SECONDS). The width probes and the sequential re-fit cost tens of forward passes"
    ' over the calibration data: allocation="spectrum" with refit="independent" takes about two, and fewer'
    " calibration_samples cost proportionally less."
)


def sweep_orphaned_job_dirs(root: Path) -> list[Path]:
    """Remove job directories left by worker processes that were killed (their pid is gone)."""
    removed = []
    for path in root.glob(f"{JOB_DIR_PREFIX}*-*"):
        pid = path.name.removeprefix(JOB_DIR_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def new_owner() -> str:
    """A lease owner id unique to this run: host, process, random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def execute_job(ctx: WorkerContext, job_id: str, *, stop: threading.Event | None = None) -> str:
    """Run the job if it can be claimed; returns what happened (for logs): ``skipped`` when another
    worker has it or it is no longer queued, else the final status."""
    owner = new_owner()
    with session_scope(ctx.sessions) as session:
        job = crud.claim_job(session, job_id=job_id, owner=owner, lease_seconds=ctx.settings.lease_seconds)
    if job is None:
        logger.info("job %s not claimable (not queued); skipping", job_id)
        return "skipped"
    logger.info("job %s claimed by %s (attempt %d)", job_id, owner, job.attempts)
    tracker = LeaseTracker(ctx, job_id, owner, stop)
    sweep_orphaned_job_dirs(Path(tempfile.gettempdir()))
    try:
        with tempfile.TemporaryDirectory(prefix=f"{JOB_DIR_PREFIX}{os.getpid()}-") as tmp:
            return _run_claimed(ctx, job, Path(tmp), tracker)
    except Exception as exc:
        logger.exception("job %s failed in the worker", job_id)
        _finish(ctx, job_id, owner, JobStatus.FAILED, "internal_error", f"{type(exc).__name__}: {exc}")
        return JobStatus.FAILED.value


def _run_claimed(ctx: WorkerContext, job: Job, job_dir: Path, tracker: LeaseTracker) -> str:
    reason = tracker.tick("fetching", 0.0)
    if reason:
        return _stopped(ctx, job.id, tracker, reason)
    try:
        prepare_job_dir(ctx, job, job_dir)
    except InputError as exc:
        logger.warning("job %s failed: %s: %s", job.id, exc.code, exc)
        _finish(ctx, job.id, tracker.owner, JobStatus.FAILED, exc.code, str(exc))
        return JobStatus.FAILED.value
    checkpoint = CheckpointSync(ctx.storage, job.storage_prefix, job_dir)
    if checkpoint.restore():
        logger.info("job %s: recovery resumes from the checkpoint of an earlier attempt", job.id)
    try:
        outcome = run_sandbox(
            job_dir, _limits(ctx), _with_checkpoints(tracker, checkpoint), ctx.settings.heartbeat_seconds
        )
    finally:
        checkpoint.wait()
    if outcome.status == "stopped":
        if outcome.stop_reason == "cancelled":
            checkpoint.clear()
        return _stopped(ctx, job.id, tracker, outcome.stop_reason)
    checkpoint.clear()
    if outcome.status != "ok":
        message = outcome.message + (TIMEOUT_HINT if outcome.status == "timeout" else "")
        logger.warning("job %s failed: %s: %s", job.id, outcome.code, message)
        _finish(ctx, job.id, tracker.owner, JobStatus.FAILED, outcome.code, message)
        return JobStatus.FAILED.value
    reason = tracker.tick("uploading", 0.0)
    if reason:
        return _stopped(ctx, job.id, tracker, reason)
    outputs = _store_outputs(ctx, job, job_dir, outcome)
    with session_scope(ctx.sessions) as session:
        finished = crud.finish_job(
            session, job_id=job.id, owner=tracker.owner, status=JobStatus.SUCCEEDED, outputs=outputs
        )
    if not finished:  # cancelled, deleted or taken over meanwhile: the outputs belong to no job
        for key in [outputs.output_key, outputs.report_key, *_artifact_keys(outputs)]:
            ctx.storage.delete(key)
        return "lost"
    logger.info("job %s succeeded", job.id)
    return JobStatus.SUCCEEDED.value


def _with_checkpoints(tracker: LeaseTracker, checkpoint: CheckpointSync) -> TickCallback:
    """The sandbox's tick: start copying a new recovery checkpoint to storage, heartbeat, progress."""

    def tick(stage: str | None, fraction: float | None) -> str | None:
        checkpoint.push()
        return tracker.tick(stage, fraction)

    return tick


def _artifact_keys(outputs: crud.JobOutputs) -> list[str]:
    return [str(item["key"]) for item in (outputs.artifacts or {}).values()]


def _limits(ctx: WorkerContext) -> SandboxLimits:
    settings = ctx.settings
    return SandboxLimits(
        memory_bytes=settings.job_memory_bytes,
        cpu_seconds=settings.job_cpu_seconds,
        wall_seconds=settings.job_wall_seconds,
        output_bytes=settings.job_output_bytes,
        threads=settings.job_threads,
    )


def _store_outputs(ctx: WorkerContext, job: Job, job_dir: Path, outcome: SandboxOutcome) -> crud.JobOutputs:
    model_path = _inside(job_dir, outcome.done.get("model"))
    report_path = _inside(job_dir, outcome.done.get("report"))
    if report_path.stat().st_size > MAX_REPORT_BYTES:
        raise ValueError(f"the report is larger than {MAX_REPORT_BYTES} bytes")
    report: dict[str, Any] = json.loads(report_path.read_text())
    fmt = str(outcome.done.get("format", "pt2"))
    prefix = job.storage_prefix
    label = "recovered" if isinstance(report.get("recovered"), dict) else "pruned"
    stored_model = ctx.storage.put_file(f"{prefix}output/model.{fmt}", model_path)
    artifacts = _store_artifacts(ctx, job, job_dir, outcome.done.get("artifacts"), fmt, label)
    stored_report = ctx.storage.put_file(f"{prefix}output/report.json", report_path)
    return crud.JobOutputs(
        output_key=stored_model.key,
        output_filename=output_filename(job.model_filename, fmt, label),
        output_format=fmt,
        output_sha256=stored_model.sha256,
        output_bytes=stored_model.bytes,
        report_key=stored_report.key,
        result=summarise_report(report),
        artifacts=artifacts,
    )


def _store_artifacts(
    ctx: WorkerContext, job: Job, job_dir: Path, produced: Any, fmt: str, label: str
) -> dict[str, Any]:
    """Store the further downloads the sandbox wrote (see ARTIFACTS); their descriptions by name."""
    artifacts = {}
    for name, relative in (produced if isinstance(produced, dict) else {}).items():
        if name not in ARTIFACTS:
            raise ValueError(f"the sandbox named an unknown artifact {name!r}")
        artifact_format = "safetensors" if name.endswith("safetensors") else fmt
        stored = ctx.storage.put_file(
            f"{job.storage_prefix}output/{name}.{artifact_format}", _inside(job_dir, relative)
        )
        artifacts[name] = {
            "key": stored.key,
            "filename": output_filename(
                job.model_filename, artifact_format, "pruned" if name.startswith("pruned") else label
            ),
            "format": artifact_format,
            "sha256": stored.sha256,
            "bytes": stored.bytes,
        }
    return artifacts


def output_filename(input_filename: str, fmt: str, label: str = "pruned") -> str:
    """``resnet.pt2`` -> ``resnet.pruned.pt2`` (``resnet.recovered.pt2`` after recovery)."""
    stem = input_filename.rsplit(".", 1)[0] if "." in input_filename else input_filename
    extension = {"pt2": "pt2", "onnx": "onnx", "torchscript": "pt"}.get(fmt, fmt)
    return f"{stem or 'model'}.{label}.{extension}"


def _inside(job_dir: Path, relative: Any) -> Path:
    """A path the child named, refused unless it is a file inside the job directory."""
    path = (job_dir / str(relative)).resolve()
    if job_dir.resolve() not in path.parents or not path.is_file():
        raise ValueError(f"the sandbox named an invalid output {relative!r}")
    return path


def _stopped(ctx: WorkerContext, job_id: str, tracker: LeaseTracker, reason: str) -> str:
    if reason == "cancelled":
        _finish(ctx, job_id, tracker.owner, JobStatus.CANCELLED)
        logger.info("job %s cancelled", job_id)
        return JobStatus.CANCELLED.value
    if reason == "shutdown":
        with session_scope(ctx.sessions) as session:
            crud.release_job(session, job_id=job_id, owner=tracker.owner)
        logger.info("job %s released back to the queue (worker shutting down)", job_id)
        return "released"
    logger.warning("job %s: lease lost; another worker may run it", job_id)
    return "lost"


def _finish(
    ctx: WorkerContext,
    job_id: str,
    owner: str,
    status: JobStatus,
    code: str | None = None,
    message: str | None = None,
) -> None:
    with session_scope(ctx.sessions) as session:
        crud.finish_job(
            session, job_id=job_id, owner=owner, status=status, error_code=code, error_message=message
        )


@dataclass
class LeaseTracker:
    """Heartbeats and progress for one claimed job; says when to stop (cancel, lost lease, shutdown)."""

    ctx: WorkerContext
    job_id: str
    owner: str
    stop: threading.Event | None = None
    _last_write: float = 0.0
    _last_stage: str | None = None

    def tick(self, stage: str | None, fraction: float | None) -> str | None:
        """Record progress (throttled) and extend the lease; None to go on, else why to stop."""
        if self.stop is not None and self.stop.is_set():
            return "shutdown"
        now = time.monotonic()
        due = now - self._last_write >= min(PROGRESS_WRITE_SECONDS, self.ctx.settings.heartbeat_seconds)
        if stage is None and now - self._last_write < self.ctx.settings.heartbeat_seconds:
            return None
        if stage is not None and stage == self._last_stage and not due:
            return None
        self._last_write = now
        if stage is not None:
            self._last_stage = stage
        with session_scope(self.ctx.sessions) as session:
            lease = crud.heartbeat(
                session,
                job_id=self.job_id,
                owner=self.owner,
                lease_seconds=self.ctx.settings.lease_seconds,
                stage=stage,
                fraction=fraction,
            )
        if lease is crud.Lease.CANCEL_REQUESTED:
            return "cancelled"
        if lease is crud.Lease.LOST:
            return "lost"
        return None

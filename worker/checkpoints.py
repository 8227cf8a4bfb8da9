"""Recovery checkpoints that survive the worker: snapshots in the sandbox, copies in the storage backend.

The engine writes a checkpoint into ``JOB_DIR/checkpoint/stage<k>/`` after every recovery epoch. In the
sandbox, the progress callback runs between training steps, when no checkpoint is being written; there
``Snapshots.take`` hard-links a changed checkpoint into ``JOB_DIR/checkpoint-snapshots/<n>/`` (renamed
into place when complete, never modified afterwards). On every progress tick the worker uploads the
newest complete snapshot under the job's storage prefix (files first, the manifest naming them last) and
drops older ones. The next attempt of the job, on any worker, downloads the manifest's files back into
``JOB_DIR/checkpoint/`` before the sandbox starts, so recovery resumes where the lost worker left it.
The copies are removed when the job ends.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the sandbox imports this module too, and needs nothing of the service
    from app.storage import Storage

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
SNAPSHOT_DIR = "checkpoint-snapshots"
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1024 * 1024
# The engine's files, in the order they must be restored; state.json commits a checkpoint.
CHECKPOINT_FILES = ("weights.safetensors", "optimizer.pt", "state.json")
# At most one upload per this many seconds (the first at once): bounded storage traffic for short epochs.
UPLOAD_INTERVAL_SECONDS = 10.0


def checkpoint_prefix(job_storage_prefix: str) -> str:
    return f"{job_storage_prefix}{CHECKPOINT_DIR}/"


# --- in the sandbox ------------------------------------------------------------------------------


class Snapshots:
    """Hard-link snapshots of the engine's checkpoint directory, taken when it changed."""

    def __init__(self, job_dir: Path) -> None:
        self.source = job_dir / CHECKPOINT_DIR
        self.target = job_dir / SNAPSHOT_DIR
        self._last: tuple[tuple[str, int, int], ...] = self._signature()
        self._count = 0

    def _signature(self) -> tuple[tuple[str, int, int], ...]:
        found = []
        for state in sorted(self.source.glob("stage*/state.json")):
            info = state.stat()
            found.append((state.parent.name, info.st_ino, info.st_mtime_ns))
        return tuple(found)

    def take(self) -> bool:
        """Snapshot the checkpoint if it changed since the last call; True when one was taken."""
        signature = self._signature()
        if signature == self._last:
            return False
        self._last = signature
        self._count += 1
        pending = self.target / f".{self._count}"
        for stage, _, _ in signature:
            (pending / stage).mkdir(parents=True)
            for name in CHECKPOINT_FILES:
                os.link(self.source / stage / name, pending / stage / name)
        pending.rename(self.target / str(self._count))
        return True


def resume_point(job_dir: Path) -> dict[str, Any] | None:
    """The step a restored checkpoint resumes from (per stage), None when there is none."""
    stages = {}
    for state in sorted((job_dir / CHECKPOINT_DIR).glob("stage*/state.json")):
        try:
            stages[state.parent.name] = int(json.loads(state.read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return {"resumed": True, "steps": stages} if stages else None


# --- in the worker -------------------------------------------------------------------------------


class CheckpointSync:
    """Copies a job's newest checkpoint snapshot to storage (in a background thread, so that a large
    upload never delays the job's heartbeats) and back."""

    def __init__(self, storage: Storage, job_storage_prefix: str, job_dir: Path) -> None:
        self.storage = storage
        self.prefix = checkpoint_prefix(job_storage_prefix)
        self.job_dir = job_dir
        self.uploaded = 0  # the stored version (counts across attempts)
        self._pushed_snapshot = 0  # the local snapshot it came from (counts within this attempt)
        self._upload: threading.Thread | None = None
        self._last_upload = -float("inf")

    def restore(self) -> int:
        """Download the stored checkpoint into the job directory; returns the files restored."""
        from app.storage import ObjectNotFound

        try:
            raw = self.storage.read_bytes(self.prefix + MANIFEST, 0, MAX_MANIFEST_BYTES - 1)
        except ObjectNotFound:
            return 0
        manifest = json.loads(raw)
        snapshot = int(manifest["snapshot"])
        files = [str(name) for name in manifest["files"]]
        for name in files:
            stage, file = name.split("/")
            if not stage.startswith("stage") or file not in CHECKPOINT_FILES:
                raise ValueError(f"unexpected checkpoint file {name!r}")
            target = self.job_dir / CHECKPOINT_DIR / stage / file
            target.parent.mkdir(parents=True, exist_ok=True)
            self.storage.download_to(f"{self.prefix}{snapshot}/{name}", target)
        self.uploaded = snapshot
        return len(files)

    def push(self) -> bool:
        """Start uploading the newest complete snapshot, unless an upload is running, one finished less
        than UPLOAD_INTERVAL_SECONDS ago, or there is nothing new; True when one was started."""
        if self._upload is not None and self._upload.is_alive():
            return False
        if time.monotonic() - self._last_upload < UPLOAD_INTERVAL_SECONDS:
            return False
        root = self.job_dir / SNAPSHOT_DIR
        numbers = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
        if not numbers or numbers[-1] <= self._pushed_snapshot:
            return False
        self._upload = threading.Thread(target=self._upload_logged, args=(numbers,), daemon=True)
        self._upload.start()
        return True

    def wait(self) -> None:
        """Let a running upload finish (before the job directory goes away)."""
        if self._upload is not None:
            self._upload.join()

    def _upload_logged(self, numbers: list[int]) -> None:
        try:
            self._upload_snapshot(numbers)
        except Exception:  # a storage hiccup costs a checkpoint, never the job
            logger.exception("could not store the recovery checkpoint under %s", self.prefix)
        finally:
            self._last_upload = time.monotonic()

    def _upload_snapshot(self, numbers: list[int]) -> None:
        root = self.job_dir / SNAPSHOT_DIR
        newest = numbers[-1]
        snapshot = root / str(newest)
        number = self.uploaded + 1
        files = sorted(f"{p.parent.name}/{p.name}" for p in snapshot.glob("stage*/*") if p.is_file())
        for name in files:
            self.storage.put_file(f"{self.prefix}{number}/{name}", snapshot / name)
        manifest = json.dumps({"snapshot": number, "files": files}).encode()
        self.storage.put_stream(self.prefix + MANIFEST, [manifest])  # the new version is now the stored one
        if self.uploaded:
            self.storage.delete_prefix(f"{self.prefix}{self.uploaded}/")
        self.uploaded, self._pushed_snapshot = number, newest
        for old in numbers:
            shutil.rmtree(root / str(old), ignore_errors=True)

    def clear(self) -> None:
        """Remove the stored checkpoint (the job has ended)."""
        self.wait()
        try:
            self.storage.delete_prefix(self.prefix)
        except Exception:
            logger.exception("could not remove the recovery checkpoint under %s", self.prefix)

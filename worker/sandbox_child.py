"""The sandboxed child: run one task on the files of its directory and report as JSON lines.

Run as ``python -m worker.sandbox_child JOB_DIR`` (by worker.sandbox, under resource limits). Reads
``JOB_DIR/job.json``, whose ``task`` names what to do: ``compress`` (worker.compress_task: load the
model and data, compress, write the outputs) or ``inspect_dataset`` (worker.inspect_task: describe an
uploaded dataset). Reports progress and the result as JSON lines on the original stdout (anything else
printed goes to stderr); results larger than a line are files under ``JOB_DIR/out``.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import IO, Any

PROGRESS_INTERVAL_SECONDS = 0.25


class Reporter:
    """Writes protocol lines; progress is throttled to one line per interval unless the stage changes."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._last_stage: str | None = None
        self._last_time = 0.0

    def send(self, event: str, **fields: Any) -> None:
        self._stream.write(json.dumps({"event": event, **fields}) + "\n")
        self._stream.flush()

    def progress(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if stage != self._last_stage or now - self._last_time >= PROGRESS_INTERVAL_SECONDS or fraction >= 1.0:
            self._last_stage, self._last_time = stage, now
            self.send("progress", stage=stage, fraction=float(fraction))


def run(job_dir: Path, reporter: Reporter) -> dict[str, Any]:
    """Do the task described by ``job_dir/job.json``; returns the ``done`` message fields."""
    spec = json.loads((job_dir / "job.json").read_text())
    task = spec.get("task", "compress")
    if task == "compress":
        from worker import compress_task

        return compress_task.run(job_dir, spec, reporter.progress)
    if task == "inspect_dataset":
        from worker import inspect_task

        return inspect_task.run(job_dir, spec, reporter.progress)
    raise ValueError(f"unknown sandbox task {task!r}")


def classify(exc: BaseException) -> tuple[str, str]:
    """A failed job's ``(code, message)`` for an exception raised while running it."""
    from core.errors import SpecpruneError

    if isinstance(exc, SpecpruneError):
        return exc.code, str(exc)
    text = str(exc)
    if isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower():
        return (
            "out_of_memory",
            f"the job ran out of memory in the sandbox ({type(exc).__name__}: {text[:300]})",
        )
    if isinstance(exc, NotImplementedError):
        return "not_implemented", f"not available on this server: {text[:500]}"
    return "compression_failed", f"{type(exc).__name__}: {text[:1000]}"


def main(argv: list[str]) -> int:
    # Keep the real stdout for the protocol; everything else printed (by us, torch, C code) goes to stderr.
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    reporter = Reporter(protocol)
    try:
        done = run(Path(argv[1]), reporter)
    except BaseException as exc:  # the process ends here: report, never hide
        traceback.print_exc()
        code, message = classify(exc)
        reporter.send("error", code=code, message=message)
        return 1
    reporter.send("done", **done)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

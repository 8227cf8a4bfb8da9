"""Run one job's compression in a sandboxed child process and follow its progress.

The child (``python -m worker.sandbox_child JOB_DIR``) sees only the job's directory (its working and
temporary directory, holding the job's own files), runs under resource limits set before it starts
(memory, CPU time, file size, no core dumps), dies with its parent, and is killed past a wall-clock
timeout. The memory limit is ``RLIMIT_DATA``: heap and private anonymous memory, which is what a model
or its activations take; a dataset file the child memory-maps read-only does not count against it (its
pages are the kernel's cache), so datasets larger than the limit stream through in batches. It reports JSON lines on stdout: ``{"event": "progress", "stage", "fraction"}``,
then ``{"event": "done", ...}`` or ``{"event": "error", "code", "message"}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAX_LINE_BYTES = 64 * 1024
STDERR_TAIL_BYTES = 2000
# After its final message the child has this long to exit before it is killed.
FINAL_EXIT_SECONDS = 30.0
PR_SET_PDEATHSIG = 1
# Environment variables handed through to the child (device selection and thread counts).
PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: int
    cpu_seconds: int
    wall_seconds: float
    output_bytes: int
    threads: int | None = None


@dataclass
class SandboxOutcome:
    """How the child ended: ``ok`` (result in ``done``), ``error`` (code, message), ``stopped`` (the
    tick callback asked to stop; ``stop_reason`` says why), ``timeout`` or ``crashed``."""

    status: Literal["ok", "error", "stopped", "timeout", "crashed"]
    code: str = ""
    message: str = ""
    done: dict[str, Any] = field(default_factory=dict)
    stop_reason: str = ""


# Called on every progress line (stage, fraction) and every ``tick_seconds`` without one (None, None);
# returns None to go on or a reason to stop (the child is then killed).
TickCallback = Callable[[str | None, float | None], str | None]


def run_sandbox(
    job_dir: Path, limits: SandboxLimits, on_tick: TickCallback, tick_seconds: float
) -> SandboxOutcome:
    """Run the child on ``job_dir`` to completion, a stop request, a timeout or a crash."""
    stderr_path = job_dir / "stderr.log"
    with stderr_path.open("wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-s", "-m", "worker.sandbox_child", str(job_dir)],
            cwd=job_dir,
            env=_child_env(job_dir, limits),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
            preexec_fn=_limiter(limits),
        )
    assert child.stdout is not None
    lines: queue.Queue[bytes | None] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(child.stdout, lines), daemon=True)
    reader.start()
    try:
        stopped, final = _follow(child, lines, limits, on_tick, tick_seconds)
    finally:
        _kill(child)
        reader.join(timeout=5)
    if stopped is not None:
        return stopped
    if final is not None and final.get("event") == "error":
        return SandboxOutcome("error", str(final.get("code", "failed")), str(final.get("message", "")))
    if final is not None:
        return SandboxOutcome("ok", done=final)
    return SandboxOutcome("crashed", *describe_exit(child.returncode, limits, _tail(stderr_path)))


def _follow(
    child: subprocess.Popen[bytes],
    lines: queue.Queue[bytes | None],
    limits: SandboxLimits,
    on_tick: TickCallback,
    tick_seconds: float,
) -> tuple[SandboxOutcome | None, dict[str, Any] | None]:
    """Relay progress until the child reports its result or closes stdout.

    Returns an outcome when the child had to be stopped (timeout, stop request), and its final
    ``done``/``error`` message when it sent one.
    """
    deadline = time.monotonic() + limits.wall_seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            why = f"the job ran past its wall-clock limit of {limits.wall_seconds:g} s"
            return SandboxOutcome("timeout", "timeout", why), None
        try:
            raw = lines.get(timeout=min(tick_seconds, remaining))
        except queue.Empty:
            raw = b""
        if raw is None:  # stdout closed: the child is exiting
            _wait(child, FINAL_EXIT_SECONDS)
            return None, None
        message = _parse(raw) if raw else None
        event = message.get("event") if message else None
        if message is not None and event in ("done", "error"):
            _wait(child, FINAL_EXIT_SECONDS)
            return None, message
        if message is not None and event == "progress":
            reason = on_tick(str(message.get("stage", ""))[:64], _fraction(message.get("fraction")))
        else:
            reason = on_tick(None, None)
        if reason:
            return SandboxOutcome("stopped", stop_reason=reason), None


def _wait(child: subprocess.Popen[bytes], seconds: float) -> None:
    try:
        child.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        _kill(child)


def describe_exit(returncode: int, limits: SandboxLimits, stderr_tail: str) -> tuple[str, str]:
    """``(code, message)`` for a child that ended without reporting a result."""
    tail = f"; last output: {stderr_tail}" if stderr_tail else ""
    if returncode == -signal.SIGKILL:
        return "out_of_memory", (
            f"the compression process was killed (most likely out of memory; limit "
            f"{limits.memory_bytes / 2**30:.1f} GiB){tail}"
        )
    if returncode == -signal.SIGXCPU:
        return (
            "cpu_time_limit",
            f"the compression process used up its CPU-time limit of {limits.cpu_seconds} s",
        )
    if returncode == -signal.SIGXFSZ:
        return "output_too_large", f"the compression process wrote a file over {limits.output_bytes} bytes"
    if returncode < 0:
        name = signal.Signals(-returncode).name
        return "sandbox_crashed", f"the compression process crashed ({name}){tail}"
    return (
        "sandbox_crashed",
        f"the compression process exited with status {returncode} without a result{tail}",
    )


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _fraction(value: Any) -> float | None:
    try:
        return min(max(float(value), 0.0), 1.0)
    except (TypeError, ValueError):
        return None


def _read_lines(stream: IO[bytes], lines: queue.Queue[bytes | None]) -> None:
    try:
        while True:
            raw = stream.readline(MAX_LINE_BYTES)
            if not raw:
                break
            lines.put(raw)
    finally:
        stream.close()
        lines.put(None)


def _kill(child: subprocess.Popen[bytes]) -> None:
    """Kill the child's whole process group (it leads its own session) and reap it."""
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _tail(path: Path) -> str:
    try:
        data = path.read_bytes()[-STDERR_TAIL_BYTES:]
    except OSError:
        return ""
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return " | ".join(lines[-5:])[-STDERR_TAIL_BYTES:]


def _child_env(job_dir: Path, limits: SandboxLimits) -> dict[str, str]:
    tmp = job_dir / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {name: os.environ[name] for name in PASSTHROUGH_ENV if name in os.environ}
    env.update(
        HOME=str(job_dir),
        TMPDIR=str(tmp),
        PYTHONPATH=str(PROJECT_ROOT),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
        # Few malloc arenas: an address-space limit is about memory, not per-thread arena reservations.
        MALLOC_ARENA_MAX="2",
        TORCHINDUCTOR_CACHE_DIR=str(tmp / "inductor"),
        TORCH_HOME=str(tmp / "torch"),
        XDG_CACHE_HOME=str(tmp / "cache"),
    )
    if limits.threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(limits.threads)
    return env


def _limiter(limits: SandboxLimits) -> Callable[[], None]:
    """The pre-exec hook: resource limits and death with the parent, set before the child's Python starts."""

    def apply() -> None:
        # Not RLIMIT_AS: read-only file mappings (datasets) and CUDA's reserved ranges are not memory used.
        resource.setrlimit(resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        _die_with_parent()

    return apply


def _die_with_parent() -> None:
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:  # not Linux: the wall-clock timeout and the parent's kill still apply
        pass

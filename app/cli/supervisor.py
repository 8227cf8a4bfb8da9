"""Keeps the embedded local worker process running next to ``specprune serve``; restarts it if it dies
(its job, if any, is re-queued by the reaper when the lease expires)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading

logger = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 1.0
STOP_GRACE_SECONDS = 10.0
PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    """The worker gets SIGTERM (and releases its job) if ``serve`` dies without stopping it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass


class WorkerSupervisor:
    def __init__(self, command: list[str] | None = None) -> None:
        self.command = command or [sys.executable, "-m", "app.cli", "worker"]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name="specprune-worker-supervisor", daemon=True)

    @property
    def pid(self) -> int | None:
        with self._lock:
            return None if self._process is None else self._process.pid

    def start(self) -> WorkerSupervisor:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                self._process = subprocess.Popen(self.command, preexec_fn=_terminate_with_parent)
            logger.info("local worker started (pid %d)", self._process.pid)
            code = self._process.wait()
            if self._stop.is_set():
                return
            logger.warning("local worker exited with status %d; restarting", code)
            self._stop.wait(RESTART_DELAY_SECONDS)

    def stop(self) -> None:
        """Ask the worker to stop (it releases its job to the queue), then kill it if it lingers."""
        self._stop.set()
        with self._lock:
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._thread.join(timeout=STOP_GRACE_SECONDS)

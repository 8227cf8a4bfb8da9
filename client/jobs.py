"""A job on the server, as the client sees it: its last known state and what can be done with it."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from client.download import download_file
from client.errors import (
    JobCancelled,
    JobFailed,
    NotFound,
    SpecpruneAPIError,
    TransportError,
    WaitTimeout,
)
from client.progress import ProgressDisplay
from client.sse import iter_events
from client.transport import TRANSIENT_ERRORS

if TYPE_CHECKING:
    from client.client import Client

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
# The server sends a keep-alive comment every 15 s by default; a silent stream this long is dead.
EVENTS_READ_SECONDS = 60.0

BROKEN_STREAM: tuple[type[Exception], ...] = (*TRANSIENT_ERRORS, TransportError)
# wait(progress=...) takes True (a progress bar on stderr), False, or a callable given the job.
ProgressOption = bool | Callable[["Job"], None]


class Job:
    """A compression job. ``data`` is the job object the API last returned (see ``GET /jobs/{id}``)."""

    def __init__(self, client: Client, data: dict[str, Any]) -> None:
        self._client = client
        self.data = data

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.status} {self.stage} {self.fraction:.0%}>"

    @property
    def id(self) -> str:
        return str(self.data["id"])

    @property
    def status(self) -> str:
        """``queued``, ``running``, ``succeeded``, ``failed`` or ``cancelled``."""
        return str(self.data["status"])

    @property
    def done(self) -> bool:
        """Whether the job has reached a terminal status."""
        return self.status in TERMINAL_STATUSES

    @property
    def stage(self) -> str:
        return str((self.data.get("progress") or {}).get("stage", ""))

    @property
    def fraction(self) -> float:
        return float((self.data.get("progress") or {}).get("fraction", 0.0))

    @property
    def error(self) -> dict[str, Any] | None:
        """``{"code", "message"}`` of a failed job."""
        return self.data.get("error")

    @property
    def result(self) -> dict[str, Any] | None:
        """The outcome summary of a succeeded job (``original``/``compressed`` metrics, layer widths)."""
        return self.data.get("result")

    @property
    def callback_url(self) -> str | None:
        return self.data.get("callback_url")

    def refresh(self) -> Job:
        """Re-read the job from the server."""
        self.data = self._client._transport.request("GET", f"/jobs/{self.id}").json()
        return self

    def wait(
        self, progress: ProgressOption = True, timeout: float | None = None, poll_seconds: float = 2.0
    ) -> Job:
        """Block until the job ends: returns it when it succeeded, raises :class:`JobFailed` or
        :class:`JobCancelled` otherwise, :class:`WaitTimeout` after ``timeout`` seconds.

        Follows ``GET /jobs/{id}/events`` (server-sent events), falling back to polling every
        ``poll_seconds`` when the stream is unavailable. ``progress=True`` draws a progress bar on
        stderr (plain lines when stderr is not a terminal); a callable is called with the job instead.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        display = ProgressDisplay(label=self.id[:8]) if progress is True else None
        notify = progress if callable(progress) else None

        def seen(data: dict[str, Any]) -> None:
            self.data = data
            if display is not None:
                display.update(self.stage if not self.done else self.status, self.fraction)
            if notify is not None:
                notify(self)

        try:
            if not self._follow_events(seen, deadline):
                self._poll(seen, deadline, poll_seconds)
        finally:
            if display is not None:
                display.close()
        if self.status == "failed":
            raise JobFailed(self)
        if self.status == "cancelled":
            raise JobCancelled(self)
        return self

    def _follow_events(self, seen: Callable[[dict[str, Any]], None], deadline: float | None) -> bool:
        """Follow the event stream until the job ends (True), or give up on it (False: poll instead)
        when it is unavailable or keeps breaking without delivering anything."""
        fruitless = 0
        while fruitless < 3:
            left = EVENTS_READ_SECONDS if deadline is None else _left(deadline)
            received = 0
            try:
                received = self._read_events(seen, max(0.1, min(EVENTS_READ_SECONDS, left)))
            except BROKEN_STREAM:
                pass
            except NotFound:
                self.refresh()  # raises NotFound when the job is gone; else the stream is unavailable
                return False
            except SpecpruneAPIError:
                return False
            if self.done:
                return True
            if deadline is not None and _left(deadline) <= 0:
                raise WaitTimeout(f"job {self.id} still {self.status} after the timeout")
            fruitless = 0 if received else fruitless + 1
        return False

    def _read_events(self, seen: Callable[[dict[str, Any]], None], read_seconds: float) -> int:
        """Read the event stream until it ends or the job does; returns how many job events came."""
        timeout = httpx.Timeout(30.0, read=read_seconds)
        headers = {"Accept": "text/event-stream"}
        received = 0
        with self._client._transport.stream(
            "GET", f"/jobs/{self.id}/events", lambda: {"headers": headers, "timeout": timeout}
        ) as response:
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise SpecpruneAPIError(response.status_code, {"detail": "not an event stream"})
            for event in iter_events(response.iter_lines()):
                if event.event == "deleted":
                    raise NotFound(404, {"status": 404, "detail": f"job {self.id} was deleted"})
                if event.event in ("status", "progress"):
                    received += 1
                    seen(json.loads(event.data))
                    if self.done:
                        break
        return received

    def _poll(
        self, seen: Callable[[dict[str, Any]], None], deadline: float | None, poll_seconds: float
    ) -> None:
        while True:
            seen(self._client._transport.request("GET", f"/jobs/{self.id}").json())
            if self.done:
                return
            if deadline is not None and _left(deadline) <= 0:
                raise WaitTimeout(f"job {self.id} still {self.status} after the timeout")
            time.sleep(poll_seconds if deadline is None else min(poll_seconds, max(_left(deadline), 0.0)))

    def download(
        self, path: str | os.PathLike[str], *, format: str | None = None, variant: str | None = None
    ) -> Path:
        """Stream the compressed model to ``path`` (a file, or a directory to use the server's file
        name); resumes if the connection breaks and checks the file's SHA-256. ``format="safetensors"``
        gives the weights alone; ``variant="pruned"`` the model before recovery."""
        params = {name: value for name, value in (("format", format), ("variant", variant)) if value}
        return download_file(self._client._transport, f"/jobs/{self.id}/model", path, params=params)

    def report(self) -> dict[str, Any]:
        """Core's full compression report (widths, spectra, metrics, timings)."""
        result: dict[str, Any] = self._client._transport.request("GET", f"/jobs/{self.id}/report").json()
        return result

    def cancel(self) -> Job:
        """Cancel: a queued job at once, a running one at its next progress point."""
        self.data = self._client._transport.request("POST", f"/jobs/{self.id}/cancel").json()
        return self

    def delete(self) -> None:
        """Delete the job and its files (409 while it is running: cancel it first)."""
        self._client._transport.delete(f"/jobs/{self.id}")


def _left(deadline: float) -> float:
    return deadline - time.monotonic()

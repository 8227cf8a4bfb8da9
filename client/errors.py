"""Errors the client raises: API refusals typed by HTTP status (each carrying the problem+json
document), a job that failed or was cancelled while waited for, and a wait that ran out of time."""

from __future__ import annotations

from typing import Any


class SpecpruneClientError(Exception):
    """Base class of every error this package raises."""


class TransportError(SpecpruneClientError):
    """The server could not be reached, or the connection broke, after every retry."""


class SpecpruneAPIError(SpecpruneClientError):
    """The API answered with an error: ``status`` is the HTTP status, ``problem`` the RFC 9457 problem
    document (``type``, ``title``, ``status``, ``detail`` and extensions such as ``errors``)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(self.detail)

    @property
    def detail(self) -> str:
        """The problem's ``detail`` (else its ``title``, else the status)."""
        return str(self.problem.get("detail") or self.problem.get("title") or f"HTTP {self.status}")

    @property
    def type(self) -> str | None:
        """The problem's ``type`` URI, e.g. ``/problems/not-found``."""
        value = self.problem.get("type")
        return str(value) if value is not None else None


class BadRequest(SpecpruneAPIError):
    """400: the request could not be read."""


class Unauthorized(SpecpruneAPIError):
    """401: no API key, or not a valid one."""


class NotFound(SpecpruneAPIError):
    """404: no such job (or it belongs to another tenant)."""


class Conflict(SpecpruneAPIError):
    """409: the job's status does not allow this (e.g. downloading before it succeeded)."""


class PayloadTooLarge(SpecpruneAPIError):
    """413: an uploaded file is larger than the server accepts."""


class UnsupportedMediaType(SpecpruneAPIError):
    """415: e.g. a model file in a format the server does not accept."""


class RangeNotSatisfiable(SpecpruneAPIError):
    """416: a download resumed past the end of the file."""


class ValidationFailed(SpecpruneAPIError):
    """422: a field is missing, unknown or out of range; ``errors`` lists them."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        value = self.problem.get("errors")
        return value if isinstance(value, list) else []


class ServerError(SpecpruneAPIError):
    """5xx: the server failed or a dependency is unavailable."""


STATUS_ERRORS: dict[int, type[SpecpruneAPIError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    416: RangeNotSatisfiable,
    422: ValidationFailed,
}


def error_for(status: int, problem: dict[str, Any]) -> SpecpruneAPIError:
    """The typed error for an HTTP error status."""
    if status >= 500:
        return ServerError(status, problem)
    return STATUS_ERRORS.get(status, SpecpruneAPIError)(status, problem)


class JobError(SpecpruneClientError):
    """A waited-for job ended without succeeding; ``job`` is its final state."""

    def __init__(self, job: Any, message: str) -> None:
        self.job = job
        super().__init__(message)


class JobFailed(JobError):
    """The job failed: ``code`` and ``message`` are the job's error (e.g. ``invalid_dataset``)."""

    def __init__(self, job: Any) -> None:
        error = job.error or {}
        self.code: str = str(error.get("code") or "failed")
        self.message: str = str(error.get("message") or "")
        super().__init__(job, f"job {job.id} failed: {self.code}: {self.message}".rstrip(": "))


class JobCancelled(JobError):
    """The job was cancelled before it finished."""

    def __init__(self, job: Any) -> None:
        super().__init__(job, f"job {job.id} was cancelled")


class WaitTimeout(SpecpruneClientError, TimeoutError):
    """``Job.wait(timeout=...)`` ran out of time; the job goes on on the server."""

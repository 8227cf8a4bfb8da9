"""RFC 9457 problem details: every error the API returns is ``application/problem+json``.

Each kind of error has a stable ``type`` URI, ``/problems/<slug>``, which the API also serves as a short
description. Routes raise ``Problem(...)``; handlers turn it, request validation errors, unknown routes
and unexpected exceptions into problem documents.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "/problems/"


@dataclass(frozen=True)
class ProblemKind:
    """One kind of error: its slug (the end of the ``type`` URI), HTTP status, title and meaning."""

    slug: str
    status: int
    title: str
    description: str

    @property
    def type(self) -> str:
        return TYPE_PREFIX + self.slug


KINDS: dict[str, ProblemKind] = {
    kind.slug: kind
    for kind in (
        ProblemKind(
            "bad-request", 400, "Bad request", "The request could not be read (malformed body or parameter)."
        ),
        ProblemKind(
            "unauthorized",
            401,
            "Authentication required",
            "Send a valid API key as 'Authorization: Bearer <key>'.",
        ),
        ProblemKind("not-found", 404, "Not found", "No such resource for this tenant."),
        ProblemKind(
            "method-not-allowed", 405, "Method not allowed", "The resource does not support this method."
        ),
        ProblemKind(
            "job-conflict", 409, "Job state conflict", "The job's current status does not allow this action."
        ),
        ProblemKind(
            "payload-too-large",
            413,
            "Payload too large",
            "An uploaded file is larger than the server's limit.",
        ),
        ProblemKind(
            "unsupported-media-type",
            415,
            "Unsupported media type",
            "The request body must be multipart/form-data.",
        ),
        ProblemKind(
            "unsupported-model-format",
            415,
            "Unsupported model format",
            "The uploaded model is not in an accepted format.",
        ),
        ProblemKind(
            "unsupported-dataset-format",
            415,
            "Unsupported dataset format",
            "The uploaded dataset is not in an accepted format.",
        ),
        ProblemKind(
            "dataset-in-use",
            409,
            "Dataset in use",
            "A queued or running job reads this dataset; delete it once the job has finished.",
        ),
        ProblemKind(
            "range-not-satisfiable",
            416,
            "Range not satisfiable",
            "The requested byte range lies outside the file.",
        ),
        ProblemKind(
            "validation-error",
            422,
            "Invalid request",
            "A field is missing, unknown or out of range; see 'errors'.",
        ),
        ProblemKind(
            "invalid-dataset",
            422,
            "Invalid dataset",
            "The dataset could not be used as given; 'code' says why (e.g. dataset_nan, invalid_image).",
        ),
        ProblemKind(
            "idempotency-key-reused",
            422,
            "Idempotency key reused",
            "This Idempotency-Key was used with a different payload.",
        ),
        ProblemKind(
            "busy",
            503,
            "Busy",
            "Every dataset inspection slot of this server is taken; retry after the Retry-After delay.",
        ),
        ProblemKind(
            "not-ready", 503, "Not ready", "A dependency (database, broker, storage) is unreachable."
        ),
        ProblemKind(
            "internal-error", 500, "Internal server error", "An unexpected error; it has been logged."
        ),
    )
}


class Problem(Exception):
    """Raise to answer with a problem document of the given kind."""

    def __init__(
        self, slug: str, detail: str, *, headers: dict[str, str] | None = None, **extensions: Any
    ) -> None:
        super().__init__(detail)
        self.kind = KINDS[slug]
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions


def problem_response(
    slug: str,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    """The problem+json response for one kind of error."""
    kind = KINDS[slug]
    body: dict[str, Any] = {"type": kind.type, "title": kind.title, "status": kind.status, "detail": detail}
    if instance:
        body["instance"] = instance
    reserved = {*body, "instance"}
    body.update({k: v for k, v in jsonable_encoder(extensions).items() if k not in reserved})
    return JSONResponse(body, status_code=kind.status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(
        exc.kind.slug, exc.detail, instance=request.url.path, headers=exc.headers, **exc.extensions
    )


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    return problem_response("validation-error", _summarise(errors), instance=request.url.path, errors=errors)


def _summarise(errors: list[dict[str, Any]]) -> str:
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:3]]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


_HTTP_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation-error",
}


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    slug = _HTTP_SLUGS.get(exc.status_code, "bad-request" if exc.status_code < 500 else "internal-error")
    detail = exc.detail if isinstance(exc.detail, str) else KINDS[slug].description
    response = problem_response(slug, detail, instance=request.url.path, headers=dict(exc.headers or {}))
    response.status_code = exc.status_code
    return response


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response("internal-error", "An unexpected error occurred.", instance=request.url.path)


def register_problem_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` with problem+json."""
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)


def validation_problem(errors: list[dict[str, Any]]) -> Problem:
    """A 422 problem from pydantic-style errors (``loc``, ``msg``, ``type``)."""
    cleaned = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]
    return Problem("validation-error", _summarise(cleaned), errors=cleaned)

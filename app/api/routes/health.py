"""Operations: liveness, readiness, Prometheus metrics, and the problem type descriptions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.api.deps import DispatcherDep, SessionDep, StorageDep
from app.problems import KINDS, Problem
from app.schemas import HealthStatus

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthStatus, summary="The process is up")
def healthz() -> HealthStatus:
    return HealthStatus(status="ok")


@router.get("/readyz", response_model=HealthStatus, summary="Database, broker and storage are reachable")
def readyz(session: SessionDep, dispatcher: DispatcherDep, storage: StorageDep) -> HealthStatus:
    checks: dict[str, str] = {}
    failures: list[str] = []
    for name, check in (
        ("database", lambda: session.execute(text("SELECT 1"))),
        ("broker", dispatcher.check),
        ("storage", storage.check),
    ):
        try:
            check()
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = "unavailable"
            failures.append(f"{name}: {type(exc).__name__}: {str(exc)[:200]}")
    if failures:
        raise Problem("not-ready", "; ".join(failures), checks=checks)
    return HealthStatus(status="ready", checks=checks)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/problems/{slug}", summary="What a problem type means", include_in_schema=False)
def problem_type(slug: str) -> dict[str, object]:
    kind = KINDS.get(slug)
    if kind is None:
        raise Problem("not-found", f"no problem type {slug}")
    return {"type": kind.type, "title": kind.title, "status": kind.status, "description": kind.description}

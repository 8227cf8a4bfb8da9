"""Prometheus metrics: request latency (measured here) and job state (read from the database at scrape
time, so every API replica reports the same numbers whichever process ran the jobs)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import crud
from app.db import SessionFactory, session_scope
from app.models import JobStatus, utcnow

DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)


class JobMetricsCollector(Collector):
    """Jobs by status, queue depth per queue, and durations of recently finished jobs."""

    def __init__(self, sessions: SessionFactory, window_seconds: float) -> None:
        self._sessions = sessions
        self._window = timedelta(seconds=window_seconds)

    def collect(self) -> Iterator[Metric]:
        with session_scope(self._sessions) as session:
            counts = crud.job_counts_by_status(session)
            depths = crud.queue_depths(session)
            durations = crud.finished_job_durations(session, since=utcnow() - self._window)
        jobs = GaugeMetricFamily("specprune_jobs", "Jobs stored, by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        depth = GaugeMetricFamily(
            "specprune_queue_depth", "Queued jobs waiting for a worker.", labels=["queue"]
        )
        for queue in ("cpu", "gpu"):
            depth.add_metric([queue], depths.get(queue, 0))
        yield depth
        yield _duration_histogram(durations, self._window)


def _duration_histogram(durations: list[tuple[str, float]], window: timedelta) -> Metric:
    family = GaugeHistogramMetricFamily(
        "specprune_job_duration_seconds",
        f"Run time (start to finish) of jobs that finished in the last {int(window.total_seconds())} s.",
        labels=["status"],
    )
    for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        values = [seconds for s, seconds in durations if s == status.value]
        buckets = [(str(float(b)), float(sum(1 for v in values if v <= b))) for b in DURATION_BUCKETS]
        buckets.append(("+Inf", float(len(values))))
        family.add_metric([status.value], buckets, gsum_value=float(sum(values)))
    return family


class Metrics:
    """The registry of one app instance (no process-global registry, so apps do not collide)."""

    def __init__(self, sessions: SessionFactory, window_seconds: float) -> None:
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "specprune_http_request_duration_seconds",
            "Time from request to response headers, by route template, method and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.registry.register(JobMetricsCollector(sessions, window_seconds))


class RequestLatencyMiddleware:
    """Observes each HTTP request's latency up to its response start (streams are not counted)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                self.metrics.request_latency.labels(
                    scope["method"], template, str(message["status"])
                ).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, timed_send)

"""Fixtures for the client tests: one `specprune serve` for the module's session, a model and data,
and a webhook receiver. Service fixtures (in-process app on SQLite) come from tests.service.conftest."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from client import Client, Job
from tests.client.servers import Receiver, Served, serve, webhook_receiver, write_model_and_data
from tests.service.conftest import api_factory, dataset_file, model_file  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def model_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_model_and_data(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(tmp_path_factory.mktemp("client-serve")) as running:
        yield running


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with webhook_receiver() as running:
        yield running


@pytest.fixture(scope="session")
def session_receiver() -> Iterator[Receiver]:
    with webhook_receiver() as running:
        yield running


@dataclass
class FinishedJob:
    """A job run to success through the client, with what wait() reported and where its webhook went."""

    job: Job
    seen: list[tuple[str, str, float]]
    webhook_path: str


@pytest.fixture(scope="session")
def finished_job(
    served: Served, model_and_data: tuple[Path, Path], session_receiver: Receiver
) -> FinishedJob:
    """Submitted with a callback whose receiver answers 500 once, then 200; waited for with a progress
    callback."""
    model, data = model_and_data
    path = "/finished"
    session_receiver.statuses[path] = [500]
    seen: list[tuple[str, str, float]] = []
    client = Client(served.url)
    job = client.submit(
        model,
        dataset=data,
        config={"flops_ratio": 0.5},
        eval_fraction=0.25,
        callback_url=session_receiver.url(path),
    )
    job.wait(progress=lambda j: seen.append((j.status, j.stage, j.fraction)), timeout=120)
    return FinishedJob(job, seen, path)

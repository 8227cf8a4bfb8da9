"""Fixtures for the command-line tests: a tiny exported CNN and its data, and one `specprune serve`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.servers import Served, serve, write_model_and_data


@pytest.fixture(scope="session")
def model_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_model_and_data(tmp_path_factory.mktemp("cli-inputs"))


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve(tmp_path_factory.mktemp("cli-serve")) as running:
        yield running

"""`specprune datasets upload|list|delete` and the client's dataset calls, against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from client import Client
from tests.client.servers import Served


def _cli(served: Served, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "datasets", *args],
        env=served.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_datasets_round_trip_through_the_cli(served: Served, model_and_data: tuple[Path, Path]) -> None:
    _, data = model_and_data
    upload = _cli(served, "upload", str(data))
    assert upload.returncode == 0, upload.stderr
    dataset = json.loads(upload.stdout)
    assert dataset["format"] == "npz" and dataset["samples"] > 0
    listing = _cli(served, "list", "--json")
    assert dataset["id"] in [json.loads(line)["id"] for line in listing.stdout.splitlines()]
    with Client(served.url) as client:
        assert dataset["id"] in [d["id"] for d in client.datasets()]
    assert _cli(served, "delete", dataset["id"]).returncode == 0
    gone = _cli(served, "delete", dataset["id"])
    assert gone.returncode == 2 and gone.stderr.strip().count("\n") == 0

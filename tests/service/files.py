"""Real files for the service tests: small models in every accepted format, npz/safetensors arrays,
image-folder archives made with Pillow, and a helper that runs one job in a real sandbox."""

from __future__ import annotations

import io
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.service.conftest import Api
from worker.context import WorkerContext
from worker.pipeline import execute_job

# Fast job settings: short leases, no latency measurement (two seconds a job), a modest memory limit.
FAST: dict[str, Any] = {
    "heartbeat_seconds": 0.2,
    "lease_seconds": 5.0,
    "job_memory_bytes": 3 * 2**30,
    "job_measure_latency": False,
    "job_threads": 1,
}


def cnn(channels: int = 3, classes: int = 10, width: int = 8) -> Any:
    """conv-relu-conv-relu-pool-linear, the shape most uploads have."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, classes),
    ).eval()


def save_pt2(model: Any, example_shape: tuple[int, ...], path: Path) -> Path:
    """``torch.export.save`` of ``model`` with a dynamic batch."""
    import torch

    example = torch.randn(2, *example_shape[1:])
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    return path


def save_onnx(model: Any, example_shape: tuple[int, ...], path: Path, external_data: bool = False) -> Path:
    """An ONNX file with a dynamic batch, as users export them: its weights inside, or with
    ``external_data`` in ``<path>.data`` beside it (``torch.onnx.export``'s default)."""
    import torch

    example = torch.randn(2, *example_shape[1:])
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        external_data=external_data,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    return path


def save_torchscript(model: Any, example_shape: tuple[int, ...], path: Path) -> Path:
    import torch

    torch.jit.save(torch.jit.trace(model, torch.randn(2, *example_shape[1:])), str(path))
    return path


def npz_bytes(x: np.ndarray, y: np.ndarray | None = None) -> bytes:
    buffer = io.BytesIO()
    if y is None:
        np.savez(buffer, x=x)
    else:
        np.savez(buffer, x=x, y=y)
    return buffer.getvalue()


def random_data(
    samples: int, shape: tuple[int, ...] = (3, 8, 8), classes: int | None = 10, seed: int = 0
) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, *shape)).astype(np.float32)
    return npz_bytes(x, rng.integers(0, classes, samples) if classes else None)


def image_folder(path: Path, counts: dict[str | None, dict[str, int]], size: int = 10, seed: int = 0) -> Path:
    """PNG images at ``<split>/<class>/<i>.png`` (``<class>/<i>.png`` for split None) in a tar.gz/zip."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    for split, classes in counts.items():
        for name, count in classes.items():
            for i in range(count):
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
                files[f"{split}/{name}/{i}.png" if split else f"{name}/{i}.png"] = buffer.getvalue()
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return path
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def run_job(api: Api, job_id: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """Run the job in this process's worker pipeline (a real sandboxed child); (outcome, job)."""
    outcome = execute_job(WorkerContext.from_settings(api.settings), job_id, **kwargs)
    return outcome, api.client.get(f"/jobs/{job_id}").json()


def submit(
    api: Api,
    model: bytes | Path,
    *,
    dataset: bytes | Path | None = None,
    name: str = "model.pt2",
    **fields: str,
) -> Any:
    """POST /jobs with the local tenant; ``fields`` are the form's text fields."""
    files = {"model": (name, model if isinstance(model, bytes) else model.read_bytes())}
    if dataset is not None:
        files["dataset"] = ("data.npz", dataset if isinstance(dataset, bytes) else dataset.read_bytes())
    return api.client.post("/jobs", files=files, data=fields)


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)
    return value

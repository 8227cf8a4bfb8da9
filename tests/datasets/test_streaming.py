"""Memory follows the batch, not the dataset: files several times a small budget stream within it.

``tracemalloc`` sees every NumPy buffer and Python object the readers allocate (memory-mapped pages are
the page cache's, not the process heap's), so its peak is the readers' working memory.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from core.datasets import Dataset, open_dataset
from tests.datasets.builders import image_folder, write_archive

BUDGET = 8 << 20  # the "configured memory budget" these tests hold the readers to
ROWS, FEATURES = 4096, 2048  # x is 32 MiB of float32: four budgets


def big_x() -> np.ndarray:
    """64 MiB of float32 that compresses well (fast to deflate) yet differs row by row."""
    return (np.arange(ROWS, dtype=np.float32)[:, None] + np.arange(FEATURES, dtype=np.float32) % 7).astype(
        np.float32
    )


def streamed_peak(open_fn: Callable[[], Dataset], batch_size: int) -> tuple[int, float, int]:
    """(peak traced bytes, sum of all x, samples) from opening, validating and streaming everything."""
    tracemalloc.start()
    try:
        with open_fn() as ds:
            total, seen = 0.0, 0
            for x, _ in ds.iter_batches(np.arange(ds.samples), batch_size):
                total += float(x.double().sum())
                seen += len(x)
        return tracemalloc.get_traced_memory()[1], total, seen
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", ["npz", "npz_compressed", "safetensors"])
def test_arrays_stream_within_the_budget(tmp_path: Path, kind: str) -> None:
    x = big_x()
    expected = float(x.sum(dtype=np.float64))
    path = tmp_path / f"big-{kind}.bin"
    if kind == "safetensors":
        save_file({"x": x, "y": np.arange(ROWS) % 10}, str(path))
    else:
        with open(path, "wb") as f:
            (np.savez_compressed if kind == "npz_compressed" else np.savez)(f, x=x, y=np.arange(ROWS) % 10)
    del x
    assert path.stat().st_size > 3 * BUDGET or kind == "npz_compressed"
    peak, total, seen = streamed_peak(lambda: open_dataset(path, work_dir=tmp_path), batch_size=64)
    assert seen == ROWS and total == pytest.approx(expected, rel=1e-9)
    assert peak < BUDGET, f"peak {peak / 2**20:.1f} MiB for a {ROWS * FEATURES * 4 / 2**20:.0f} MiB dataset"


def test_image_archive_streams_within_the_budget(tmp_path: Path) -> None:
    files, _ = image_folder(np.random.default_rng(0), {"train": {"a": 250, "b": 250}}, size=(64, 64))
    path = write_archive(tmp_path / "imgs.tar.gz", files, "tar.gz")
    decoded_bytes = 500 * 3 * 64 * 64 * 4  # 24 MiB of float32 once decoded
    peak, _, seen = streamed_peak(lambda: open_dataset(path, work_dir=tmp_path), batch_size=16)
    assert seen == 500
    assert peak < decoded_bytes / 6, (
        f"peak {peak / 2**20:.1f} MiB for {decoded_bytes / 2**20:.0f} MiB decoded"
    )

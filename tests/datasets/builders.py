"""Small real files for dataset tests: PNG/JPEG images made with Pillow, packed into zip/tar archives."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(pixels: np.ndarray, format: str = "PNG") -> bytes:
    """Encode uint8 (H, W, 3) or (H, W) pixels; PNG is lossless, so decoded values are exact."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def random_pixels(rng: np.random.Generator, height: int = 8, width: int = 8) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def write_archive(path: Path, files: dict[str, bytes], kind: str) -> Path:
    """Pack ``files`` (member name -> content) as ``kind``: 'zip', 'tar' or 'tar.gz'."""
    if kind == "zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in files.items():
                zf.writestr(name, data)
        return path
    assert kind in ("tar", "tar.gz"), kind
    with tarfile.open(path, "w:gz" if kind == "tar.gz" else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def image_folder(
    rng: np.random.Generator, splits: dict[str | None, dict[str, int]], size: tuple[int, int] = (8, 8)
) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """Files laid out ``<split>/<class>/<i>.png`` (or ``<class>/<i>.png`` for split None), and their pixels."""
    files: dict[str, bytes] = {}
    pixels: dict[str, np.ndarray] = {}
    for split, classes in splits.items():
        for label, count in classes.items():
            for i in range(count):
                name = f"{split}/{label}/{i:04d}.png" if split else f"{label}/{i:04d}.png"
                pixels[name] = random_pixels(rng, *size)
                files[name] = image_bytes(pixels[name])
    return files, pixels

"""CIFAR-10 from the shared image-folder archive, decoded once into a uint8 cache.

The archive (``../shared/data/cifar10/cifar10-jpg.tar.gz`` from the repository root) holds
``train/<class>/<NNNN>.jpg`` and ``test/<class>/<NNNN>.jpg``. Decoding all 60,000 JPEGs takes tens of
seconds, so the first call writes ``.cache/cifar10/{split}_x.npy`` (uint8, N x 32 x 32 x 3, HWC, RGB) and
``{split}_y.npy`` (int64) at the repository root; later calls memory-map them.

Samples are ordered by (class, file name), classes alphabetically -- which is also the canonical CIFAR-10
label order (airplane=0 ... truck=9).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpg.tar.gz"
CACHE_DIR = REPO_ROOT / ".cache" / "cifar10"
CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
SPLITS: tuple[str, ...] = ("train", "test")
# Per-channel statistics of the CIFAR-10 train split (RGB, pixel values in [0, 1]); the usual constants.
MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)


def _decode_archive(archive: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stream the archive once and decode every JPEG: {split: (x uint8 N,32,32,3, y int64 N)}."""
    found: dict[str, list[tuple[int, str, np.ndarray]]] = {s: [] for s in SPLITS}
    class_index = {name: i for i, name in enumerate(CLASSES)}
    with tarfile.open(archive, mode="r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] not in found:
                continue
            split, label, name = parts
            if label not in class_index:
                raise ValueError(f"unexpected class folder {label!r} in {archive}")
            handle = tar.extractfile(member)
            assert handle is not None, member.name
            with Image.open(io.BytesIO(handle.read())) as image:
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
            assert pixels.shape == (32, 32, 3), f"{member.name}: {pixels.shape}"
            found[split].append((class_index[label], name, pixels))
    decoded = {}
    for split, items in found.items():
        items.sort(key=lambda item: (item[0], item[1]))
        x = np.stack([pixels for _, _, pixels in items])  # (N, 32, 32, 3)
        y = np.array([label for label, _, _ in items], dtype=np.int64)
        decoded[split] = (x, y)
    return decoded


def _write_atomically(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def ensure_cache(archive: Path = ARCHIVE, cache_dir: Path = CACHE_DIR) -> Path:
    """Decode ``archive`` into ``cache_dir`` unless every cache file is already there; return the dir."""
    wanted = [cache_dir / f"{split}_{kind}.npy" for split in SPLITS for kind in ("x", "y")]
    if all(p.exists() for p in wanted):
        return cache_dir
    if not archive.exists():
        raise FileNotFoundError(f"CIFAR-10 archive not found at {archive} (see ../shared/data/README.md)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in _decode_archive(archive).items():
        _write_atomically(cache_dir / f"{split}_x.npy", x)
        _write_atomically(cache_dir / f"{split}_y.npy", y)
    return cache_dir


def load_cifar10(
    split: str, archive: Path = ARCHIVE, cache_dir: Path = CACHE_DIR
) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` for ``split`` ('train' or 'test'): x uint8 (N, 32, 32, 3) RGB (memory-mapped), y int64."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cache = ensure_cache(archive, cache_dir)
    x = np.load(cache / f"{split}_x.npy", mmap_mode="r")
    y = np.load(cache / f"{split}_y.npy")
    return x, y


def normalize(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 32, 32, 3) -> float32 NCHW tensor scaled to [0, 1] and standardised by MEAN/STD."""
    images = torch.from_numpy(np.array(x)) if isinstance(x, np.ndarray) else x  # copy: mmaps are read-only
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {tuple(images.shape)}")
    chw = images.permute(0, 3, 1, 2).to(torch.float32).div_(255.0)  # (N, 3, H, W)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    return ((chw - mean) / std).contiguous()

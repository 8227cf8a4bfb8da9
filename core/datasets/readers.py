"""``open_dataset``: recognise a dataset file by its content and open it with the matching reader.

Recognised by magic bytes, never by file name: a zip with ``x.npy``, or with ``.npy`` members and no
images, is an npz, any other zip an image-folder archive; ``ustar`` at byte 257 is a tar; gzip, bzip2
and xz streams must hold a tar (an npz or safetensors file inside gzip is not supported); an 8-byte
little-endian length followed by ``{`` is a safetensors file.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from core.datasets.archives import is_image_path, safe_parts, scan_tar, scan_zip
from core.datasets.arrays import read_npz, read_safetensors
from core.datasets.base import Dataset
from core.datasets.errors import DatasetError, UnsupportedDatasetFormatError
from core.datasets.image_folder import ImageFolderDataset
from core.datasets.limits import DatasetLimits
from core.datasets.preprocess import Preprocess

FORMATS: tuple[str, ...] = ("npz", "safetensors", "zip", "tar", "tar.gz", "tar.bz2", "tar.xz")
IMAGE_FORMATS = frozenset({"zip", "tar", "tar.gz", "tar.bz2", "tar.xz"})
COMPRESSED_TARS: dict[bytes, tuple[str, Callable[..., IO[Any]]]] = {
    b"\x1f\x8b": ("tar.gz", gzip.open),
    b"BZh": ("tar.bz2", bz2.open),
    b"\xfd7zXZ\x00": ("tar.xz", lzma.open),
}


def _is_tar_block(block: bytes) -> bool:
    return len(block) >= 262 and block[257:262] == b"ustar"


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def detect_format(path: Path) -> str:
    """One of ``FORMATS``, from the file's first bytes (and, for zips, its member names)."""
    size = path.stat().st_size
    if size == 0:
        raise UnsupportedDatasetFormatError("the dataset file is empty")
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
        except zipfile.BadZipFile as e:
            raise DatasetError(f"the zip archive is not readable: {e}") from e
        has_arrays = any(n.endswith(".npy") for n in names)
        has_images = any(is_image_path(safe_parts(n)) for n in names if not n.endswith("/"))
        return "npz" if "x.npy" in names or (has_arrays and not has_images) else "zip"
    if _is_tar_block(head):
        return "tar"
    for magic, (name, opener) in COMPRESSED_TARS.items():
        if head.startswith(magic):
            try:
                with opener(path, "rb") as stream:
                    block = stream.read(512)
            except (OSError, EOFError, lzma.LZMAError) as e:
                raise DatasetError(f"the {name} stream is corrupt: {e}") from e
            if _is_tar_block(block):
                return name
            raise UnsupportedDatasetFormatError(
                f"a compressed file that does not hold a tar archive; compress image folders as {name}, "
                "upload npz and safetensors files uncompressed"
            )
    if _is_safetensors(head, size):
        return "safetensors"
    raise UnsupportedDatasetFormatError(
        "unrecognised dataset content; supported: .npz and .safetensors with tensors x (and y), or image "
        "folders as .zip, .tar, .tar.gz, .tar.bz2 or .tar.xz"
    )


def open_dataset(
    path: str | Path,
    preprocess: Preprocess | None = None,
    limits: DatasetLimits | None = None,
    work_dir: Path | None = None,
    check_images: bool = True,
) -> Dataset:
    """Open and validate the dataset in ``path``; close it (or use ``with``) when done.

    ``preprocess`` applies to image archives only (arrays are already preprocessed); ``work_dir`` is
    where a private folder for extracted data is made (the system temp dir by default);
    ``check_images=False`` skips reading every image header up front (for a dataset validated at upload).
    """
    path = Path(path)
    limits = limits or DatasetLimits()
    fmt = detect_format(path)
    if fmt not in IMAGE_FORMATS:
        if preprocess is not None:
            raise DatasetError(
                f"preprocess applies to image archives; a {fmt} file holds preprocessed arrays"
            )
        return read_npz(path, limits, work_dir) if fmt == "npz" else read_safetensors(path, limits)
    if fmt == "zip":
        zip_store, members = scan_zip(path, limits)
        return ImageFolderDataset(fmt, zip_store, members, preprocess or Preprocess(), check_images)
    tar_store, members = scan_tar(path, limits, compressed=fmt != "tar", work_parent=work_dir)
    return ImageFolderDataset(fmt, tar_store, members, preprocess or Preprocess(), check_images)

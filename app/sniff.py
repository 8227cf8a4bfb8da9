"""Recognise uploaded files by their content, reading only a zip archive's directory (never loading).

The service accepts ``torch.export`` programs (``.pt2`` archives) and ``.npz`` datasets here; both are
zip archives, recognised from their central directory, read through ranged reads of the stored object.
"""

from __future__ import annotations

import io
import zipfile

from app.storage import Storage

# Reading more than this to list an archive means a directory no real model or dataset has.
MAX_DIRECTORY_BYTES = 16 * 1024 * 1024
MAX_ENTRIES = 100_000


class _StoredObjectFile(io.RawIOBase):
    """A read-only seekable file over one stored object, each read a ranged read."""

    def __init__(self, storage: Storage, key: str, size: int) -> None:
        self._storage = storage
        self._key = key
        self._size = size
        self._position = 0
        self._budget = MAX_DIRECTORY_BYTES

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._position + size)
        if end <= self._position:
            return b""
        self._budget -= end - self._position
        if self._budget < 0:
            raise ValueError("archive directory too large")
        data = self._storage.read_bytes(self._key, self._position, end - 1)
        self._position += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def archive_names(storage: Storage, key: str, size: int) -> list[str] | None:
    """The entry names of a stored zip archive, None when it is not one (or an absurd one)."""
    if size < 22:
        return None
    if storage.read_bytes(key, 0, 3) != b"PK\x03\x04":
        return None
    try:
        with zipfile.ZipFile(_StoredObjectFile(storage, key, size)) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError):
        return None
    return names if len(names) <= MAX_ENTRIES else None


def detect_model_format(storage: Storage, key: str, size: int) -> str | None:
    """``"pt2"`` for a torch.export archive; None for anything else."""
    names = archive_names(storage, key, size)
    if names is None:
        return None
    if any(name == "archive_format" or name.endswith("/archive_format") for name in names):
        return "pt2"
    return None


def is_npz(storage: Storage, key: str, size: int) -> bool:
    """Whether the object is a NumPy ``.npz`` archive with an array named ``x``."""
    names = archive_names(storage, key, size)
    return names is not None and "x.npy" in names

"""Reading untrusted compressed streams with a running count of the bytes they actually produce."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path
from typing import IO

from core.datasets.errors import DatasetTooLargeError

CHUNK = 1 << 20


class ByteBudget:
    """A decompressed-bytes allowance shared by every member read from one file."""

    def __init__(self, limit: int, what: str):
        self.limit = limit
        self.used = 0
        self.what = what

    def take(self, n: int) -> None:
        """Account for ``n`` more bytes; refuse once the total passes the limit."""
        self.used += n
        if self.used > self.limit:
            raise DatasetTooLargeError(f"{self.what} decompresses to more than the {self.limit:,}-byte limit")


def read_bounded(src: IO[bytes], budget: ByteBudget, member_limit: int, name: str) -> bytes:
    """All of ``src``, refusing more than ``member_limit`` bytes for this member or the shared budget."""
    data = src.read(member_limit + 1)
    if len(data) > member_limit:
        raise DatasetTooLargeError(f"{name} is larger than the {member_limit:,}-byte limit for one file")
    budget.take(len(data))
    return data


def copy_bounded(src: IO[bytes], dst: IO[bytes], budget: ByteBudget) -> int:
    """Copy ``src`` to ``dst`` chunk by chunk, charging each chunk to ``budget``; returns the bytes copied."""
    copied = 0
    while chunk := src.read(CHUNK):
        budget.take(len(chunk))
        dst.write(chunk)
        copied += len(chunk)
    return copied


class PrivateDir:
    """A fresh directory for one dataset's extracted data, removed on ``cleanup`` or garbage collection."""

    def __init__(self, parent: Path | None = None):
        self.path = Path(tempfile.mkdtemp(prefix="specprune-dataset-", dir=parent))
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, True)

    def cleanup(self) -> None:
        self._finalizer()

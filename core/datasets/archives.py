"""Safe listing and reading of image archives (zip, tar, compressed tar).

Every member is checked before anything is used: absolute paths, ``..`` components, links, devices and
other non-regular entries refuse the whole archive. Sizes are bounded per member and in total, counting
the bytes the decompressor actually produces. Member names are never used as file-system paths: a
compressed tar is streamed once into a single private blob file, addressed by offset.
"""

from __future__ import annotations

import lzma
import os
import re
import stat
import tarfile
import zipfile
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core.datasets.bounded_io import ByteBudget, PrivateDir, read_bounded
from core.datasets.errors import DatasetError, DatasetTooLargeError, UnsafeArchiveError
from core.datasets.limits import DatasetLimits

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
)
TAR_HEADER_BYTES = 512
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Member:
    """One image file in an archive: its path components and where its bytes are."""

    parts: tuple[str, ...]
    key: str  # zip member name (zip stores)
    offset: int  # byte offset (tar and blob stores)
    size: int

    @property
    def name(self) -> str:
        return "/".join(self.parts)


def safe_parts(name: str) -> tuple[str, ...]:
    """Path components of an archive member name; refuses absolute paths and ``..`` traversal."""
    normalised = name.replace("\\", "/")
    if "\x00" in normalised or normalised.startswith("/") or _DRIVE.match(normalised):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    parts = tuple(p for p in normalised.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchiveError(f"archive member {name!r} points outside the archive ('..')")
    return parts


def is_image_path(parts: tuple[str, ...]) -> bool:
    """An image file name, not inside hidden or macOS metadata folders."""
    if not parts or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts):
        return False
    return os.path.splitext(parts[-1])[1].lower() in IMAGE_EXTENSIONS


class MemberStore(ABC):
    """Reads one member's bytes on demand."""

    def __init__(self, limits: DatasetLimits):
        self.limits = limits

    @abstractmethod
    def read(self, member: Member) -> bytes:
        """The member's bytes."""

    @abstractmethod
    def close(self) -> None:
        """Release files (and private directories)."""


class ZipStore(MemberStore):
    """Members of a zip, decompressed one at a time."""

    def __init__(self, path: Path, limits: DatasetLimits):
        super().__init__(limits)
        self._zip = zipfile.ZipFile(path)

    def read(self, member: Member) -> bytes:
        with self._zip.open(member.key) as src:
            budget = ByteBudget(self.limits.max_member_bytes, member.name)
            return read_bounded(src, budget, self.limits.max_member_bytes, member.name)

    def close(self) -> None:
        self._zip.close()


class OffsetStore(MemberStore):
    """Members as byte ranges of one file: an uncompressed tar, or the blob extracted from a compressed one."""

    def __init__(self, path: Path, limits: DatasetLimits, workdir: PrivateDir | None = None):
        super().__init__(limits)
        self._fd = os.open(path, os.O_RDONLY)
        self._workdir = workdir

    def read(self, member: Member) -> bytes:
        data = os.pread(self._fd, member.size, member.offset)
        if len(data) != member.size:
            raise DatasetError(f"{member.name} is truncated in the archive")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._workdir is not None:
            self._workdir.cleanup()


def scan_zip(path: Path, limits: DatasetLimits) -> tuple[ZipStore, list[Member]]:
    """Check every member of a zip and list its image files."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"the zip archive is not readable: {e}") from e
    if len(infos) > limits.max_members:
        raise DatasetTooLargeError(f"the archive has more than {limits.max_members:,} members")
    members = []
    declared = 0
    for info in infos:
        parts = safe_parts(info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"archive member {info.filename!r} is a symbolic link")
        if info.is_dir() or not is_image_path(parts):
            continue
        if info.flag_bits & 0x1:
            raise DatasetError(f"archive member {info.filename!r} is encrypted")
        if info.file_size > limits.max_member_bytes:
            raise DatasetTooLargeError(
                f"{info.filename} is larger than the {limits.max_member_bytes:,}-byte limit"
            )
        declared += info.file_size
        if declared > limits.max_bytes:
            raise DatasetTooLargeError(
                f"the archive decompresses to more than the {limits.max_bytes:,}-byte limit"
            )
        members.append(Member(parts, info.filename, 0, info.file_size))
    return ZipStore(path, limits), members


def _check_tar_member(info: tarfile.TarInfo) -> None:
    if info.issym() or info.islnk():
        raise UnsafeArchiveError(f"archive member {info.name!r} is a link")
    if info.issparse() or not (info.isfile() or info.isdir()):
        raise UnsafeArchiveError(f"archive member {info.name!r} is not a regular file or folder")


def _list_tar(path: Path, limits: DatasetLimits, blob: BinaryIO | None) -> list[Member]:
    """Stream through a tar, checking each member; copy images into ``blob`` when one is given."""
    budget = ByteBudget(limits.max_bytes, "the archive")
    members: list[Member] = []
    with tarfile.open(path, mode="r|*") as tar:
        for count, info in enumerate(tar, start=1):
            if count > limits.max_members:
                raise DatasetTooLargeError(f"the archive has more than {limits.max_members:,} members")
            budget.take(TAR_HEADER_BYTES + info.size)  # what the stream must produce to get past it
            parts = safe_parts(info.name)
            _check_tar_member(info)
            if not info.isfile() or not is_image_path(parts):
                continue
            if info.size > limits.max_member_bytes:
                raise DatasetTooLargeError(
                    f"{info.name} is larger than the {limits.max_member_bytes:,}-byte limit"
                )
            if blob is None:
                members.append(Member(parts, "", info.offset_data, info.size))
                continue
            src = tar.extractfile(info)
            assert src is not None, info.name
            data = read_bounded(src, ByteBudget(info.size, info.name), info.size, info.name)
            members.append(Member(parts, "", blob.tell(), len(data)))
            blob.write(data)
    return members


def scan_tar(
    path: Path, limits: DatasetLimits, compressed: bool, work_parent: Path | None = None
) -> tuple[OffsetStore, list[Member]]:
    """Check every member of a tar and list its image files.

    Uncompressed: images are addressed in place. Compressed: the archive is streamed once and its images
    copied into one private blob file (bytes counted as they decompress), then addressed there.
    """
    if not compressed:
        try:
            return OffsetStore(path, limits), _list_tar(path, limits, None)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise DatasetError(f"the tar archive is not readable: {e}") from e
    workdir = PrivateDir(work_parent)
    blob_path = workdir.path / "images.blob"
    try:
        with open(blob_path, "wb") as blob:
            members = _list_tar(path, limits, blob)
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
        workdir.cleanup()
        raise DatasetError(f"the compressed tar archive is not readable: {e}") from e
    except BaseException:
        workdir.cleanup()
        raise
    return OffsetStore(blob_path, limits, workdir), members

"""Zip archives checked before anything reads them: by actual, not declared, sizes.

Every entry is stream-decompressed and its bytes counted; reading stops as soon as an entry, the
whole archive or the expansion ratio passes its limit, so a zip bomb costs at most the limit's worth
of CPU and never its decompressed size in memory. Entry names that could escape a directory, entries
that overlap one another (the "overlapping files" bomb), duplicate or encrypted entries are refused.
"""

from __future__ import annotations

import io
import itertools
import os
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from core.formats.errors import CorruptModelError, UnsafeArchiveError

_CHUNK = 1 << 20
_GiB = 1 << 30
_LOCAL_HEADER_SIZE = 30


@dataclass(frozen=True)
class ArchiveLimits:
    """Limits applied to every model file and every archive inside it.

    - ``max_file_bytes``: size on disk of the uploaded file (ONNX is further bound by protobuf's 2 GiB).
    - ``max_entries``: zip entries; torch archives hold one entry per tensor plus a dozen more.
    - ``max_total_bytes`` / ``max_entry_bytes``: decompressed bytes, counted while decompressing.
    - ``max_ratio``: decompressed / compressed bytes of one entry, checked once it has produced
      ``ratio_floor_bytes``; torch writes entries uncompressed (ratio 1), deflated weights reach ~1.1,
      while a bomb reaches ~1000.
    """

    max_file_bytes: int = 4 * _GiB
    max_entries: int = 100_000
    max_total_bytes: int = 4 * _GiB
    max_entry_bytes: int = 4 * _GiB
    max_ratio: float = 200.0
    ratio_floor_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_entries", "max_total_bytes", "max_entry_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_ratio <= 1.0:
            raise ValueError(f"max_ratio must be > 1, got {self.max_ratio}")


DEFAULT_LIMITS = ArchiveLimits()


@dataclass(frozen=True)
class ZipInventory:
    """The checked contents of a zip: entry names, the common top-level folder torch writes
    (``prefix``, empty when there is none) and each entry's verified decompressed size."""

    names: tuple[str, ...]
    prefix: str
    sizes: dict[str, int]

    def relative(self, name: str) -> str:
        """``name`` without the archive's top-level folder."""
        return name[len(self.prefix) :] if self.prefix and name.startswith(self.prefix) else name

    @property
    def relative_names(self) -> frozenset[str]:
        return frozenset(self.relative(n) for n in self.names)


def check_file_size(path: str | os.PathLike[str], limits: ArchiveLimits = DEFAULT_LIMITS) -> int:
    """The file's size in bytes; refuses files past ``limits.max_file_bytes``."""
    size = os.path.getsize(path)
    if size > limits.max_file_bytes:
        raise UnsafeArchiveError(
            f"the file is {size} bytes, over the limit of {limits.max_file_bytes} bytes.", hint=""
        )
    return size


def check_zip(source: str | os.PathLike[str] | bytes, limits: ArchiveLimits = DEFAULT_LIMITS) -> ZipInventory:
    """Open a zip, verify every entry by decompressing it (counting, never keeping, the bytes) and
    return its inventory. Raises :class:`UnsafeArchiveError` past a limit or on a dangerous name,
    :class:`CorruptModelError` when the archive is damaged (bad CRC, truncated, sizes that lie)."""
    with open_zip(source) as archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise UnsafeArchiveError(
                f"the archive has {len(infos)} entries, over the limit of {limits.max_entries}.", hint=""
            )
        _check_names(infos)
        _check_no_overlap(infos)
        sizes = _count_decompressed(archive, infos, limits)
    names = tuple(info.filename for info in infos)
    return ZipInventory(names=names, prefix=_common_prefix(names), sizes=sizes)


def open_zip(source: str | os.PathLike[str] | bytes) -> zipfile.ZipFile:
    """``zipfile.ZipFile`` over a path or bytes, with damage reported as :class:`CorruptModelError`."""
    try:
        return zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as exc:
        raise CorruptModelError(f"the zip archive is truncated or damaged ({exc}).", hint="") from exc


def read_entry(archive: zipfile.ZipFile, name: str, max_bytes: int) -> bytes:
    """One entry's bytes, refusing to produce more than ``max_bytes``."""
    try:
        with archive.open(name) as stream:
            data = stream.read(max_bytes + 1)
    except (zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise CorruptModelError(f"entry {name!r} cannot be read ({exc}).", hint="") from exc
    if len(data) > max_bytes:
        raise UnsafeArchiveError(f"entry {name!r} is larger than {max_bytes} bytes.", hint="")
    return data


def _check_names(infos: list[zipfile.ZipInfo]) -> None:
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        if not _is_safe_name(name):
            raise UnsafeArchiveError(f"entry name {name!r} points outside the archive.", hint="")
        if name in seen:
            raise UnsafeArchiveError(f"entry {name!r} appears twice.", hint="")
        seen.add(name)
        if info.flag_bits & 0x1:
            raise UnsafeArchiveError(f"entry {name!r} is encrypted.", hint="")


def _is_safe_name(name: str) -> bool:
    if not name or "\x00" in name or "\\" in name or name.startswith("/"):
        return False
    if len(name) > 1 and name[1] == ":":  # a Windows drive letter
        return False
    return ".." not in PurePosixPath(name).parts


def _check_no_overlap(infos: list[zipfile.ZipInfo]) -> None:
    """Entries must occupy disjoint byte ranges: overlapping entries let a few kilobytes of
    compressed data be decompressed many times over."""
    spans = sorted((info.header_offset, _data_end(info), info.filename) for info in infos)
    for (_, end, name), (start, _, next_name) in itertools.pairwise(spans):
        if start < end:
            raise UnsafeArchiveError(f"entries {name!r} and {next_name!r} overlap.", hint="")


def _data_end(info: zipfile.ZipInfo) -> int:
    """A lower bound on where the entry's bytes end (its local extra field is not counted)."""
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    name_bytes = len(info.orig_filename.encode(encoding, errors="replace"))
    return info.header_offset + _LOCAL_HEADER_SIZE + name_bytes + info.compress_size


def _count_decompressed(
    archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], limits: ArchiveLimits
) -> dict[str, int]:
    sizes: dict[str, int] = {}
    total = 0
    for info in infos:
        if info.is_dir():
            sizes[info.filename] = 0
            continue
        produced = 0
        try:
            with archive.open(info) as stream:
                while chunk := stream.read(_CHUNK):
                    produced += len(chunk)
                    total += len(chunk)
                    _check_limits(info, produced, total, limits)
        except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError) as exc:
            raise CorruptModelError(f"entry {info.filename!r} is damaged ({exc}).", hint="") from exc
        if produced != info.file_size:
            raise CorruptModelError(
                f"entry {info.filename!r} declares {info.file_size} bytes but holds {produced}.", hint=""
            )
        sizes[info.filename] = produced
    return sizes


def _check_limits(info: zipfile.ZipInfo, produced: int, total: int, limits: ArchiveLimits) -> None:
    if produced > limits.max_entry_bytes:
        raise UnsafeArchiveError(
            f"entry {info.filename!r} expands past {limits.max_entry_bytes} bytes.", hint=""
        )
    if total > limits.max_total_bytes:
        raise UnsafeArchiveError(f"the archive expands past {limits.max_total_bytes} bytes.", hint="")
    if produced >= limits.ratio_floor_bytes and produced > limits.max_ratio * max(info.compress_size, 1):
        raise UnsafeArchiveError(
            f"entry {info.filename!r} expands more than {limits.max_ratio:g}x "
            f"({info.compress_size} compressed bytes); a decompression bomb.",
            hint="",
        )


def _common_prefix(names: tuple[str, ...]) -> str:
    """The single top-level folder that every entry sits in (torch archives have one), with its slash."""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and all("/" in name for name in names):
        return f"{tops.pop()}/"
    return ""

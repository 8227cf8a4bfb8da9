"""Zip archives are judged by what they actually decompress to, before anything loads them."""

from __future__ import annotations

import struct
import time
import zipfile
from pathlib import Path

import pytest

from core.formats import (
    ArchiveLimits,
    CorruptModelError,
    UnsafeArchiveError,
    check_zip,
    detect_format,
    load_model,
)
from tests.formats.conftest import write_zip


def test_zip_bomb_is_stopped_early(tmp_path: Path) -> None:
    """256 MiB of zeros deflated to ~250 KiB, dressed as a .pt2: refused after ~1 MiB of work."""
    path = tmp_path / "bomb.pt2"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("m/archive_format", b"pt2")
        with archive.open("m/data/weights/weight_0", "w", force_zip64=True) as entry:
            chunk = bytes(1 << 20)
            for _ in range(256):
                entry.write(chunk)
    assert path.stat().st_size < 2 << 20
    started = time.monotonic()
    with pytest.raises(UnsafeArchiveError, match="bomb") as refused:
        detect_format(path)
    assert time.monotonic() - started < 2.0
    assert refused.value.code == "unsafe_archive"
    with pytest.raises(UnsafeArchiveError):
        load_model(path)


def test_total_size_is_counted_not_declared(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "big.zip", {"a": bytes(600), "b": bytes(600)}, zipfile.ZIP_STORED)
    check_zip(path, ArchiveLimits(max_total_bytes=1200))
    with pytest.raises(UnsafeArchiveError, match="expands past 1000"):
        check_zip(path, ArchiveLimits(max_total_bytes=1000))
    with pytest.raises(UnsafeArchiveError, match="entry 'a' expands past 500"):
        check_zip(path, ArchiveLimits(max_entry_bytes=500))


def test_entry_count_is_limited(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "many.zip", {f"e{i}": b"x" for i in range(5)}, zipfile.ZIP_STORED)
    with pytest.raises(UnsafeArchiveError, match="5 entries"):
        check_zip(path, ArchiveLimits(max_entries=4))


@pytest.mark.parametrize("name", ["../evil.py", "/etc/passwd", "m/../../evil", "C:/evil", "m\\..\\evil"])
def test_path_traversal_names_are_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "traversal.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(zipfile.ZipInfo(name), b"x")
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == [name]  # the archive really holds the hostile name
    with pytest.raises(UnsafeArchiveError, match="outside the archive"):
        check_zip(path)


def test_overlapping_entries_are_refused(tmp_path: Path) -> None:
    """Two directory records pointing at the same bytes: the 'overlapping files' zip bomb."""
    path = write_zip(tmp_path / "overlap.zip", {"a": bytes(4096)}, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    end = data.rindex(b"PK\x05\x06")
    central_offset = struct.unpack_from("<I", data, end + 16)[0]
    record = bytes(data[central_offset:end])
    duplicate = record[:46] + b"b" + record[47:]
    eocd = bytearray(data[end:])
    struct.pack_into("<HH", eocd, 8, 2, 2)  # entries on disk, entries in total
    struct.pack_into("<I", eocd, 12, len(record) * 2)  # central directory size
    path.write_bytes(bytes(data[:end]) + duplicate + bytes(eocd))
    with zipfile.ZipFile(path) as archive:
        assert [i.filename for i in archive.infolist()] == ["a", "b"]
    with pytest.raises(UnsafeArchiveError, match="overlap"):
        check_zip(path)


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a", b"1")
        with pytest.warns(UserWarning):
            archive.writestr("a", b"2")
    with pytest.raises(UnsafeArchiveError, match="twice"):
        check_zip(path)


def test_declared_size_that_lies_is_corrupt(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "liar.zip", {"a": bytes(4096)}, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    central = data.rindex(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 16)  # uncompressed size: 16 instead of 4096
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptModelError):
        check_zip(path)


def test_inventory_reports_prefix_and_sizes(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "ok.zip", {"model/a": b"xyz", "model/b/c": bytes(10)}, zipfile.ZIP_STORED)
    inventory = check_zip(path)
    assert inventory.prefix == "model/"
    assert inventory.relative_names == frozenset({"a", "b/c"})
    assert inventory.sizes == {"model/a": 3, "model/b/c": 10}

"""Storage backends: a local directory and a real S3-compatible server (moto, on loopback)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.config import Settings
from app.storage import LocalStorage, ObjectNotFound, ObjectTooLarge, S3Storage, Storage
from tests.service.conftest import make_settings, storage_for

MIB = 1024 * 1024


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "s3":
        settings: Settings = request.getfixturevalue("s3_settings")
        settings = settings.model_copy(update={"s3_part_bytes": 5 * MIB})
    else:
        settings = make_settings(tmp_path)
    return storage_for(settings)


def chunks(total: int, size: int = 256 * 1024) -> Iterator[bytes]:
    block = os.urandom(size)
    sent = 0
    while sent < total:
        piece = block[: min(size, total - sent)]
        sent += len(piece)
        yield piece


def test_put_stream_reports_size_and_sha256_and_reads_back(storage: Storage) -> None:
    data = b"".join(chunks(3 * MIB + 123))
    stored = storage.put_stream(
        "a/b/model.bin", [data[i : i + 100_000] for i in range(0, len(data), 100_000)]
    )
    assert (stored.key, stored.bytes, stored.sha256) == (
        "a/b/model.bin",
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    assert storage.size("a/b/model.bin") == len(data)
    assert b"".join(storage.iter_range("a/b/model.bin")) == data
    assert storage.exists("a/b/model.bin") and not storage.exists("a/b/other")


def test_large_objects_go_up_in_parts(storage: Storage) -> None:
    data = b"".join(chunks(11 * MIB + 5))  # three S3 parts of 5 MiB, 5 MiB and the rest
    stored = storage.put_stream("big/object", [data[i : i + MIB] for i in range(0, len(data), MIB)])
    assert stored.bytes == len(data)
    assert hashlib.sha256(b"".join(storage.iter_range("big/object"))).hexdigest() == stored.sha256


def test_range_reads(storage: Storage) -> None:
    data = bytes(range(256)) * 100
    storage.put_stream("r", [data])
    assert storage.read_bytes("r", 10, 19) == data[10:20]
    assert storage.read_bytes("r", 25_500) == data[25_500:]
    assert b"".join(storage.iter_range("r", 0, 0)) == data[:1]
    assert b"".join(storage.iter_range("r", chunk_bytes=1000)) == data


def test_limit_is_enforced_while_streaming_and_nothing_is_stored(storage: Storage) -> None:
    consumed = 0

    def endless() -> Iterator[bytes]:
        nonlocal consumed
        while True:
            consumed += 1
            yield b"x" * MIB

    with pytest.raises(ObjectTooLarge) as caught:
        storage.put_stream("too/big", endless(), limit=6 * MIB + 1)
    assert caught.value.limit == 6 * MIB + 1
    assert consumed == 7  # stopped at the chunk that crossed the limit
    assert not storage.exists("too/big")
    exact = storage.put_stream("exact", [b"y" * 1000], limit=1000)
    assert exact.bytes == 1000


def test_missing_objects_and_deletes(storage: Storage) -> None:
    with pytest.raises(ObjectNotFound):
        storage.size("nope")
    with pytest.raises(ObjectNotFound):
        list(storage.iter_range("nope"))
    for name in ("x/1", "x/2", "x/sub/3", "xy/4"):
        storage.put_stream(name, [name.encode()])
    storage.delete("x/1")
    storage.delete("x/1")  # absent: no error
    assert not storage.exists("x/1")
    assert storage.delete_prefix("x/") == 2
    assert not storage.exists("x/sub/3") and storage.exists("xy/4")
    assert storage.delete_prefix("x/") == 0


def test_download_to_a_file(storage: Storage, tmp_path: Path) -> None:
    data = os.urandom(2 * MIB + 7)
    storage.put_stream("d", [data])
    assert storage.download_to("d", tmp_path / "copy") == len(data)
    assert (tmp_path / "copy").read_bytes() == data


def test_aborted_write_leaves_nothing(storage: Storage) -> None:
    writer = storage.open_writer("partial")
    writer.write(b"a" * (6 * MIB))
    writer.abort()
    assert not storage.exists("partial")


def test_keys_cannot_escape(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path / "root")
    for key in ("../outside", "/etc/passwd", "a/../../b", "a//b", ""):
        with pytest.raises(ValueError):
            local.put_stream(key, [b"x"])
    assert not (tmp_path / "outside").exists()


def test_s3_backend_is_chosen_by_settings_and_creates_its_bucket(s3_settings: Settings) -> None:
    storage = storage_for(s3_settings)
    assert isinstance(storage, S3Storage)
    storage.check()
    storage.put_stream("k", [b"v"])
    assert storage.client.get_object(Bucket=s3_settings.s3_bucket, Key="k")["Body"].read() == b"v"

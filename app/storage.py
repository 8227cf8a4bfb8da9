"""Artifact storage: a local directory or an S3-compatible bucket behind one interface.

Writes stream: ``open_writer(key, limit=...)`` returns a writer that hashes (SHA-256) and counts bytes
as they arrive and refuses the byte that would pass the limit, so no caller ever holds a whole object in
memory. Reads stream too, with byte ranges.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from app.config import Settings

CHUNK_BYTES = 1024 * 1024


class StorageError(Exception):
    """A storage backend failed (unreachable, misconfigured)."""


class ObjectNotFound(StorageError, KeyError):
    """No object under this key."""


class ObjectTooLarge(StorageError):
    """A streamed write passed its byte limit; nothing was stored."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"object exceeds the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class StoredObject:
    """What a completed write stored: where, how many bytes, and their SHA-256 (hex)."""

    key: str
    bytes: int
    sha256: str


class BackendWriter(Protocol):
    """A backend's raw streaming write: bytes in order, then commit or abort."""

    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class ObjectWriter:
    """Streams bytes to a backend writer, hashing and counting them and enforcing ``limit``."""

    def __init__(self, key: str, backend: BackendWriter, limit: int | None) -> None:
        self.key = key
        self._backend = backend
        self._limit = limit
        self._hash = hashlib.sha256()
        self._bytes = 0
        self._closed = False

    @property
    def bytes_written(self) -> int:
        return self._bytes

    def write(self, data: bytes) -> None:
        """Append ``data``; past the limit the write is aborted and ObjectTooLarge raised."""
        if self._closed:
            raise StorageError(f"write to closed object {self.key}")
        if self._limit is not None and self._bytes + len(data) > self._limit:
            self.abort()
            raise ObjectTooLarge(self._limit)
        self._hash.update(data)
        self._bytes += len(data)
        self._backend.write(data)

    def commit(self) -> StoredObject:
        """Make the object visible under its key and describe it."""
        self._closed = True
        self._backend.commit()
        return StoredObject(key=self.key, bytes=self._bytes, sha256=self._hash.hexdigest())

    def abort(self) -> None:
        """Drop what was written; idempotent."""
        if not self._closed:
            self._closed = True
            self._backend.abort()


class Storage(ABC):
    """Common interface of the artifact stores."""

    def open_writer(self, key: str, *, limit: int | None = None) -> ObjectWriter:
        """A streaming writer for ``key`` (replaces any object there on commit)."""
        return ObjectWriter(key, self._backend_writer(_checked_key(key)), limit)

    def put_stream(self, key: str, chunks: Iterable[bytes], *, limit: int | None = None) -> StoredObject:
        """Store the chunks under ``key``; the limit is enforced as they are consumed."""
        writer = self.open_writer(key, limit=limit)
        try:
            for chunk in chunks:
                writer.write(chunk)
        except BaseException:
            writer.abort()
            raise
        return writer.commit()

    def put_file(self, key: str, path: Path, *, limit: int | None = None) -> StoredObject:
        """Store a local file under ``key``, streamed in chunks."""
        with path.open("rb") as handle:
            return self.put_stream(key, iter(lambda: handle.read(CHUNK_BYTES), b""), limit=limit)

    def download_to(self, key: str, path: Path) -> int:
        """Copy the object into a local file; returns its size."""
        written = 0
        with path.open("wb") as handle:
            for chunk in self.iter_range(key):
                handle.write(chunk)
                written += len(chunk)
        return written

    def read_bytes(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        """Bytes ``start..end`` (inclusive end, None: to the last byte), for small reads only."""
        return b"".join(self.iter_range(key, start, end))

    @abstractmethod
    def _backend_writer(self, key: str) -> BackendWriter: ...

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's size in bytes; ObjectNotFound when absent."""

    @abstractmethod
    def iter_range(
        self, key: str, start: int = 0, end: int | None = None, *, chunk_bytes: int = CHUNK_BYTES
    ) -> Iterator[bytes]:
        """Stream bytes ``start..end`` (inclusive; None: to the end); ObjectNotFound when absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; absent objects are not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix``; returns how many."""

    @abstractmethod
    def check(self) -> None:
        """Raise StorageError when the backend cannot be used (readiness probe)."""

    def prepare(self) -> None:  # noqa: B027 - optional hook, nothing to prepare by default
        """Create what the backend needs before first use (directory, bucket)."""

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True


def _checked_key(key: str) -> str:
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or any(p in ("", ".", "..") for p in parts[:-1])
        or parts[-1] in (".", "..")
    ):
        raise ValueError(f"invalid storage key {key!r}")
    return key


class LocalStorage(Storage):
    """Objects as files under a root directory; writes go to a temporary file renamed on commit."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def prepare(self) -> None:
        (self.root / ".incoming").mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / _checked_key(key)).resolve()
        if self.root not in path.parents:
            raise ValueError(f"invalid storage key {key!r}")
        return path

    def _backend_writer(self, key: str) -> BackendWriter:
        self.prepare()
        return _LocalWriter(self._path(key), self.root / ".incoming" / uuid.uuid4().hex)

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path.stat().st_size

    def iter_range(
        self, key: str, start: int = 0, end: int | None = None, *, chunk_bytes: int = CHUNK_BYTES
    ) -> Iterator[bytes]:
        path = self._path(key)
        try:
            handle = path.open("rb")
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        return _read_file_range(handle, start, end, chunk_bytes)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        if not prefix.endswith("/"):
            raise ValueError("delete_prefix takes a folder-like prefix ending in '/'")
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder)
        return count

    def check(self) -> None:
        try:
            self.prepare()
        except OSError as exc:
            raise StorageError(f"storage directory {self.root} is not usable: {exc}") from exc
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"storage directory {self.root} is not writable")


def _read_file_range(handle: Any, start: int, end: int | None, chunk_bytes: int) -> Iterator[bytes]:
    with handle:
        handle.seek(start)
        remaining = None if end is None else end - start + 1
        while remaining is None or remaining > 0:
            chunk = handle.read(chunk_bytes if remaining is None else min(chunk_bytes, remaining))
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


class _LocalWriter:
    def __init__(self, final: Path, temporary: Path) -> None:
        self._final = final
        self._temporary = temporary
        self._handle = temporary.open("wb")

    def write(self, data: bytes) -> None:
        self._handle.write(data)

    def commit(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._temporary, self._final)

    def abort(self) -> None:
        self._handle.close()
        self._temporary.unlink(missing_ok=True)


class S3Storage(Storage):
    """Objects in an S3-compatible bucket (AWS, MinIO, moto); large writes use multipart uploads."""

    def __init__(
        self,
        *,
        bucket: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        prefix: str = "",
        part_bytes: int = 8 * 1024**2,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_bytes = part_bytes
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"}),
        )

    def _key(self, key: str) -> str:
        return self.prefix + _checked_key(key)

    def prepare(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise StorageError(f"bucket {self.bucket}: {exc}") from exc
            self.client.create_bucket(Bucket=self.bucket)

    def _backend_writer(self, key: str) -> BackendWriter:
        return _S3Writer(self.client, self.bucket, self._key(key), self.part_bytes)

    def size(self, key: str) -> int:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise ObjectNotFound(key) from None
            raise StorageError(str(exc)) from exc
        return int(head["ContentLength"])

    def iter_range(
        self, key: str, start: int = 0, end: int | None = None, *, chunk_bytes: int = CHUNK_BYTES
    ) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if start or end is not None:
            request["Range"] = f"bytes={start}-{'' if end is None else end}"
        try:
            body = self.client.get_object(**request)["Body"]
        except ClientError as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                raise ObjectNotFound(key) from None
            raise StorageError(str(exc)) from exc
        return _iter_body(body, chunk_bytes)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> int:
        if not prefix.endswith("/"):
            raise ValueError("delete_prefix takes a folder-like prefix ending in '/'")
        paginator = self.client.get_paginator("list_objects_v2")
        count = 0
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix.rstrip("/")) + "/"):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                count += len(keys)
        return count

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise StorageError(f"bucket {self.bucket} is not reachable: {exc}") from exc


def _iter_body(body: Any, chunk_bytes: int) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(chunk_bytes)
    finally:
        body.close()


def _error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class _S3Writer:
    """Buffers up to one part; small objects become one PUT, large ones a multipart upload."""

    def __init__(self, client: Any, bucket: str, key: str, part_bytes: int) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._part_bytes = part_bytes
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= self._part_bytes:
            self._upload_part(bytes(self._buffer[: self._part_bytes]))
            del self._buffer[: self._part_bytes]

    def _upload_part(self, data: bytes) -> None:
        if self._upload_id is None:
            created = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        part = self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=data
        )
        self._parts.append({"ETag": part["ETag"], "PartNumber": number})

    def commit(self) -> None:
        if self._upload_id is None:
            self._client.put_object(Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer))
            return
        if self._buffer:
            self._upload_part(bytes(self._buffer))
            self._buffer.clear()
        self._client.complete_multipart_upload(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    def abort(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
            self._upload_id = None


def create_storage(settings: Settings) -> Storage:
    """The backend named by ``settings.storage_backend``."""
    if settings.storage_backend == "s3":
        return S3Storage(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=_secret(settings.s3_access_key_id),
            secret_access_key=_secret(settings.s3_secret_access_key),
            prefix=settings.s3_prefix,
            part_bytes=settings.s3_part_bytes,
        )
    assert settings.storage_dir is not None, "Settings fills storage_dir"
    return LocalStorage(settings.storage_dir)


def _secret(value: Any) -> str | None:
    return None if value is None else value.get_secret_value()

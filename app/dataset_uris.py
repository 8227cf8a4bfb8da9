"""Dataset references: ``s3://bucket/key``, ``file:///path`` and ``http(s)://host/path``, only where the
operator allows them, and their bytes streamed with a size limit.

- ``file://``: the path is resolved (``..`` and symbolic links followed) and must lie under one of
  ``SPECPRUNE_DATASET_FILE_ROOTS``; the file is opened without following a final symbolic link and the
  opened file's real path is checked again, so a link swapped in afterwards cannot lead outside a root.
- ``http(s)://``: only to ``SPECPRUNE_DATASET_HTTP_HOSTS``; redirects are not followed; the size is
  checked while the body streams.
- ``s3://``: only buckets in ``SPECPRUNE_DATASET_S3_BUCKETS``, never the artifact bucket, through the
  configured S3 endpoint and credentials.

Used by the API (to refuse a reference at once and to import one into storage) and by workers (to fetch
a job's data). Nothing here reads the content.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from app.config import Settings

CHUNK_BYTES = 1024 * 1024
MAX_URI_LENGTH = 4096


class DatasetUriError(ValueError):
    """A reference that is refused (``code`` ``dataset_uri_refused``) or cannot be read
    (``dataset_unavailable``); the message says why."""

    def __init__(self, message: str, code: str = "dataset_uri_refused") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class DatasetUri:
    """A parsed, allowed reference."""

    raw: str
    scheme: Literal["file", "s3", "http", "https"]
    path: Path | None = None  # file: the resolved path
    bucket: str | None = None  # s3
    key: str | None = None  # s3

    @property
    def filename(self) -> str:
        """The last path component, for the job's record."""
        tail = self.raw.rstrip("/").rsplit("/", 1)[-1]
        return unquote(tail.split("?", 1)[0])[:255] or "dataset"


def parse_dataset_uri(raw: str, settings: Settings) -> DatasetUri:
    """Check ``raw`` against the operator's allow-lists; DatasetUriError when it is refused."""
    raw = raw.strip()
    if not raw or len(raw) > MAX_URI_LENGTH:
        raise DatasetUriError(f"a dataset URI must be 1 to {MAX_URI_LENGTH} characters")
    try:
        parts = urlsplit(raw)
    except ValueError as exc:
        raise DatasetUriError(f"not a URI: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme == "file":
        return DatasetUri(raw, "file", path=_allowed_path(parts.netloc, parts.path, settings))
    if scheme == "s3":
        bucket, key = parts.netloc, parts.path.lstrip("/")
        _check_bucket(bucket, key, settings)
        return DatasetUri(raw, "s3", bucket=bucket, key=key)
    if scheme in ("http", "https"):
        host = (parts.hostname or "").lower()
        if not host or host not in settings.http_hosts:
            raise DatasetUriError(
                f"http(s) datasets may only come from the hosts this server allows "
                f"(SPECPRUNE_DATASET_HTTP_HOSTS); {host or 'no host'!r} is not one of them"
            )
        if parts.username or parts.password:
            raise DatasetUriError("credentials in a dataset URI are not accepted")
        return DatasetUri(raw, "https" if scheme == "https" else "http")
    raise DatasetUriError(f"unsupported dataset URI scheme {parts.scheme!r}: use s3://, file:// or https://")


def _allowed_path(netloc: str, raw_path: str, settings: Settings) -> Path:
    if netloc not in ("", "localhost"):
        raise DatasetUriError("file:// URIs must name a local path (file:///path/to/data)")
    roots = settings.file_roots
    if not roots:
        raise DatasetUriError(
            "file:// datasets are not enabled on this server (SPECPRUNE_DATASET_FILE_ROOTS)"
        )
    text = unquote(raw_path)
    if "\x00" in text or not text.startswith("/"):
        raise DatasetUriError("file:// URIs must name an absolute path")
    try:
        resolved = Path(text).resolve(strict=True)
    except (OSError, RuntimeError):
        raise DatasetUriError(f"no such file: {text}", "dataset_unavailable") from None
    if not _under_a_root(resolved, roots):
        raise DatasetUriError(
            f"{text} lies outside the directories this server allows for datasets (after resolving "
            "'..' and symbolic links)"
        )
    if not resolved.is_file():
        raise DatasetUriError(f"{text} is not a regular file", "dataset_unavailable")
    return resolved


def _under_a_root(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _check_bucket(bucket: str, key: str, settings: Settings) -> None:
    if not bucket or not key:
        raise DatasetUriError("s3 URIs must name a bucket and a key: s3://bucket/path/to/data.npz")
    if settings.storage_backend == "s3" and bucket == settings.s3_bucket:
        raise DatasetUriError("the service's own artifact bucket cannot be used as a dataset source")
    if bucket not in settings.s3_buckets:
        raise DatasetUriError(
            f"s3 datasets may only come from the buckets this server allows "
            f"(SPECPRUNE_DATASET_S3_BUCKETS); {bucket!r} is not one of them"
        )


def iter_dataset_uri(uri: DatasetUri, settings: Settings, *, limit: int | None) -> Iterator[bytes]:
    """The referenced bytes in chunks; DatasetUriError (``dataset_unavailable`` or ``dataset_too_large``)
    when they cannot be read or pass ``limit`` (None: no limit)."""
    if uri.scheme == "file":
        source = _file_chunks(uri, settings)
    elif uri.scheme == "s3":
        source = _s3_chunks(uri, settings)
    else:
        source = _http_chunks(uri, settings, limit)
    total = 0
    for chunk in source:
        total += len(chunk)
        if limit is not None and total > limit:
            raise _too_large(uri, limit)
        yield chunk


def fetch_dataset_uri(uri: DatasetUri, settings: Settings, destination: Path, *, limit: int | None) -> None:
    """Place the referenced file at ``destination``: a hard link for an allowed local file where the
    file system permits one (no copy, whatever its size), otherwise a streamed copy."""
    if uri.scheme == "file":
        with _open_allowed(uri, settings) as fd:
            if limit is not None and os.fstat(fd).st_size > limit:
                raise _too_large(uri, limit)
            if _link_opened(fd, destination):
                return
    with destination.open("wb") as out:
        for chunk in iter_dataset_uri(uri, settings, limit=limit):
            out.write(chunk)


def _link_opened(fd: int, destination: Path) -> bool:
    """Hard-link the opened file (exactly the inode that was checked) at ``destination``; False where
    the file system or its protections do not allow it."""
    try:
        folder = os.open(destination.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:  # a dir fd makes os.link use linkat(AT_SYMLINK_FOLLOW), which follows /proc's fd link
        os.link(f"/proc/self/fd/{fd}", destination.name, dst_dir_fd=folder, follow_symlinks=True)
    except OSError:
        return False
    finally:
        os.close(folder)
    return True


@contextlib.contextmanager
def _open_allowed(uri: DatasetUri, settings: Settings) -> Iterator[int]:
    """An fd on the allowed file, its real path checked after opening (a link swapped in is refused)."""
    assert uri.path is not None
    checked = _allowed_path("", uri.path.as_posix(), settings)
    try:
        fd = os.open(checked, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise DatasetUriError(f"{uri.raw} cannot be opened: {exc.strerror}", "dataset_unavailable") from None
    try:
        real = Path(os.readlink(f"/proc/self/fd/{fd}")) if Path("/proc/self/fd").is_dir() else checked
        if not stat.S_ISREG(os.fstat(fd).st_mode) or not _under_a_root(real, settings.file_roots):
            raise DatasetUriError(f"{uri.raw} changed into something outside the allowed directories")
        yield fd
    finally:
        os.close(fd)


def _file_chunks(uri: DatasetUri, settings: Settings) -> Iterator[bytes]:
    with _open_allowed(uri, settings) as fd:
        while chunk := os.read(fd, CHUNK_BYTES):
            yield chunk


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client with the configured endpoint and credentials."""
    import boto3
    from botocore.config import Config

    def secret(value: Any) -> str | None:
        return None if value is None else value.get_secret_value()

    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=secret(settings.s3_access_key_id),
        aws_secret_access_key=secret(settings.s3_secret_access_key),
        config=Config(signature_version="s3v4", retries={"max_attempts": 3, "mode": "standard"}),
    )


def _s3_chunks(uri: DatasetUri, settings: Settings) -> Iterator[bytes]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        body = s3_client(settings).get_object(Bucket=uri.bucket, Key=uri.key)["Body"]
    except (ClientError, BotoCoreError) as exc:
        raise DatasetUriError(f"{uri.raw} cannot be read: {exc}", "dataset_unavailable") from None
    try:
        yield from body.iter_chunks(CHUNK_BYTES)
    except (BotoCoreError, OSError) as exc:
        raise DatasetUriError(f"reading {uri.raw} failed: {exc}", "dataset_unavailable") from None
    finally:
        body.close()


def _too_large(uri: DatasetUri, limit: int) -> DatasetUriError:
    return DatasetUriError(
        f"the dataset at {uri.raw} is larger than the limit of {limit} bytes", "dataset_too_large"
    )


def _http_chunks(uri: DatasetUri, settings: Settings, limit: int | None) -> Iterator[bytes]:
    import httpx

    timeout = httpx.Timeout(settings.dataset_http_timeout_seconds)
    try:
        with httpx.stream("GET", uri.raw, follow_redirects=False, timeout=timeout) as response:
            if response.is_redirect:
                raise DatasetUriError(
                    f"{uri.raw} answered with a redirect (HTTP {response.status_code}); redirects are not "
                    "followed, give the final URL",
                    "dataset_unavailable",
                )
            if response.status_code != 200:
                raise DatasetUriError(
                    f"{uri.raw} answered HTTP {response.status_code}", "dataset_unavailable"
                )
            declared = response.headers.get("content-length", "")
            if limit is not None and declared.isdigit() and int(declared) > limit:
                raise _too_large(uri, limit)
            yield from response.iter_bytes(CHUNK_BYTES)
    except httpx.HTTPError as exc:
        raise DatasetUriError(f"{uri.raw} cannot be downloaded: {exc}", "dataset_unavailable") from None

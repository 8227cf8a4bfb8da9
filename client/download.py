"""Streaming a job's file to disk: written to ``<name>.part`` chunk by chunk, resumed with ``Range`` and
``If-Range`` when the connection breaks, checked against the server's ETag (the file's SHA-256), then
moved into place."""

from __future__ import annotations

import hashlib
import os
import re
from email.message import Message
from pathlib import Path
from typing import Any

from client.errors import TransportError
from client.transport import TRANSIENT_ERRORS, Transport

CHUNK_BYTES = 1024 * 1024
SHA256_ETAG = re.compile(r'^"?([0-9a-f]{64})"?$')


def download_file(
    transport: Transport,
    path: str,
    target: str | os.PathLike[str],
    *,
    params: dict[str, str] | None = None,
    attempts: int = 5,
) -> Path:
    """GET ``path`` into ``target`` (a file, or an existing directory: then the server's file name).

    Returns the written file. Raises the API's typed errors, or TransportError when the transfer
    keeps breaking (``attempts`` consecutive failures without progress).
    """
    state = _Transfer(Path(target))
    try:
        _fetch_until_complete(transport, path, params, state, attempts)
        return state.finish()
    except BaseException:
        state.discard()
        raise


def _fetch_until_complete(
    transport: Transport, path: str, params: dict[str, str] | None, state: _Transfer, attempts: int
) -> None:
    """Fetch, resuming after each break, until the whole file is there."""
    failures = 0
    while True:
        before = state.offset
        try:
            _fetch(transport, path, params, state)
            return
        except TRANSIENT_ERRORS as exc:
            failures = 0 if state.offset > before else failures + 1
            if failures >= attempts:
                raise TransportError(f"download of {path} kept failing: {type(exc).__name__}: {exc}") from exc
        except TransportError:
            if state.offset == before:
                raise


class _Transfer:
    """Where the bytes go and how many have arrived."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.destination: Path | None = None if target.is_dir() else target
        self.offset = 0
        self.etag: str | None = None

    @property
    def part(self) -> Path:
        assert self.destination is not None
        return self.destination.with_name(self.destination.name + ".part")

    def headers(self) -> dict[str, str]:
        if self.offset and self.etag:
            return {"Range": f"bytes={self.offset}-", "If-Range": self.etag}
        return {}

    def start(self, status: int, headers: Any) -> None:
        """Decide where to write from the response, and whether it continues the earlier bytes."""
        if self.destination is None:
            name = _filename(headers.get("content-disposition")) or "model"
            self.destination = self.target / name
        resumed = status == 206 and _range_start(headers.get("content-range")) == self.offset
        if not resumed:
            self.offset = 0
            self.part.write_bytes(b"")
        self.etag = headers.get("etag") or self.etag

    def discard(self) -> None:
        """Remove the partial file of a download that did not complete."""
        if self.destination is not None:
            self.part.unlink(missing_ok=True)

    def finish(self) -> Path:
        assert self.destination is not None
        expected = SHA256_ETAG.match(self.etag or "")
        if expected and _sha256(self.part) != expected.group(1):
            self.part.unlink(missing_ok=True)
            raise TransportError(f"the downloaded {self.destination.name} does not match its checksum")
        os.replace(self.part, self.destination)
        return self.destination


def _fetch(transport: Transport, path: str, params: dict[str, str] | None, state: _Transfer) -> None:
    def args() -> dict[str, Any]:
        return {"params": params or {}, "headers": state.headers()}

    with transport.stream("GET", path, args) as response:
        state.start(response.status_code, response.headers)
        with state.part.open("ab") as out:
            for chunk in response.iter_bytes():
                out.write(chunk)
                state.offset += len(chunk)


def _filename(disposition: str | None) -> str | None:
    """The file name of a Content-Disposition header (RFC 6266, ``filename*`` preferred), made safe."""
    if not disposition:
        return None
    message = Message()
    message["content-disposition"] = disposition
    name = message.get_filename()
    if not name:
        return None
    name = Path(name.replace("\\", "/")).name
    return None if name in ("", ".", "..") else name


def _range_start(content_range: str | None) -> int | None:
    match = re.match(r"^bytes (\d+)-\d+/\d+$", content_range or "")
    return int(match.group(1)) if match else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()

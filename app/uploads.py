"""Streaming ``multipart/form-data``: file parts go straight to storage as they arrive.

The request body is read chunk by chunk and fed to python-multipart's push parser; file bytes are
written to a storage writer (hashed, counted, refused past the limit while streaming), text fields are
kept up to a small size. Memory use is bounded by one chunk and the writer's buffer, whatever the upload.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from app.problems import Problem, validation_problem
from app.storage import ObjectTooLarge, ObjectWriter, Storage, StoredObject

FLUSH_BYTES = 1024 * 1024
MAX_FILENAME = 255


@dataclass(frozen=True)
class FormSpec:
    """Which fields a form accepts: file fields, text fields with their size limits, and limits."""

    files: frozenset[str]
    texts: dict[str, int]
    max_file_bytes: int

    @property
    def max_body_bytes(self) -> int:
        # Every file at the limit, text fields at theirs, and room for part headers.
        return self.max_file_bytes * len(self.files) + sum(self.texts.values()) + 64 * 1024


@dataclass(frozen=True)
class ReceivedFile:
    """A file part now in storage."""

    field: str
    filename: str
    stored: StoredObject


@dataclass
class ReceivedForm:
    files: dict[str, ReceivedFile] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    @property
    def stored_keys(self) -> list[str]:
        return [f.stored.key for f in self.files.values()]


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    text: bytearray = field(default_factory=bytearray)
    pending: bytearray = field(default_factory=bytearray)
    writer: ObjectWriter | None = None
    done: bool = False


class _FormReceiver:
    """Collects parser callbacks; the async loop drains pending file bytes to storage between chunks."""

    def __init__(self, spec: FormSpec, storage: Storage, key_for: Callable[[str], str]) -> None:
        self.spec = spec
        self.storage = storage
        self.key_for = key_for
        self.form = ReceivedForm()
        self.parts: list[_Part] = []
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._seen: set[str] = set()

    @property
    def current(self) -> _Part:
        return self.parts[-1]

    def on_part_begin(self) -> None:
        self.parts.append(_Part())
        self._headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        part = self.current
        name = options.get(b"name")
        if name is None:
            raise Problem("bad-request", "a multipart part has no name in its Content-Disposition")
        part.name = name.decode("utf-8", "replace")
        raw_filename = options.get(b"filename")
        if part.name in self._seen:
            raise validation_problem([_error(part.name, "given more than once", "duplicate")])
        self._seen.add(part.name)
        if part.name in self.spec.files:
            if raw_filename is None:
                raise validation_problem([_error(part.name, "must be a file upload", "file_expected")])
            part.filename = clean_filename(raw_filename.decode("utf-8", "replace"), default=part.name)
            part.writer = self.storage.open_writer(self.key_for(part.name), limit=self.spec.max_file_bytes)
        elif part.name not in self.spec.texts:
            raise validation_problem([_error(part.name, "unknown form field", "extra_forbidden")])
        elif raw_filename is not None:
            raise validation_problem([_error(part.name, "must be a text field, not a file", "text_expected")])

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.current
        if part.writer is not None:
            part.pending += data[start:end]
            return
        part.text += data[start:end]
        assert part.name is not None
        if len(part.text) > self.spec.texts[part.name]:
            raise validation_problem(
                [_error(part.name, f"longer than {self.spec.texts[part.name]} bytes", "too_long")]
            )

    def on_part_end(self) -> None:
        self.current.done = True

    async def drain(self) -> None:
        """Write pending file bytes (in a thread: storage is blocking) and finish completed parts."""
        for part in self.parts:
            if part.writer is not None and (part.done or len(part.pending) >= FLUSH_BYTES) and part.pending:
                data = bytes(part.pending)
                part.pending.clear()
                await run_in_threadpool(part.writer.write, data)
            if part.done and part.name is not None and part.name not in self.form.files:
                await self._finish(part)

    async def _finish(self, part: _Part) -> None:
        assert part.name is not None
        if part.writer is None:
            self.form.texts[part.name] = part.text.decode("utf-8", "replace")
            return
        stored = await run_in_threadpool(part.writer.commit)
        self.form.files[part.name] = ReceivedFile(part.name, part.filename or part.name, stored)

    def abort(self) -> None:
        for part in self.parts:
            if part.writer is not None and part.name not in self.form.files:
                part.writer.abort()
        for received in self.form.files.values():
            self.storage.delete(received.stored.key)


async def receive_form(
    *,
    content_type: str | None,
    content_length: str | None,
    body: AsyncIterator[bytes],
    spec: FormSpec,
    storage: Storage,
    key_for: Callable[[str], str],
) -> ReceivedForm:
    """Parse a multipart body, streaming file fields to ``storage`` under ``key_for(field)``.

    On any error nothing stays in storage and a Problem is raised (400, 413, 415 or 422).
    """
    media_type, options = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        raise Problem("unsupported-media-type", "send the request as multipart/form-data")
    boundary = options.get(b"boundary")
    if not boundary:
        raise Problem("bad-request", "multipart/form-data without a boundary")
    if content_length and content_length.isdigit() and int(content_length) > spec.max_body_bytes:
        raise _too_large(spec)
    receiver = _FormReceiver(spec, storage, key_for)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": receiver.on_part_begin,
            "on_part_data": receiver.on_part_data,
            "on_part_end": receiver.on_part_end,
            "on_header_field": receiver.on_header_field,
            "on_header_value": receiver.on_header_value,
            "on_header_end": receiver.on_header_end,
            "on_headers_finished": receiver.on_headers_finished,
        },
    )
    received = 0
    try:
        async for chunk in body:
            received += len(chunk)
            if received > spec.max_body_bytes:
                raise _too_large(spec)
            parser.write(chunk)
            await receiver.drain()
        parser.finalize()
        await receiver.drain()
        if any(not part.done for part in receiver.parts):
            raise Problem("bad-request", "the multipart body ended inside a part")
    except ObjectTooLarge:
        receiver.abort()
        raise _too_large(spec) from None
    except MultipartParseError as exc:
        receiver.abort()
        raise Problem("bad-request", f"malformed multipart body: {exc}") from None
    except BaseException:
        receiver.abort()
        raise
    return receiver.form


def _too_large(spec: FormSpec) -> Problem:
    return Problem(
        "payload-too-large",
        f"an uploaded file is larger than the limit of {spec.max_file_bytes} bytes",
        limit_bytes=spec.max_file_bytes,
    )


def _error(name: str, msg: str, kind: str) -> dict[str, object]:
    return {"loc": ["body", name], "msg": msg, "type": kind}


def clean_filename(name: str, *, default: str) -> str:
    """The last path component, without control characters, at most 255 characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable() and ch not in '"').strip()
    return base[:MAX_FILENAME] or default

"""Creating a stored dataset (POST /datasets): from an upload already streamed to storage, or imported
from an allowed reference (``uri``, streamed into storage with the size limit); refused at once when its
first bytes are of no dataset format, then described by inspecting it in the sandbox."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from app import crud, job_data, sniff
from app.config import Settings
from app.dataset_inspection import InspectionFailed, inspect_dataset
from app.dataset_uris import DatasetUriError, iter_dataset_uri, parse_dataset_uri
from app.db import SessionFactory, session_scope
from app.models import Dataset
from app.problems import Problem, validation_problem
from app.storage import ObjectTooLarge, Storage, StoredObject
from app.uploads import FormSpec, ReceivedForm

PREPROCESS_MAX_BYTES = 16 * 1024


def dataset_form_spec(settings: Settings) -> FormSpec:
    """The fields of POST /datasets: the ``file`` or a ``uri``, and the image ``preprocess``."""
    return FormSpec(
        files=frozenset({"file"}),
        texts={"preprocess": PREPROCESS_MAX_BYTES, "uri": 4096},
        max_file_bytes=settings.max_upload_bytes,
    )


def dataset_key(prefix: str) -> str:
    return f"{prefix}data"


@dataclass
class DatasetCreator:
    settings: Settings
    sessions: SessionFactory
    storage: Storage
    slots: threading.BoundedSemaphore

    def create(self, *, dataset_id: str, tenant_id: str, prefix: str, form: ReceivedForm) -> Dataset:
        """Validate, inspect (in the sandbox) and record the dataset; Problem 413, 415 or 422 otherwise."""
        given = [name for name in ("file", "uri") if name in form.files or name in form.texts]
        if len(given) != 1:
            raise validation_problem(
                [
                    {
                        "loc": ["body", "file"],
                        "msg": f"give exactly one of file or uri; got {', '.join(given) or 'none'}",
                        "type": "missing",
                    }
                ]
            )
        preprocess = job_data.parse_preprocess(form.texts.get("preprocess"))
        if "uri" in form.texts:
            filename, source_uri, stored = self._import(form.texts["uri"], dataset_key(prefix))
        else:
            received = form.files["file"]
            filename, source_uri, stored = received.filename, None, received.stored
        try:
            fmt = sniff.sniff_dataset(self.storage, stored.key, stored.bytes)
        except sniff.Refused as exc:
            raise Problem("unsupported-dataset-format", f"{filename}: {exc}", hint=exc.hint) from None
        if preprocess is not None and fmt in job_data.ARRAY_FORMATS:
            raise validation_problem(
                [{"loc": ["body", "preprocess"], "msg": job_data.ARRAY_PREPROCESS, "type": "not_applicable"}]
            )
        description = self._inspect(filename, stored.key, preprocess)
        dataset = Dataset(
            id=dataset_id,
            tenant_id=tenant_id,
            filename=filename,
            source_uri=source_uri,
            format=description.format,
            samples=description.samples,
            input_shape=description.input_shape,
            classes=description.classes,
            splits=description.splits,
            labelled=description.labelled,
            preprocess=preprocess,
            sha256=stored.sha256,
            bytes=stored.bytes,
            storage_key=stored.key,
        )
        with session_scope(self.sessions) as session:
            return crud.create_dataset(session, dataset=dataset)

    def _import(self, raw: str, key: str) -> tuple[str, str, StoredObject]:
        limit = self.settings.max_upload_bytes
        try:
            uri = parse_dataset_uri(raw, self.settings)
            stored = self.storage.put_stream(
                key, iter_dataset_uri(uri, self.settings, limit=limit), limit=limit
            )
        except ObjectTooLarge:
            raise _too_large(limit) from None
        except DatasetUriError as exc:
            if exc.code == "dataset_too_large":
                raise _too_large(limit) from None
            raise validation_problem([{"loc": ["body", "uri"], "msg": str(exc), "type": exc.code}]) from None
        return uri.filename, uri.raw, stored

    def _inspect(self, filename: str, key: str, preprocess: dict[str, Any] | None) -> Any:
        wait = self.settings.dataset_inspect_wait_seconds
        if not self.slots.acquire(timeout=wait):
            raise Problem(
                "busy",
                f"{filename}: every dataset inspection slot stayed taken for {wait:g} s",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        try:
            return inspect_dataset(self.settings, self.storage, key, preprocess)
        except InspectionFailed as exc:
            if exc.code == "unsupported_dataset_format":
                raise Problem(
                    "unsupported-dataset-format", f"{filename}: {exc}", code=exc.code, hint=sniff.DATASET_HINT
                ) from None
            raise Problem("invalid-dataset", f"{filename}: {exc}", code=exc.code) from None
        finally:
            self.slots.release()


def _too_large(limit: int) -> Problem:
    return Problem(
        "payload-too-large", f"the dataset is larger than the limit of {limit} bytes", limit_bytes=limit
    )

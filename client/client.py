"""The entry point: ``Client(url, api_key)`` submits jobs and finds them again."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from client.jobs import Job
from client.transport import Transport

DEFAULT_URL = "http://127.0.0.1:8000"
URL_VARIABLE = "SPECPRUNE_URL"
API_KEY_VARIABLE = "SPECPRUNE_API_KEY"

PathLike = str | os.PathLike[str]


class Client:
    """A specprune server. ``url`` and ``api_key`` default to ``SPECPRUNE_URL`` (else
    http://127.0.0.1:8000) and ``SPECPRUNE_API_KEY``. Transient failures are retried ``retries``
    times with exponential backoff; every request has ``timeout`` seconds per network operation.
    ``http_client``: an ``httpx.Client`` of your own (proxies, TLS settings); it is closed with this one."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_seconds: float = 0.5,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.url = (url or os.environ.get(URL_VARIABLE) or DEFAULT_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_VARIABLE)
        self._transport = Transport(
            self.url,
            key or None,
            timeout=timeout,
            retries=retries,
            backoff_seconds=backoff_seconds,
            http=http_client,
        )

    def __repr__(self) -> str:
        return f"<Client {self.url}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._transport.close()

    def submit(
        self,
        model_path: PathLike,
        dataset: PathLike | None = None,
        *,
        dataset_id: str | None = None,
        dataset_uri: str | None = None,
        config: dict[str, Any] | None = None,
        callback_url: str | None = None,
        eval_dataset_id: str | None = None,
        eval_dataset_uri: str | None = None,
        eval_fraction: float | None = None,
        preprocess: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Upload a model and its data (a file, or ``dataset_id`` / ``dataset_uri``); returns the queued job.

        ``config`` is the job config (``{"flops_ratio": 0.5}``, ``{"method": "l1", "alpha": 0.9}``, ...).
        ``callback_url`` receives a signed POST when the job ends. An ``Idempotency-Key`` (a fresh UUID
        unless given) is sent, and kept when a broken connection makes the client send again, so a
        retry never creates a second job. Files are streamed, not read into memory. An ONNX model whose
        weights lie beside it in ``<name>.onnx.data`` (``torch.onnx.export``'s default) is sent zipped
        with them.
        """
        data = Path(dataset) if dataset is not None else None
        for path in (Path(model_path), data):
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
        fields = _fields(
            config=json.dumps(config) if config is not None else None,
            dataset_id=dataset_id,
            dataset_uri=dataset_uri,
            callback_url=callback_url,
            eval_dataset_id=eval_dataset_id,
            eval_dataset_uri=eval_dataset_uri,
            eval_fraction=repr(float(eval_fraction)) if eval_fraction is not None else None,
            preprocess=json.dumps(preprocess) if preprocess is not None else None,
        )
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        with ExitStack() as temporary, ExitStack() as files_open:
            model = _with_external_data(Path(model_path), temporary)

            def request() -> dict[str, Any]:
                files_open.close()  # the previous attempt's handles
                files = {"model": (model.name, files_open.enter_context(model.open("rb")))}
                if data is not None:
                    files["dataset"] = (data.name, files_open.enter_context(data.open("rb")))
                return {"files": files, "data": fields, "headers": headers}

            response = self._transport.request("POST", "/jobs", request)
        return Job(self, response.json())

    def job(self, job_id: str) -> Job:
        """The job with this id (NotFound when there is none for this key)."""
        return Job(self, self._transport.request("GET", f"/jobs/{job_id}").json())

    def jobs(self, status: str | None = None, limit: int | None = None, page_size: int = 50) -> Iterator[Job]:
        """This tenant's jobs, newest first, fetched a page at a time; at most ``limit`` of them."""
        after: str | None = None
        yielded = 0
        while limit is None or yielded < limit:
            size = page_size if limit is None else min(page_size, limit - yielded)
            params: dict[str, Any] = {"limit": max(1, min(size, 100))}
            if status:
                params["status"] = status
            if after:
                params["after"] = after
            page = self._transport.request("GET", "/jobs", _constant({"params": params})).json()
            for item in page["items"]:
                yield Job(self, item)
                yielded += 1
            after = page.get("next_after")
            if not after:
                return

    def upload_dataset(
        self,
        path: PathLike | None = None,
        *,
        uri: str | None = None,
        preprocess: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store a dataset (a file, or a ``uri`` the server may read); returns its description."""
        if (path is None) == (uri is None):
            raise ValueError("give a dataset file or a uri, not both")
        source = Path(path) if path is not None else None
        if source is not None and not source.is_file():
            raise FileNotFoundError(f"no such file: {source}")
        fields = _fields(uri=uri, preprocess=json.dumps(preprocess) if preprocess is not None else None)
        with ExitStack() as files_open:

            def request() -> dict[str, Any]:
                files_open.close()
                files = (
                    {"file": (source.name, files_open.enter_context(source.open("rb")))} if source else None
                )
                return {"files": files, "data": fields}

            return dict(self._transport.request("POST", "/datasets", request).json())

    def datasets(self, limit: int = 100) -> list[dict[str, Any]]:
        """This tenant's stored datasets, newest first."""
        page = self._transport.request("GET", "/datasets", _constant({"params": {"limit": limit}})).json()
        return list(page["items"])

    def delete_dataset(self, dataset_id: str) -> None:
        """Remove a stored dataset (Conflict while a queued or running job reads it)."""
        self._transport.delete(f"/datasets/{dataset_id}")


def _constant(args: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    return lambda: args


def _with_external_data(model: Path, stack: ExitStack) -> Path:
    """``model``, or for an ONNX file whose weights ``torch.onnx.export`` wrote beside it
    (``<name>.onnx.data``) a zip of the two, which the service reads as one model; the zip lives in a
    temporary folder that ``stack`` removes."""
    data = model.with_name(model.name + ".data")
    if model.suffix != ".onnx" or not data.is_file():
        return model
    folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="specprune-")))
    archive = folder / f"{model.stem}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED, allowZip64=True) as out:
        out.write(model, model.name)
        out.write(data, data.name)
    return archive


def _fields(**values: str | None) -> dict[str, str]:
    return {name: value for name, value in values.items() if value is not None}

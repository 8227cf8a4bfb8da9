"""/datasets: upload (or import by reference), list, show and delete a tenant's stored datasets."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from app import crud
from app.api.deps import (
    CurrentTenant,
    InspectionSlotsDep,
    SessionDep,
    SessionFactoryDep,
    SettingsDep,
    StorageDep,
)
from app.cursors import decode_cursor, encode_cursor
from app.dataset_uploads import DatasetCreator, dataset_form_spec, dataset_key
from app.models import dataset_storage_prefix, new_id
from app.problems import Problem
from app.schemas import DatasetList, DatasetPublic, dataset_public
from app.uploads import receive_form

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/datasets", tags=["datasets"])

DATASET_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "An .npz or .safetensors with 'x' (and optional labels 'y'), or an image folder "
            "(<class>/<image> or <split>/<class>/<image>) as .zip, .tar or .tar.gz.",
        },
        "uri": {
            "type": "string",
            "description": "Import from s3://, file:// or https:// instead of uploading (operator-allowed only).",
        },
        "preprocess": {
            "type": "string",
            "description": 'Image preprocessing as JSON, e.g. {"resize": 256, "center_crop": 224, '
            '"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}.',
        },
    },
}
PROBLEM: dict[str, Any] = {"content": {"application/problem+json": {}}}


@router.post(
    "",
    status_code=201,
    response_model=DatasetPublic,
    summary="Upload a dataset",
    openapi_extra={
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": DATASET_FORM_SCHEMA}}}
    },
    responses={413: PROBLEM, 415: PROBLEM, 422: PROBLEM, 503: PROBLEM},
)
async def create_dataset(
    request: Request,
    tenant: CurrentTenant,
    settings: SettingsDep,
    sessions: SessionFactoryDep,
    storage: StorageDep,
    slots: InspectionSlotsDep,
) -> Response:
    """Store the file, inspect it in the sandbox and return what it holds (201; 503 while every
    inspection slot stays taken)."""
    dataset_id = new_id()
    prefix = dataset_storage_prefix(tenant.id, dataset_id)
    form = await receive_form(
        content_type=request.headers.get("content-type"),
        content_length=request.headers.get("content-length"),
        body=request.stream(),
        spec=dataset_form_spec(settings),
        storage=storage,
        key_for=lambda _field: dataset_key(prefix),
    )
    creator = DatasetCreator(settings, sessions, storage, slots)
    try:
        dataset = await run_in_threadpool(
            lambda: creator.create(dataset_id=dataset_id, tenant_id=tenant.id, prefix=prefix, form=form)
        )
    except BaseException:
        await run_in_threadpool(storage.delete_prefix, prefix)
        raise
    body = dataset_public(dataset).model_dump(mode="json")
    return JSONResponse(body, status_code=201, headers={"Location": f"/datasets/{dataset.id}"})


@router.get("", response_model=DatasetList, summary="List the caller's datasets, newest first")
def list_datasets(
    session: SessionDep,
    tenant: CurrentTenant,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(description="next_after from the previous page")] = None,
) -> DatasetList:
    before_seq = decode_cursor("dataset", after) if after else None
    rows = crud.list_datasets(session, tenant_id=tenant.id, limit=limit + 1, before_seq=before_seq)
    page = rows[:limit]
    next_after = encode_cursor("dataset", page[-1].seq) if len(rows) > limit else None
    return DatasetList(items=[dataset_public(row) for row in page], next_after=next_after)


@router.get("/{dataset_id}", response_model=DatasetPublic, responses={404: PROBLEM}, summary="Show a dataset")
def get_dataset(dataset_id: str, session: SessionDep, tenant: CurrentTenant) -> DatasetPublic:
    dataset = crud.get_dataset(session, tenant_id=tenant.id, dataset_id=dataset_id)
    if dataset is None:
        raise _not_found(dataset_id)
    return dataset_public(dataset)


@router.delete(
    "/{dataset_id}", status_code=204, responses={404: PROBLEM, 409: PROBLEM}, summary="Delete a dataset"
)
def delete_dataset(
    dataset_id: str, session: SessionDep, tenant: CurrentTenant, storage: StorageDep
) -> Response:
    """Remove the dataset and its file (409 while a queued or running job reads it)."""
    try:
        dataset = crud.delete_dataset(session, tenant_id=tenant.id, dataset_id=dataset_id)
    except crud.DatasetInUse as exc:
        raise Problem("dataset-in-use", str(exc)) from None
    if dataset is None:
        raise _not_found(dataset_id)
    try:
        storage.delete_prefix(dataset_storage_prefix(tenant.id, dataset_id))
    except Exception:
        logger.exception("dataset %s deleted but its file could not be removed", dataset_id)
    return Response(status_code=204)


def _not_found(dataset_id: str) -> Problem:
    return Problem("not-found", f"no dataset {dataset_id}")

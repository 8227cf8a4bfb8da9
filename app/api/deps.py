"""Request dependencies: settings, a database session, storage, the dispatcher and the caller's tenant."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app import crud
from app.config import Settings
from app.db import SessionFactory
from app.models import Tenant
from app.problems import Problem
from app.storage import Storage
from worker.dispatch import JobDispatcher


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_session_factory(request: Request) -> SessionFactory:
    return request.app.state.sessions  # type: ignore[no-any-return]


def get_session(sessions: Annotated[SessionFactory, Depends(get_session_factory)]) -> Iterator[Session]:
    with sessions() as session:
        yield session


def get_storage(request: Request) -> Storage:
    return request.app.state.storage  # type: ignore[no-any-return]


def get_inspection_slots(request: Request) -> threading.BoundedSemaphore:
    return request.app.state.inspection_slots  # type: ignore[no-any-return]


def get_dispatcher(request: Request) -> JobDispatcher:
    return request.app.state.dispatcher  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionFactoryDep = Annotated[SessionFactory, Depends(get_session_factory)]
SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[Storage, Depends(get_storage)]
DispatcherDep = Annotated[JobDispatcher, Depends(get_dispatcher)]
InspectionSlotsDep = Annotated[threading.BoundedSemaphore, Depends(get_inspection_slots)]


def get_current_tenant(request: Request, session: SessionDep, settings: SettingsDep) -> Tenant:
    """The tenant of the presented API key.

    Without a key, the single local tenant is used only when anonymous access is allowed: bound to a
    loopback address, ``auth_required`` not set, and no API key created yet.
    """
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        tenant = crud.authenticate(session, token=token.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise _unauthorized("the API key is not valid")
    elif anonymous_allowed(session, settings):
        tenant = crud.get_or_create_tenant(session, name=crud.LOCAL_TENANT)
    else:
        raise _unauthorized("this server requires an API key: send 'Authorization: Bearer <key>'")
    session.commit()  # end the read transaction: long uploads must not hold a database connection
    return tenant


def anonymous_allowed(session: Session, settings: Settings) -> bool:
    """Whether requests without a key act as the local tenant."""
    if settings.auth_required is True or not settings.binds_loopback():
        return False
    if settings.auth_required is False:
        return True
    return not crud.any_api_keys(session)


def _unauthorized(detail: str) -> Problem:
    return Problem("unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="specprune"'})


CurrentTenant = Annotated[Tenant, Depends(get_current_tenant)]

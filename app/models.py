"""Database tables: tenants, their hashed API keys, jobs (with lease, heartbeat and attempts) and datasets."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.webhook_signing import new_webhook_secret


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """A random UUID4 string: the public id of tenants and jobs."""
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# An integer primary key that autoincrements on SQLite too (SQLite only does so for INTEGER).
AutoIncrementId = BigInteger().with_variant(Integer(), "sqlite")


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    """One customer: owns API keys and jobs; never sees another tenant's rows."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Signs the tenant's webhooks (``whsec_...``); made with the tenant, shown by `specprune webhooks secret`.
    webhook_secret: Mapped[str] = mapped_column(String(64), default=new_webhook_secret)

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="tenant", cascade="all, delete-orphan")


class ApiKey(Base):
    """A bearer key ``spk_<id>_<secret>``: ``id`` is public, only the secret's SHA-256 is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    tenant: Mapped[Tenant] = relationship(back_populates="api_keys")


class Job(Base):
    """One compression job: its inputs and outputs (storage keys), state, progress and lease."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_seq", "tenant_id", "seq"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
        Index("ix_jobs_callback_pending", "callback_pending", "status"),
    )

    # Insertion order: newest-first listing and cursors; ``id`` is the public identifier.
    seq: Mapped[int] = mapped_column(AutoIncrementId, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    queue: Mapped[str] = mapped_column(String(16), default="cpu")
    stage: Mapped[str] = mapped_column(String(64), default="queued")
    fraction: Mapped[float] = mapped_column(Float, default=0.0)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)

    model_filename: Mapped[str] = mapped_column(String(255))
    model_format: Mapped[str | None] = mapped_column(String(32), default=None)
    model_sha256: Mapped[str] = mapped_column(String(64))
    model_bytes: Mapped[int] = mapped_column(BigInteger)
    model_key: Mapped[str] = mapped_column(String(1024))

    dataset_filename: Mapped[str | None] = mapped_column(String(255), default=None)
    dataset_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    dataset_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    dataset_key: Mapped[str | None] = mapped_column(String(1024), default=None)
    # The data by reference instead of an upload: a stored dataset or a URI; likewise for evaluation.
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), default=None, index=True
    )
    dataset_uri: Mapped[str | None] = mapped_column(String(4096), default=None)
    eval_dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), default=None, index=True
    )
    eval_dataset_uri: Mapped[str | None] = mapped_column(String(4096), default=None)
    # How the data is read: {"eval_fraction": float, "preprocess": {...} | null}.
    data_options: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)

    output_key: Mapped[str | None] = mapped_column(String(1024), default=None)
    output_filename: Mapped[str | None] = mapped_column(String(255), default=None)
    output_format: Mapped[str | None] = mapped_column(String(32), default=None)
    output_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    output_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    report_key: Mapped[str | None] = mapped_column(String(1024), default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Further downloads by name (``safetensors``, ``pruned``, ``pruned_safetensors``), each
    # {"key", "filename", "format", "sha256", "bytes"}.
    artifacts: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)

    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)

    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    payload_sha256: Mapped[str | None] = mapped_column(String(64), default=None)

    # Webhook: POSTed the job at its terminal status; pending until that delivery has been queued.
    callback_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    callback_pending: Mapped[bool] = mapped_column(Boolean, default=False)

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(255), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)

    @property
    def job_status(self) -> JobStatus:
        return JobStatus(self.status)

    @property
    def storage_prefix(self) -> str:
        """Every artifact of this job lives under this storage prefix."""
        return job_storage_prefix(self.tenant_id, self.id)


class Dataset(Base):
    """A tenant's stored dataset: where its file is and what inspecting it in the sandbox found."""

    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_tenant_seq", "tenant_id", "seq"),)

    seq: Mapped[int] = mapped_column(AutoIncrementId, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    source_uri: Mapped[str | None] = mapped_column(String(4096), default=None)
    format: Mapped[str] = mapped_column(String(32))
    samples: Mapped[int] = mapped_column(BigInteger)
    input_shape: Mapped[list[int]] = mapped_column(JSON)
    # Sorted class names (image folders), a class count (arrays with labels), or null (no labels).
    classes: Mapped[list[str] | int | None] = mapped_column(JSON, default=None)
    splits: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    labelled: Mapped[bool] = mapped_column(Boolean, default=False)
    preprocess: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    @property
    def storage_prefix(self) -> str:
        return dataset_storage_prefix(self.tenant_id, self.id)


class WebhookDeliveryState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookDelivery(Base):
    """One webhook message (a job's terminal status) and its delivery attempts. It keeps the body it
    sends, so it outlives the job; ``locked_until`` lets one sender at a time attempt it."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)

    seq: Mapped[int] = mapped_column(AutoIncrementId, primary_key=True, autoincrement=True)
    # The ``webhook-id`` header: the same on every attempt.
    id: Mapped[str] = mapped_column(String(64), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(String(36), index=True)
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2048))
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=WebhookDeliveryState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


def dataset_storage_prefix(tenant_id: str, dataset_id: str) -> str:
    """``tenants/<tenant>/datasets/<dataset>/``: deleting a dataset deletes this prefix."""
    return f"tenants/{tenant_id}/datasets/{dataset_id}/"


def job_storage_prefix(tenant_id: str, job_id: str) -> str:
    """``tenants/<tenant>/jobs/<job>/``: deleting a job deletes this prefix."""
    return f"tenants/{tenant_id}/jobs/{job_id}/"

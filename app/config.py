"""Settings: the one place the service, the workers, the CLI and the migrations read configuration from.

Every field is an environment variable with the ``SPECPRUNE_`` prefix (``SPECPRUNE_DATABASE_URL``, ...).
The defaults are the embedded mode: SQLite and artifacts under ``SPECPRUNE_HOME``, no broker (a local
worker process polls the database), the API on 127.0.0.1:8000.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3
PLACEHOLDER_SECRETS = frozenset({"changethis", "changeme", "secret", "password"})


class Settings(BaseSettings):
    """Configuration of the specprune service (API, workers, CLI, migrations)."""

    model_config = SettingsConfigDict(env_prefix="SPECPRUNE_", extra="ignore", validate_default=True)

    # Where the embedded mode keeps its SQLite database and artifacts.
    home: Path = Path(".specprune")
    # SQLAlchemy URL; empty means SQLite at <home>/specprune.db. PostgreSQL: postgresql+psycopg://...
    database_url: str = ""
    # Celery broker (redis://...); None means embedded mode: a local worker polls the database.
    broker_url: str | None = None
    # Prefix for every broker key, so that several deployments (or test runs) can share one Redis.
    broker_namespace: str = ""

    # Artifact storage: a local directory (default <home>/artifacts) or an S3-compatible bucket.
    storage_backend: Literal["local", "s3"] = "local"
    storage_dir: Path | None = None
    s3_endpoint_url: str | None = None
    s3_bucket: str = "specprune"
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_prefix: str = ""
    # Multipart part size for S3 uploads (S3 requires >= 5 MiB for every part but the last).
    s3_part_bytes: int = Field(default=8 * 1024**2, ge=5 * 1024**2)

    # Largest accepted upload per file, enforced while streaming (413 past it).
    max_upload_bytes: int = Field(default=2 * GIB, ge=1)

    # Where `specprune serve` binds. Any non-loopback address requires API keys.
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # None: keys are required once any key exists, or when bound to a non-loopback address.
    auth_required: bool | None = None

    # Sandbox limits for the child process that loads and compresses one model.
    job_memory_bytes: int = Field(default=12 * GIB, ge=256 * 1024**2)
    job_cpu_seconds: int = Field(default=6 * 3600, ge=1)
    job_wall_seconds: float = Field(default=3600.0, gt=0)
    job_output_bytes: int = Field(default=8 * GIB, ge=1024**2)
    # Threads torch may use inside the sandbox (None: torch's default).
    job_threads: int | None = Field(default=None, ge=1)
    # Whether job reports measure latency (about two seconds a job; off makes test runs faster).
    job_measure_latency: bool = True

    # Data handed to the engine: rows read per batch, the most evaluation samples (a seeded draw from
    # the evaluation split), the most training samples held in memory for recovery.
    data_batch_size: int = Field(default=256, ge=1, le=65536)
    eval_samples: int = Field(default=10_000, ge=1)
    recovery_samples: int = Field(default=50_000, ge=1)
    # Wall-clock limit for inspecting an uploaded dataset (POST /datasets) in the sandbox.
    dataset_inspect_seconds: float = Field(default=600.0, gt=0)
    # Inspections (sandboxed child processes) one API process runs at once; further uploads wait up to
    # dataset_inspect_wait_seconds for a slot, then get 503 with Retry-After.
    dataset_inspections: int = Field(default=2, ge=1)
    dataset_inspect_wait_seconds: float = Field(default=30.0, ge=0)
    # Dataset references (comma-separated; empty allows none): file:// only under these directories,
    # http(s):// only to these host names, s3:// only in these buckets (never the artifact bucket).
    dataset_file_roots: str = ""
    dataset_http_hosts: str = ""
    dataset_s3_buckets: str = ""
    # Downloading an http(s) dataset: seconds to connect and between received bytes.
    dataset_http_timeout_seconds: float = Field(default=30.0, gt=0)

    # Leases: a running job's row is owned by one worker until lease expiry; heartbeats extend it.
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    reaper_interval_seconds: float = Field(default=15.0, gt=0)
    # A job still queued this long after its last enqueue is enqueued again (a lost broker message).
    requeue_after_seconds: float = Field(default=900.0, gt=0)
    # A job whose worker died this many times is failed instead of re-queued.
    max_attempts: int = Field(default=3, ge=1)

    # Workers: the queues consumed, where device=auto jobs go, and tasks in parallel per worker.
    worker_queues: str = "cpu,gpu"
    auto_device_queue: Literal["cpu", "gpu"] = "cpu"
    worker_concurrency: int = Field(default=1, ge=1)
    # How often the embedded local worker looks for queued jobs.
    poll_interval_seconds: float = Field(default=1.0, gt=0)

    # Server-sent events: how often a job row is re-read, and the keep-alive comment interval.
    events_poll_seconds: float = Field(default=0.5, gt=0)
    events_keepalive_seconds: float = Field(default=15.0, gt=0)
    # Job durations exposed on /metrics cover jobs that finished within this window.
    metrics_duration_window_seconds: float = Field(default=86400.0, gt=0)

    # Webhooks (a job's callback_url, see app/webhook_destinations.py). Allowed destinations,
    # comma-separated: "*" is any host whose addresses are all public; a host name, "*.domain", an IP
    # address or a CIDR network is allowed even where it is internal (loopback, private, link-local).
    webhook_allowed_hosts: str = "*"
    # Attempts per delivery; the first retry comes after webhook_retry_seconds, each next one 3x later.
    webhook_max_attempts: int = Field(default=6, ge=1, le=30)
    webhook_retry_seconds: float = Field(default=5.0, gt=0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    # How often the API process looks for jobs to announce and deliveries due; how long finished
    # deliveries are kept.
    webhook_poll_seconds: float = Field(default=1.0, gt=0)
    webhook_retention_seconds: float = Field(default=7 * 86400.0, gt=0)

    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.home = self.home.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.home / 'specprune.db'}"
        if self.storage_dir is None:
            self.storage_dir = self.home / "artifacts"
        self.storage_dir = self.storage_dir.expanduser().resolve()
        secret = self.s3_secret_access_key
        if secret is not None and secret.get_secret_value().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("SPECPRUNE_S3_SECRET_ACCESS_KEY is a placeholder; set a real secret")
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("SPECPRUNE_HEARTBEAT_SECONDS must be shorter than SPECPRUNE_LEASE_SECONDS")
        if not self.queues:
            raise ValueError("SPECPRUNE_WORKER_QUEUES names no queue")
        unknown = set(self.queues) - {"cpu", "gpu"}
        if unknown:
            raise ValueError(f"SPECPRUNE_WORKER_QUEUES: unknown queues {sorted(unknown)}; use cpu and/or gpu")
        from app.webhook_destinations import AllowedHosts

        AllowedHosts.parse(self.webhook_allowed_hosts)  # ValueError naming a bad entry
        return self

    @property
    def queues(self) -> list[str]:
        """The queues this worker consumes, from ``worker_queues``."""
        return [q.strip() for q in self.worker_queues.split(",") if q.strip()]

    @property
    def file_roots(self) -> list[Path]:
        """The directories file:// dataset references may point into, resolved."""
        return [Path(root).expanduser().resolve() for root in _items(self.dataset_file_roots)]

    @property
    def http_hosts(self) -> frozenset[str]:
        """Host names http(s):// dataset references may name, lower case."""
        return frozenset(host.lower() for host in _items(self.dataset_http_hosts))

    @property
    def s3_buckets(self) -> frozenset[str]:
        """Buckets s3:// dataset references may name."""
        return frozenset(_items(self.dataset_s3_buckets))

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def embedded(self) -> bool:
        """No broker: the database is the queue and a local worker polls it."""
        return not self.broker_url

    @property
    def task_time_limit_seconds(self) -> int:
        """Celery's hard limit: the sandbox wall time plus room to fetch inputs and store outputs."""
        return int(self.job_wall_seconds) + 600

    @property
    def broker_visibility_timeout_seconds(self) -> int:
        """How long the broker waits before redelivering an unacknowledged task; above the time limit."""
        return 2 * self.task_time_limit_seconds

    def binds_loopback(self) -> bool:
        """Whether ``host`` is a loopback address (or ``localhost``)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _items(value: str) -> list[str]:
    """The non-empty entries of a comma-separated setting."""
    return [item.strip() for item in value.split(",") if item.strip()]

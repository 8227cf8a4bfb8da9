"""A Python client for the specprune service, for pipelines and scripts. Needs only ``httpx``.

    from client import Client
    client = Client("http://127.0.0.1:8000", api_key=None)   # or SPECPRUNE_URL / SPECPRUNE_API_KEY
    job = client.submit("model.pt2", dataset="data.npz", config={"flops_ratio": 0.5})
    job.wait(progress=True)          # raises JobFailed / JobCancelled
    job.download("model.pruned.pt2")
    report = job.report()

Errors from the API are typed (:class:`NotFound`, :class:`ValidationFailed`, ...; all
:class:`SpecpruneAPIError` with ``.status`` and ``.problem``).
"""

from client.client import Client
from client.errors import (
    BadRequest,
    Conflict,
    JobCancelled,
    JobError,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    RangeNotSatisfiable,
    ServerError,
    SpecpruneAPIError,
    SpecpruneClientError,
    TransportError,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
    WaitTimeout,
)
from client.jobs import TERMINAL_STATUSES, Job
from client.progress import ProgressDisplay
from client.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "TERMINAL_STATUSES",
    "BadRequest",
    "Client",
    "Conflict",
    "Job",
    "JobCancelled",
    "JobError",
    "JobFailed",
    "NotFound",
    "PayloadTooLarge",
    "ProgressDisplay",
    "RangeNotSatisfiable",
    "ServerError",
    "SpecpruneAPIError",
    "SpecpruneClientError",
    "TransportError",
    "Unauthorized",
    "UnsupportedMediaType",
    "ValidationFailed",
    "WaitTimeout",
    "WebhookVerificationError",
    "verify_webhook",
]

"""A submitted job's webhook: the ``callback_url`` form field of POST /jobs, checked at submission
(scheme, no credentials, the host resolved and allowed by ``SPECPRUNE_WEBHOOK_ALLOWED_HOSTS``)."""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.models import Job
from app.problems import validation_problem
from app.uploads import ReceivedForm
from app.webhook_destinations import MAX_URL_LENGTH, AllowedHosts, DestinationError, check_callback_url

FIELD = "callback_url"
TEXT_FIELDS = {FIELD: MAX_URL_LENGTH + 64}


@dataclass(frozen=True)
class JobCallback:
    """The job's callback URL, or None for no webhook."""

    url: str | None

    def apply(self, job: Job) -> None:
        """Fill the job's webhook columns: pending until its terminal status has been announced."""
        job.callback_url = self.url
        job.callback_pending = self.url is not None


def job_callback(form: ReceivedForm, settings: Settings) -> JobCallback:
    """The form's ``callback_url``, checked; 422 problem+json when it may not be used."""
    url = (form.texts.get(FIELD) or "").strip()
    if not url:
        return JobCallback(None)
    try:
        check_callback_url(url, AllowedHosts.parse(settings.webhook_allowed_hosts))
    except DestinationError as exc:
        raise validation_problem([{"loc": ["body", FIELD], "msg": str(exc), "type": "value_error"}]) from None
    return JobCallback(url)

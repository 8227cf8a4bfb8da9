"""Sending webhooks: a loop, beside the reaper in the API process, that turns finished jobs into
deliveries and POSTs the due ones, signed, with bounded retries. Jobs never wait for it.

Safe to run in several processes at once: jobs are announced and deliveries claimed by conditional
UPDATEs (``app.webhook_store``). Each attempt checks the destination again and connects to the
address that was checked; redirects are not followed.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx

from app import webhook_store
from app.config import Settings
from app.db import SessionFactory, session_scope
from app.models import utcnow
from app.webhook_destinations import (
    AllowedHosts,
    DestinationRefused,
    DestinationUnresolvable,
    Resolver,
    check_callback_url,
)
from app.webhook_signing import signed_headers
from app.webhook_store import Attempt, DueDelivery, Outcome

logger = logging.getLogger(__name__)

USER_AGENT = "specprune-webhooks/0.1"
SENDERS = 4
BATCH = 20
MAX_ERROR_TEXT = 500


class WebhookSender:
    """POSTs one delivery attempt to its checked destination."""

    def __init__(self, settings: Settings, resolve: Resolver | None = None) -> None:
        self.allowed = AllowedHosts.parse(settings.webhook_allowed_hosts)
        self.timeout = settings.webhook_timeout_seconds
        self.resolve = resolve

    def send(self, delivery: DueDelivery) -> Attempt:
        try:
            destination = check_callback_url(delivery.url, self.allowed, self.resolve)
        except DestinationUnresolvable as exc:
            return Attempt(Outcome.RETRY, error=str(exc))
        except DestinationRefused as exc:
            return Attempt(Outcome.REFUSED, error=str(exc))
        body = delivery.body.encode()
        headers = {
            **signed_headers(delivery.secret, delivery.id, int(time.time()), body),
            "host": destination.host_header,
            "user-agent": USER_AGENT,
        }
        extensions = {"sni_hostname": destination.host} if destination.scheme == "https" else {}
        error = "no address to connect to"
        with httpx.Client(timeout=self.timeout, follow_redirects=False, trust_env=False) as http:
            for address in destination.addresses:
                try:
                    response = http.post(
                        destination.url_for(address), content=body, headers=headers, extensions=extensions
                    )
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_TEXT]
                    continue
                if response.is_success:
                    return Attempt(Outcome.DELIVERED, response.status_code)
                return Attempt(Outcome.RETRY, response.status_code, f"HTTP {response.status_code}")
        return Attempt(Outcome.RETRY, error=error)


class WebhookDeliverer:
    """Announces finished jobs and delivers due webhooks, every ``webhook_poll_seconds``."""

    def __init__(
        self, settings: Settings, sessions: SessionFactory, sender: WebhookSender | None = None
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.sender = sender or WebhookSender(settings)

    def run_once(self) -> list[tuple[str, str]]:
        """One pass; returns ``(message id, state)`` for each attempt made."""
        now = utcnow()
        with session_scope(self.sessions) as session:
            webhook_store.queue_finished_jobs(session, now=now)
            due = webhook_store.claim_due_deliveries(
                session, lease_seconds=self._lease_seconds(), limit=BATCH, now=now
            )
        if not due:
            return []
        with ThreadPoolExecutor(max_workers=min(SENDERS, len(due))) as pool:
            attempts = list(pool.map(self.sender.send, due))
        return [self._record(delivery, attempt) for delivery, attempt in zip(due, attempts, strict=True)]

    def prune(self) -> int:
        """Forget finished deliveries older than ``webhook_retention_seconds``."""
        older_than = utcnow() - timedelta(seconds=self.settings.webhook_retention_seconds)
        with session_scope(self.sessions) as session:
            return webhook_store.prune_finished_deliveries(session, older_than=older_than)

    def run_forever(self, stop: threading.Event) -> None:
        """Pass until ``stop`` is set; errors are logged, never fatal."""
        last_prune = 0.0
        while not stop.wait(self.settings.webhook_poll_seconds):
            try:
                self.run_once()
                if time.monotonic() - last_prune > 3600:
                    self.prune()
                    last_prune = time.monotonic()
            except Exception:
                logger.exception("webhook pass failed")

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(
            target=self.run_forever, args=(stop,), name="specprune-webhooks", daemon=True
        )
        thread.start()
        return thread

    def _lease_seconds(self) -> float:
        """Long enough for a batch of attempts at the timeout (each address of a destination)."""
        return 4 * self.settings.webhook_timeout_seconds * (BATCH // SENDERS + 1)

    def _record(self, delivery: DueDelivery, attempt: Attempt) -> tuple[str, str]:
        with session_scope(self.sessions) as session:
            state = webhook_store.record_attempt(
                session,
                delivery_id=delivery.id,
                attempt=attempt,
                max_attempts=self.settings.webhook_max_attempts,
                retry_seconds=self.settings.webhook_retry_seconds,
            )
        log = logger.info if attempt.outcome is Outcome.DELIVERED else logger.warning
        log(
            "webhook %s for job %s: attempt %d %s (%s); now %s",
            delivery.id,
            delivery.job_id,
            delivery.attempts + 1,
            attempt.outcome.value,
            attempt.error or attempt.status_code,
            state,
        )
        return delivery.id, state

"""Webhooks: a job's terminal status POSTed to a real receiver, signed the Standard Webhooks way (checked
here with an independent implementation), retried after a failure, bounded, announced once whoever set the
status (worker, API cancel, reaper); internal destinations refused unless the operator allows them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from pydantic import ValidationError
from sqlalchemy import select, text

from app import crud, webhook_store
from app.config import Settings
from app.db import alembic_config, session_scope, upgrade_database
from app.models import Job, JobStatus, Tenant, WebhookDelivery, utcnow
from app.schemas import JobConfig
from app.webhook_destinations import (
    AllowedHosts,
    DestinationRefused,
    DestinationUnresolvable,
    check_callback_url,
    is_public,
)
from app.webhook_signing import new_webhook_secret, sign
from client import Client, JobCancelled, WebhookVerificationError, verify_webhook
from tests.client.conftest import FinishedJob
from tests.client.servers import Delivery, Receiver, Served
from tests.service.conftest import Api, assert_problem, make_settings, sessions_for
from worker.dispatch import DatabaseDispatcher
from worker.reaper import Reaper
from worker.webhooks import WebhookDeliverer


def expected_signature(secret: str, delivery: Delivery) -> str:
    """Standard Webhooks, written out independently of app.webhook_signing."""
    key = base64.b64decode(secret[len("whsec_") :])
    signed = b".".join(
        [
            delivery.headers["webhook-id"].encode(),
            delivery.headers["webhook-timestamp"].encode(),
            delivery.body,
        ]
    )
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def assert_signed(secret: str, delivery: Delivery) -> None:
    assert delivery.headers["webhook-signature"] == expected_signature(secret, delivery)
    assert delivery.headers["content-type"] == "application/json"
    assert abs(int(delivery.headers["webhook-timestamp"]) - delivery.received_at) < 60


# --- end to end: `specprune serve`, a real receiver ------------------------------------------------


def test_a_succeeded_job_is_posted_signed_and_retried_after_a_500(
    served: Served, finished_job: FinishedJob, session_receiver: Receiver
) -> None:
    first, second = session_receiver.wait_for(finished_job.webhook_path, 2)
    secret = served.webhook_secret("local")
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    for delivery in (first, second):
        assert_signed(secret, delivery)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert first.headers["webhook-id"].startswith("msg_")
    assert second.received_at - first.received_at >= 0.4  # SPECPRUNE_WEBHOOK_RETRY_SECONDS=0.5
    body = second.json()
    assert first.body == second.body
    assert body == finished_job.job.refresh().data  # the job object, as GET /jobs/{id} shows it
    assert body["status"] == "succeeded" and body["callback_url"] == session_receiver.url(
        finished_job.webhook_path
    )
    assert verify_webhook(secret, second.headers, second.body) == body
    time.sleep(1.0)
    assert len(session_receiver.for_path(finished_job.webhook_path)) == 2  # nothing after the 2xx


def test_a_cancelled_job_is_posted_once(
    served: Served, model_and_data: tuple[Path, Path], receiver: Receiver
) -> None:
    client = Client(served.url)
    job = client.submit(*model_and_data, callback_url=receiver.url("/cancelled"))
    job.cancel()
    with pytest.raises(JobCancelled):
        job.wait(progress=False, timeout=60)
    (delivery,) = receiver.wait_for("/cancelled", 1)
    assert_signed(served.webhook_secret("local"), delivery)
    assert delivery.json()["id"] == job.id and delivery.json()["status"] == "cancelled"
    job.delete()


# --- submission: where callbacks may go -------------------------------------------------------------

REFUSED_BY_DEFAULT = [
    "http://127.0.0.1:8000/hook",
    "http://localhost/hook",
    "http://10.0.0.1/hook",
    "http://192.168.1.20/hook",
    "http://100.64.0.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",
    "http://240.0.0.1/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[fd00::1]/hook",
    "ftp://93.184.216.34/hook",
    "http://user:password@93.184.216.34/hook",
    "http:///hook",
    "not a url",
]


@pytest.mark.parametrize("url", REFUSED_BY_DEFAULT)
def test_submission_refuses_internal_or_malformed_callbacks_by_default(
    api_factory: Any, model_file: Path, dataset_file: Path, url: str
) -> None:
    api: Api = api_factory()
    body = assert_problem(api.submit({}, model_file, dataset_file, callback_url=url), 422, "validation-error")
    assert body["errors"][0]["loc"] == ["body", "callback_url"]


def test_a_public_callback_is_accepted_and_shown_on_the_job(
    api_factory: Any, model_file: Path, dataset_file: Path
) -> None:
    api: Api = api_factory()
    response = api.submit({}, model_file, dataset_file, callback_url="https://93.184.216.34/hooks/specprune")
    assert response.status_code == 202, response.text
    assert response.json()["callback_url"] == "https://93.184.216.34/hooks/specprune"
    without = api.submit({}, model_file, dataset_file)
    assert without.status_code == 202 and without.json()["callback_url"] is None


def test_an_allowed_internal_host_is_accepted(api_factory: Any, model_file: Path, dataset_file: Path) -> None:
    api: Api = api_factory(webhook_allowed_hosts="127.0.0.1, 10.0.0.0/8")
    for url in ("http://127.0.0.1:9/hook", "http://10.1.2.3/hook"):
        assert api.submit({}, model_file, dataset_file, callback_url=url).status_code == 202
    refused = api.submit({}, model_file, dataset_file, callback_url="http://93.184.216.34/hook")
    assert_problem(refused, 422, "validation-error")  # no "*": public hosts are not on the list


def test_a_job_cancelled_then_deleted_at_once_is_still_posted(
    api_factory: Any, model_file: Path, dataset_file: Path, receiver: Receiver
) -> None:
    api: Api = api_factory(webhook_allowed_hosts="127.0.0.1", webhook_poll_seconds=0.1)
    job = api.submit({}, model_file, dataset_file, callback_url=receiver.url("/deleted")).json()
    assert api.client.post(f"/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    assert api.client.delete(f"/jobs/{job['id']}").status_code == 204
    (delivery,) = receiver.wait_for("/deleted", 1)
    assert delivery.json()["id"] == job["id"] and delivery.json()["status"] == "cancelled"


# --- in process: the reaper, retries, refusal at delivery time ---------------------------------------


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    settings = make_settings(tmp_path, webhook_allowed_hosts="127.0.0.1", **overrides)
    upgrade_database(settings)
    return settings


def _insert_job(settings: Settings, url: str, **columns: Any) -> tuple[str, str]:
    """A job row of a fresh tenant with a pending callback; returns (job id, tenant secret)."""
    with session_scope(sessions_for(settings)) as session:
        tenant = crud.get_or_create_tenant(session, name=f"tenant-{time.monotonic_ns()}")
        job = Job(
            tenant_id=tenant.id,
            config=JobConfig().model_dump(mode="json"),
            model_filename="model.pt2",
            model_sha256="0" * 64,
            model_bytes=1,
            model_key="tenants/x/model",
            callback_url=url,
            callback_pending=True,
            **columns,
        )
        session.add(job)
        session.commit()
        return job.id, tenant.webhook_secret


def test_a_job_failed_by_the_reaper_is_posted(tmp_path: Path, receiver: Receiver) -> None:
    settings = _settings(tmp_path, max_attempts=1)
    job_id, secret = _insert_job(
        settings,
        receiver.url("/reaped"),
        status=JobStatus.RUNNING.value,
        attempts=1,
        lease_owner="dead-worker",
        lease_expires_at=utcnow() - timedelta(seconds=5),
    )
    sessions = sessions_for(settings)
    deliverer = WebhookDeliverer(settings, sessions)
    assert deliverer.run_once() == []  # still running: nothing to announce
    assert Reaper(settings, sessions, DatabaseDispatcher()).run_once() == []
    ((message_id, state),) = deliverer.run_once()
    assert state == "delivered"
    (delivery,) = receiver.for_path("/reaped")
    assert delivery.headers["webhook-id"] == message_id
    assert_signed(secret, delivery)
    assert delivery.json()["id"] == job_id and delivery.json()["error"]["code"] == "worker_lost"
    assert deliverer.run_once() == [] and len(receiver.for_path("/reaped")) == 1


def test_retries_are_bounded_and_spaced_out(tmp_path: Path, receiver: Receiver) -> None:
    settings = _settings(tmp_path, webhook_max_attempts=3, webhook_retry_seconds=0.05)
    receiver.statuses["/down"] = [500] * 10
    _insert_job(settings, receiver.url("/down"), status=JobStatus.CANCELLED.value)
    deliverer = WebhookDeliverer(settings, sessions_for(settings))
    states: list[str] = []
    deadline = time.monotonic() + 10
    while (not states or states[-1] != "failed") and time.monotonic() < deadline:
        states += [state for _, state in deliverer.run_once()]
        time.sleep(0.01)
    assert states == ["pending", "pending", "failed"]
    got = receiver.for_path("/down")
    assert len(got) == 3 and len({d.headers["webhook-id"] for d in got}) == 1
    assert got[1].received_at - got[0].received_at >= 0.05 and got[2].received_at - got[1].received_at >= 0.15
    with session_scope(sessions_for(settings)) as session:
        row = session.scalars(select(WebhookDelivery)).one()
        assert (row.state, row.attempts, row.last_status_code) == ("failed", 3, 500)
    assert deliverer.run_once() == []


def test_backoff_schedule_triples(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    _insert_job(settings, "http://127.0.0.1:9/hook", status=JobStatus.SUCCEEDED.value)
    sessions = sessions_for(settings)
    now = utcnow()
    with session_scope(sessions) as session:
        (message_id,) = webhook_store.queue_finished_jobs(session, now=now)
        delays = []
        for _ in range(5):
            webhook_store.record_attempt(
                session,
                delivery_id=message_id,
                attempt=webhook_store.Attempt(webhook_store.Outcome.RETRY, 503),
                max_attempts=6,
                retry_seconds=5.0,
                now=now,
            )
            row = session.scalars(select(WebhookDelivery).where(WebhookDelivery.id == message_id)).one()
            session.refresh(row)
            delays.append((row.next_attempt_at - now).total_seconds())
    assert delays == [5.0, 15.0, 45.0, 135.0, 405.0]  # six attempts over about ten minutes


def test_a_destination_no_longer_allowed_is_not_contacted(tmp_path: Path, receiver: Receiver) -> None:
    settings = _settings(tmp_path)
    _insert_job(settings, receiver.url("/moved"), status=JobStatus.SUCCEEDED.value)
    stricter = settings.model_copy(update={"webhook_allowed_hosts": "*"})
    ((_, state),) = WebhookDeliverer(stricter, sessions_for(settings)).run_once()
    assert state == "failed" and receiver.for_path("/moved") == []
    with session_scope(sessions_for(settings)) as session:
        assert "internal address" in (session.scalars(select(WebhookDelivery)).one().last_error or "")


def test_each_tenant_gets_a_secret_and_the_migration_gives_existing_tenants_one(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    command.upgrade(alembic_config(settings), "0003")
    sessions = sessions_for(settings)
    with session_scope(sessions) as session:
        session.execute(
            text("INSERT INTO tenants (id, name, created_at) VALUES ('t1', 'old', '2026-01-01 00:00:00')")
        )
        session.commit()
    upgrade_database(settings)
    with session_scope(sessions) as session:
        old = session.scalars(select(Tenant).where(Tenant.name == "old")).one()
        new = crud.get_or_create_tenant(session, name="new")
        assert old.webhook_secret.startswith("whsec_") and new.webhook_secret.startswith("whsec_")
        assert old.webhook_secret != new.webhook_secret
        original = new.webhook_secret
        rotated = webhook_store.webhook_secret(session, tenant_name="new", rotate=True)
        assert rotated != original and rotated.startswith("whsec_")
        assert webhook_store.webhook_secret(session, tenant_name="new") == rotated


# --- destination policy and signatures ----------------------------------------------------------------


def test_allowed_hosts_setting_is_parsed_and_checked() -> None:
    allowed = AllowedHosts.parse("*, hooks.example.com, *.corp.example, 10.0.0.0/8, 127.0.0.1, ::1")
    assert (
        allowed.any_public
        and allowed.names == {"hooks.example.com"}
        and allowed.suffixes == (".corp.example",)
    )
    assert [str(n) for n in allowed.networks] == ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
    assert AllowedHosts.parse("") == AllowedHosts(any_public=False)
    with pytest.raises(ValidationError, match="WEBHOOK_ALLOWED_HOSTS"):
        Settings(webhook_allowed_hosts="exa mple.com")


def test_names_are_resolved_and_every_address_must_be_allowed() -> None:
    def resolver(table: dict[str, list[str]]) -> Any:
        def resolve(host: str, _port: int) -> list[str]:
            if host not in table:
                raise OSError("Name or service not known")
            return table[host]

        return resolve

    dns = resolver(
        {
            "public.example": ["93.184.216.34"],
            "rebound.example": ["10.0.0.5"],
            "mixed.example": ["93.184.216.34", "192.168.0.2"],
            "hooks.internal": ["10.9.9.9"],
        }
    )
    default = AllowedHosts.parse("*")
    destination = check_callback_url("https://public.example/hook?x=1", default, dns)
    assert destination.addresses == ("93.184.216.34",) and destination.port == 443
    assert destination.url_for("93.184.216.34") == "https://93.184.216.34:443/hook?x=1"
    assert destination.host_header == "public.example"
    for host in ("rebound.example", "mixed.example", "hooks.internal"):
        with pytest.raises(DestinationRefused, match="internal address"):
            check_callback_url(f"http://{host}/hook", default, dns)
    with pytest.raises(DestinationUnresolvable):
        check_callback_url("http://nowhere.example/hook", default, dns)
    named = AllowedHosts.parse("hooks.internal")
    assert check_callback_url("http://hooks.internal:8080/h", named, dns).host_header == "hooks.internal:8080"
    with pytest.raises(DestinationRefused, match="not allowed here"):
        check_callback_url("http://public.example/hook", named, dns)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.1.1.1", False),
        ("172.16.0.1", False),
        ("192.168.0.1", False),
        ("100.64.0.1", False),
        ("169.254.169.254", False),
        ("0.0.0.0", False),
        ("224.0.0.251", False),
        ("255.255.255.255", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("ff02::1", False),
        ("::ffff:10.0.0.1", False),
        ("2002:0a00:0001::1", False),  # 6to4 of 10.0.0.1
    ],
)
def test_public_addresses(address: str, public: bool) -> None:
    import ipaddress

    assert is_public(ipaddress.ip_address(address)) is public


def test_signatures_verify_and_tampering_is_detected() -> None:
    secret = new_webhook_secret()
    body = b'{"id":"job-1","status":"succeeded"}'
    now = int(time.time())
    headers = {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(now),
        "Webhook-Signature": sign(secret, "msg_1", now, body),
    }
    independent = expected_signature(
        secret, Delivery("/", {k.lower(): v for k, v in headers.items()}, body, float(now))
    )
    assert headers["Webhook-Signature"] == independent
    assert verify_webhook(secret, headers, body) == {"id": "job-1", "status": "succeeded"}
    assert verify_webhook(secret, {**headers, "Webhook-Signature": f"v1,bm9wZQ== {independent}"}, body)
    for bad_headers, bad_body, key in (
        (headers, body.replace(b"succeeded", b"failed"), secret),
        ({**headers, "Webhook-Id": "msg_2"}, body, secret),
        (headers, body, new_webhook_secret()),
        ({k: v for k, v in headers.items() if k != "Webhook-Signature"}, body, secret),
    ):
        with pytest.raises(WebhookVerificationError):
            verify_webhook(key, bad_headers, bad_body)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(secret, headers, body, now=now + 3600)

"""API keys and anonymous local access; health, readiness, metrics, problem documents, OpenAPI."""

from __future__ import annotations

from pathlib import Path

from app import crud
from app.db import session_scope
from tests.service.conftest import Api, assert_problem, free_port


def test_keys_are_required_once_one_exists(sqlite_api: Api, model_file: Path, dataset_file: Path) -> None:
    anonymous = sqlite_api.client.get("/jobs")
    assert anonymous.status_code == 200  # loopback, no key yet: the local tenant
    local_job = sqlite_api.submit({}, model_file, dataset_file).json()["id"]
    headers = sqlite_api.new_tenant()
    refused = sqlite_api.client.get("/jobs")
    assert_problem(refused, 401, "unauthorized")
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert sqlite_api.client.get("/jobs", headers=headers).json()["items"] == []
    assert_problem(sqlite_api.client.get(f"/jobs/{local_job}", headers=headers), 404, "not-found")


def test_invalid_and_revoked_keys_are_401(sqlite_api: Api) -> None:
    headers = sqlite_api.new_tenant()
    assert sqlite_api.client.get("/jobs", headers=headers).status_code == 200
    for bad in (
        "Bearer spk_000000000000_nope",
        "Bearer nonsense",
        "Basic dXNlcjpwYXNz",
        headers["Authorization"] + "x",
    ):
        assert_problem(sqlite_api.client.get("/jobs", headers={"Authorization": bad}), 401, "unauthorized")
    key_id = headers["Authorization"].split("_")[1]
    with session_scope(sqlite_api.sessions) as session:
        assert crud.revoke_api_key(session, key_id=key_id)
        stored = [key.secret_sha256 for key, _ in crud.list_api_keys(session)]
    assert headers["Authorization"].rsplit("_", 1)[-1] not in "".join(stored)  # only hashes are stored
    assert_problem(sqlite_api.client.get("/jobs", headers=headers), 401, "unauthorized")


def test_anonymous_access_only_on_loopback_and_when_not_required(api_factory) -> None:
    assert_problem(api_factory(auth_required=True).client.get("/jobs"), 401, "unauthorized")
    assert_problem(api_factory(host="0.0.0.0").client.get("/jobs"), 401, "unauthorized")
    assert api_factory(host="::1").client.get("/jobs").status_code == 200


def test_health_readiness_and_metrics(api: Api, model_file: Path, dataset_file: Path) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}
    before = _metric(api, 'specprune_jobs{status="queued"}')
    headers = api.new_tenant()
    api.submit(headers, model_file, dataset_file)
    api.client.get("/jobs/not-a-job", headers=headers)
    text = api.client.get("/metrics").text
    assert _metric(api, 'specprune_jobs{status="queued"}') == before + 1
    assert 'specprune_queue_depth{queue="cpu"}' in text
    assert "specprune_job_duration_seconds_bucket" in text
    assert 'specprune_http_request_duration_seconds_count{method="POST",route="/jobs",status="202"}' in text
    assert 'route="/jobs/{job_id}",status="404"' in text


def test_readiness_fails_with_a_problem_when_the_broker_is_down(api_factory) -> None:
    down = api_factory(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    body = assert_problem(down.client.get("/readyz"), 503, "not-ready")
    assert body["checks"] == {"database": "ok", "broker": "unavailable", "storage": "ok"}
    assert down.client.get("/healthz").status_code == 200


def test_every_error_is_problem_json(sqlite_api: Api) -> None:
    unknown_route = sqlite_api.client.get("/nowhere")
    assert_problem(unknown_route, 404, "not-found")
    assert_problem(sqlite_api.client.put("/jobs"), 405, "method-not-allowed")
    described = sqlite_api.client.get("/problems/payload-too-large").json()
    assert described["status"] == 413 and described["type"] == "/problems/payload-too-large"


def test_openapi_documents_the_contract(sqlite_api: Api) -> None:
    spec = sqlite_api.client.get("/openapi.json").json()
    assert {
        "/jobs",
        "/jobs/{job_id}",
        "/jobs/{job_id}/cancel",
        "/jobs/{job_id}/events",
        "/jobs/{job_id}/model",
        "/jobs/{job_id}/report",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(spec["paths"])
    form = spec["paths"]["/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {
        "model",
        "dataset",
        "dataset_id",
        "dataset_uri",
        "eval_dataset_id",
        "eval_dataset_uri",
        "eval_fraction",
        "preprocess",
        "callback_url",
        "config",
    }
    assert {"/datasets", "/datasets/{dataset_id}"} <= set(spec["paths"])
    config = spec["components"]["schemas"]["JobConfig"]
    assert config["additionalProperties"] is False
    assert sqlite_api.client.get("/docs").status_code == 200


def _metric(api: Api, name: str) -> float:
    for line in api.client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exposed")

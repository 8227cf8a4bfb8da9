"""`specprune submit|jobs|download` against a real `specprune serve` (SPECPRUNE_URL), and the webhook
secret commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client import Client, JobCancelled
from tests.client.servers import Served, clean_env, run_specprune
from tests.service.conftest import free_port


def test_submit_waits_prints_the_table_and_downloads(
    served: Served, model_and_data: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = model_and_data
    out, report = tmp_path / "remote.pt2", tmp_path / "remote.json"
    result = run_specprune(
        "submit", str(model), "--data", str(data), "--flops-ratio", "0.4", "--eval-fraction", "0.25",
        "-o", str(out), "--report", str(report), env=served.env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split() == ["original", "compressed", "change"]
    lines = result.stderr.splitlines()
    job_id = lines[0].split()[1]
    assert lines[0] == f"job {job_id} submitted to {served.url}"
    assert f"{job_id[:8]} succeeded 100%" in lines and lines[-1] == f"job {job_id} succeeded"
    assert "HTTP Request" not in result.stderr
    saved = json.loads(report.read_text())
    assert saved["config"]["flops_ratio"] == 0.4 and saved["compressed"]["flops"] < saved["original"]["flops"]
    assert out.stat().st_size > 0

    again = tmp_path / "again"
    again.mkdir()
    download = run_specprune(
        "download", job_id, "-o", str(again), "--report", str(again / "r.json"), env=served.env()
    )
    assert download.returncode == 0, download.stderr
    assert (again / "model.pruned.pt2").read_bytes() == out.read_bytes()
    assert json.loads((again / "r.json").read_text()) == saved


def test_jobs_are_listed_shown_cancelled_and_deleted(
    served: Served, model_and_data: tuple[Path, Path]
) -> None:
    model, data = model_and_data
    env = served.env()
    submitted = run_specprune("submit", str(model), "--data", str(data), env=env)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert len(job_id) == 36 and submitted.stdout.count("\n") == 1

    cancelled = run_specprune("jobs", "cancel", job_id, env=env)
    assert cancelled.returncode == 0 and cancelled.stderr.startswith(f"job {job_id}: ")
    listing = run_specprune("jobs", "list", "--limit", "5", env=env)
    assert listing.returncode == 0 and listing.stdout.split()[:5] == [
        "ID",
        "STATUS",
        "PROGRESS",
        "CREATED",
        "MODEL",
    ]
    assert job_id in listing.stdout
    as_json = run_specprune("jobs", "list", "--json", "--limit", "1", env=env)
    assert json.loads(as_json.stdout.splitlines()[0])["id"] == job_id
    shown = run_specprune("jobs", "show", job_id, env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == job_id

    too_early = run_specprune("download", job_id, "-o", "never.pt2", env=env)
    assert (
        too_early.returncode == 2 and "(HTTP 409)" in too_early.stderr and "Traceback" not in too_early.stderr
    )

    with pytest.raises(JobCancelled):  # a job that was running stops at its next progress point
        Client(served.url).job(job_id).wait(progress=False, timeout=60)
    deleted = run_specprune("jobs", "delete", job_id, env=env)
    assert deleted.returncode == 0 and deleted.stderr.strip() == f"job {job_id} deleted"
    gone = run_specprune("jobs", "show", job_id, env=env)
    assert (
        gone.returncode == 2
        and gone.stderr.strip() == f"specprune jobs show: error: no job {job_id} (HTTP 404)"
    )


def test_remote_errors_exit_with_one_line(served: Served, model_and_data: tuple[Path, Path]) -> None:
    model, data = model_and_data
    unreachable = run_specprune(
        "jobs", "list", "--server", f"http://127.0.0.1:{free_port()}", env=clean_env()
    )
    assert unreachable.returncode == 1 and "cannot reach the server" in unreachable.stderr
    wrong_key = run_specprune("jobs", "list", "--api-key", "spk_000000000000_wrong", env=served.env())
    assert wrong_key.returncode == 2 and "(HTTP 401)" in wrong_key.stderr
    invalid = run_specprune(
        "submit", str(model), "--data", str(data), "--config", '{"theta": 7}', env=served.env()
    )
    assert invalid.returncode == 2 and "config.theta" in invalid.stderr and "(HTTP 422)" in invalid.stderr
    missing = run_specprune("submit", "absent.pt2", "--data", str(data), env=served.env())
    assert (
        missing.returncode == 2
        and missing.stderr.strip() == "specprune submit: error: absent.pt2: no such file"
    )
    for result in (unreachable, wrong_key, invalid, missing):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_webhook_secrets_are_shown_and_rotated(tmp_path: Path) -> None:
    env = clean_env(SPECPRUNE_HOME=str(tmp_path))
    first = run_specprune("webhooks", "secret", "--tenant", "acme", env=env)
    assert first.returncode == 0, first.stderr
    secret = first.stdout.strip()
    assert secret.startswith("whsec_") and "acme" in first.stderr
    assert run_specprune("webhooks", "secret", "--tenant", "acme", env=env).stdout.strip() == secret
    rotated = run_specprune("webhooks", "secret", "--tenant", "acme", "--rotate", env=env).stdout.strip()
    assert rotated.startswith("whsec_") and rotated != secret
    created = run_specprune("keys", "create", "--tenant", "acme", env=env)
    assert created.returncode == 0 and created.stdout.strip().startswith("spk_")
    assert rotated in created.stderr and rotated not in created.stdout

"""Settings (SPECPRUNE_* environment) and the job config schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.schemas import JobConfig, summarise_report
from core import CompressionConfig


def test_defaults_are_the_embedded_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.home == tmp_path / ".specprune"
    assert settings.database_url == f"sqlite:///{tmp_path / '.specprune' / 'specprune.db'}"
    assert settings.storage_dir == tmp_path / ".specprune" / "artifacts"
    assert settings.embedded and settings.broker_url is None
    assert settings.max_upload_bytes == 2 * 1024**3
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.queues == ["cpu", "gpu"]


def test_environment_variables_configure_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECPRUNE_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("SPECPRUNE_DATABASE_URL", "postgresql+psycopg://u@db/specprune")
    monkeypatch.setenv("SPECPRUNE_BROKER_URL", "redis://redis:6379/0")
    monkeypatch.setenv("SPECPRUNE_STORAGE_BACKEND", "s3")
    monkeypatch.setenv("SPECPRUNE_S3_SECRET_ACCESS_KEY", "a-real-secret")
    monkeypatch.setenv("SPECPRUNE_MAX_UPLOAD_BYTES", "1024")
    monkeypatch.setenv("SPECPRUNE_WORKER_QUEUES", "gpu")
    settings = Settings()
    assert settings.home == tmp_path / "h"
    assert not settings.is_sqlite and not settings.embedded
    assert settings.storage_backend == "s3" and settings.max_upload_bytes == 1024
    assert settings.s3_secret_access_key is not None
    assert "a-real-secret" not in repr(settings)
    assert settings.queues == ["gpu"]
    assert (
        settings.broker_visibility_timeout_seconds
        > settings.task_time_limit_seconds
        > settings.job_wall_seconds
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"storage_backend": "ftp"},
        {"s3_secret_access_key": "changethis"},
        {"heartbeat_seconds": 60, "lease_seconds": 30},
        {"worker_queues": "cpu,tpu"},
        {"worker_queues": " , "},
        {"max_upload_bytes": 0},
        {"job_memory_bytes": 1024},
    ],
)
def test_invalid_settings_fail_fast(tmp_path: Path, overrides: dict) -> None:
    with pytest.raises(ValidationError):
        Settings(home=tmp_path, **overrides)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("127.0.0.2", True),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
        ("example.com", False),
    ],
)
def test_loopback_detection(tmp_path: Path, host: str, loopback: bool) -> None:
    assert Settings(home=tmp_path, host=host).binds_loopback() is loopback


def test_job_config_defaults_and_core_conversion() -> None:
    config = JobConfig()
    assert config.flops_ratio == 0.5 and config.method == "spectral" and config.output_format == "same"
    core = JobConfig(method="l1", widths={"conv1": 3}, device="cpu", seed=3).to_core()
    assert core.method == "l1" and core.widths == {"conv1": 3} and core.flops_ratio is None
    assert core.width_rule == "widths" and core.seed == 3
    assert "output_format" not in JobConfig().core_dict()
    every_core_field = JobConfig(
        refit="independent",
        rectified_steps=0,
        allocation="spectrum",
        probe_samples=64,
        probe_tflops=None,
        residual="keep",
    ).to_core()
    assert (
        every_core_field.refit,
        every_core_field.rectified_steps,
        every_core_field.allocation,
        every_core_field.probe_samples,
        every_core_field.probe_tflops,
        every_core_field.residual,
    ) == ("independent", 0, "spectrum", 64, None, "keep")
    defaults = JobConfig().to_core()
    assert defaults == CompressionConfig(), "the API's defaults are core's"


@pytest.mark.parametrize(
    "data",
    [
        {"flops_ratio": 0.5, "params_ratio": 0.5},
        {"alpha": 0},
        {"theta": 1.5},
        {"ridge": 0},
        {"calibration_samples": 0},
        {"seed": -1},
        {"flops_ratio": float("nan")},
        {"widths": {}},
        {"allocation": "uniform"},
        {"residual": "drop"},
        {"rectified_steps": -1},
        {"rectified_steps": 11},
        {"probe_samples": 0},
        {"probe_tflops": 0},
        {"probe_tflops": float("inf")},
        {"version": 1},
    ],
)
def test_job_config_refuses(data: dict) -> None:
    with pytest.raises(ValidationError):
        JobConfig.model_validate(data)


def test_report_summary_keeps_the_contract_fields() -> None:
    report = {
        "original": {
            "params": 100,
            "flops": 2000.0,
            "top1": 0.9,
            "top5": None,
            "agreement": 1.0,
            "output_error": 0.0,
            "latency_ms": {"batch_1": 2.5, "batch_32": 10.0, "device": "cpu"},
        },
        "compressed": {"params": 50, "flops": 1000.0, "latency_ms": None},
        "layers": [
            {
                "name": "conv1",
                "width_before": 8,
                "width_after": 4,
                "kept": [0, 1, 2, 3],
                "dof": 5.2,
                "retained": 0.99,
                "eigenvalues": [1.0],
                "head_dim": None,
            },
            {"name": "attn.q+2", "width_before": 4, "width_after": 2, "head_dim": 8},
            "junk",
        ],
    }
    summary = summarise_report(report)
    assert summary["original"] == {
        "params": 100,
        "flops": 2000.0,
        "top1": 0.9,
        "top5": None,
        "agreement": 1.0,
        "latency_ms": 2.5,
    }
    assert summary["compressed"]["params"] == 50 and summary["compressed"]["top1"] is None
    assert summary["layers"] == [
        {
            "name": "conv1",
            "width_before": 8,
            "width_after": 4,
            "head_dim": None,
            "dof": 5.2,
            "retained": 0.99,
        },
        {
            "name": "attn.q+2",
            "width_before": 4,
            "width_after": 2,
            "head_dim": 8,
            "dof": None,
            "retained": None,
        },
    ]

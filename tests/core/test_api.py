"""The library surface: config validation, width rules, errors, progress and cancellation."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from core import (
    CalibrationError,
    CancelledError,
    CompressionConfig,
    ConfigError,
    LabelError,
    TargetUnreachableError,
    UnsupportedModelError,
    compress,
)
from tests.core import models


@pytest.fixture(scope="module")
def vgg() -> tuple[torch.export.ExportedProgram, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(64, 3, 16, 16)
    return models.export(models.randomize_bn(models.VGGLike()), x[:4]), x


@pytest.mark.parametrize(
    "kwargs",
    [
        {"flops_ratio": 0.5, "alpha": 0.9},
        {"flops_ratio": 0.0},
        {"params_ratio": 1.5},
        {"alpha": 0.0},
        {"theta": 1.5},
        {"ridge": 0.0},
        {"method": "magnitude"},
        {"device": "tpu"},
        {"calibration_samples": 0},
        {"widths": {"features.0": 0}},
        {"rectified_steps": -1},
        {"rectified_steps": 1.5},
        {"rectified_steps": True},
    ],
)
def test_invalid_configs_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        CompressionConfig(**kwargs)


def test_config_defaults_and_round_trip() -> None:
    config = CompressionConfig()
    assert config.flops_ratio == 0.5 and config.width_rule == "flops_ratio"
    assert CompressionConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown config keys: colour"):
        CompressionConfig.from_dict({"colour": "red"})


def test_explicit_widths_and_params_target(vgg) -> None:
    program, x = vgg
    report = compress(program, x, CompressionConfig(widths={"features.4": 5}), measure_latency=False).report
    widths = {layer["name"]: layer["width_after"] for layer in report["layers"]}
    assert widths == {"features.0": 16, "features.4": 5, "features.7": 32, "classifier.0": 64}
    layer = next(e for e in report["layers"] if e["name"] == "features.4")
    assert len(layer["kept"]) == 5 and len(layer["eigenvalues"]) == 32
    assert layer["eigenvalues"] == sorted(layer["eigenvalues"], reverse=True)

    report = compress(program, x, CompressionConfig(params_ratio=0.4), measure_latency=False).report
    assert report["compressed"]["params"] / report["original"]["params"] == pytest.approx(0.4, rel=0.01)


def test_explicit_widths_name_real_groups(vgg) -> None:
    program, x = vgg
    with pytest.raises(ConfigError, match="unknown group 'nope'"):
        compress(program, x, CompressionConfig(widths={"nope": 3}))
    with pytest.raises(ConfigError, match="cannot be pruned"):
        compress(program, x, CompressionConfig(widths={"classifier.3": 3}))


def test_unreachable_target_names_the_limiting_layers(vgg) -> None:
    program, x = vgg
    with pytest.raises(TargetUnreachableError, match=r"classifier\.3"):
        compress(program, x, CompressionConfig(params_ratio=0.001))


def test_a_target_the_channels_cannot_land_near_is_warned_about() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    two_channels = torch.nn.Sequential(  # one prunable group whose each channel is half the FLOPs
        torch.nn.Conv2d(3, 2, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(2, 4),
    )
    program = models.export(two_channels.eval(), x[:4])
    report = compress(program, x, CompressionConfig(flops_ratio=0.7), measure_latency=False).report
    assert report["compressed"]["flops"] / report["original"]["flops"] < 0.6
    assert any("outside 1% of the flops_ratio target 0.7" in w for w in report["warnings"])


def test_report_is_complete_and_json_serialisable(vgg) -> None:
    import json

    program, x = vgg
    labels = torch.randint(0, 10, (64,))
    report = compress(program, x, CompressionConfig(flops_ratio=0.5), labels=labels).report
    json.dumps(report)
    for side in ("original", "compressed"):
        assert set(report[side]) >= {"params", "flops", "top1", "top5", "agreement", "latency_ms"}
        assert 0.0 <= report[side]["top1"] <= report[side]["top5"] <= 1.0
        assert report[side]["latency_ms"]["batch_1"] > 0
    assert report["original"]["agreement"] == 1.0
    assert report["warnings"] == []  # the 0.5 target met within 1%
    assert report["compressed"]["params"] < report["original"]["params"]
    layer_keys = {
        "name",
        "width_before",
        "width_after",
        "kept",
        "eigenvalues",
        "dof",
        "theory_width",
        "retained",
        "loss_input",
        "loss_output",
        "output_loss",
    }
    assert all(layer_keys <= set(layer) for layer in report["layers"])
    assert all(layer["output_loss"] >= 0.0 for layer in report["layers"])  # the sensitivity allocation's
    assert set(report["timings"]) >= {
        "analyse",
        "statistics",
        "selection",
        "reconstruction",
        "export",
        "evaluate",
    }
    theory = report["theory"]
    assert theory["estimation_term"]["after"] < theory["estimation_term"]["before"]
    assert set(theory["bias_lambda"]) == {layer["name"] for layer in report["layers"]}
    assert report["config"]["flops_ratio"] == 0.5


def test_baselines_share_groups_and_widths(vgg) -> None:
    program, x = vgg
    spectral = compress(program, x, CompressionConfig(alpha=0.9), measure_latency=False).report
    widths = {layer["name"]: layer["width_after"] for layer in spectral["layers"]}
    for method in ("l1", "random"):
        report = compress(
            program, x, CompressionConfig(method=method, widths=widths), measure_latency=False
        ).report
        assert {layer["name"]: layer["width_after"] for layer in report["layers"]} == widths
    a = compress(program, x, CompressionConfig(method="random", widths=widths, seed=1), measure_latency=False)
    b = compress(program, x, CompressionConfig(method="random", widths=widths, seed=1), measure_latency=False)
    assert [e["kept"] for e in a.report["layers"]] == [e["kept"] for e in b.report["layers"]]


def test_progress_and_cancellation(vgg) -> None:
    program, x = vgg
    seen: list[tuple[str, float]] = []
    compress(
        program, x, CompressionConfig(), progress=lambda s, f: seen.append((s, f)), measure_latency=False
    )
    stages = [s for s, _ in seen]
    assert stages.index("statistics") < stages.index("selection") < stages.index("export")
    assert all(0.0 <= f <= 1.0 for _, f in seen)

    def stop(stage: str, fraction: float) -> None:
        if stage == "selection":
            raise CancelledError("cancelled by the user")

    with pytest.raises(CancelledError):
        compress(program, x, CompressionConfig(), progress=stop)


def test_bad_inputs_get_clear_errors(vgg) -> None:
    program, x = vgg
    with pytest.raises(CalibrationError, match="expects shape Nx3x16x16"):
        compress(program, torch.randn(8, 3, 20, 20))
    bad = x.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(CalibrationError, match="NaN or Inf"):
        compress(program, bad)
    with pytest.raises(LabelError, match=r"labels must lie in \[0, 9\]"):
        compress(program, x, labels=torch.full((64,), 12))
    with pytest.raises(LabelError, match="63 labels"):
        compress(program, x, labels=torch.zeros(63, dtype=torch.long))
    with pytest.raises(UnsupportedModelError):
        compress(models.VGGLike(), x)  # type: ignore[arg-type]


def test_model_with_nothing_prunable_succeeds_and_says_so() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    x = torch.randn(32, 12)
    result = compress(
        models.export(model, x[:4]), x, CompressionConfig(flops_ratio=0.9), measure_latency=False
    )
    assert result.report["layers"] == []
    assert result.report["skipped"][0]["reason"] == "its channels are part of the model's output"
    assert torch.allclose(result.program.module()(x), model(x))


def test_calibration_as_iterable_of_batches(vgg) -> None:
    program, x = vgg
    result = compress(
        program, iter(x.split(10)), CompressionConfig(calibration_samples=40), measure_latency=False
    )
    assert result.report["calibration"]["samples"] == 40


def test_importing_core_pulls_in_neither_the_web_stack_nor_cuda() -> None:
    code = (
        "import sys, torch; import core; "
        "bad = [m for m in ('fastapi', 'sqlalchemy', 'celery', 'redis', 'app', 'worker') if m in sys.modules]; "
        "assert not bad, bad; assert not torch.cuda.is_initialized()"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_saved_output_carries_no_calibration_data(vgg, tmp_path) -> None:
    program, x = vgg
    result = compress(program, x, CompressionConfig(flops_ratio=0.5), measure_latency=False)
    args, _ = result.program.example_inputs
    assert all(float(a.abs().sum()) == 0.0 for a in args)
    torch.export.save(result.program, tmp_path / "m.pt2")
    assert (tmp_path / "m.pt2").stat().st_size < 2 * sum(
        v.numel() * 4 for v in result.program.state_dict.values()
    ) + 200_000

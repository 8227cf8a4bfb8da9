"""Recovery: fine-tuning and distillation, cancellation between steps and resuming from a checkpoint."""

from __future__ import annotations

import pytest
import torch

from core import CancelledError, CompressionConfig, ConfigError, LabelError, compress
from core.calibration import Samples
from core.recovery import RecoveryConfig, recover
from tests.core import digits, models


@pytest.fixture(scope="module")
def setup() -> tuple[torch.export.ExportedProgram, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = models.randomize_bn(models.VGGLike())
    x = torch.randn(256, 3, 16, 16)
    return models.export(model, x[:4]), x, model(x).argmax(1)


def test_recovery_config_validation() -> None:
    with pytest.raises(ConfigError):
        RecoveryConfig(mode="magic")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        RecoveryConfig(mode="distill", epochs=1, steps=3)
    with pytest.raises(ConfigError, match="stages"):
        CompressionConfig(alpha=0.9, recovery={"mode": "distill", "stages": 2})
    config = CompressionConfig(recovery={"mode": "distill", "epochs": 2})
    assert config.recovery == RecoveryConfig(mode="distill", epochs=2)
    assert CompressionConfig.from_dict(config.to_dict()) == config


def test_distillation_without_labels_wins_back_accuracy() -> None:
    program = digits.trained_program()
    x, _, x_test, y_test = digits.digits()
    config = CompressionConfig(method="l1", flops_ratio=0.1, recovery={"mode": "distill", "epochs": 4})
    result = compress(program, x, config, evaluation=(x_test, y_test), measure_latency=False)
    report = result.report
    assert report["original"]["top1"] > 0.9
    assert report["recovered"]["top1"] > report["compressed"]["top1"] + 0.05
    assert report["recovered"]["agreement"] > report["compressed"]["agreement"]
    assert len(report["training_curve"]) == 4
    assert report["training_curve"][-1]["loss"] < report["training_curve"][0]["loss"]
    assert result.pruned_program is not None and result.pruned_program is not result.program
    assert report["recovered"]["flops"] == report["compressed"]["flops"]


def test_finetune_needs_labels(setup) -> None:
    program, x, _ = setup
    with pytest.raises(LabelError, match="distill"):
        compress(program, x, CompressionConfig(recovery={"mode": "finetune", "steps": 2}))


def test_iterative_stages_reach_the_target(setup) -> None:
    program, x, y = setup
    config = CompressionConfig(flops_ratio=0.4, recovery={"mode": "finetune", "steps": 3, "stages": 2})
    report = compress(program, x, config, labels=y, measure_latency=False).report
    assert report["recovered"]["flops"] / report["original"]["flops"] == pytest.approx(0.4, rel=0.01)
    assert {p["stage"] for p in report["training_curve"]} == {0, 1}
    assert report["layers"][0]["width_before"] == 16


def test_a_stopped_recovery_resumes_from_its_checkpoint(setup, tmp_path) -> None:
    program, x, _ = setup
    teacher = program.module()
    data = Samples((x[:64],))
    config = RecoveryConfig(mode="distill", epochs=3, batch_size=16)

    straight = recover(program.module(), teacher, data, config, device=torch.device("cpu"))

    def stop_midway(fraction: float) -> None:
        if fraction > 0.5:
            raise CancelledError("worker died")

    with pytest.raises(CancelledError):
        recover(
            program.module(),
            teacher,
            data,
            config,
            device=torch.device("cpu"),
            progress=stop_midway,
            checkpoint_dir=tmp_path,
        )
    resumed = recover(
        program.module(), teacher, data, config, device=torch.device("cpu"), checkpoint_dir=tmp_path
    )
    assert resumed.resumed_from_step == 4  # the end of the first epoch
    assert [p["step"] for p in resumed.curve] == [4, 8, 12]
    for (name, a), (_, b) in zip(
        straight.module.named_parameters(), resumed.module.named_parameters(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5), name

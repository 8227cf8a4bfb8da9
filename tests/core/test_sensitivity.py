"""Sensitivity-aware width allocation: probes restore the model, and quiet layers give way to loud ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core import CompressionConfig, compress
from core.errors import ConfigError
from core.graph import analyse
from core.reconstruct import pruned_tensors
from core.sensitivity import _probe, swapped
from tests.core import models


class _TwoBranches(nn.Module):
    """Two alike hidden layers side by side; the head reads branch ``quiet`` through 1/100 weights."""

    def __init__(self) -> None:
        super().__init__()
        self.loud = nn.Linear(16, 32)
        self.quiet = nn.Linear(16, 32)
        self.head = nn.Linear(64, 4)
        with torch.no_grad():
            self.head.weight[:, 32:] *= 0.01

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([torch.relu(self.loud(x)), torch.relu(self.quiet(x))], dim=1))


def _data(n: int = 512) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(n, 16) @ torch.diag(torch.linspace(2.0, 0.1, 16))  # a decaying input spectrum


def _alone(gm, analysis, g, kept: torch.Tensor):
    """``gm`` with only group ``g`` keeping ``kept`` (columns dropped, no re-fit)."""
    return swapped(
        gm,
        analysis,
        pruned_tensors(gm, analysis, {s: kept for s in g.spaces}, {}),
        {s: len(kept) for s in g.spaces},
    )


def test_a_probe_narrows_one_group_and_restores_the_model_exactly() -> None:
    torch.manual_seed(0)
    model = models.randomize_bn(models.VGGLike()).eval()
    x = torch.randn(8, 3, 16, 16)
    gm = models.export(model, x[:4]).module()
    analysis = analyse(gm, (x[:2],))
    g = analysis.prunable[0]
    before = gm(x).detach()
    state = {name: t.clone() for name, t in gm.state_dict().items()}
    with _alone(gm, analysis, g, torch.arange(0, g.size, 2)):
        inside = gm(x).detach()
        assert float(((inside - before) ** 2).sum() / (before**2).sum()) > 1e-4  # columns dropped, no re-fit
        assert any(t.shape != state[name].shape for name, t in gm.state_dict().items())
    assert torch.equal(gm(x), before)
    assert all(torch.equal(t, state[name]) for name, t in gm.state_dict().items())


@pytest.mark.parametrize(
    "make",
    [models.VGGLike, models.ResNetLike, models.DenseNetLike, models.MobileNetLike],
    ids=lambda m: m.__name__,
)
def test_a_probe_resumed_midway_measures_what_a_whole_forward_pass_does(make) -> None:
    torch.manual_seed(0)
    model = models.randomize_bn(make()).eval()
    x = torch.randn(12, 3, 16, 16)
    gm = models.export(model, x[:4]).module()
    analysis = analyse(gm, (x[:2],))
    batches = [(x[:5],), (x[5:],)]
    with torch.no_grad():
        reference = [gm(*b).double().flatten() for b in batches]
    for g in analysis.prunable:
        probes = [torch.arange(0, g.size, 2), torch.arange(1)]
        resumed = _probe(gm, analysis, g, probes, lambda g, kept: {}, batches, reference)
        for kept, got in zip(probes, resumed, strict=True):
            with _alone(gm, analysis, g, kept), torch.no_grad():
                whole = sum(
                    float(((gm(*b).double().flatten() - r) ** 2).sum())
                    for b, r in zip(batches, reference, strict=True)
                )
            assert got == pytest.approx(whole, rel=1e-6, abs=1e-9), g.name
        assert torch.equal(gm(x[:5]).double().flatten(), reference[0])


def test_sensitivity_allocation_prunes_the_layer_the_output_barely_hears() -> None:
    x = _data()
    program = models.export(_TwoBranches().eval(), x[:4])
    reports = {
        allocation: compress(
            program, x, CompressionConfig(flops_ratio=0.6, allocation=allocation), measure_latency=False
        ).report
        for allocation in ("sensitivity", "spectrum")
    }
    widths = {
        allocation: {layer["name"]: layer["width_after"] for layer in report["layers"]}
        for allocation, report in reports.items()
    }
    assert widths["sensitivity"]["quiet"] < widths["sensitivity"]["loud"] // 2, widths
    assert abs(widths["spectrum"]["quiet"] - widths["spectrum"]["loud"]) <= 4, widths  # alike spectra
    error = {allocation: report["compressed"]["output_error"] for allocation, report in reports.items()}
    assert error["sensitivity"] < 0.5 * error["spectrum"], error


class _TwoHeads(nn.Module):
    """The first output ignores the hidden layer; only the second one hears it."""

    def __init__(self) -> None:
        super().__init__()
        self.skip = nn.Linear(16, 4)
        self.hidden = nn.Linear(16, 32)
        self.head = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.skip(x), self.head(torch.relu(self.hidden(x)))


def test_the_output_error_counts_every_output_of_the_model() -> None:
    x = _data()
    program = models.export(_TwoHeads().eval(), x[:4])
    report = compress(program, x, CompressionConfig(flops_ratio=0.8), measure_latency=False).report
    (layer,) = report["layers"]
    assert layer["name"] == "hidden" and layer["width_after"] < 32
    assert layer["output_loss"] > 1e-6  # measured on the second output, which the first would miss


def test_probe_samples_sets_the_batches_the_probes_read() -> None:
    """The probes read the first calibration batches (of 256 here) that hold ``probe_samples``: 200 and
    256 read one batch alike, 512 two, so the estimated output errors move."""
    x = torch.cat([_data(), _data() * 1.5])  # 1,024 samples: four batches
    program = models.export(_TwoBranches().eval(), x[:4])

    def output_loss(samples: int) -> list[float]:
        config = CompressionConfig(flops_ratio=0.6, probe_samples=samples)
        report = compress(program, x, config, measure_latency=False).report
        assert report["config"]["probe_samples"] == samples
        return [layer["output_loss"] for layer in report["layers"]]

    one_batch = output_loss(256)
    assert output_loss(200) == one_batch
    assert output_loss(512) != one_batch


def test_the_probes_read_fewer_samples_where_their_cpu_cost_passes_the_bound() -> None:
    """``probe_tflops`` bounds the probes' estimated cost on a CPU (every probe width of every group over
    the whole network, per sample): a bound this model's 512 samples would pass makes them read fewer,
    down to 64, says so in the report and a warning; ``None`` lifts the bound."""
    x = torch.cat([_data(), _data() * 1.5])
    program = models.export(_TwoBranches().eval(), x[:4])
    flops = compress(program, x, CompressionConfig(alpha=1.0), measure_latency=False).report["original"][
        "flops"
    ]

    def probed(tflops: float | None) -> dict:
        config = CompressionConfig(flops_ratio=0.6, probe_samples=512, probe_tflops=tflops, device="cpu")
        return compress(program, x, config, measure_latency=False).report

    per_sample = 7 * 2 * flops  # seven probe widths, two groups
    bounded = probed(200 * per_sample / 1e12)
    assert bounded["calibration"]["probe_samples"] == 200  # one batch of 256 instead of two
    assert any("probes read 200 samples" in w for w in bounded["warnings"]), bounded["warnings"]
    assert probed(10 * per_sample / 1e12)["calibration"]["probe_samples"] == 64  # the floor
    unbounded = probed(None)
    assert unbounded["calibration"]["probe_samples"] == 512
    assert not any("probes read" in w for w in unbounded["warnings"])
    assert [layer["output_loss"] for layer in unbounded["layers"]] != [
        layer["output_loss"] for layer in bounded["layers"]
    ]


@pytest.mark.parametrize("tflops", [0.0, -1.0, float("inf"), True])
def test_probe_tflops_must_be_positive_or_none(tflops: object) -> None:
    with pytest.raises(ConfigError, match="probe_tflops"):
        CompressionConfig(probe_tflops=tflops)  # type: ignore[arg-type]

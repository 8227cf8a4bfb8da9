"""Grouped convolutions (ResNeXt, RegNet): their channels are pruned in equal runs, one per group, and
each group's inputs are re-fitted from that group's kept channels only."""

from __future__ import annotations

import pytest
import torch

from core import CompressionConfig, compress
from core.errors import ConfigError
from core.graph import analyse
from core.selection import refit_map
from tests.core import models

RUN = 8  # channels per group of the model's grouped convolutions (32 in 4 groups)


def _model() -> models.ResNeXtLike:
    torch.manual_seed(0)
    return models.randomize_bn(models.ResNeXtLike())  # type: ignore[return-value]


@pytest.fixture(scope="module")
def setup() -> tuple[torch.export.ExportedProgram, torch.Tensor]:
    model = _model()
    x = torch.randn(256, 3, 16, 16)
    return models.export(model, x[:4]), x


def _rel(
    program: torch.export.ExportedProgram, reference: torch.export.ExportedProgram, x: torch.Tensor
) -> float:
    with torch.no_grad():
        y, y0 = program.module()(x), reference.module()(x)
    return float((y - y0).norm() / y0.norm())


def test_both_sides_of_a_grouped_convolution_are_prunable_in_runs(setup) -> None:
    program, x = setup
    groups = {g.name: g for g in analyse(program.module(), (x[:2],)).groups}
    for name in ("layers.0.conv1", "layers.0.conv2", "layers.1.conv1", "layers.1.conv2"):
        assert groups[name].skipped is None, groups[name].skipped
        assert groups[name].blocks == 4
    assert groups["stem.0+2"].blocks == 1
    readers = {c.weight: c.groups for c in groups["layers.0.conv1"].consumers}
    assert readers == {"layers.0.conv2.weight": 4}


@pytest.mark.parametrize("method", ["spectral", "l1", "random"])
def test_every_run_keeps_as_many_channels_and_the_target_is_met(setup, method: str) -> None:
    program, x = setup
    result = compress(program, x, CompressionConfig(flops_ratio=0.5, method=method), measure_latency=False)
    report = result.report
    assert abs(report["compressed"]["flops"] / report["original"]["flops"] - 0.5) <= 0.005
    grouped = [layer for layer in report["layers"] if ".conv1" in layer["name"] or ".conv2" in layer["name"]]
    assert any(layer["width_after"] < layer["width_before"] for layer in grouped)
    for layer in grouped:
        per_run = torch.bincount(torch.tensor(layer["kept"]) // RUN, minlength=4)
        assert per_run.tolist() == [layer["width_after"] // 4] * 4, layer["name"]
    widths = {layer["name"]: layer["width_after"] for layer in report["layers"]}
    weight = result.program.state_dict["layers.0.conv2.weight"]  # (out, in / groups, 3, 3)
    assert tuple(weight.shape) == (widths["layers.0.conv2"], widths["layers.0.conv1"] // 4, 3, 3)
    assert result.program.module()(x[:3]).shape == (3, 10)


def test_the_re_fit_stays_within_each_group(setup) -> None:
    """Pruning only ``layers.1.conv1``, read by a grouped convolution: each re-fit mode (block diagonal,
    one block per group) leaves under half the output error of L1's channels kept as they were."""
    program, x = setup
    widths = {"layers.1.conv1": 16}
    errors = {
        refit: _rel(compress(program, x, CompressionConfig(widths=widths, refit=refit)).program, program, x)
        for refit in ("output", "sequential", "independent")
    }
    plain = CompressionConfig(widths=widths, method="l1")
    assert max(errors.values()) < 0.5 * _rel(compress(program, x, plain).program, program, x)


def test_spectral_beats_l1_at_the_same_target(setup) -> None:
    program, x = setup
    errors = {
        m: _rel(compress(program, x, CompressionConfig(flops_ratio=0.5, method=m)).program, program, x)
        for m in ("spectral", "l1")
    }
    assert errors["spectral"] < 0.2 * errors["l1"], errors


def test_explicit_widths_must_be_whole_runs(setup) -> None:
    program, x = setup
    with pytest.raises(ConfigError, match="multiple of 4"):
        compress(program, x, CompressionConfig(widths={"layers.0.conv1": 10}))


@pytest.mark.parametrize("refit", ["independent", "sequential", "output"])
def test_each_group_of_the_reader_is_re_fitted_from_its_own_kept_channels(setup, refit: str) -> None:
    """``W'_b = W_b A_b`` per group b, with ``A_b = S_FJ (S_JJ + tau I)^-1`` from that group's channels
    only, computed here from the eager model's activations. With nothing else pruned, the sequential
    re-fit's cross moments are the original's, and the output-level one leaves grouped layers to it."""
    program, x = setup
    config = CompressionConfig(widths={"layers.1.conv1": 16}, refit=refit)
    result = compress(program, x, config, measure_latency=False)
    kept = torch.tensor(next(la for la in result.report["layers"] if la["name"] == "layers.1.conv1")["kept"])
    model, seen = _model(), []
    model.layers[1].conv2.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    with torch.no_grad():
        model(x)
    z = seen[0].double().transpose(0, 1).flatten(1)  # (channels, samples * positions)
    s = z @ z.T / z.shape[1]
    a = refit_map(s, kept, 1e-5 * float(torch.trace(s)) / 32, blocks=4)
    w = model.layers[1].conv2.weight.detach().double()  # (32, 8, 3, 3)
    expected = torch.cat(
        [
            torch.einsum("oipq,ik->okpq", w[8 * b : 8 * b + 8], a[8 * b : 8 * b + 8, 4 * b : 4 * b + 4])
            for b in range(4)
        ]
    )
    got = result.program.state_dict["layers.1.conv2.weight"].double()
    assert got.shape == (32, 4, 3, 3)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_a_group_of_one_channel_per_run_stays_whole() -> None:
    """A depthwise convolution with a channel multiplier reads one channel per group: none can go alone."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1, groups=8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 4, 1),
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    groups = {g.name: g for g in analyse(models.export(model, x).module(), (x,)).groups}
    assert "8 runs" in str(groups["0"].skipped)
    assert groups["2"].skipped is None and groups["2"].blocks == 8  # its 16 outputs: two per group

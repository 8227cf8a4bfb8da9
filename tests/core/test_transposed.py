"""Transposed convolutions (decoders, UNet upsampling): the channels they write are pruned like any
layer's, and the channels they read are re-fitted on their weight's input axis (0)."""

from __future__ import annotations

import pytest
import torch

from core import CompressionConfig, compress
from core.graph import analyse
from core.selection import refit_map
from tests.core import models


def _model() -> models.UNetLike:
    torch.manual_seed(0)
    return models.randomize_bn(models.UNetLike())  # type: ignore[return-value]


@pytest.fixture(scope="module")
def setup() -> tuple[torch.export.ExportedProgram, torch.Tensor]:
    x = torch.randn(256, 3, 16, 16)
    return models.export(_model(), x[:4]), x


def _layer(report: dict, name: str) -> dict:
    return next(layer for layer in report["layers"] if layer["name"] == name)


def test_a_transposed_convolution_reads_and_writes_prunable_channels(setup) -> None:
    program, x = setup
    groups = {g.name: g for g in analyse(program.module(), (x[:2],)).groups}
    assert groups["up"].skipped is None and groups["inner.0"].skipped is None
    assert [(c.weight, c.kind) for c in groups["inner.0"].consumers] == [("up.weight", "conv_transpose")]
    assert [c.weight for c in groups["up"].consumers] == ["merge.0.weight"]


@pytest.mark.parametrize("refit", ["independent", "sequential", "output"])
def test_its_inputs_are_re_fitted_on_weight_axis_0(setup, refit: str) -> None:
    """``W'[j] = sum_f A[f, j] W[f]`` with ``A = S_FJ (S_JJ + tau I)^-1`` from the activations it reads
    (with nothing else pruned the sequential re-fit's moments are the original's, and the output-level
    re-fit leaves a transposed convolution to the channel re-fit)."""
    program, x = setup
    result = compress(
        program, x, CompressionConfig(widths={"inner.0": 12}, refit=refit), measure_latency=False
    )
    kept = torch.tensor(_layer(result.report, "inner.0")["kept"])
    model, seen = _model(), []
    model.up.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    with torch.no_grad():
        model(x)
    z = seen[0].double().transpose(0, 1).flatten(1)  # (channels, samples * positions)
    s = z @ z.T / z.shape[1]
    a = refit_map(s, kept, 1e-5 * float(torch.trace(s)) / 32)
    expected = torch.einsum("fopq,fj->jopq", model.up.weight.detach().double(), a)
    got = result.program.state_dict["up.weight"].double()
    assert got.shape == (12, 16, 2, 2)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_the_channels_it_writes_are_pruned_and_its_reader_narrowed(setup) -> None:
    program, x = setup
    result = compress(program, x, CompressionConfig(widths={"up": 8}), measure_latency=False)
    state = result.program.state_dict
    assert tuple(state["up.weight"].shape) == (32, 8, 2, 2) and tuple(state["up.bias"].shape) == (8,)
    assert tuple(state["merge.0.weight"].shape) == (16, 24, 3, 3)  # the skip's 16 and the kept 8
    assert result.program.module()(x[:3]).shape == (3, 10)


def test_l1_ranks_its_output_channels_by_their_own_filters(setup) -> None:
    program, x = setup
    result = compress(program, x, CompressionConfig(widths={"up": 8}, method="l1"), measure_latency=False)
    norms = _model().up.weight.detach().abs().sum(dim=(0, 2, 3))  # (in, out, kh, kw): per output channel
    assert _layer(result.report, "up")["kept"] == sorted(norms.argsort(descending=True)[:8].tolist())


def test_spectral_beats_l1_at_the_same_target(setup) -> None:
    program, x = setup
    errors = {}
    for method in ("spectral", "l1"):
        pruned = compress(program, x, CompressionConfig(flops_ratio=0.5, method=method)).program
        with torch.no_grad():
            y, y0 = pruned.module()(x), program.module()(x)
        errors[method] = float((y - y0).norm() / y0.norm())
    assert errors["spectral"] < 0.5 * errors["l1"], errors

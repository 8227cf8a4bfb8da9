"""Every architecture family compresses, re-exports, and runs in a fresh process without the project."""

from __future__ import annotations

import math

import pytest
import torch

from core import CompressionConfig, compress
from tests.core import models

FAMILIES = {
    "vgg": (models.VGGLike, (3, 16, 16)),
    "resnet": (models.ResNetLike, (3, 16, 16)),
    "resnext": (models.ResNeXtLike, (3, 16, 16)),
    "densenet": (models.DenseNetLike, (3, 16, 16)),
    "mobilenet": (models.MobileNetLike, (3, 32, 32)),
    "transformer": (models.TinyTransformer, (6, 12)),
    "unet": (models.UNetLike, (3, 16, 16)),
    "csp": (models.CSPNetLike, (3, 16, 16)),
    "vit": (models.TinyViT, (3, 16, 16)),
}


def _setup(family: str) -> tuple[torch.export.ExportedProgram, torch.Tensor]:
    torch.manual_seed(0)
    cls, shape = FAMILIES[family]
    model = models.randomize_bn(cls())
    x = torch.randn(96, *shape)
    return models.export(model, x[:4]), x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm() / b.norm()).detach())


def _direct_flops(program: torch.export.ExportedProgram) -> float:
    """Conv and linear FLOPs per sample, counted from the graph's own shapes (a multiply-add = 2)."""
    total = 0.0
    aten = torch.ops.aten
    for node in program.graph.nodes:
        if node.target not in (aten.conv2d.default, aten.conv_transpose2d.input, aten.linear.default):
            continue
        out = node.meta["val"].shape
        w = node.args[1].meta["val"].shape
        per_sample_rows = math.prod(int(d) for d in out[1:-1]) if node.target is aten.linear.default else 1
        spatial = math.prod(int(d) for d in out[2:]) if node.target is aten.conv2d.default else 1
        if node.target is aten.conv_transpose2d.input:  # every input position spreads a whole kernel
            spatial = math.prod(int(d) for d in node.args[0].meta["val"].shape[2:])
        total += 2 * math.prod(w) * per_sample_rows * spatial
    return total


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_keeping_every_channel_is_the_same_function(family: str) -> None:
    program, x = _setup(family)
    result = compress(program, x, CompressionConfig(alpha=1.0), measure_latency=False)
    assert all(layer["width_after"] == layer["width_before"] for layer in result.report["layers"])
    assert _rel(result.program.module()(x), program.module()(x)) < 1e-5


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_compressed_model_runs_fresh_with_dynamic_batch(family: str, run_fresh) -> None:
    program, x = _setup(family)
    result = compress(program, x, CompressionConfig(flops_ratio=0.6), measure_latency=False)
    report = result.report
    assert report["layers"], "some group must be prunable"
    assert any(layer["width_after"] < layer["width_before"] for layer in report["layers"])
    x_new = torch.randn(7, *x.shape[1:])  # a batch size never seen in export or calibration
    y, info = run_fresh(result.program, x_new)
    assert info["shape"][0] == 7
    assert torch.allclose(y, result.program.module()(x_new), atol=1e-5)
    assert report["compressed"]["flops"] == pytest.approx(info["flops"], rel=1e-9)
    ratio = report["compressed"]["flops"] / report["original"]["flops"]
    assert abs(ratio - 0.6) <= 0.006, f"FLOPs ratio {ratio} misses the 0.6 target by more than 1%"
    if family not in ("transformer", "vit"):  # attention's matrix products are not conv/linear
        assert report["compressed"]["flops"] == pytest.approx(_direct_flops(result.program), rel=1e-9)
        assert report["original"]["flops"] == pytest.approx(_direct_flops(program), rel=1e-9)


def test_analysis_reports_what_it_leaves_alone() -> None:
    program, x = _setup("resnet")
    config = CompressionConfig(flops_ratio=0.7, residual="keep")
    report = compress(program, x, config, measure_latency=False).report
    reasons = {s["name"]: s["reason"] for s in report["skipped"]}
    assert "residual stream" in reasons["stem.0+1"]
    assert "output" in reasons["fc"]
    inner = {"layers.0.conv1", "layers.1.conv1", "layers.2.conv1"}
    assert {layer["name"] for layer in report["layers"]} == inner

    report = compress(program, x, CompressionConfig(flops_ratio=0.7), measure_latency=False).report
    streams = {"stem.0+1", "layers.1.conv2+2"}  # each stage's stream, one coupled group
    assert {layer["name"] for layer in report["layers"]} == inner | streams

    program, x = _setup("transformer")
    report = compress(program, x, CompressionConfig(flops_ratio=0.8), measure_latency=False).report
    names = {layer["name"] for layer in report["layers"]}
    mlp = {f"encoder.layers.{i}.linear1" for i in (0, 1)}  # the MLP hidden units
    heads = {f"encoder.layers.{i}.self_attn.in_proj[0:32]+2" for i in (0, 1)}  # q's heads, with k and v
    assert names == mlp | heads
    assert any("LayerNorm" in s["reason"] for s in report["skipped"])


class _Unusual(torch.nn.Module):
    """conv1's channels meet an op the analysis does not know (a cumulative sum across channels)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x)).cumsum(dim=1)
        x = torch.relu(self.conv3(torch.relu(self.conv2(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_unknown_ops_leave_their_channels_alone() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    program = models.export(_Unusual().eval(), x[:4])
    result = compress(program, x, CompressionConfig(flops_ratio=0.7), measure_latency=False)
    skipped = {s["name"]: s["reason"] for s in result.report["skipped"]}
    assert "cumsum" in skipped["conv1"]
    assert {layer["name"] for layer in result.report["layers"]} == {"conv2", "conv3"}
    assert result.program.module()(x).shape == (64, 4)


@pytest.mark.parametrize("family", ["vgg", "transformer"])
def test_a_core_aten_decomposition_prunes_its_linear_layers(family: str) -> None:
    """``run_decompositions()`` writes each linear layer as ``addmm(b, x, W.t())``; it is read back as one.
    (The decomposed attention, ``expand`` + ``bmm``, keeps its heads.)"""
    program, x = _setup(family)
    plain = compress(program, x, CompressionConfig(flops_ratio=0.6), measure_latency=False).report
    report = compress(
        program.run_decompositions(), x, CompressionConfig(flops_ratio=0.6), measure_latency=False
    ).report
    names = {layer["name"] for layer in report["layers"]}
    assert names == {layer["name"] for layer in plain["layers"] if "attn" not in layer["name"]}
    assert any(name.startswith(("classifier", "encoder")) for name in names), names  # a linear layer
    assert abs(report["compressed"]["flops"] / report["original"]["flops"] - 0.6) <= 0.006

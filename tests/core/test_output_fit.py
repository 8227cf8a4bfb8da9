"""Output-level re-fit: patches line up with the convolution, a shifted channel is recovered exactly,
a branch added to a shortcut knows the addend whose error its target takes up, and a layer a ReLU follows
is fitted to what the ReLU passes."""

from __future__ import annotations

import pytest
import torch
from torch import fx, nn
from torch.nn import functional as F

from core import CompressionConfig, compress, output_fit
from core.capture import Cursor
from core.graph import GraphAnalysis, analyse
from core.output_fit import ConvGeometry, chunk, patches, plan, targets
from core.reconstruct import Kept
from core.sequential import sequential_refit
from tests.core import models


@pytest.mark.parametrize(("stride", "padding", "dilation"), [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_patches_times_the_weight_is_the_convolution(stride: int, padding: int, dilation: int) -> None:
    torch.manual_seed(0)
    x, w = torch.randn(5, 4, 9, 9), torch.randn(6, 4, 3, 3)
    y = F.conv2d(x, w, stride=stride, padding=padding, dilation=dilation)
    geometry = ConvGeometry((3, 3), (stride, stride), (padding, padding), (dilation, dilation))
    step = 2  # several chunks: rows of patches and targets must stay paired
    for u, t in zip(patches(x, geometry, step), targets(y, geometry, step), strict=True):
        assert torch.allclose(u @ w.reshape(6, -1).T.double(), t.double(), atol=1e-5)
    assert chunk(x, geometry) >= 1 and chunk(x, None) == len(x)


class _Shifted(nn.Module):
    """``conv1`` emits x and x shifted by one pixel; ``conv2`` reads each where the other one's 3x3
    patch holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, (1, 3), padding=(0, 1), bias=False)
        self.conv2 = nn.Conv2d(2, 3, 3, padding=1)
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.weight[0, 0, 0, 1] = 1.0  # ch0(p) = x(p)
            self.conv1.weight[1, 0, 0, 2] = 1.0  # ch1(p) = x(p + 1) = ch0(p + 1)
            self.conv2.weight[:, 0, :, :2] = 0.0  # ch0 read at p + 1 only (= ch1 at p)
            self.conv2.weight[:, 1, :, ::2] = 0.0  # ch1 read at p only (= ch0 at p + 1), borders included

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)).flatten(1)


def test_a_neighbouring_copy_is_recovered_exactly_only_from_patches() -> None:
    torch.manual_seed(0)
    net = _Shifted().eval()
    x = torch.randn(256, 1, 8, 8)
    program = models.export(net, x[:4])
    x_test = torch.randn(64, 1, 8, 8)
    errors = {}
    for refit in ("output", "sequential", "independent"):
        config = CompressionConfig(widths={"conv1": 1}, refit=refit, ridge=1e-9)
        result = compress(program, x, config, measure_latency=False)
        with torch.no_grad():
            y0, y1 = net(x_test), result.program.module()(x_test)
        errors[refit] = float((y1 - y0).norm() / y0.norm())
    # the same pixel of the kept channel says little about the dropped one; its 3x3 patch says all
    assert errors["output"] < 1e-5 < 0.1 < min(errors["sequential"], errors["independent"]), errors


def test_a_fit_samples_rows_within_its_budget_and_stays_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output_fit, "MAX_ROWS", 600)
    monkeypatch.setattr(output_fit, "ROWS_PER_FEATURE", 1)
    monkeypatch.setattr(output_fit, "FLOP_BUDGET", 1.0)
    torch.manual_seed(0)
    net = _Shifted().eval()
    x = torch.randn(64, 1, 8, 8)  # 4,096 output positions, about 600 sampled
    program = models.export(net, x[:4])
    result = compress(program, x, CompressionConfig(widths={"conv1": 1}, ridge=1e-9), measure_latency=False)
    x_test = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        y0, y1 = net(x_test), result.program.module()(x_test)
    assert float((y1 - y0).norm() / y0.norm()) < 1e-5


def test_a_fit_is_planned_with_the_addend_and_the_relu_after_its_layer() -> None:
    torch.manual_seed(0)
    model = models.randomize_bn(models.ResNetLike())
    x = torch.randn(4, 3, 16, 16)
    gm = models.export(model, x).module()
    analysis = analyse(gm, (x[:2],))
    by_node = {c.weight: (c, g) for g in analysis.prunable for c in g.consumers}
    users = {n.name: [u.target for u in n.users] for n in gm.graph.nodes}

    def fit_for(weight: str, rectified: bool = True) -> output_fit.OutputFit | None:
        c, g = by_node[weight]
        kept = {s: torch.arange(0, g.size, 2) for s in g.spaces}
        return plan(gm, gm, analysis, c, kept, 1e-5, 64, rectified)

    def gamma_eff(bn: nn.BatchNorm2d) -> torch.Tensor:
        return bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)

    inner = fit_for("layers.0.conv2.weight")  # conv2 -> bn2 -> add(., stem) -> relu
    assert inner is not None and inner.addend is not None and inner.rectifier is not None
    assert torch.allclose(inner.addend.scale, gamma_eff(model.layers[0].bn2))
    assert torch.allclose(inner.rectifier.scale, gamma_eff(model.layers[0].bn2))
    assert users[inner.rectifier.node] == [torch.ops.aten.relu.default]  # the sum, not bn2's output
    assert inner.features == 8 * 9 and inner.keep_fraction == 1.0
    first = fit_for("layers.0.conv1.weight")  # conv1 -> bn1 -> relu: no addition to take up
    assert first is not None and first.addend is None and first.rectifier is not None
    assert torch.allclose(first.rectifier.scale, gamma_eff(model.layers[0].bn1))
    assert users[first.rectifier.node] == [torch.ops.aten.relu.default]
    assert fit_for("layers.0.conv1.weight", rectified=False).rectifier is None  # type: ignore[union-attr]
    # the head sees one row per sample: 64 rows for 16 predictors are too few, the channel re-fit does
    assert fit_for("fc.weight") is None


class _Rectified(nn.Module):
    def __init__(self, activation: nn.Module) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.bn(self.conv2(torch.relu(self.conv1(x)))))


class _Lambda(nn.Module):
    def __init__(self, fn: object) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("activation", "bounds"),
    [
        (nn.ReLU6(), (0.0, 6.0)),  # hardtanh(x, 0, 6)
        (_Lambda(F.relu6), (0.0, 6.0)),  # relu6(x), also what an ONNX Clip(0, 6) imports as
        (_Lambda(lambda x: torch.clamp(x, -1.0, 2.0)), (-1.0, 2.0)),
        (_Lambda(lambda x: x.clamp(min=0.5)), (0.5, float("inf"))),
        (_Lambda(lambda x: x.clamp(max=3.0)), (float("-inf"), 3.0)),
    ],
)
def test_a_clamp_is_planned_with_its_bounds(activation: nn.Module, bounds: tuple[float, float]) -> None:
    net = _Rectified(activation).eval()
    x = torch.randn(4, 3, 8, 8)
    gm = models.export(net, x).module()
    analysis = analyse(gm, (x[:2],))
    (g,) = [g for g in analysis.prunable if any(c.weight == "conv2.weight" for c in g.consumers)]
    c = next(c for c in g.consumers if c.weight == "conv2.weight")
    fit = plan(gm, gm, analysis, c, {s: torch.arange(4) for s in g.spaces}, 1e-5, 64)
    assert fit is not None and fit.rectifier is not None
    assert (fit.rectifier.low, fit.rectifier.high) == bounds


@pytest.mark.parametrize(
    ("activation", "shift"),
    [(nn.ReLU(), -0.5), (nn.Hardtanh(-0.1, 0.1), 0.0)],  # ~10% positive; both bounds hit often
)
def test_majorisation_lowers_the_error_after_the_clamp(activation: nn.Module, shift: float) -> None:
    torch.manual_seed(0)
    net = models.randomize_bn(_Rectified(activation)).eval()
    with torch.no_grad():
        net.bn.bias.add_(shift)
    x = torch.randn(128, 3, 8, 8)
    program = models.export(net, x[:4])
    with torch.no_grad():
        y0 = net(x)
    errors = {}
    for steps in (0, 1, 3):
        config = CompressionConfig(widths={"conv1": 6}, rectified_steps=steps)
        result = compress(program, x, config, measure_latency=False)
        with torch.no_grad():
            errors[steps] = float((result.program.module()(x) - y0).norm() / y0.norm())
    # each step minimises a quadratic bound that touches ||clamp(z') - clamp(z)||^2 at the present fit
    assert errors[3] < errors[1] < 0.99 * errors[0], errors


class _BroadcastAdd(nn.Module):
    """``relu(bn(conv2(.)) + g)`` with ``g`` a per-sample, per-channel (N, C, 1, 1) term."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.gate = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))
        return torch.relu(self.bn(self.conv2(h)) + self.gate(h.mean((2, 3), keepdim=True)))


def test_a_broadcast_addend_before_the_relu_leaves_the_fit_unrectified() -> None:
    x = torch.randn(4, 3, 8, 8)
    gm = models.export(_BroadcastAdd().eval(), x).module()
    analysis = analyse(gm, (x[:2],))
    (g,) = [g for g in analysis.prunable if any(c.weight == "conv2.weight" for c in g.consumers)]
    c = next(c for c in g.consumers if c.weight == "conv2.weight")
    fit = plan(gm, gm, analysis, c, {s: torch.arange(4) for s in g.spaces}, 1e-5, 64)
    # the gate's error is not in the target, so the pruned pre-activation is not known from the fit
    assert fit is not None and fit.addend is None and fit.rectifier is None


def _fit_on_final_network(
    work: fx.GraphModule,
    original: fx.GraphModule,
    analysis: GraphAnalysis,
    weight: str,
    kept: Kept,
    x: torch.Tensor,
) -> torch.Tensor:
    """The output-level fit of the layer owning ``weight``, solved afresh on the finished network."""
    c = next(c for g in analysis.prunable for c in g.consumers if c.weight == weight)
    fit = plan(work, original, analysis, c, kept, 1e-9, len(x), rectified=False)
    assert fit is not None
    batches = [(x[i : i + 128],) for i in range(0, len(x), 128)]
    original_nodes, pruned_nodes = fit.nodes()
    for i, batch in enumerate(batches):
        pruned = Cursor(work, len(batches), 0).values(i, batch, pruned_nodes, 0)
        fit.add(pruned, Cursor(original, len(batches), 0).values(i, batch, original_nodes, 0))
    return fit.weight().float()


def test_every_layer_is_fitted_to_its_final_input() -> None:
    """A residual stream's reader comes after the blocks before it are pruned and re-fitted: re-solving
    its fit on the finished network changes nothing (fitted as soon as the stream was narrowed, the head
    here would miss the last block's inner pruning)."""
    torch.manual_seed(0)
    model = models.randomize_bn(models.ResNetLike()).eval()
    x = torch.randn(640, 3, 8, 8)  # 640 rows for the head's 16 predictors: output-level
    original, work = (models.export(model, x[:4]).module() for _ in range(2))
    analysis = analyse(work, (x[:2],))
    kept = {s: torch.arange(0, g.size, 2) for g in analysis.prunable for s in g.spaces}
    sequential_refit(work, original, analysis, analysis.prunable, kept, [(x[:320],), (x[320:],)], 1e-9)
    again = _fit_on_final_network(work, original, analysis, "fc.weight", kept, x)
    assert again.shape == (10, 16) and torch.allclose(again, work.get_parameter("fc.weight"), atol=1e-5)


class _Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x)))))


def test_a_layer_behind_a_group_kept_whole_is_refitted() -> None:
    """conv2's channels are all kept, but conv1's pruning changes them: conv3 is re-fitted to them too."""
    torch.manual_seed(0)
    x = torch.randn(256, 3, 8, 8)
    original, work = (models.export(_Chain().eval(), x[:4]).module() for _ in range(2))
    analysis = analyse(work, (x[:2],))
    (first,) = [g for g in analysis.prunable if any(c.weight == "conv2.weight" for c in g.consumers)]
    kept = {s: torch.arange(5) for s in first.spaces}
    sequential_refit(work, original, analysis, analysis.prunable, kept, [(x[:128],), (x[128:],)], 1e-9)
    again = _fit_on_final_network(work, original, analysis, "conv3.weight", kept, x)
    assert torch.allclose(again, work.get_parameter("conv3.weight"), atol=1e-5)
    assert not torch.allclose(again, original.get_parameter("conv3.weight"), atol=1e-3)

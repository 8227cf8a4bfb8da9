"""Ops that treat each channel on its own carry prunable channels through (their per-channel parameters
sliced with them); ops that mix neighbouring channels stop them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core import CompressionConfig, compress
from core.graph import analyse
from tests.core import models


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.InstanceNorm2d(16, affine=True),
        nn.PReLU(16),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.LocalResponseNorm(5),  # mixes each channel with its neighbours
        nn.ReLU(),
        nn.Conv2d(16, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()


def test_instance_norm_and_prelu_carry_channels_and_lrn_stops_them() -> None:
    x = torch.randn(128, 3, 8, 8)
    model = _model()
    with torch.no_grad():  # non-trivial affine parameters, so slicing them wrongly would show
        (
            model[1].weight.uniform_(0.5, 1.5),
            model[1].bias.uniform_(-0.5, 0.5),
            model[2].weight.uniform_(0.0, 0.5),
        )
    program = models.export(model, x[:4])
    groups = {g.name: g for g in analyse(program.module(), (x[:2],)).groups}
    assert groups["0"].skipped is None
    assert groups["3"].skipped is not None  # read by the LRN
    assert groups["6"].skipped is None

    same = compress(program, x, CompressionConfig(alpha=1.0), measure_latency=False).program
    assert torch.allclose(same.module()(x), program.module()(x), atol=1e-5)

    result = compress(program, x, CompressionConfig(widths={"0": 10, "6": 5}), measure_latency=False)
    state = result.program.state_dict
    assert [tuple(state[name].shape) for name in ("1.weight", "1.bias", "2.weight")] == [(10,), (10,), (10,)]
    kept = next(layer for layer in result.report["layers"] if layer["name"] == "0")["kept"]
    assert torch.equal(state["2.weight"], model[2].weight.detach()[kept])
    assert result.report["compressed"]["output_error"] < 0.1  # 0.017 measured; L1 at these widths 0.18


class _ChannelsLastPad(nn.Module):
    """Features kept channels-last and padded on the spatial axes only (Swin pads its windows so), then
    padded again on the channel axis, which stops them."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 16), nn.Linear(16, 16), nn.Linear(17, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x.permute(0, 2, 3, 1)))  # (N, H, W, 16)
        h = torch.nn.functional.pad(h, (0, 0, 0, 1, 0, 1))  # W and H, not the channels
        g = torch.nn.functional.pad(torch.relu(self.b(h)), (0, 1))  # one more channel
        return self.c(g).mean((1, 2))


def test_padding_other_axes_carries_channels_and_padding_theirs_stops_them() -> None:
    x = torch.randn(16, 3, 5, 5)
    program = models.export(_ChannelsLastPad().eval(), x[:4])
    groups = {g.name: g for g in analyse(program.module(), (x[:2],)).groups}
    assert groups["a"].skipped is None
    assert groups["b"].skipped == "padding along the channel axis"


class _ExplicitPads(nn.Module):
    """The ATen ops ``F.pad(mode='reflect' | 'replicate')`` lowers to (ONNX imports and older exports
    hold them as such)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 16, 3), nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.ops.aten.reflection_pad2d(torch.relu(self.a(x)), [1, 1, 1, 1])
        return self.c(torch.ops.aten.replication_pad2d(torch.relu(self.b(h)), [1, 1, 1, 1]))


def test_reflection_and_replication_padding_carry_channels() -> None:
    torch.manual_seed(0)
    model, x = _ExplicitPads().eval(), torch.randn(32, 3, 10, 10)
    program = models.export(model, x[:4])
    result = compress(program, x, CompressionConfig(widths={"a": 8, "b": 8}), measure_latency=False)
    assert {layer["name"] for layer in result.report["layers"]} == {"a", "b"}
    assert result.program.state_dict["b.weight"].shape == (8, 8, 3, 3)
    assert result.program.module()(x).shape == (32, 4, 10, 10)


class _Between(nn.Module):
    """``conv2(fn(conv1(x)))``: ``fn`` acts on each value alone."""

    def __init__(self, fn: object) -> None:
        super().__init__()
        self.conv1, self.conv2, self.fn = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1), fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.fn(self.conv1(x))).mean((2, 3))  # type: ignore[operator]


@pytest.mark.parametrize(
    "fn",
    [
        F.relu6,  # an ONNX Clip(0, 6) imports as this
        F.logsigmoid,
        F.hardshrink,
        F.softshrink,
        lambda x: F.rrelu(x, training=False),
        lambda x: torch.logit(torch.sigmoid(x), eps=1e-6),
        torch.sin,
        torch.cos,
        torch.expm1,
        lambda x: torch.log1p(x.abs()),
        lambda x: torch.log2(x.abs() + 1),
        torch.erfc,
        torch.floor,
        torch.ceil,
        torch.round,
        torch.trunc,
        torch.frac,
        torch.nan_to_num,
        lambda x: torch.where(x > 0, x, 0.0),  # gt.Scalar, where.ScalarOther
        lambda x: torch.where(x <= 0, 0.1, x),  # le.Scalar, where.ScalarSelf
        lambda x: torch.maximum(x, torch.zeros_like(x)),
        lambda x: x * torch.ones_like(x).ne(0),
    ],
)
def test_value_wise_functions_carry_channels(fn: object) -> None:
    torch.manual_seed(0)
    model = _Between(fn).eval()
    x = torch.randn(64, 3, 6, 6)
    program = models.export(model, x[:4])
    groups = {g.name: g for g in analyse(program.module(), (x[:2],)).groups}
    assert groups["conv1"].skipped is None
    result = compress(program, x, CompressionConfig(widths={"conv1": 10}), measure_latency=False)
    state, kept = result.program.state_dict, result.report["layers"][0]["kept"]
    assert torch.equal(state["conv1.weight"], model.conv1.weight.detach()[kept])
    assert state["conv2.weight"].shape[1] == 10
    assert result.program.module()(x).isfinite().all()

"""Forms a model may be written in that the analysis must see through: in-place ops, depthwise
convolutions on channels no group owns, outputs returned in a dict."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core import CompressionConfig, compress
from core.metrics import class_count
from tests.core import models


class InPlaceBlock(models.BasicBlock):
    """``BasicBlock`` written the torchvision way: ``out += identity`` and ``relu(inplace=True)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu_(out)


def _in_place_twin(model: models.ResNetLike) -> models.ResNetLike:
    twin = models.ResNetLike()
    for i, block in enumerate(model.layers):
        stride = block.conv1.stride[0]
        twin.layers[i] = InPlaceBlock(block.conv1.in_channels, block.conv1.out_channels, stride)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def test_in_place_residual_adds_prune_like_out_of_place_ones() -> None:
    torch.manual_seed(0)
    model = models.randomize_bn(models.ResNetLike()).eval()
    twin = _in_place_twin(model)
    x = torch.randn(96, 3, 16, 16)
    assert torch.allclose(twin(x), model(x), atol=1e-5)
    config = CompressionConfig(flops_ratio=0.5)
    plain = compress(models.export(model, x[:4]), x, config, measure_latency=False)
    in_place = compress(models.export(twin, x[:4]), x, config, measure_latency=False)

    def widths(report: dict) -> list[tuple[int, int]]:
        return [(layer["width_before"], layer["width_after"]) for layer in report["layers"]]

    assert len(in_place.report["layers"]) == len(plain.report["layers"]) == 5  # streams included
    assert widths(in_place.report) == widths(plain.report)
    assert torch.allclose(in_place.program.module()(x), plain.program.module()(x), atol=1e-4)
    errors = [r.report["compressed"]["output_error"] for r in (in_place, plain)]
    assert abs(errors[0] - errors[1]) < 1e-4


class DepthwiseFirst(nn.Module):
    """A depthwise convolution straight on the input, and one after a ShuffleNet channel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.dw_in = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1)
        self.dw_shuffled = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.conv2 = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(torch.relu(self.dw_in(x))))
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # channel shuffle
        x = torch.relu(self.conv2(torch.relu(self.dw_shuffled(x))))
        return self.fc(x.mean(dim=(2, 3)))


def test_depthwise_convolutions_on_untracked_channels_are_left_whole() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 8, 8, 8)
    model = DepthwiseFirst().eval()
    result = compress(
        models.export(model, x[:4]), x, CompressionConfig(flops_ratio=0.9), measure_latency=False
    )
    skipped = {s["name"]: s["reason"] for s in result.report["skipped"]}
    assert "reshape" in skipped["conv1"]  # the shuffle mixes conv1's channels
    pruned = {
        layer["name"] for layer in result.report["layers"] if layer["width_after"] < layer["width_before"]
    }
    assert pruned == {"conv2"}
    assert result.program.module()(x).shape == (64, 4)
    assert result.report["compressed"]["flops"] < result.report["original"]["flops"]


class DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = models.VGGLike()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.body(x)
        return {"logits": logits, "probabilities": logits.softmax(dim=1)}


def test_dict_outputs_are_scored_on_their_first_tensor() -> None:
    torch.manual_seed(0)
    x = torch.randn(96, 3, 16, 16)
    model = models.randomize_bn(DictOutput()).eval()
    labels = model(x)["logits"].argmax(dim=1)
    assert class_count(model, (x[:2],)) == 10
    result = compress(
        models.export(model, x[:4]),
        x,
        CompressionConfig(flops_ratio=0.6),
        labels=labels,
        measure_latency=False,
    )
    assert result.report["original"]["top1"] == 1.0
    assert 0.0 < result.report["compressed"]["top1"] <= 1.0
    assert set(result.program.module()(x)) == {"logits", "probabilities"}


class GroupNormed(nn.Module):
    """A GroupNorm stem, then a residual branch added to the stem's (unprunable) channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.norm = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.conv1, self.conv2 = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm(self.stem(x)))
        h = h + self.conv2(torch.relu(self.conv1(h)))
        return self.fc(h.mean(dim=(2, 3)))


def test_group_norm_channels_are_left_whole_with_the_reason() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    program = models.export(GroupNormed().eval(), x[:4])
    result = compress(program, x, CompressionConfig(flops_ratio=0.7), measure_latency=False)
    skipped = {s["name"]: s["reason"] for s in result.report["skipped"]}
    assert "GroupNorm" in skipped["stem"]
    assert "channels left whole" in skipped["conv2"]  # added to the stem's channels
    assert {layer["name"] for layer in result.report["layers"]} == {"conv1"}


class Sliced(nn.Module):
    """A crop of the spatial axes, a whole-channel slice (``[:, :, None, None]``) and a selected row."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.embed = nn.Linear(6, 16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x))[:, :, 1:-1, 1:-1] + self.embed(z)[:, :, None, None]
        h = torch.relu(self.conv2(h))
        return self.fc(h.flatten(2).transpose(1, 2)[:, 0])  # the first position's channels


def test_slices_off_the_channel_axis_keep_channels_prunable() -> None:
    torch.manual_seed(0)
    x, z = torch.randn(64, 3, 10, 10), torch.randn(64, 6)
    model = Sliced().eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (x[:4], z[:4]), dynamic_shapes=({0: batch}, {0: batch}))
    calibration = list(zip(x.split(16), z.split(16), strict=True))
    result = compress(program, calibration, CompressionConfig(alpha=1.0), measure_latency=False)
    assert {layer["name"] for layer in result.report["layers"]} == {"conv1+1", "conv2"}
    assert torch.allclose(result.program.module()(x, z), model(x, z), atol=1e-5)
    result = compress(program, calibration, CompressionConfig(flops_ratio=0.6), measure_latency=False)
    assert result.program.module()(x[:3], z[:3]).shape == (3, 4)


def test_a_slice_of_some_channels_prunes_the_part_it_keeps() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU()).eval()
    head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    class FirstHalf(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head, self.fc = model, head, nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.head(self.body(x)[:, :8]))

    net = FirstHalf().eval()
    program = models.export(net, x[:4])
    same = compress(program, x, CompressionConfig(alpha=1.0), measure_latency=False)
    with torch.no_grad():
        assert torch.allclose(same.program.module()(x), net(x), atol=1e-5)
    result = compress(program, x, CompressionConfig(flops_ratio=0.8), measure_latency=False)
    skipped = {s["name"]: s["reason"] for s in result.report["skipped"]}
    assert skipped["body.0[8:16]"] == "no layer consumes its channels"  # computed, then cut off: left whole
    assert {layer["name"] for layer in result.report["layers"]} == {"body.0[0:8]", "head.0"}
    kept = next(layer["width_after"] for layer in result.report["layers"] if layer["name"] == "body.0[0:8]")
    assert result.program.state_dict["body.0.weight"].shape[0] == kept + 8


class _Conv1D(nn.Module):
    """Hugging Face's ``Conv1D`` (GPT-2): a linear layer with its weight stored ``(in, out)``."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) / n_in**0.5)
        self.bias = nn.Parameter(torch.randn(n_out) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return out.view(*x.shape[:-1], self.weight.shape[1])


class _MatMul(_Conv1D):
    """The same written ``x @ W + b``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias


class _Einsum(_Conv1D):
    """The same written ``einsum("bti,io->bot", ...)``, its output's axes moved."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bti,io->bot", x, self.weight).transpose(1, 2) + self.bias


class _TokenMLP(nn.Module):
    def __init__(self, layer: type[nn.Module]) -> None:
        super().__init__()
        self.fc, self.proj, self.head = layer(16, 48), layer(48, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.proj(F.gelu(self.fc(x))).mean(1))


@pytest.mark.parametrize("layer", [_Conv1D, _MatMul, _Einsum])
def test_weights_stored_in_out_prune_like_linear_layers(layer: type[_Conv1D]) -> None:
    torch.manual_seed(0)
    model = _TokenMLP(layer).eval()
    twin = _TokenMLP(nn.Linear).eval()  # the same function with nn.Linear's (out, in) weights
    with torch.no_grad():
        for name in ("fc", "proj"):
            getattr(twin, name).weight.copy_(getattr(model, name).weight.T)
            getattr(twin, name).bias.copy_(getattr(model, name).bias)
        twin.head.load_state_dict(model.head.state_dict())
    x = torch.randn(256, 6, 16)
    program = models.export(model, x[:4])
    config = CompressionConfig(widths={"fc": 20})
    result = compress(program, x, config, measure_latency=False)
    expected = compress(models.export(twin, x[:4]), x, config, measure_latency=False)
    assert [(g["name"], g["kept"]) for g in result.report["layers"]] == [
        (g["name"], g["kept"]) for g in expected.report["layers"]
    ]
    assert torch.allclose(result.program.module()(x), expected.program.module()(x), atol=1e-5)
    assert result.program.state_dict["fc.weight"].shape == (20, 16)  # now stored (out, in)
    assert program.state_dict["fc.weight"].shape == (16, 48)  # the given program is left as it was


class _StandardisedConv(nn.Conv2d):
    """Weight standardisation (BiT's ``StdConv2d``): the weight is normalised on every call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.reshape(1, self.out_channels, -1)
        w = F.batch_norm(w, None, None, training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def _weight_norm(layer: nn.Module) -> nn.Module:
    return nn.utils.parametrizations.weight_norm(layer)


def _spectral_norm(layer: nn.Module) -> nn.Module:
    return nn.utils.parametrizations.spectral_norm(layer)


def _hooked_weight_norm(layer: nn.Module) -> nn.Module:
    return nn.utils.weight_norm(layer)  # the older, hook-based form: weight_g and weight_v


class _Reparametrised(nn.Module):
    def __init__(self, wrap: object) -> None:
        super().__init__()
        conv = _StandardisedConv if wrap is None else nn.Conv2d
        wrapped = (lambda layer: layer) if wrap is None else wrap
        self.conv1 = wrapped(conv(3, 16, 3, padding=1))  # type: ignore[operator]
        self.conv2 = wrapped(conv(16, 16, 3, padding=1))  # type: ignore[operator]
        self.fc = wrapped(nn.Linear(16, 16)) if wrap is not None else nn.Linear(16, 16)  # type: ignore[operator]
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(F.relu(self.fc(h.mean((2, 3)))))


@pytest.mark.parametrize("wrap", [_weight_norm, _spectral_norm, _hooked_weight_norm, None])
def test_weights_computed_from_parameters_are_folded(wrap: object) -> None:
    """Weight norm, spectral norm and weight standardisation compute each weight from parameters on
    every call; the layers prune as plain ones, the compressed model stores the plain weights."""
    torch.manual_seed(0)
    model = _Reparametrised(wrap)
    model.train()(torch.randn(8, 3, 8, 8))  # a spectral norm's power iteration sets its u and v
    model.eval()
    x = torch.randn(128, 3, 8, 8)
    program = models.export(model, x[:4])
    same = compress(program, x, CompressionConfig(alpha=1.0), measure_latency=False)
    assert {layer["name"] for layer in same.report["layers"]} == {"conv1", "conv2", "fc"}
    with torch.no_grad():
        assert torch.allclose(same.program.module()(x), model(x), atol=1e-5)
    result = compress(program, x, CompressionConfig(widths={"conv1": 8, "conv2": 6}), measure_latency=False)
    state = result.program.state_dict
    assert state["conv1.weight"].shape == (8, 3, 3, 3) and state["conv2.weight"].shape == (6, 8, 3, 3)
    assert not [name for name in state if "original" in name or name.endswith(("_g", "_v"))]


class _SharedScale(nn.Module):
    """A weight computed from a parameter another op also reads: left as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.full((1,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.conv2d(x, self.conv1.weight * self.scale, self.conv1.bias, padding=1)
        return self.conv2(F.relu(h) * self.scale).mean((2, 3))


def test_a_weight_computed_with_a_shared_parameter_is_left_alone() -> None:
    x = torch.randn(64, 3, 8, 8)
    model = _SharedScale().eval()
    program = models.export(model, x[:4])
    result = compress(program, x, CompressionConfig(alpha=1.0), measure_latency=False)
    assert "conv1" not in {layer["name"] for layer in result.report["layers"]}
    assert "scale" in result.program.state_dict
    with torch.no_grad():
        assert torch.allclose(result.program.module()(x), model(x), atol=1e-5)

"""A layer whose output is split along its channels (``torch.chunk``/``split``: YOLO's C2f, CSPNet,
ShuffleNetV2) opens one channel group per part, each pruned to its own width; the split follows."""

from __future__ import annotations

import pytest
import torch

from core import CompressionConfig, compress
from core.canonical import explicit_splits
from core.graph import analyse
from tests.core import models


def _model() -> models.CSPNetLike:
    torch.manual_seed(0)
    return models.randomize_bn(models.CSPNetLike())  # type: ignore[return-value]


@pytest.fixture(scope="module")
def setup() -> tuple[torch.export.ExportedProgram, torch.Tensor]:
    x = torch.randn(128, 3, 16, 16)
    return models.export(_model(), x[:4]), x


def _split_sizes(program: torch.export.ExportedProgram) -> set[tuple[int, ...]]:
    """The sizes of every split (making the in-place SiLU functional duplicates the chunk: one per use)."""
    return {
        tuple(n.args[1]) for n in program.graph.nodes if n.target is torch.ops.aten.split_with_sizes.default
    }


def test_each_part_of_a_split_layer_is_its_own_group(setup) -> None:
    program, x = setup
    gm = program.module()
    explicit_splits(gm)
    groups = {g.name: g for g in analyse(gm, (x[:2],)).groups}
    first, second = groups["block.cv1.0[0:16]"], groups["block.cv1.0[16:32]+2"]
    assert first.skipped is None and second.skipped is None
    assert first.size == second.size == 16
    # the half the bottlenecks chain on is one residual stream with their outputs
    assert second.coupling == "residual" and len(second.spaces) == 3
    assert {c.weight for c in first.consumers} == {"block.cv2.0.weight"}
    assert {c.weight for c in second.consumers} == {
        "block.cv2.0.weight",
        "block.m.0.cv1.0.weight",
        "block.m.1.cv1.0.weight",
    }


def test_dead_channels_in_each_part_are_dropped_exactly(setup) -> None:
    """Channels that are always zero (zero filters, zero BatchNorm shift, SiLU(0) = 0) carry nothing:
    pruning each part to its live channels must give the same function, with the split following."""
    model = _model()
    dead = {"first": [1, 4, 9], "second": [18, 21, 27, 30]}
    # the second half is a residual stream: its channels stay dead if every block adds zeros to them
    writers = [(model.block.cv1, 0)] + [(m.cv2, 16) for m in model.block.m]
    with torch.no_grad():
        for layer, start in writers:
            for c in (c - start for c in dead["first"] + dead["second"] if c >= start):
                layer[0].weight[c] = 0
                layer[1].running_mean[c] = 0
                layer[1].bias[c] = 0
    _, x = setup
    program = models.export(model, x[:4])
    widths = {"block.cv1.0[0:16]": 13, "block.cv1.0[16:32]+2": 12}
    result = compress(
        program, x, CompressionConfig(widths=widths, refit="independent"), measure_latency=False
    )
    layers = {layer["name"]: layer for layer in result.report["layers"]}
    assert not set(layers["block.cv1.0[0:16]"]["kept"]) & set(dead["first"])
    assert not {c + 16 for c in layers["block.cv1.0[16:32]+2"]["kept"]} & set(dead["second"])
    assert _split_sizes(result.program) == {(13, 12)}
    assert result.program.state_dict["block.cv1.0.weight"].shape[0] == 25
    with torch.no_grad():
        expected, got = model(x), result.program.module()(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_parts_pruned_to_unequal_widths_run_fresh(setup, run_fresh) -> None:
    program, x = setup
    widths = {"block.cv1.0[0:16]": 10, "block.cv1.0[16:32]+2": 7, "block.m.0.cv1.0": 9}
    result = compress(program, x, CompressionConfig(widths=widths), measure_latency=False)
    assert _split_sizes(result.program) == {(10, 7)}
    y, info = run_fresh(result.program, x[:5])
    assert info["shape"][0] == 5
    assert torch.allclose(y, result.program.module()(x[:5]), atol=1e-5)


def test_l1_ranks_each_part_by_its_own_filters(setup) -> None:
    program, x = setup
    model = _model()
    norms = model.block.cv1[0].weight.detach().abs().flatten(1).sum(1)
    result = compress(
        program, x, CompressionConfig(method="l1", widths={"block.cv1.0[0:16]": 4}), measure_latency=False
    )
    kept = next(layer["kept"] for layer in result.report["layers"] if layer["name"] == "block.cv1.0[0:16]")
    assert sorted(kept) == sorted(norms[:16].topk(4).indices.tolist())


def test_a_split_along_another_axis_keeps_the_channels() -> None:
    class Halves(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.top, self.bottom = torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            top, bottom = self.conv(x).relu().chunk(2, dim=2)  # rows, not channels
            return self.top(top) - self.bottom(bottom)

    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8)
    program = models.export(Halves(), x[:4])
    result = compress(program, x, CompressionConfig(widths={"conv": 5}), measure_latency=False)
    assert result.program.state_dict["conv.weight"].shape[0] == 5
    assert result.program.module()(x).shape == (64, 4, 4, 8)


class _Ghost(torch.nn.Module):
    """GhostNet's module: a conv, a cheap depthwise conv of its output, both concatenated and cut to
    ``out`` channels (the cut falls inside the depthwise conv's channels, i.e. the conv's space)."""

    def __init__(self, out: int = 12) -> None:
        super().__init__()
        self.out = out
        self.primary = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.cheap = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.ReLU())
        self.head = torch.nn.Conv2d(out, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.primary(x)
        return self.head(torch.cat([y, self.cheap(y)], 1)[:, : self.out])


def test_a_slice_of_the_channel_axis_keeps_the_spaces_inside_it() -> None:
    torch.manual_seed(0)
    model = models.randomize_bn(_Ghost())
    x = torch.randn(128, 3, 8, 8)
    program = models.export(model, x[:4])
    same = compress(program, x, CompressionConfig(alpha=1.0), measure_latency=False)
    assert {layer["name"] for layer in same.report["layers"]} >= {"primary.0[0:4]", "primary.0[4:8]"}
    with torch.no_grad():
        assert torch.allclose(same.program.module()(x), model(x), atol=1e-5)
    widths = {"primary.0[0:4]": 3, "primary.0[4:8]": 2}
    result = compress(program, x, CompressionConfig(widths=widths), measure_latency=False)
    assert result.program.state_dict["primary.0.weight"].shape[0] == 5
    assert result.program.state_dict["head.weight"].shape[1] == 3 + 2 + 3  # [a, b, cheap(a)]
    slices = [n.args for n in result.program.graph.nodes if n.target is torch.ops.aten.slice.Tensor]
    assert any(args[1] == 1 and args[3] == 8 for args in slices), slices

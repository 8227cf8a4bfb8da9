"""Partial runs of a graph: a pass resumed from a snapshot sees what a pass from the input sees, also
after the parameters downstream of the snapshot change, and the re-fit comes out the same with or
without snapshots and the values a step holds for its majorisation passes."""

from __future__ import annotations

import pytest
import torch

from core import CompressionConfig, compress, sequential
from core.capture import Cursor, first_change
from tests.core import models

FAMILIES = [models.VGGLike, models.ResNetLike, models.DenseNetLike, models.MobileNetLike]


def _exported(make) -> tuple[torch.export.ExportedProgram, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(12, 3, 16, 16)
    return models.export(models.randomize_bn(make()).eval(), x[:4]), x


def _whole_pass(gm: torch.fx.GraphModule, names: set[str], inputs: tuple[torch.Tensor, ...]) -> dict:
    """The values of ``names`` from a plain interpreter run over the whole graph."""
    interpreter = torch.fx.Interpreter(gm, garbage_collect_values=False)
    with torch.no_grad():
        interpreter.run(*inputs)
    return {n.name: v for n, v in interpreter.env.items() if n.name in names}


@pytest.mark.parametrize("budget", [1 << 30, 0])
@pytest.mark.parametrize("make", FAMILIES, ids=lambda m: m.__name__)
def test_a_resumed_pass_gives_what_a_pass_from_the_input_gives(make, budget: int) -> None:
    program, x = _exported(make)
    gm = program.module()
    batches = [(x[:5],), (x[5:],)]
    cursor = Cursor(gm, len(batches), budget)
    params = dict(gm.named_parameters())
    convs = [name for name, p in params.items() if p.dim() == 4]
    nodes = list(gm.graph.nodes)
    for name in convs:  # layer by layer, as the re-fit goes
        start = first_change(gm, {name}, set())
        users = [n for n in nodes[start:] if n.op == "call_function"]
        wanted = {users[0].name, users[-2].name}
        with torch.no_grad():
            params[name].mul_(0.5)  # a change downstream of the snapshot must be seen
        for i, batch in enumerate(batches):
            got = cursor.values(i, batch, wanted, start)
            want = _whole_pass(gm, wanted, batch)
            assert got.keys() == want.keys()
            for key in want:
                assert torch.equal(got[key], want[key]), (name, key)
    resumed = sum(s is not None and s[0] > 0 for s in cursor.saved)
    assert resumed == (len(batches) if budget else 0)


@pytest.mark.parametrize("make", FAMILIES, ids=lambda m: m.__name__)
def test_the_refit_is_the_same_with_and_without_snapshots(make, monkeypatch) -> None:
    program, x = _exported(make)
    config = CompressionConfig(flops_ratio=0.5, refit="output")
    resumed: list[bool] = []

    class Counting(Cursor):
        def values(self, i, inputs, names, start):
            saved = self.saved[i]
            resumed.append(saved is not None and 0 < saved[0] <= start)
            return super().values(i, inputs, names, start)

    monkeypatch.setattr(sequential, "Cursor", Counting)
    with_cache = compress(program, x, config, measure_latency=False).program.state_dict
    assert any(resumed)  # the snapshots were used
    runs = len(resumed)
    monkeypatch.setattr(sequential, "CACHE_BYTES", 0)
    monkeypatch.setattr(sequential, "STEP_BYTES", 0)
    without = compress(program, x, config, measure_latency=False).program.state_dict
    again = len(resumed) - runs  # without held values, the majorisation passes run the networks again
    assert again > runs if make is not models.VGGLike else again == runs  # VGG: no rectified fit here
    assert with_cache.keys() == without.keys()
    for key, value in without.items():
        assert torch.equal(with_cache[key], value), key

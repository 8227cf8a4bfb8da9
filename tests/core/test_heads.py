"""Attention heads are pruned whole: q, k and v keep the same heads (one channel group, a channel per
head), the output projection is re-fitted on the kept heads, and the views follow the head count, for
separate q/k/v projections (Hugging Face) and a fused one (timm)."""

from __future__ import annotations

import pytest
import torch

from core import CompressionConfig, compress
from core.graph import analyse
from tests.core import models

HF, TIMM = "blocks.0.attn.q+2", "blocks.1.attn.qkv[0:32]+2"  # q's space (or q's rows), with k and v


def _model() -> models.TinyViT:
    torch.manual_seed(0)
    return models.TinyViT().eval()


@pytest.fixture(scope="module")
def setup() -> tuple[torch.export.ExportedProgram, torch.Tensor]:
    x = torch.randn(128, 3, 16, 16)
    return models.export(_model(), x[:4]), x


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm() / b.norm()).detach())


def test_q_k_and_v_keep_the_same_heads(setup) -> None:
    program, x = setup
    groups = {g.name: g for g in analyse(program.module(), (x[:2],)).groups}
    for name, output in ((HF, "blocks.0.attn.o.weight"), (TIMM, "blocks.1.attn.proj.weight")):
        heads = groups[name]
        assert heads.skipped is None and heads.size == 4 and len(heads.spaces) == 3
        assert [c.weight for c in heads.consumers] == [output]
        assert {s.block for c in heads.consumers for s in c.layout.segments} == {8}  # 8 columns a head
    stream = next(g for name, g in groups.items() if name.startswith("patch"))
    assert stream.skipped is not None  # the residual stream is LayerNorm'd: left whole


def test_dead_heads_are_dropped_exactly(setup) -> None:
    """Heads whose values are zero add nothing: pruning to the live ones is the same function."""
    model, (_, x) = _model(), setup
    with torch.no_grad():
        for h in (1, 3):
            model.blocks[0].attn.v.weight[8 * h : 8 * h + 8] = 0
            model.blocks[0].attn.v.bias[8 * h : 8 * h + 8] = 0
        model.blocks[1].attn.qkv.weight[64 + 16 : 64 + 24] = 0  # v's rows of head 2
        model.blocks[1].attn.qkv.bias[64 + 16 : 64 + 24] = 0
    program = models.export(model, x[:4])
    result = compress(program, x, CompressionConfig(widths={HF: 2, TIMM: 3}), measure_latency=False)
    kept = {layer["name"]: layer["kept"] for layer in result.report["layers"]}
    assert kept[HF] == [0, 2] and kept[TIMM] == [0, 1, 3]
    state = result.program.state_dict
    assert state["blocks.0.attn.q.weight"].shape == (16, 32) and state["blocks.0.attn.o.weight"].shape == (
        32,
        16,
    )
    assert state["blocks.1.attn.qkv.weight"].shape == (72, 32) and state[
        "blocks.1.attn.proj.weight"
    ].shape == (32, 24)
    with torch.no_grad():
        assert _rel(result.program.module()(x), model(x)) < 1e-5


def test_the_output_projection_re_fit_beats_l1_and_random_heads(setup) -> None:
    program, x = setup
    model = _model()
    widths = {HF: 2, TIMM: 2}
    errors = {}
    for method in ("spectral", "l1", "random"):
        result = compress(program, x, CompressionConfig(widths=widths, method=method), measure_latency=False)
        with torch.no_grad():
            errors[method] = _rel(result.program.module()(x), model(x))
    assert errors["spectral"] < 0.6 * min(errors["l1"], errors["random"]), errors


def test_heads_are_allocated_with_the_rest_and_run_fresh(setup, run_fresh) -> None:
    program, x = setup
    result = compress(program, x, CompressionConfig(flops_ratio=0.3), measure_latency=False)
    widths = {layer["name"]: layer["width_after"] for layer in result.report["layers"]}
    assert min(widths[HF], widths[TIMM]) < 4, widths
    ratio = result.report["compressed"]["flops"] / result.report["original"]["flops"]
    assert abs(ratio - 0.3) <= 0.003, ratio  # attention's products shrink with the heads, as modelled
    y, info = run_fresh(result.program, x[:3])
    assert info["shape"] == [3, 5]
    assert torch.allclose(y, result.program.module()(x[:3]), atol=1e-5)

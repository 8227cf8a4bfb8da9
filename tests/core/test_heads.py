"""Attention heads are pruned whole: q, k and v keep the same heads (one channel group, a channel per
head), the output projection is re-fitted on the kept heads, and the views follow the head count, for
separate q/k/v projections (Hugging Face) and a fused one (timm)."""

from __future__ import annotations

import importlib

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


@pytest.mark.parametrize("refit", ["output", "sequential", "independent"])
def test_a_head_repeating_another_in_another_order_is_dropped_exactly(setup, refit: str) -> None:
    """Head 1 attends as head 0 does and its values are half of head 0's, in another order: the weakest
    head, dropped first, and every re-fit maps head 0's columns onto both (a map per column, not one
    shared by a head's columns, which could not undo the order)."""
    model, (_, x) = _model(), setup
    attn = model.blocks[0].attn
    with torch.no_grad():
        for layer in (attn.q, attn.k):
            layer.weight[8:16], layer.bias[8:16] = layer.weight[0:8], layer.bias[0:8]
        order = torch.tensor([3, 7, 0, 5, 1, 6, 2, 4])
        attn.v.weight[8:16], attn.v.bias[8:16] = 0.5 * attn.v.weight[order], 0.5 * attn.v.bias[order]
    program = models.export(model, x[:4])
    config = CompressionConfig(widths={HF: 3}, refit=refit, ridge=1e-9)
    result = compress(program, x, config, measure_latency=False)
    assert next(layer["kept"] for layer in result.report["layers"] if layer["name"] == HF) == [0, 2, 3]
    with torch.no_grad():
        assert _rel(result.program.module()(x), model(x)) < 1e-4


def test_heads_over_the_column_limit_are_re_fitted_head_by_head(setup, monkeypatch) -> None:
    """Past ``COLUMN_LIMIT`` columns a group's statistics are folded to heads: dead heads still drop
    exactly, and a repeated head in another order no longer does."""
    monkeypatch.setattr(importlib.import_module("core.compress"), "COLUMN_LIMIT", 16)  # 4 heads x 8
    model, (_, x) = _model(), setup
    attn = model.blocks[0].attn
    with torch.no_grad():
        attn.v.weight[24:32], attn.v.bias[24:32] = 0, 0  # head 3 dead
    config = CompressionConfig(widths={HF: 3}, refit="independent", ridge=1e-9)
    result = compress(models.export(model, x[:4]), x, config, measure_latency=False)
    with torch.no_grad():
        assert _rel(result.program.module()(x), model(x)) < 1e-5
        for layer in (attn.q, attn.k):
            layer.weight[8:16], layer.bias[8:16] = layer.weight[0:8], layer.bias[0:8]
        attn.v.weight[8:16], attn.v.bias[8:16] = 0.5 * attn.v.weight[[3, 7, 0, 5, 1, 6, 2, 4]], 0
        attn.v.bias[0:8] = 0
    config = CompressionConfig(widths={HF: 2}, refit="independent", ridge=1e-9)
    result = compress(models.export(model, x[:4]), x, config, measure_latency=False)
    assert next(layer["kept"] for layer in result.report["layers"] if layer["name"] == HF) == [0, 2]
    with torch.no_grad():
        assert _rel(result.program.module()(x), model(x)) > 1e-3


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


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _Variant(torch.nn.Module):
    """One attention block in the forms decoder and encoder models use: a causal mask, an additive
    padding mask, rotary position embeddings, LayerNorm'd q and k, cross-attention, grouped k/v heads."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form, d, kv = form, 32, 2 if form == "grouped" else 4
        self.embed, self.context = torch.nn.Linear(12, d), torch.nn.Linear(12, d)
        self.q, self.o = torch.nn.Linear(d, d), torch.nn.Linear(d, d)
        self.k, self.v = torch.nn.Linear(d, 8 * kv), torch.nn.Linear(d, 8 * kv)
        self.q_norm, self.k_norm = torch.nn.LayerNorm(8), torch.nn.LayerNorm(8)
        self.register_buffer("cos", torch.rand(6, 8))
        self.register_buffer("sin", torch.rand(6, 8))
        self.head = torch.nn.Linear(d, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        src = self.context(x.flip(1)[:, :4]) if self.form == "cross" else h
        b, n, m = h.shape[0], h.shape[1], src.shape[1]
        q = self.q(h).view(b, n, 4, 8).transpose(1, 2)
        k, v = (p(src).view(b, m, -1, 8).transpose(1, 2) for p in (self.k, self.v))
        if self.form == "rotary":
            q, k = q * self.cos + _rotate_half(q) * self.sin, k * self.cos + _rotate_half(k) * self.sin
        if self.form == "qk_norm":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.form == "grouped":
            k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
        if self.form == "padding":
            mask = torch.zeros(b, 1, 1, m)
            mask[..., -1] = -1e9
            out = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5 + mask, dim=-1) @ v
        else:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=self.form == "causal")
        return self.head((h + self.o(out.transpose(1, 2).reshape(b, n, 32))).mean(1))


@pytest.mark.parametrize("form", ["causal", "padding", "rotary", "qk_norm", "cross"])
def test_attention_forms_drop_dead_heads_exactly(form: str) -> None:
    torch.manual_seed(0)
    model, x = _Variant(form).eval(), torch.randn(64, 6, 12)
    with torch.no_grad():
        for h in (1, 3):
            model.v.weight[8 * h : 8 * h + 8] = 0
            model.v.bias[8 * h : 8 * h + 8] = 0
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    result = compress(program, x, CompressionConfig(widths={"q+2": 2}), measure_latency=False)
    assert next(layer["kept"] for layer in result.report["layers"] if layer["name"] == "q+2") == [0, 2]
    assert result.program.state_dict["o.weight"].shape == (32, 16)
    with torch.no_grad():
        assert _rel(result.program.module()(x), model(x)) < 1e-5


def test_grouped_key_value_heads_are_left_whole() -> None:
    torch.manual_seed(0)
    model, x = _Variant("grouped").eval(), torch.randn(64, 6, 12)
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    groups = {g.name: g for g in analyse(program.module(), (x[:2],)).groups}
    assert all(groups[name].skipped for name in ("q", "k", "v"))

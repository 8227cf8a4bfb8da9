"""Attention heads are pruned whole: q, k and v keep the same heads (one channel group, a channel per
head), the output projection is re-fitted on the kept heads, and the views follow the head count, for
separate q/k/v projections (Hugging Face) and a fused one (timm)."""

from __future__ import annotations

import importlib
from typing import Any

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


@pytest.mark.parametrize("decomposed", [False, True])
def test_dead_heads_are_dropped_exactly(setup, decomposed: bool) -> None:
    """Heads whose values are zero add nothing: pruning to the live ones is the same function. The same
    after ``run_decompositions()``, which writes the projections as ``addmm`` (or, on the transposed
    attention output, ``bmm`` with an expanded weight), timm's unbind as slices of the stacked q/k/v,
    attention as ``expand`` + ``bmm`` with heads folded into the batch, its softmax with a ``where``."""
    model, (_, x) = _model(), setup
    with torch.no_grad():
        for h in (1, 3):
            model.blocks[0].attn.v.weight[8 * h : 8 * h + 8] = 0
            model.blocks[0].attn.v.bias[8 * h : 8 * h + 8] = 0
        model.blocks[1].attn.qkv.weight[64 + 16 : 64 + 24] = 0  # v's rows of head 2
        model.blocks[1].attn.qkv.bias[64 + 16 : 64 + 24] = 0
    program = models.export(model, x[:4])
    program = program.run_decompositions() if decomposed else program
    result = compress(program, x, CompressionConfig(widths={HF: 2, TIMM: 3}), measure_latency=False)
    kept = {layer["name"]: layer["kept"] for layer in result.report["layers"]}
    assert kept[HF] == [0, 2] and kept[TIMM] == [0, 1, 3]
    head_dims = {layer["name"]: layer["head_dim"] for layer in result.report["layers"]}
    assert head_dims == {HF: 8, TIMM: 8, "blocks.0.mlp.0": None, "blocks.1.mlp.0": None}
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
    padding mask, rotary position embeddings, LayerNorm'd q and k, cross-attention, grouped k/v heads,
    products written as ``einsum``."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form, d, kv = form, 32, 2 if form.startswith("grouped") else 4
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
        if self.form == "grouped":  # each k/v head serves two q heads
            k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
        if self.form == "grouped_expand":  # the same, as Hugging Face's repeat_kv writes it
            k, v = (t[:, :, None].expand(b, 2, 2, m, 8).reshape(b, 4, m, 8) for t in (k, v))
        if self.form == "padding":
            mask = torch.zeros(b, 1, 1, m)
            mask[..., -1] = -1e9
            out = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5 + mask, dim=-1) @ v
        elif self.form == "einsum":
            scores = torch.einsum("bhqd,bhkd->bhqk", q, k) / 8**0.5
            out = torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v)
        else:  # with grouped_sdpa, the attention repeats each k/v head itself
            gqa = self.form == "grouped_sdpa"
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=self.form == "causal", enable_gqa=gqa
            )
        return self.head((h + self.o(out.transpose(1, 2).reshape(b, n, 32))).mean(1))


@pytest.mark.parametrize("form", ["causal", "padding", "rotary", "qk_norm", "cross", "einsum"])
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


class _SplitQKV(torch.nn.Module):
    """nanoGPT's and GPT-2's attention: one fused projection split into q, k and v along the features,
    each viewed as heads; causal attention; a residual stream kept whole by its LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.ln = torch.nn.Linear(12, 32), torch.nn.LayerNorm(32)
        self.qkv, self.proj, self.head = (
            torch.nn.Linear(32, 96),
            torch.nn.Linear(32, 32),
            torch.nn.Linear(32, 5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        b, n, c = h.shape
        q, k, v = (t.view(b, n, 4, 8).transpose(1, 2) for t in self.qkv(self.ln(h)).split(c, dim=2))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.head((h + self.proj(out.transpose(1, 2).contiguous().view(b, n, c))).mean(1))


def _live_heads_kept(model: torch.nn.Module, x: torch.Tensor, dead: tuple[int, ...]) -> Any:
    """``model``'s fused ``qkv`` (4 heads of 8) with v's rows of the ``dead`` heads zeroed, pruned to the
    live heads (checked); the result."""
    with torch.no_grad():
        for h in dead:
            model.qkv.weight[64 + 8 * h : 72 + 8 * h] = 0
            model.qkv.bias[64 + 8 * h : 72 + 8 * h] = 0
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    widths = {"qkv[0:32]+2": 4 - len(dead)}
    result = compress(program, x, CompressionConfig(widths=widths), measure_latency=False)
    kept = next(layer["kept"] for layer in result.report["layers"] if layer["name"] == "qkv[0:32]+2")
    assert kept == [h for h in range(4) if h not in dead]
    return result


def test_a_fused_projection_split_into_q_k_and_v_drops_dead_heads_exactly(run_fresh) -> None:
    torch.manual_seed(0)
    model, x = _SplitQKV().eval(), torch.randn(64, 6, 12)
    result = _live_heads_kept(model, x, dead=(0, 2))
    assert result.program.state_dict["qkv.weight"].shape == (48, 32)
    assert result.program.state_dict["proj.weight"].shape == (32, 16)
    y, _info = run_fresh(result.program, x)
    with torch.no_grad():
        assert _rel(y, model(x)) < 1e-5


class _TorchAttention(torch.nn.Module):
    """``nn.MultiheadAttention`` self-attention: its export unflattens the packed q/k/v projection to
    ``(3, E)``, takes q, k and v apart and folds the heads into the batch axis."""

    def __init__(self, batch_first: bool, need_weights: bool, padding: bool = False) -> None:
        super().__init__()
        self.batch_first, self.need_weights, self.padding = batch_first, need_weights, padding
        self.pre, self.embed = torch.nn.Linear(12, 24), torch.nn.Linear(24, 32)
        self.attn, self.head = (
            torch.nn.MultiheadAttention(32, 4, batch_first=batch_first),
            torch.nn.Linear(32, 5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(torch.relu(self.pre(x)))
        seq = h if self.batch_first else h.transpose(0, 1)
        pad = (x[..., 0] > 1.0) & (torch.arange(x.shape[1]) > 0) if self.padding else None  # keys left out
        out = self.attn(seq, seq, seq, key_padding_mask=pad, need_weights=self.need_weights)[0]
        return self.head(h + (out if self.batch_first else out.transpose(0, 1))).mean(1)


@pytest.mark.parametrize(
    "batch_first,need_weights,batch,padding",
    [
        (True, False, "dynamic", False),
        (False, True, "dynamic", False),
        (True, True, "static", False),
        (False, False, "static", False),
        (True, False, "dynamic", True),
        (False, False, "static", True),
    ],
)
def test_torch_multihead_attention_drops_dead_heads_exactly(
    batch_first: bool, need_weights: bool, batch: str, padding: bool, run_fresh
) -> None:
    """Both of its paths (``scaled_dot_product_attention``, and ``bmm`` where it also returns the
    weights), either layout, with the batch folded with the heads as a symbol or as a literal, and a key
    padding mask (expanded to every head: its head count follows)."""
    torch.manual_seed(0)
    model, x = _TorchAttention(batch_first, need_weights, padding).eval(), torch.randn(64, 6, 12)
    with torch.no_grad():
        for h in (1, 3):  # v's rows of heads 1 and 3
            model.attn.in_proj_weight[64 + 8 * h : 72 + 8 * h] = 0
            model.attn.in_proj_bias[64 + 8 * h : 72 + 8 * h] = 0
    dynamic = ({0: torch.export.Dim("batch")},) if batch == "dynamic" else None
    program = torch.export.export(model, (x[:8],), dynamic_shapes=dynamic)
    data = x if batch == "dynamic" else list(x.split(8))
    result = compress(
        program, data, CompressionConfig(widths={"attn.in_proj[0:32]+2": 2}), measure_latency=False
    )
    group = next(layer for layer in result.report["layers"] if layer["name"] == "attn.in_proj[0:32]+2")
    assert group["kept"] == [0, 2]
    assert result.program.state_dict["attn.in_proj_weight"].shape == (48, 32)
    assert result.program.state_dict["attn.out_proj.weight"].shape == (32, 16)
    with torch.no_grad():
        y = run_fresh(result.program, x[:8])[0] if batch == "dynamic" else result.program.module()(x[:8])
        assert _rel(y, model(x[:8])) < 1e-5


class _SeparateProjections(torch.nn.Module):
    """``_TorchAttention`` (batch first) rewritten as Hugging Face writes attention: the same function."""

    def __init__(self, twin: _TorchAttention) -> None:
        super().__init__()
        self.pre, self.embed, self.head, attn = twin.pre, twin.embed, twin.head, twin.attn
        self.q, self.k, self.v, self.o = (torch.nn.Linear(32, 32) for _ in range(4))
        with torch.no_grad():
            for i, layer in enumerate((self.q, self.k, self.v)):
                layer.weight.copy_(attn.in_proj_weight[32 * i : 32 * i + 32])
                layer.bias.copy_(attn.in_proj_bias[32 * i : 32 * i + 32])
            self.o.load_state_dict(attn.out_proj.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(torch.relu(self.pre(x)))
        b, n, _ = h.shape
        q, k, v = (p(h).view(b, n, 4, 8).transpose(1, 2) for p in (self.q, self.k, self.v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.head(h + self.o(out.transpose(1, 2).reshape(b, n, 32))).mean(1)


@pytest.mark.parametrize("refit", ["output", "sequential"])
def test_torch_multihead_attention_prunes_as_its_separate_projection_twin(refit: str) -> None:
    """The folded, sequence-first form is the same network: the same heads kept, the same re-fit (the
    output projection's output is viewed and transposed before it joins the residual stream)."""
    torch.manual_seed(0)
    model, x = _TorchAttention(batch_first=True, need_weights=False).eval(), torch.randn(256, 6, 12)
    twin = _SeparateProjections(model).eval()
    dynamic = ({0: torch.export.Dim("batch")},)
    outputs, kept = [], []
    for m, name in ((model, "attn.in_proj[0:32]+2"), (twin, "q+2")):
        program = torch.export.export(m, (x[:2],), dynamic_shapes=dynamic)
        widths = {name: 2, "pre": 12}  # the residual stream's error reaches the output projection's re-fit
        result = compress(program, x, CompressionConfig(widths=widths, refit=refit), measure_latency=False)
        kept.append(next(layer["kept"] for layer in result.report["layers"] if layer["name"] == name))
        with torch.no_grad():
            outputs.append(result.program.module()(x))
    assert kept[0] == kept[1]
    assert _rel(outputs[0], outputs[1]) < 1e-4


class _UnfollowedAttention(torch.nn.Module):
    def __init__(self, form: str) -> None:
        super().__init__()
        self.form, kdim = form, 24 if form == "kdim" else None
        self.a, self.b, self.head = (
            torch.nn.Linear(12, 32),
            torch.nn.Linear(12, kdim or 32),
            torch.nn.Linear(32, 5),
        )
        self.attn = torch.nn.MultiheadAttention(32, 4, batch_first=True, kdim=kdim, vdim=kdim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.a(x)
        kv = q if self.form == "weights" else self.b(x.flip(1))
        pad = (x[..., 0] > 1.0) & (torch.arange(x.shape[1]) > 0) if self.form == "weights" else None
        weights = self.form == "weights"
        return self.head(self.attn(q, kv, kv, key_padding_mask=pad, need_weights=weights)[0].mean(1))


@pytest.mark.parametrize("form", ["cross", "kdim", "weights"])
def test_torch_attention_it_cannot_follow_keeps_its_heads(form: str) -> None:
    """Cross-attention and separate key/value sizes cut q's projection (and its bias) from one
    parameter; with a mask and the weights returned, the scores are ``baddbmm(mask, q, k^T)``: the heads
    stay, the rest is pruned."""
    torch.manual_seed(0)
    model, x = _UnfollowedAttention(form).eval(), torch.randn(64, 6, 12)
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    result = compress(program, x, CompressionConfig(flops_ratio=0.9), measure_latency=False)
    names = {layer["name"] for layer in result.report["layers"]}
    assert "attn.out_proj" in names and not any("in_proj" in name or "q_proj" in name for name in names)
    reasons = " ".join(entry["reason"] for entry in result.report["skipped"])
    assert ("folded into the batch" if form == "weights" else "not a parameter of its own") in reasons
    with torch.no_grad():
        assert result.program.module()(x).shape == (64, 5)


def test_torch_transformer_encoder_layers_prune_heads_with_the_rest() -> None:
    torch.manual_seed(0)
    model, x = models.TinyTransformer().eval(), torch.randn(256, 6, 12)
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    result = compress(program, x, CompressionConfig(flops_ratio=0.4), measure_latency=False)
    widths = {layer["name"]: layer["width_after"] for layer in result.report["layers"]}
    heads = [name for name in widths if name.endswith("self_attn.in_proj[0:32]+2")]
    assert len(heads) == 2 and min(widths[name] for name in heads) < 4, widths
    ratio = result.report["compressed"]["flops"] / result.report["original"]["flops"]
    assert abs(ratio - 0.4) <= 0.004, ratio  # the folded heads' bmm FLOPs shrink with them, as modelled


class _WindowAttention(torch.nn.Module):
    """Swin's attention: a relative-position bias per head, read from a table through an index buffer
    (``table[index].view(N, N, -1).permute(2, 0, 1)``), and with ``shift`` the shifted windows' mask
    added by viewing the scores per window; the block's tokens are rolled first."""

    def __init__(self, shift: bool, lookup: str = "index") -> None:
        super().__init__()
        self.shift, self.lookup, self.embed = shift, lookup, torch.nn.Linear(12, 32)
        self.qkv, self.proj, self.head = (
            torch.nn.Linear(32, 96),
            torch.nn.Linear(32, 32),
            torch.nn.Linear(32, 5),
        )
        self.table = torch.nn.Parameter(torch.randn(9, 4))  # (2 * 2 - 1)^2 offsets of a 2 x 2 window
        ij = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(2), indexing="ij")).flatten(1)
        offsets = (ij[:, :, None] - ij[:, None, :]).permute(1, 2, 0) + 1
        self.register_buffer("index", offsets[..., 0] * 3 + offsets[..., 1])
        self.register_buffer("mask", torch.randn(4, 4, 4).clamp(max=0) * 100)  # (windows, N, N)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)  # (B, 16, 32): a 4 x 4 grid of tokens, four 2 x 2 windows
        b = h.shape[0]
        grid = h.view(b, 4, 4, 32).roll((1, 1), (1, 2)) if self.shift else h.view(b, 4, 4, 32)
        win = grid.view(b, 2, 2, 2, 2, 32).permute(0, 1, 3, 2, 4, 5).reshape(-1, 4, 32)
        q, k, v = self.qkv(win).reshape(-1, 4, 3, 4, 8).permute(2, 0, 3, 1, 4)
        if self.lookup == "index":
            bias = self.table[self.index.view(-1)].view(4, 4, -1).permute(2, 0, 1).contiguous()
        else:  # T5 looks its relative-position buckets up in an embedding
            bias = torch.nn.functional.embedding(self.index, self.table).permute(2, 0, 1)
        attn = (q * 8**-0.5) @ k.transpose(-2, -1) + bias.unsqueeze(0)
        if self.shift:
            attn = (attn.view(b, 4, 4, 4, 4) + self.mask.unsqueeze(1).unsqueeze(0)).view(-1, 4, 4, 4)
        out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, 16, 32)
        return self.head(h + self.proj(out)).mean(1)


@pytest.mark.parametrize("shift,lookup", [(False, "index"), (True, "index"), (False, "embedding")])
def test_swin_window_attention_slices_its_bias_table_with_the_heads(
    shift: bool, lookup: str, run_fresh
) -> None:
    torch.manual_seed(0)
    model, x = _WindowAttention(shift, lookup).eval(), torch.randn(64, 16, 12)
    result = _live_heads_kept(model, x, dead=(1, 2))
    state = result.program.state_dict
    assert state["table"].shape == (9, 2) and state["proj.weight"].shape == (32, 16)
    assert torch.equal(state["table"], model.table[:, [0, 3]])
    y, _info = run_fresh(result.program, x[:5])
    with torch.no_grad():
        assert _rel(y, model(x[:5])) < 1e-3  # the ridge, on 16 poorly conditioned columns


@pytest.mark.parametrize("form", ["grouped", "grouped_expand", "grouped_sdpa"])
def test_grouped_query_attention_prunes_whole_key_value_groups(form: str, run_fresh) -> None:
    """With ``g`` q heads per k/v head, a channel is a k/v head with its ``g`` q heads: a dead value head
    takes its q heads with it, exactly."""
    torch.manual_seed(0)
    model, x = _Variant(form).eval(), torch.randn(64, 6, 12)
    with torch.no_grad():
        model.v.weight[8:16] = 0  # value head 1, read by q heads 2 and 3
        model.v.bias[8:16] = 0
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    result = compress(program, x, CompressionConfig(widths={"q+2": 1}), measure_latency=False)
    layer = next(layer for layer in result.report["layers"] if layer["name"] == "q+2")
    assert layer["kept"] == [0] and layer["width_before"] == 2 and layer["head_dim"] == 16
    state = result.program.state_dict
    assert [tuple(state[f"{p}.weight"].shape) for p in "qkvo"] == [(16, 32), (8, 32), (8, 32), (32, 16)]
    y, _info = run_fresh(result.program, x[:5])
    with torch.no_grad():
        assert _rel(y, model(x[:5])) < 1e-5

"""Output-level re-fit: a consumer's new weight by least squares on its *output* in the original network.

The channel re-fit ``W' = W A_J`` rebuilds each dropped input channel from the kept ones at the same
position. A convolution reads a whole kh x kw patch, so its output is better predicted from the kept
channels' patches (a dropped channel is often visible in its neighbours):

    W' = argmin E||y - W' u'||^2 = E[y u'^T] (E[u' u'^T] + tau I)^-1

with ``u'`` the pruned network's input patches (im2col with the layer's stride, padding and dilation),
``y`` the original network's output without its bias. For a linear layer ``u'`` is its input row.

Where the output passes only a BatchNorm (per-channel ``gamma_eff``) before it is added to another branch
(``bn(conv(x)) + shortcut``), the target also takes up that branch's present error,
``y* = y + (s - s') / gamma_eff``, so that the sum, not this branch alone, matches the original network.

Where a ReLU or ReLU6 follows (``relu(bn(conv(x)) [+ shortcut])``), what the network sees is the clamped
pre-activation ``clamp(z, lo, hi)``, and a position the original clamps (``z <= lo``) needs only
``z' <= lo`` (likewise at ``hi``). ``rectified_steps`` majorisation steps minimise
``||clamp(z') - clamp(z)||^2`` instead of ``||z' - z||^2``: at the present fit ``z'_0``, the target
pre-activation becomes ``min(z'_0, lo)`` wherever ``z <= lo``, ``max(z'_0, hi)`` wherever ``z >= hi`` and
``z`` elsewhere, a quadratic upper bound that touches the loss at ``z'_0``. ``G`` is unchanged, so each
step costs one more pass that accumulates ``C``'s correction, and one solve.

Rows are a seeded sample of output positions, at most ``max_rows(F)``, which bounds the cost at rows x F^2.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from core import ops
from core.graph import Consumer, GraphAnalysis, axis_moves
from core.layout import kept_columns
from core.reconstruct import Kept
from core.selection import ridge_solve

MAX_FEATURES = 4608  # a 512-channel 3x3 convolution; wider inputs keep the channel re-fit
MAX_ROWS = 1 << 20  # sampled output positions per layer, at most
FLOP_BUDGET = 1e11  # rows x F^2 per layer, above which rows are sampled down ...
ROWS_PER_FEATURE = 32  # ... but never below 32 rows per feature; fewer in all keep the channel re-fit
CHUNK = 1 << 25  # elements of an unfolded patch matrix processed at once


@dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]


@dataclass(frozen=True)
class Addend:
    """The other input of the addition this layer's output flows into, and the per-channel factor
    (a BatchNorm's ``gamma / sqrt(var + eps)``, or 1) between the layer's output and that addition.
    ``undo``: how to bring the addition's values back to the layer's output, where ops that only move
    values lie in between (``nn.MultiheadAttention``'s ``out_proj`` is viewed and transposed first)."""

    node: str
    scale: torch.Tensor
    undo: tuple[tuple[Any, ...], ...] = ()

    def back(self, value: torch.Tensor, like: torch.Tensor, axis: int) -> torch.Tensor:
        """``value`` (at the addition) laid out as the layer's output ``like`` (any width on ``axis``)."""
        for step in self.undo:
            if step[0] == "permute":
                value = value.permute(*step[1])
            elif step[0] == "reshape":
                value = value.reshape([-1 if d == axis else n for d, n in enumerate(like.shape)])
        return value


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[-1])) if isinstance(v, list | tuple) else (int(v), int(v))


def _conv_geometry(node: fx.Node, kernel: tuple[int, int]) -> tuple[ConvGeometry, fx.Node | None] | None:
    """Stride, padding and dilation of a 2-D convolution node, and its bias argument."""
    args = list(node.args)
    if node.target is ops.aten.convolution.default:
        bias, stride, padding, dilation = args[2], args[3], args[4], args[5]
    elif node.target is ops.aten.conv2d.default and not node.kwargs:
        bias, stride, padding, dilation = (args + [None, 1, 0, 1, 1][len(args) - 2 :])[2:6]
    else:
        return None
    if isinstance(padding, str):
        return None
    geometry = ConvGeometry(kernel, _pair(stride), _pair(padding), _pair(dilation))
    return geometry, bias if isinstance(bias, fx.Node) else None


def _value(module: fx.GraphModule, arg: object) -> torch.Tensor | None:
    """The parameter or buffer a ``get_attr`` argument names, as float64 (None for anything else)."""
    if not isinstance(arg, fx.Node) or arg.op != "get_attr":
        return None
    value = (dict(module.named_parameters()) | dict(module.named_buffers())).get(str(arg.target))
    return None if value is None else value.detach().double()


@dataclass(frozen=True)
class Rectifier:
    """The input of the ReLU (ReLU6) the layer's output flows into (``z``, after any BatchNorm and
    addition), the per-channel factor ``gamma_eff`` between the layer's output and ``z``, and the
    clamp's bounds."""

    node: str
    scale: torch.Tensor
    low: float = 0.0
    high: float = math.inf


def _clamp_bounds(node: fx.Node) -> tuple[float, float] | None:
    """``(lo, hi)`` of a ReLU, ReLU6 (``hardtanh``, ``relu6``) or a clamp by constants: what it passes
    unchanged; None for anything else."""
    t, args = node.target, list(node.args[1:])
    if t in (ops.aten.relu.default, ops.aten.relu_.default):
        return 0.0, math.inf
    if t in (ops.aten.relu6.default, ops.aten.relu6_.default):
        return 0.0, 6.0
    if node.kwargs:
        return None
    if t in (ops.aten.hardtanh.default, ops.aten.hardtanh_.default):
        low, high = (args + [-1.0, 1.0][len(args) :])[:2]
    elif t is ops.aten.clamp.default:
        low, high = (args + [None, None][len(args) :])[:2]
    elif t is ops.aten.clamp_min.default:
        low, high = args[0], None
    else:
        return None
    low, high = (-math.inf if low is None else low), (math.inf if high is None else high)
    if isinstance(low, int | float) and isinstance(high, int | float) and low < high:
        return float(low), float(high)
    return None


def _through_batch_norm(
    node: fx.Node, module: fx.GraphModule, channels: int
) -> tuple[fx.Node, torch.Tensor] | None:
    """Where ``node``'s value goes past an inference BatchNorm it alone feeds, and the per-channel factor
    ``gamma_eff = gamma / sqrt(var + eps)`` in between (``node`` itself and 1 where there is none)."""
    users = list(node.users)
    if len(users) != 1 or users[0].target not in ops.BATCH_NORM:
        return node, torch.ones(channels, dtype=torch.float64)
    bn = users[0]
    gamma, var = _value(module, bn.args[1]), _value(module, bn.args[4])
    eps = bn.args[7] if bn.target is ops.aten.batch_norm.default else bn.args[6]
    if var is None or not isinstance(eps, float):
        return None
    scale = (1.0 if gamma is None else gamma) / torch.sqrt(var + eps)  # gamma_eff = gamma / sqrt(var + eps)
    if bn.target is ops.aten.batch_norm.default:
        return bn, scale
    out = list(bn.users)  # (out, mean, invstd): follow getitem 0
    if len(out) != 1 or out[0].target is not operator.getitem or out[0].args[1] != 0:
        return None
    return out[0], scale


def _sole_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _safe(scale: torch.Tensor) -> torch.Tensor:
    """``scale`` with (near-)zero factors as infinity: dividing by it then zeroes those channels."""
    return torch.where(scale.abs() < 1e-8, torch.inf, scale)


def _addend(
    node: fx.Node, module: fx.GraphModule, shapes: dict[str, tuple[int, ...]], axis: int, channels: int
) -> Addend | None:
    """``node -> [BatchNorm] -> [moves] -> add(., other)``: the other addend, the factor in between, and
    how to undo the moves (``_through_moves``)."""
    found = _through_batch_norm(node, module, channels)
    if found is None:
        return None
    at, scale = found
    at, undo = _through_moves(at, shapes)
    add = _sole_user(at)
    if add is None or add.target is not ops.aten.add.Tensor or len(add.args) != 2 or add.kwargs:
        return None
    other = add.args[1] if add.args[0] is at else add.args[0]
    if not isinstance(other, fx.Node) or shapes.get(other.name) != shapes.get(at.name):
        return None
    if axis != 1 and scale.numel() and not torch.all(scale == 1):
        return None
    return Addend(other.name, _safe(scale), undo)


def _through_moves(node: fx.Node, shapes: dict[str, tuple[int, ...]]) -> tuple[fx.Node, tuple]:
    """Past the ops that only move ``node``'s values and that it alone feeds (a view first, then
    transposes, permutes, copies, inference dropout): where they end, and the steps that undo them, last
    first (a permute's inverse; the view's: a reshape back to the layer's output)."""
    at, undo = node, list[tuple[Any, ...]]()
    while (user := _sole_user(at)) is not None:
        t, args = user.target, tuple[Any, ...](user.args)
        if t in ops.RESHAPE and at is node:
            undo.append(("reshape",))
        elif t in ops.PERMUTE or t in ops.TRANSPOSE:
            where = axis_moves(user, len(shapes.get(user.name, ())))
            undo.append(("permute", [where.index(d) for d in range(len(where))]))
        elif not (t in ops.COPIES or (t is ops.aten.dropout.default and args[2] is False)):
            break
        at = user
    return at, tuple(reversed(undo))


def _rectifier(
    node: fx.Node, module: fx.GraphModule, shapes: dict[str, tuple[int, ...]], axis: int, channels: int
) -> Rectifier | None:
    """``node -> [BatchNorm] -> [add(., other)] -> relu | hardtanh``: the clamp's input and bounds, and the
    factor before it."""
    found = _through_batch_norm(node, module, channels)
    if found is None:
        return None
    at, scale = found
    user = _sole_user(at)
    if user is not None and user.target is ops.aten.add.Tensor and len(user.args) == 2 and not user.kwargs:
        other = user.args[1] if user.args[0] is at else user.args[0]
        if (
            isinstance(other, fx.Node)
            and other.op != "get_attr"
            and shapes.get(other.name) != shapes.get(node.name)
        ):
            return None  # a broadcast addend's error is not in the target (``_addend``): z'_0 unknown
        at, user = user, _sole_user(user)
    bounds = None if user is None else _clamp_bounds(user)
    if bounds is None or shapes.get(at.name) != shapes.get(node.name):
        return None
    if axis != 1 and scale.numel() and not torch.all(scale == 1):
        return None
    return Rectifier(at.name, _safe(scale), *bounds)


def max_rows(features: int) -> int:
    """Sampled rows for ``features`` predictors: the FLOP budget, within [32 F, MAX_ROWS]."""
    return int(min(MAX_ROWS, max(FLOP_BUDGET / features**2, ROWS_PER_FEATURE * features)))


def chunk(x: torch.Tensor, geometry: ConvGeometry | None) -> int:
    """Samples per chunk, so that an unfolded chunk of ``x`` holds at most ``CHUNK`` elements."""
    if geometry is None:
        return max(len(x), 1)
    per_sample = x[:1].numel() * geometry.kernel[0] * geometry.kernel[1]  # >= F x L for stride >= 1
    return max(1, CHUNK // max(per_sample, 1))


def _im2col(x: torch.Tensor, g: ConvGeometry) -> torch.Tensor:
    """(n L, F) patches of ``x`` as rows, F ordered (channel, kh, kw) as the weight: one strided view of
    the padded input and one copy (``unfold`` then a transpose would copy twice)."""
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = g.padding, g.stride, g.dilation, g.kernel
    xp = F.pad(x, (pw, pw, ph, ph))
    n, c, h, w = xp.shape
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    at_n, at_c, at_h, at_w = xp.stride()
    view = xp.as_strided((n, ho, wo, c, kh, kw), (at_n, at_h * sh, at_w * sw, at_c, at_h * dh, at_w * dw))
    return view.reshape(-1, c * kh * kw)


def patches(x: torch.Tensor, geometry: ConvGeometry | None, step: int) -> Iterator[torch.Tensor]:
    """The layer's input as (rows, F) float64 predictors, ``step`` samples at a time: im2col patches for
    a convolution, the input rows for a linear layer."""
    for i in range(0, x.shape[0], step):
        part = x[i : i + step].double()
        yield part.reshape(-1, x.shape[-1]) if geometry is None else _im2col(part, geometry)


def targets(y: torch.Tensor, geometry: ConvGeometry | None, step: int) -> Iterator[torch.Tensor]:
    """The layer's output as (rows, out), in the same chunks and row order as ``patches``."""
    for i in range(0, y.shape[0], step):
        part = y[i : i + step]
        yield (
            part.reshape(-1, y.shape[-1])
            if geometry is None
            else part.flatten(2).transpose(1, 2).reshape(-1, y.shape[1])
        )


@dataclass
class OutputFit:
    """Accumulates ``G = sum u' u'^T`` and ``C = sum u' y*^T`` for one layer, then solves for ``W'``;
    with a ``rectifier``, majorisation steps add ``C``'s correction ``D`` (module docstring)."""

    consumer: Consumer
    inputs: int  # the narrowed layer's input channels (features, for a linear layer)
    rows: torch.Tensor  # the narrowed layer's output channels, indices into the original output
    geometry: ConvGeometry | None  # None: a linear layer
    bias: torch.Tensor | None  # the original bias, over ``rows``
    addend: Addend | None
    rectifier: Rectifier | None
    keep_fraction: float
    ridge: float
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))
    gram: torch.Tensor | None = None
    cross: torch.Tensor | None = None
    correction: torch.Tensor | None = None  # D = sum u' (y' - y*)^T, from the last majorisation pass
    present: torch.Tensor | None = None  # the fit the running majorisation pass starts from, (F, out)

    @property
    def features(self) -> int:
        k = self.geometry.kernel if self.geometry else (1, 1)
        return self.inputs * k[0] * k[1]

    def nodes(self) -> tuple[set[str], set[str]]:
        """Nodes to capture in the original network (the layer's output, the addend, the ReLU's input)
        and in the pruned one (the layer's input, the addend)."""
        addend = {self.addend.node} if self.addend is not None else set()
        relu = {self.rectifier.node} if self.rectifier is not None else set()
        return {self.consumer.node} | addend | relu, {self.consumer.observed} | addend

    def _axis(self, x: torch.Tensor) -> int:
        return 1 if self.geometry else x.dim() - 1

    def _target(self, pruned: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> torch.Tensor:
        """``y*``: the original output without its bias, plus the addend's gap where there is one."""
        axis = self._axis(pruned[self.consumer.observed])
        rows = self.rows.to(original[self.consumer.node].device)
        y = original[self.consumer.node].index_select(axis, rows).double()
        if self.bias is not None:
            y = y - self.bias.to(y.device).reshape([-1] + [1] * (y.dim() - 1 - axis))
        if self.addend is not None:  # y* = y + (s - s') / gamma_eff
            like = original[self.consumer.node]
            s = self.addend.back(original[self.addend.node], like, axis).index_select(axis, rows).double()
            s_pruned = self.addend.back(pruned[self.addend.node], like, axis).double()
            scale = self.addend.scale[self.rows].to(y.device)
            gap = (s - s_pruned).movedim(axis, -1) / scale
            y = y + torch.nan_to_num(gap, posinf=0.0, neginf=0.0).movedim(-1, axis)
        return y

    def _pairs(
        self, pruned: dict[str, torch.Tensor], original: dict[str, torch.Tensor], *extra: torch.Tensor
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Sampled rows ``(u', y*, *extra)`` of one batch, the same rows on every pass over the data."""
        x = pruned[self.consumer.observed]
        step = chunk(x, self.geometry)
        streams = [targets(t, self.geometry, step) for t in (self._target(pruned, original), *extra)]
        for u, *ts in zip(patches(x, self.geometry, step), *streams, strict=True):
            if self.keep_fraction < 1.0:
                keep = (torch.rand(u.shape[0], generator=self.generator) < self.keep_fraction).to(u.device)
                u, ts = u[keep], [t[keep] for t in ts]
            yield u, *ts

    def add(self, pruned: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> None:
        for u, t in self._pairs(pruned, original):
            gram, cross = u.T @ u, u.T @ t  # sum u'u'^T, sum u' y*^T
            self.gram = gram if self.gram is None else self.gram + gram
            self.cross = cross if self.cross is None else self.cross + cross

    def begin_step(self) -> None:
        """Start a majorisation pass from the present fit."""
        self.present = self._solve()
        self.correction = torch.zeros_like(self.present)
        self.generator.manual_seed(0)

    def majorise(self, pruned: dict[str, torch.Tensor], original: dict[str, torch.Tensor]) -> None:
        """Accumulate ``D`` over one batch: where the original's clamp input ``z <= lo`` the target
        pre-activation is ``min(z'_0, lo)`` instead of ``z`` (``max(z'_0, hi)`` where ``z >= hi``), i.e.
        ``y*`` moves by ``(target - z) / gamma_eff``, with ``z'_0 = z + gamma_eff (u' W_0^T - y*)`` the
        present fit's pre-activation."""
        r = self.rectifier
        assert r is not None and self.present is not None and self.correction is not None
        axis = self._axis(pruned[self.consumer.observed])
        rows = self.rows.to(self.present.device)
        z = original[r.node].index_select(axis, rows).double()
        scale = r.scale[self.rows].to(z.device)
        for u, t, zt in self._pairs(pruned, original, z):
            fit = zt + scale * (u @ self.present - t)  # z'_0 = z + gamma_eff (u' W_0^T - y*)
            target = torch.where(
                zt <= r.low, fit.clamp(max=r.low), torch.where(zt >= r.high, fit.clamp(min=r.high), zt)
            )
            moved = torch.nan_to_num((target - zt) / scale, nan=0.0, posinf=0.0, neginf=0.0)
            self.correction += u.T @ moved  # D = sum u' (y' - y*)^T

    def _solve(self) -> torch.Tensor:
        """``(G + tau I)^-1 (C + D)`` with ``tau = ridge tr(G) / F``: ``W'^T``, (F, out)."""
        assert self.gram is not None and self.cross is not None, "no calibration data reached the layer"
        tau = self.ridge * float(torch.trace(self.gram)) / self.gram.shape[0]
        rhs = self.cross if self.correction is None else self.cross + self.correction
        return ridge_solve(self.gram, rhs, tau)

    def weight(self) -> torch.Tensor:
        """``W'``, shaped as the layer's weight."""
        w = self._solve().T  # (out, F)
        if self.geometry is None:
            return w
        return w.reshape(w.shape[0], self.inputs, *self.geometry.kernel)


@dataclass(frozen=True)
class _Layer:
    node: fx.Node
    geometry: ConvGeometry | None  # None: a linear layer
    bias: fx.Node | None

    @property
    def positions(self) -> int:
        return self.geometry.kernel[0] * self.geometry.kernel[1] if self.geometry else 1


def _layer(gm: fx.GraphModule, c: Consumer) -> _Layer | None:
    """Consumer ``c`` as a layer an output-level fit handles: a 2-D (ungrouped, not transposed)
    convolution or a linear layer."""
    if c.groups > 1 or c.kind == "conv_transpose":
        return None
    node = next(n for n in gm.graph.nodes if n.name == c.node)
    if c.kind == "linear":
        bias = node.args[2] if len(node.args) > 2 else None
        return _Layer(node, None, bias if isinstance(bias, fx.Node) else None)
    weight = gm.get_parameter(c.weight)
    found = _conv_geometry(node, (weight.shape[2], weight.shape[3])) if weight.dim() == 4 else None
    return None if found is None else _Layer(node, *found)


def plan(
    work: fx.GraphModule,
    original: fx.GraphModule,
    analysis: GraphAnalysis,
    c: Consumer,
    kept: Kept,
    ridge: float,
    samples: int,
    rectified: bool = True,
) -> OutputFit | None:
    """An output-level fit for consumer ``c`` of the narrowed network ``work`` (every space in ``kept``
    narrowed) in the sequential re-fit, or None where the channel re-fit must do: see ``_layer``; more
    than ``MAX_FEATURES`` predictors; fewer than ``ROWS_PER_FEATURE`` output positions per predictor in
    the calibration set. ``rectified``: look for a ReLU after the layer (``OutputFit.rectifier``)."""
    layer = _layer(work, c)
    inputs = c.layout.columns_for({s: len(j) for s, j in kept.items()})
    out = original.get_parameter(c.weight).shape[0]
    shape = analysis.shapes[c.node]
    # output positions over the calibration set (the probe's batch is not always axis 0: seq-first MHA)
    positions = samples * math.prod(shape) // (analysis.batch * out)
    features = inputs * (layer.positions if layer else 1)
    if layer is None or features > MAX_FEATURES or positions < ROWS_PER_FEATURE * features:
        return None
    compute = next(cn for cn in analysis.compute if cn.node == c.node)
    rows = kept_columns(compute.outputs, kept, out)
    axis = 1 if layer.geometry else len(shape) - 1
    return OutputFit(
        c,
        inputs,
        rows,
        layer.geometry,
        None if (b := _value(original, layer.bias)) is None else b[rows],
        _addend(layer.node, original, analysis.shapes, axis, out),
        _rectifier(layer.node, original, analysis.shapes, axis, out) if rectified else None,
        min(1.0, max_rows(features) / max(positions, 1)),
        ridge,
    )

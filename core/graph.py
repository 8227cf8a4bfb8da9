"""Graph analysis: which channels of an exported (ATen) graph can be removed together, and what else
must change with them.

Every conv or linear layer whose weight is a parameter opens a *space* (its output channels). The
tracer walks the graph in order and follows each space through the ops in ``core.ops``: channel-wise
ops pass it on, parameterised ones (BatchNorm, depthwise conv, layer scales) are sliced with it,
concats lay spaces side by side, flattens give each channel a block of columns, additive joins couple
spaces (residual streams), and conv/linear layers consume it (their input weights are re-fitted). A
grouped convolution splits the space it reads and the one it opens into equal runs (``blocks``). A
split along the channel axis hands each part the spaces between its bounds; where a bound falls inside a
layer's space, the walk runs again with that layer opening one space per part. A view of a token's
features as attention heads does the same with heads: the next walk opens spaces whose channels are
heads of ``D`` rows (``Producer.unit``), which batched products couple (q, k and v keep the same heads;
under grouped-query attention a channel is a run of ``g`` q heads, ``g D`` rows, with its k/v head).
A fused q/k/v is ``Stacked`` until it is taken apart; heads folded into the batch axis
(``nn.MultiheadAttention``'s ``(N, B * H, D)``) are ``Folded`` until a view unfolds them. Literal sizes
that count channels or heads are patched (``ShapePatch``); per-head constants are sliced with the heads.
A space that reaches any op the tracer cannot prove safe is *poisoned*: left unpruned, with the reason.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from core import ops
from core.layout import FIXED, Folded, Layout, Segment, Stacked


@dataclass(frozen=True)
class ParamAxis:
    """Axis ``axis`` of parameter/buffer ``target`` carries the channels of ``layout``.

    ``refit`` marks a consumer's input axis, re-fitted (``W' = W A_J``) rather than sliced. ``groups``:
    a grouped convolution's input axis, where each of ``groups`` row blocks reads its own run of channels.
    """

    target: str
    axis: int
    layout: Layout
    refit: bool = False
    groups: int = 1


@dataclass(frozen=True)
class Consumer:
    """A conv/linear layer reading the channels of ``layout`` on its weight's input axis (1; 0 for a
    transposed convolution, ``kind`` "conv_transpose").

    ``observed`` is the node whose output is the layer's input: the statistics are gathered there.
    ``groups`` > 1: a grouped convolution, whose output channels read only their own run of inputs.
    """

    node: str
    weight: str
    layout: Layout
    observed: str
    kind: str  # "conv" | "conv_transpose" | "linear"
    groups: int = 1


@dataclass(frozen=True)
class ComputeNode:
    """A conv/linear layer (``kind`` "layer") with its per-sample FLOPs, which scale with its input and
    output widths; or attention's matrix products (``kind`` "attention", ``inputs`` the heads)."""

    node: str
    weight: str
    flops: float
    inputs: Layout | None  # layout of the weight's input axis (None: fixed)
    outputs: Layout | None  # layout of the weight's output axis (None: fixed)
    kind: str = "layer"


@dataclass(frozen=True)
class ShapePatch:
    """A literal size that must follow the widths of ``layout``: ``args[arg][item]`` of ``node``
    (``item`` None for a scalar argument), e.g. a view's size or a depthwise conv's group count; times
    ``factor`` where the literal also counts something else (a batch folded with the heads)."""

    node: str
    arg: int
    item: int | None
    layout: Layout
    factor: int = 1


@dataclass
class Producer:
    """A space: ``size`` output channels of a layer, from row ``offset`` on (a layer whose output is split
    along its channels, ``torch.chunk``, opens a space per part; else one space of all of them). A
    channel is ``unit`` rows: one, or an attention head's dimension where the output is read as heads."""

    node: str
    weight: str
    size: int
    position: int  # topological index, to process from the output side inward
    axis: int = 0  # the weight's output-channel axis (1 for a transposed convolution)
    offset: int = 0
    part: bool = False
    unit: int = 1  # weight rows per channel: an attention head's dimension where heads are pruned

    @property
    def rows(self) -> int:
        return self.size * self.unit

    @property
    def name(self) -> str:
        layer = self.weight.removesuffix(".weight").removesuffix("_weight")  # MHA's in_proj_weight
        return f"{layer}[{self.offset}:{self.offset + self.rows}]" if self.part else layer


@dataclass
class ChannelGroup:
    """Spaces that must keep the same channel indices (one, or several coupled by additive joins).

    ``blocks`` > 1: a grouped convolution reads or writes them in that many equal runs of consecutive
    channels, so every run keeps the same number (widths are multiples of ``blocks``).
    """

    name: str
    spaces: list[int]
    size: int
    position: int
    consumers: list[Consumer]
    skipped: str | None = None
    coupling: str | None = None
    blocks: int = 1


@dataclass
class GraphAnalysis:
    producers: dict[int, Producer]
    param_axes: list[ParamAxis]
    consumers: list[Consumer]
    compute: list[ComputeNode]
    patches: list[ShapePatch]
    groups: list[ChannelGroup]
    shapes: dict[str, tuple[int, ...]]
    space_group: dict[int, int] = field(default_factory=dict)  # space -> index into groups
    batch: int = 1  # samples in the example ``shapes`` come from (not always their axis 0: seq-first MHA)

    def group(self, name: str) -> ChannelGroup:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.skipped is None]

    def rewritten_by(self, g: ChannelGroup) -> tuple[set[str], set[str]]:
        """What narrowing ``g`` rewrites: the parameters and buffers, and the nodes whose literal sizes
        follow its width."""
        spaces = set(g.spaces)
        params = {pa.target for pa in self.param_axes if pa.layout.spaces & spaces}
        return params, {p.node for p in self.patches if p.layout.spaces & spaces}


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _args(node: fx.Node) -> tuple[Any, ...]:
    """A node's positional arguments, untyped (fx types them as a union of every argument kind)."""
    return tuple(node.args)


def _regroup(src: Sequence[int], dst: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of dims of ``src`` and ``dst`` with equal products (how a reshape moves data)."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) and j < len(dst):
        gi, gj, pi, pj = [i], [j], src[i], dst[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < len(src):
                gi.append(i)
                pi *= src[i]
                i += 1
            elif pj < pi and j < len(dst):
                gj.append(j)
                pj *= dst[j]
                j += 1
            else:
                return []
        groups.append((gi, gj))
    if groups:  # trailing size-1 dims join the last group
        groups[-1][0].extend(range(i, len(src)))
        groups[-1][1].extend(range(j, len(dst)))
    elif src or dst:
        return []
    return groups


def _unstacked(stacked: Stacked, dim: int, index: int) -> Layout | None:
    """The layout of ``stacked``'s part ``index`` once its axis ``dim`` is selected away (None if ``dim``
    is not the stacking axis)."""
    if dim != stacked.axis:
        return None
    part = stacked.parts[index]
    return part.moved(part.axis - (dim < part.axis))


def _unit_axes(src: Sequence[int], dst: Sequence[int]) -> dict[int, int] | None:
    """Where each axis of ``src`` longer than one lands in ``dst``, for a reshape that only adds or removes
    axes of one (``unsqueeze``, ``squeeze``); None for any other reshape."""
    old, new = [d for d, n in enumerate(src) if n != 1], [d for d, n in enumerate(dst) if n != 1]
    if [src[d] for d in old] != [dst[d] for d in new]:
        return None
    return dict(zip(old, new, strict=True))


def axis_moves(node: fx.Node, rank: int) -> list[int]:
    """Where a permute or transpose of a rank-``rank`` tensor puts each axis: old axis -> new position."""
    if node.target is ops.aten.permute.default:
        dims = [int(d) % rank for d in _args(node)[1]]
        return [dims.index(axis) for axis in range(rank)]
    t = node.target is ops.aten.t.default
    d0, d1 = (0, 1) if t else (int(_args(node)[1]) % rank, int(_args(node)[2]) % rank)
    where = list(range(rank))
    where[d0], where[d1] = d1, d0
    return where


# what a stacked q/k/v may meet on its way to be taken apart (ONNX writes unbind as split + squeeze)
STACKED_OPS = (
    ops.SLICE
    | ops.PERMUTE
    | ops.TRANSPOSE
    | ops.SELECT
    | ops.UNBIND
    | ops.SPLIT
    | ops.SQUEEZE
    | ops.UNSQUEEZE
    | ops.COPIES
) | ops.RESHAPE


class _Tracer:
    """Walks the graph once, propagating layouts; see the module docstring."""

    def __init__(
        self,
        gm: fx.GraphModule,
        shapes: dict[str, tuple[int, ...]],
        batch: int,
        cuts: dict[str, set[int]] | None = None,
        units: dict[str, int] | None = None,
    ) -> None:
        self.gm = gm
        self.shapes = shapes
        self.batch = batch  # samples in the example the shapes come from
        self.cuts = cuts or {}  # layer node -> output channels where a split of its output cuts it
        self.new_cuts: dict[str, set[int]] = {}
        self.units = units or {}  # layer node -> head dimension, where its output is read as heads
        self.new_units: dict[str, int] = {}
        self.layouts: dict[fx.Node, Any] = {}
        self.uf = _UnionFind()
        self.poison: dict[int, str] = {}
        self.blocks: dict[int, int] = {}  # space -> runs a grouped convolution splits it into
        self.additive: set[int] = set()
        self.producers: dict[int, Producer] = {}
        self.param_axes: dict[tuple[str, int], ParamAxis] = {}
        self.consumers: list[Consumer] = []
        self.compute: list[ComputeNode] = []
        self.patches: list[ShapePatch] = []
        self.weight_uses = self._count_weight_uses()

    # -- helpers -------------------------------------------------------------------------------
    def _count_weight_uses(self) -> dict[str, int]:
        uses: dict[str, int] = {}
        for node in self.gm.graph.nodes:
            if node.op == "get_attr":
                uses[node.target] = uses.get(node.target, 0) + len(node.users)
        return uses

    def _poison(self, layout: Any, reason: str) -> None:
        if isinstance(layout, Layout):
            for s in layout.spaces:
                self.poison.setdefault(s, reason)
        elif isinstance(layout, dict):
            for v in layout.values():
                self._poison(v, reason)
        elif isinstance(layout, Stacked):
            for part in layout.parts:
                self._poison(part, reason)
        elif isinstance(layout, Folded):
            self._poison(layout.heads, reason)

    def _layout(self, value: Any) -> Layout | None:
        out = self.layouts.get(value) if isinstance(value, fx.Node) else None
        return out if isinstance(out, Layout) else None

    def _shape(self, node: fx.Node) -> tuple[int, ...]:
        return self.shapes.get(node.name, ())

    def _param(self, node: Any) -> str | None:
        """The FQN when ``node`` reads a parameter/buffer (a get_attr), else None."""
        if isinstance(node, fx.Node) and node.op == "get_attr":
            return str(node.target)
        return None

    def _own_parameters(self, *tensors: Any) -> bool:
        """Whether each of a layer's weight and bias is absent or a parameter only it reads (a bias cut
        from a shared one, as ``nn.MultiheadAttention`` does with separate key/value sizes, is not)."""
        return all(
            t is None or ((name := self._param(t)) is not None and self.weight_uses.get(name, 0) <= 1)
            for t in tensors
        )

    def _slice_param(
        self, node: Any, axis: int, layout: Layout, refit: bool = False, groups: int = 1
    ) -> None:
        target = self._param(node)
        if target is None:
            return
        key = (target, axis)
        entry = ParamAxis(target, axis, layout.moved(axis), refit, groups)
        old = self.param_axes.get(key)
        if old is not None and old != entry:
            self._poison(layout, f"parameter {target} is shared by differently laid-out channels")
            self._poison(old.layout, f"parameter {target} is shared by differently laid-out channels")
            return
        self.param_axes[key] = entry

    def _new_space(self, node: fx.Node, weight: str, size: int, position: int, axis: int = 0) -> Layout:
        """The layer's output channels: one space, or one per part where its output is split; where the
        output is read as attention heads, each head (``unit`` rows) is one channel of the space."""
        bounds = [0, *sorted(c for c in self.cuts.get(node.name, ()) if 0 < c < size), size]
        unit = self.units.get(node.name, 1)
        if any((end - start) % unit for start, end in itertools.pairwise(bounds)):
            unit = 1
        segments = []
        for start, end in itertools.pairwise(bounds):
            space = len(self.producers)
            self.producers[space] = Producer(
                node.name, weight, (end - start) // unit, position, axis, start, len(bounds) > 2, unit
            )
            self.uf.find(space)
            segments.append(Segment(space, (end - start) // unit, unit))
        return Layout(axis=-1, segments=tuple(segments))

    def _split(self, layout: Layout, runs: int) -> None:
        """Each space of ``layout`` is read or written in ``runs`` equal runs (a grouped convolution)."""
        for s in layout.spaces:
            self.blocks[s] = math.lcm(self.blocks.get(s, 1), runs)

    def _stop(self, node: fx.Node, why: str) -> None:
        for arg in node.all_input_nodes:
            self._poison(self.layouts.get(arg), why)
        self.layouts[node] = None

    # -- the walk ------------------------------------------------------------------------------
    def run(self) -> None:
        for position, node in enumerate(self.gm.graph.nodes):
            if node.op in ("placeholder", "get_attr"):
                self.layouts[node] = None
            elif node.op == "output":
                self._stop(node, "its channels are part of the model's output")
            elif node.op == "call_module":
                # the unlifted module's input guard only reads shapes
                self.layouts[node] = None
            elif node.op == "call_function":
                stacked = any(isinstance(self.layouts.get(x), Stacked) for x in node.all_input_nodes)
                if stacked and node.target not in STACKED_OPS:
                    self._stop(
                        node, "stacked heads (a fused q/k/v) meet an op other than a permute or unbind"
                    )
                    continue
                folded = any(isinstance(self.layouts.get(x), Folded) for x in node.all_input_nodes)
                try:
                    self._folded(node) if folded else self._visit(node, position)
                except Exception as exc:  # an op with arguments the tracer did not expect: stay safe
                    self._stop(node, f"the analysis could not follow {node.target} ({type(exc).__name__})")
            else:
                self._stop(node, f"it flows into an unsupported node ({node.op})")

    def _visit(self, node: fx.Node, position: int) -> None:
        t = node.target
        if t in ops.CONV or t in ops.CONV_TRANSPOSE:
            self._conv(node, position)
        elif t in ops.LINEAR:
            self._linear(node, position)
        elif t in ops.MATMUL:
            self._matmul(node)
        elif t in ops.ATTENTION:
            self._attention(node)
        elif t in ops.BATCH_NORM:
            self._batch_norm(node)
        elif t in ops.INSTANCE_NORM:
            self._per_channel(node, _args(node)[1:5], "instance norm")
        elif t in ops.PRELU:
            weight = _args(node)[1]
            per_channel = math.prod(self._shape(weight)) > 1
            self._per_channel(node, [weight] if per_channel else [], "PReLU")
        elif t in ops.ELEMENTWISE:
            self._elementwise(node)
        elif t in ops.SPATIAL or t in ops.SPATIAL_TUPLE:
            self._spatial(node)
        elif t in ops.PAD:
            self._pad(node)
        elif t in ops.ROLL:
            self._roll(node)
        elif t in ops.BINARY:
            self._binary(node)
        elif t in ops.CAT:
            self._cat(node)
        elif (
            t in ops.RESHAPE
            or t in ops.FLATTEN
            or t in ops.UNFLATTEN
            or t in ops.SQUEEZE
            or t in ops.UNSQUEEZE
        ):
            self._reshape(node)
        elif t in ops.PERMUTE or t in ops.TRANSPOSE:
            self._permute(node)
        elif t in ops.REDUCE:
            self._reduce(node)
        elif t in ops.EXPAND:
            self._expand(node)
        elif t in ops.REPEAT_INTERLEAVE:
            self._repeat_interleave(node)
        elif t in ops.WHERE:
            self._batched(node, [x for x in _args(node)[:3] if isinstance(x, fx.Node)], product=False)
        elif t in ops.SOFTMAX:
            self._softmax(node)
        elif t in ops.SLICE:
            self._slice(node)
        elif t in ops.SELECT:
            self._select(node)
        elif t in ops.UNBIND:
            self._unbind(node)
        elif t in ops.SPLIT:
            self._split_channels(node)
        elif t in ops.LAYER_NORM:
            self._layer_norm(node)
        elif t in ops.GROUP_NORM:
            self._stop(
                node, "GroupNorm normalises channels in fixed groups, so removing any changes the groups"
            )
        elif t in ops.SHAPE_ONLY:
            self.layouts[node] = None
        elif t is ops.GETITEM:
            src = self.layouts.get(_args(node)[0])
            self.layouts[node] = src.get(_args(node)[1]) if isinstance(src, dict) else None
        else:
            self._stop(
                node, f"it flows into {getattr(t, '__name__', t)}, which the analysis cannot prove safe"
            )

    def _conv(self, node: fx.Node, position: int) -> None:
        args = _args(node)
        x, w, b = args[0], args[1], args[2] if len(args) > 2 else node.kwargs.get("bias")
        if node.target is ops.aten.convolution.default:
            transposed, groups = bool(args[6]), int(args[8])
        else:  # convNd and conv_transposeNd both take groups at position 6
            groups_arg: Any = args[6] if len(args) > 6 else node.kwargs.get("groups", 1)
            transposed, groups = node.target in ops.CONV_TRANSPOSE, int(groups_arg)
        weight = self._param(w)
        li = self._layout(x)
        if weight is None or not self._own_parameters(w, b):
            return self._stop(node, "its weight or bias is not a parameter of its own")
        if transposed:
            return self._conv_transpose(node, position, weight, groups)
        wshape = self._shape(w)
        out_ch, in_per_group = wshape[0], wshape[1]
        flops = 2.0 * math.prod(wshape) * math.prod(self._shape(node)[2:])
        depthwise = groups > 1 and in_per_group == 1 and out_ch == groups
        if depthwise and li is not None:
            if li.axis != 1 or li.blocked:
                return self._stop(node, "depthwise convolution over a non-channel axis")
            self._slice_param(w, 0, li)
            self._slice_param(b, 0, li)
            group_arg = 8 if node.target is ops.aten.convolution.default else 6
            self.patches.append(ShapePatch(node.name, group_arg, None, li))
            self.layouts[node] = li
            self.compute.append(ComputeNode(node.name, weight, flops, None, li.moved(0)))
            return None
        if depthwise and li is None:  # its channels follow an input no group owns
            self.layouts[node] = None
            self.compute.append(ComputeNode(node.name, weight, flops, None, None))
            return None
        inputs = None
        if li is not None:
            if li.axis != 1 or li.blocked:
                self._poison(li, "convolution over a non-channel axis")
            elif groups > 1 and len(li.segments) > 1:
                self._poison(li, f"grouped convolution (groups={groups}) over channels of several layers")
            else:
                inputs = li.moved(1)
                self.consumers.append(Consumer(node.name, weight, inputs, x.name, "conv", groups))
                self._slice_param(w, 1, inputs, refit=True, groups=groups)
                self._split(li, groups)
        out = self._new_space(node, weight, out_ch, position).moved(1)
        self._split(out, groups)
        self._slice_param(w, 0, out)
        self._slice_param(b, 0, out)
        self.compute.append(ComputeNode(node.name, weight, flops, inputs, out.moved(0)))
        self.layouts[node] = out
        return None

    def _conv_transpose(self, node: fx.Node, position: int, weight: str, groups: int) -> None:
        """A transposed convolution: its weight is (in, out, *kernel), and every input position spreads a
        whole kernel, so it reads its input channels on weight axis 0 and writes a space on axis 1."""
        x, w = _args(node)[0], _args(node)[1]
        b = _args(node)[2] if len(_args(node)) > 2 else node.kwargs.get("bias")
        if groups > 1:
            return self._stop(node, f"grouped transposed convolution (groups={groups})")
        wshape = self._shape(w)
        flops = 2.0 * math.prod(wshape) * math.prod(self._shape(x)[2:])  # per input position, a kernel
        li = self._layout(x)
        inputs = None
        if li is not None:
            if li.axis != 1 or li.blocked:
                self._poison(li, "convolution over a non-channel axis")
            else:
                inputs = li.moved(0)
                self.consumers.append(Consumer(node.name, weight, inputs, x.name, "conv_transpose"))
                self._slice_param(w, 0, inputs, refit=True)
        out = self._new_space(node, weight, wshape[1], position, axis=1).moved(1)
        self._slice_param(w, 1, out)
        self._slice_param(b, 0, out)
        self.compute.append(ComputeNode(node.name, weight, flops, inputs, out))
        self.layouts[node] = out
        return None

    def _linear(self, node: fx.Node, position: int) -> None:
        x, w = _args(node)[0], _args(node)[1]
        b = _args(node)[2] if len(_args(node)) > 2 else node.kwargs.get("bias")
        weight = self._param(w)
        if weight is None or not self._own_parameters(w, b):
            return self._stop(node, "its weight or bias is not a parameter of its own")
        li = self._layout(x)
        xshape = self._shape(x)
        wshape = self._shape(w)
        rows = math.prod(xshape[:-1]) / self.batch  # per sample, wherever the batch is (seq-first MHA)
        flops = 2.0 * math.prod(wshape) * rows
        inputs = None
        if li is not None:
            if li.axis != len(xshape) - 1:
                self._poison(li, "linear layer over a non-channel axis")
            else:
                inputs = li.moved(1)
                self.consumers.append(Consumer(node.name, weight, inputs, x.name, "linear"))
                self._slice_param(w, 1, inputs, refit=True)
        out = self._new_space(node, weight, wshape[0], position).moved(len(self._shape(node)) - 1)
        self._slice_param(w, 0, out)
        self._slice_param(b, 0, out)
        self.compute.append(ComputeNode(node.name, weight, flops, inputs, out.moved(0)))
        self.layouts[node] = out
        return None

    def _batch_norm(self, node: fx.Node) -> None:
        li = self._layout(_args(node)[0])
        training = node.target is ops.aten.batch_norm.default and bool(_args(node)[5])
        if li is None:
            self.layouts[node] = None
        elif training or li.axis != 1:
            return self._stop(node, "batch norm in training mode" if training else "batch norm off axis 1")
        else:
            for p in _args(node)[1:5]:
                self._slice_param(p, 0, li)
            self.layouts[node] = li
        if node.target is not ops.aten.batch_norm.default:  # returns (out, mean, invstd)
            self.layouts[node] = {0: self.layouts[node]}
        return None

    def _per_channel(self, node: fx.Node, params: Sequence[Any], what: str) -> None:
        """An op that treats each channel on its own, with per-channel ``params`` (sliced with it)."""
        li = self._layout(_args(node)[0])
        if li is not None and params:
            if li.axis != 1 or li.blocked:
                return self._stop(node, f"{what} off the channel axis")
            for p in params:
                self._slice_param(p, 0, li)
        self.layouts[node] = li
        return None

    def _elementwise(self, node: fx.Node) -> None:
        value = self.layouts.get(_args(node)[0])
        if isinstance(value, Stacked) and node.target in ops.COPIES:
            self.layouts[node] = value
            return
        li = self._layout(_args(node)[0])
        if node.target is ops.aten.native_dropout.default:
            self.layouts[node] = {0: li}
        else:
            self.layouts[node] = li

    def _spatial(self, node: fx.Node) -> None:
        li = self._layout(_args(node)[0])
        if li is not None and (li.axis != 1 or li.blocked):
            return self._stop(node, "pooling or resizing over the channel axis")
        self.layouts[node] = {0: li} if node.target in ops.SPATIAL_TUPLE else li
        return None

    def _pad(self, node: fx.Node) -> None:
        li = self._layout(_args(node)[0])
        rank, pad = len(self._shape(node)), list(_args(node)[1])
        at = 2 * (rank - 1 - li.axis) if li is not None else -1  # pairs run from the last axis backwards
        if li is not None and 0 <= at < len(pad) and (pad[at], pad[at + 1]) != (0, 0):
            return self._stop(node, "padding along the channel axis")
        self.layouts[node] = li
        return None

    def _expand(self, node: fx.Node) -> None:
        """``expand`` along other axes (and new leading ones) keeps the channels; its size for them follows."""
        li = self._layout(_args(node)[0])
        if li is None:
            self.layouts[node] = None
            return None
        src, dst = self._shape(_args(node)[0]), self._shape(node)
        out = li.moved(li.axis + len(dst) - len(src))
        if dst[out.axis] != src[li.axis]:
            return self._stop(node, "an expand of the channel axis")
        self._patch_literal(node, out)
        self.layouts[node] = out
        return None

    def _repeat_interleave(self, node: fx.Node) -> None:
        """``x.repeat_interleave(g, dim)``: along the channel axis each channel spans ``g`` times its
        columns (grouped-query attention repeats each k/v head for ``g`` q heads); along another, kept."""
        args = _args(node)
        li, repeats = self._layout(args[0]), args[1]
        dim: Any = args[2] if len(args) > 2 else node.kwargs.get("dim")
        if li is None:
            self.layouts[node] = None
            return None
        if not isinstance(repeats, int) or dim is None:
            return self._stop(node, "a repeat of the channels the analysis cannot follow")
        if int(dim) % len(self._shape(node)) != li.axis:
            self.layouts[node] = li
            return None
        self.layouts[node] = li.repeated(repeats)
        return None

    def _roll(self, node: fx.Node) -> None:
        """``torch.roll`` along other axes (Swin's shifted windows) keeps the channels."""
        li, rank = self._layout(_args(node)[0]), len(self._shape(node))
        dims: Any = _args(node)[2] if len(_args(node)) > 2 else node.kwargs.get("dims", [])
        if li is not None and (not dims or li.axis in [int(d) % rank for d in dims]):
            return self._stop(node, "a roll along the channel axis")
        self.layouts[node] = li
        return None

    def _binary(self, node: fx.Node) -> None:
        a, b = _args(node)[0], _args(node)[1]
        la, lb = self._layout(a), self._layout(b)
        out_rank = len(self._shape(node))
        if la is None and lb is None:
            self.layouts[node] = None
            return
        if la is None:  # keep the tracked operand first
            a, b, la, lb = b, a, lb, la
        assert la is not None
        axis = la.axis + out_rank - len(self._shape(a))
        la = la.moved(axis)
        if self._shape(node)[axis] != la.columns:
            return self._stop(node, "broadcast across the channel axis")
        if lb is None:
            return self._binary_with_constant(node, la, b, axis, out_rank)
        lb = lb.moved(lb.axis + out_rank - len(self._shape(b)))
        if lb.axis != la.axis or [(s.length, s.block) for s in la.segments] != [
            (s.length, s.block) for s in lb.segments
        ]:
            return self._stop(node, "two differently laid-out channel sets meet")
        for sa, sb in zip(la.segments, lb.segments, strict=True):
            if (sa.space == FIXED) != (sb.space == FIXED):
                return self._stop(node, "added to channels that cannot be pruned (e.g. the model input)")
            if sa.space != FIXED:
                self.uf.union(sa.space, sb.space)
                if node.target in ops.ADDITIVE and sa.space != sb.space:
                    self.additive.update((sa.space, sb.space))
        self.layouts[node] = la
        return None

    def _binary_with_constant(self, node: fx.Node, la: Layout, b: Any, axis: int, out_rank: int) -> None:
        if not isinstance(b, fx.Node):  # a Python scalar
            self.layouts[node] = la
            return None
        bshape = self._shape(b)
        baxis = axis - (out_rank - len(bshape))
        if baxis < 0 or bshape[baxis] == 1:  # broadcast along channels: same op for each channel
            self.layouts[node] = la
            return None
        if self._param(b) is not None and not la.blocked and math.prod(bshape) == bshape[baxis]:
            self._slice_param(b, baxis, la)  # a per-channel scale or shift (layer scale, bias)
            self.layouts[node] = la
            return None
        if bshape[baxis] == la.columns and not la.blocked and self._sliced_constant(b, baxis, la):
            self.layouts[node] = la  # a per-head bias read from a table (relative positions)
            return None
        if self._param(b) is None and bshape[baxis] == la.columns:
            return self._stop(node, "combined channel by channel with channels left whole (see their reason)")
        return self._stop(node, "combined with a tensor that is not channel-aligned")

    def _sliced_constant(self, node: Any, axis: int, layout: Layout) -> bool:
        """Whether ``node`` is a parameter, or one only moved or gathered (views, permutes, copies, an
        index along another axis: Swin's relative-position table read per head) by ops nothing else
        reads, so that slicing the parameter's matching axis with ``layout`` narrows ``node``'s ``axis``."""
        patches = []
        while (target := self._param(node)) is None:
            if not isinstance(node, fx.Node) or node.op != "call_function" or len(node.users) != 1:
                return False
            t, args, dst = node.target, _args(node), self._shape(node)
            src = self._shape(args[0]) if isinstance(args[0], fx.Node) else ()
            if t in ops.COPIES:
                source_axis: int | None = axis
            elif t in ops.PERMUTE or t in ops.TRANSPOSE:
                source_axis = self._axis_moves(node).index(axis)
            elif t in ops.RESHAPE or t in ops.SQUEEZE or t in ops.UNSQUEEZE:
                source_axis = {new: old for old, new in (_unit_axes(src, dst) or {}).items()}.get(axis)
                same = [gi[0] for gi, gj in _regroup(src, dst) if gj == [axis] and len(gi) == 1]
                source_axis = same[0] if source_axis is None and same else source_axis
                patch = self._count_patch(node, axis, layout, folded=False) if t in ops.RESHAPE else ()
                if patch is None:
                    return False
                patches += [patch] if isinstance(patch, ShapePatch) else []
            elif t is ops.aten.index.Tensor and len(args[1]) == 1 and isinstance(args[1][0], fx.Node):
                rank = len(self._shape(args[1][0]))  # index(table, [idx]): idx's axes, then the table's
                source_axis = axis - rank + 1 if axis >= rank else None
            elif t is ops.aten.embedding.default and isinstance(args[1], fx.Node):  # T5's position buckets
                rank = len(self._shape(args[1]))  # embedding(table, idx): the same gather along axis 0
                source_axis = axis - rank + 1 if axis >= rank else None
            else:
                return False
            if source_axis is None:
                return False
            node, axis = args[0], source_axis
        if self.weight_uses.get(target, 0) > 1:
            return False
        self._slice_param(node, axis, layout)
        self.patches.extend(patches)
        return True

    def _cat(self, node: fx.Node) -> None:
        inputs = list(_args(node)[0])
        rank = len(self._shape(node))
        dim = int(_args(node)[1]) if len(_args(node)) > 1 else 0
        dim %= rank
        layouts = [self._layout(x) for x in inputs]
        tracked = [lay for lay in layouts if lay is not None]
        if not tracked:
            self.layouts[node] = None
            return None
        if all(lay.axis == dim for lay in tracked):
            segments: list[Segment] = []
            for x, lay in zip(inputs, layouts, strict=True):
                if lay is None:
                    segments.append(Segment(FIXED, self._shape(x)[dim]))
                else:
                    segments.extend(lay.segments)
            self.layouts[node] = Layout(dim, tuple(segments))
            return None
        if all(lay == tracked[0] for lay in layouts):
            self.layouts[node] = tracked[0]
            return None
        return self._stop(node, "concatenated with other tensors along a non-channel axis")

    def _reshape(self, node: fx.Node) -> None:
        x = _args(node)[0]
        stacked = self.layouts.get(x)
        if isinstance(stacked, Stacked):
            return self._reshape_stacked(node, stacked)
        li = self._layout(x)
        if li is None:
            self.layouts[node] = None
            return None
        src, dst = self._shape(x), self._shape(node)
        for gi, gj in _regroup(src, dst):
            if li.axis not in gi:
                continue
            features = li.axis == len(src) - 1  # tokens' features, as attention splits them into heads
            if features and gi == [li.axis - 1, li.axis] and len(gj) == 2 and dst[gj[0]] % src[gi[0]] == 0:
                return self._fold(node, li, gj[0], dst[gj[0]] // src[gi[0]], dst[gj[1]])
            if gi == [li.axis - 1, li.axis] and len(gj) == 1 and not li.blocked:
                return self._fold_axis(node, li.moved(gj[0]))
            before = [d for d in gi if d < li.axis]
            if any(src[d] != 1 for d in before):
                break
            split_in_two = features and gi == [li.axis] and len(gj) == 2 and all(dst[d] > 1 for d in gj)
            if split_in_two and self._taken_apart(node, gj[0]):
                return self._stack(node, li, gj, dst[gj[0]], dst[gj[1]])
            if features and gi == [li.axis] and len(gj) in (2, 3) and all(dst[d] > 1 for d in gj):
                return self._heads(node, li, gj, [dst[d] for d in gj])
            kept = [d for d in gj if dst[d] != 1]
            if len(kept) > 1:
                break
            out_axis = kept[0] if kept else next(d for d in gj if dst[d] == li.columns)
            block = math.prod(src[d] for d in gi if d > li.axis)
            out = li.moved(out_axis).repeated(block)
            if dst[out_axis] != out.columns:
                break
            self._patch_literal(node, out)
            self.layouts[node] = out
            return None
        return self._stop(node, "a reshape splits or mixes the channel axis")

    def _taken_apart(self, node: fx.Node, axis: int) -> bool:
        """Whether every use of ``node`` selects or unbinds along ``axis``, past copies and ops that only
        move axes or add and remove axes of one (``nn.MultiheadAttention`` takes q, k and v apart so)."""
        for user in node.users:
            t, src, dst = user.target, self._shape(node), self._shape(user)
            if t in ops.SELECT or t in ops.UNBIND:
                dim = int(_args(user)[1]) if len(_args(user)) > 1 else 0
                if dim % len(src) != axis:
                    return False
                continue
            if t in ops.PERMUTE or t in ops.TRANSPOSE:
                moved: int | None = self._axis_moves(user)[axis]
            elif t in ops.COPIES:
                moved = axis
            elif t in ops.SQUEEZE or t in ops.UNSQUEEZE:
                moved = (_unit_axes(src, dst) or {}).get(axis)
            else:
                return False
            if moved is None or not self._taken_apart(user, moved):
                return False
        return bool(node.users)

    def _stack(self, node: fx.Node, li: Layout, axes: list[int], count: int, width: int) -> None:
        """``(..., count * width) -> (..., count, width)`` taken apart along ``count`` (the packed q/k/v
        projection of ``nn.MultiheadAttention``, unflattened to ``(3, E)``): parts of ``width`` columns
        stacked on the new axis. They share the view's size, so they keep the same channels."""
        bounds = [width * i for i in range(count + 1)]
        found = [li.between(lo, hi) for lo, hi in itertools.pairwise(bounds)]
        parts = [part for part in found if part is not None]
        if len(parts) < count:
            if not li.blocked:
                self._cut_at(li, bounds)
            return self._stop(node, "a view of the channel axis as stacked parts (inside a layer's channels)")
        shapes = [[(s.length, s.block, s.space == FIXED) for s in part.segments] for part in parts]
        if any(shape != shapes[0] for shape in shapes):
            return self._stop(node, "stacked parts laid out differently")
        for part in parts[1:]:
            for sa, sb in zip(parts[0].segments, part.segments, strict=True):
                if sa.space != FIXED:
                    self.uf.union(sa.space, sb.space)
        stacked = tuple(part.moved(axes[1]) for part in parts)
        self._patch_literal(node, stacked[0])
        self.layouts[node] = Stacked(axes[0], stacked)
        return None

    def _fold(self, node: fx.Node, li: Layout, axis: int, heads: int, dim: int) -> None:
        """``(..., B, H * D) -> (..., B * H, D)``: the channels read as ``H`` heads of ``D``, folded into the
        batch axis (``nn.MultiheadAttention``). Where the channels are heads of ``D`` rows already, the
        batch axis carries them; else the next walk makes each head one channel."""
        seg = li.segments[0]
        if len(li.segments) == 1 and seg.space != FIXED and seg.block == dim and seg.length == heads:
            return self._fold_axis(node, Layout(axis, (Segment(seg.space, heads),)))
        if all(s.block == 1 and s.length % dim == 0 and s.space != FIXED for s in li.segments):
            for s in li.segments:
                self.new_units.update({p.node: dim for p in self._writers(s.space) if p.unit == 1})
        return self._stop(node, "a reshape splits the channel axis (other than into attention heads)")

    def _fold_axis(self, node: fx.Node, heads: Layout) -> None:
        """A reshape that folds the axis before ``heads.axis`` of its input and the heads into the axis
        ``heads.axis`` of its output (``(B, H, N, D) -> (B * H, N, D)``, as an ONNX round trip of
        ``nn.MultiheadAttention`` writes it; or ``(..., B, H * D) -> (..., B * H, D)``)."""
        patch = self._count_patch(node, heads.axis, heads, folded=True)
        if patch is None:
            return self._stop(node, "a view folding heads into the batch with a size it cannot follow")
        self.patches += [patch] if isinstance(patch, ShapePatch) else []
        self.layouts[node] = Folded(heads.axis, heads)
        return None

    def _count_patch(
        self, node: fx.Node, axis: int, heads: Layout, folded: bool
    ) -> ShapePatch | tuple | None:
        """How a reshape's size for ``axis`` follows the head count: ``H``, or folded with the batch
        ``B * H`` (a literal times the batch, or a ``sym_size * H`` node); ``()`` where nothing need
        change (an inferred ``-1``); None where it cannot follow."""
        arg, (item, value) = self._size_literal(node, axis)
        count = heads.columns
        if value == -1:
            return ()
        if isinstance(value, int) and (value % count == 0 if folded else value == count):
            return ShapePatch(node.name, arg, item, heads, value // count)
        if folded and isinstance(value, fx.Node) and value.target is operator.mul:
            literal = [i for i, a in enumerate(_args(value)) if isinstance(a, int) and a == count]
            if literal:
                return ShapePatch(value.name, literal[0], None, heads)
        return None

    def _mask_patches(self, mask: fx.Node, axis: int, heads: Layout) -> list[ShapePatch] | None:
        """The patches that make an attention mask's per-head axis ``axis`` follow the heads, where it only
        repeats one mask for every head: an ``expand`` of an axis of one, then reshapes that may fold the
        heads into the batch and back (``nn.MultiheadAttention`` builds its key padding mask so); None
        for any other mask, or one something else also reads."""
        node, folded, patches = mask, False, list[ShapePatch]()
        while len(node.users) == 1 and node.op == "call_function":
            source = _args(node)[0]
            if node.target is ops.aten.expand.default and not folded and self._shape(source)[axis] == 1:
                sizes = _args(node)[1]
                if sizes[axis] != heads.columns:
                    return None
                return [*patches, ShapePatch(node.name, 1, axis, heads)]
            if node.target in ops.COPIES and isinstance(source, fx.Node):
                node = source  # a reshape of an expanded tensor, decomposed: clone + _unsafe_view
                continue
            if node.target not in ops.RESHAPE or not isinstance(source, fx.Node):
                return None
            src, dst = self._shape(source), self._shape(node)
            gi, gj = next(((gi, gj) for gi, gj in _regroup(src, dst) if axis in gj), ([], []))
            if len(gi) == 1 and (gj == [axis] or (not folded and gj == [axis - 1, axis])):
                unfolding = False  # same axis, or (B, H) <- B * H: the heads were folded before
            elif folded and gj == [axis] and len(gi) == 2 and src[gi[1]] == heads.columns:
                unfolding = True  # B * H <- (B, H)
            else:
                return None
            patch = self._count_patch(node, axis, heads, folded)
            if patch is None:
                return None
            patches += [patch] if isinstance(patch, ShapePatch) else []
            folded = (folded and not unfolding) or len(gj) == 2
            node, axis = source, gi[-1]
        return None

    def _folded(self, node: fx.Node) -> None:
        """Heads folded into a batch axis may meet batched products, elementwise ops, a softmax over
        another axis, moves of their axis, and a view that unfolds them."""
        t, first = node.target, _args(node)[0]
        if t in ops.MATMUL:
            return self._matmul(node)
        if t in ops.ATTENTION:
            return self._attention(node)
        value = self.layouts.get(first)
        others = [x for x in node.all_input_nodes if x is not first and x.name in self.shapes]
        if not isinstance(value, Folded) or others:
            return self._stop(node, "heads folded into the batch axis meet other tensors")
        over_heads = t in ops.SOFTMAX and int(_args(node)[1]) % len(self._shape(node)) == value.axis
        if t is ops.aten.native_dropout.default:
            self.layouts[node] = {0: value}
        elif t in ops.ELEMENTWISE or t in ops.BINARY or (t in ops.SOFTMAX and not over_heads):
            self.layouts[node] = value
        elif t in ops.PERMUTE or t in ops.TRANSPOSE:
            self._permute(node)
        elif t in ops.RESHAPE:
            self._unfold(node, value)
        else:
            self._stop(node, f"heads folded into the batch axis meet {getattr(t, '__name__', t)}")
        return None

    def _unfold(self, node: fx.Node, folded: Folded) -> None:
        """``(B * H, ...) -> (B, H, ...)``: the heads get an axis; ``(..., B * H, D) -> (..., H * D)``: they
        join the features, ``D`` columns each."""
        src, dst = self._shape(_args(node)[0]), self._shape(node)
        heads = folded.heads.columns
        out: Layout | None = None
        for gi, gj in _regroup(src, dst):
            if gi == [folded.axis] and len(gj) == 2 and dst[gj[1]] == heads:
                out = folded.heads.moved(gj[1])
        if out is None and folded.axis == len(src) - 2 and dst[-1] == heads * src[-1]:
            out = folded.heads.moved(len(dst) - 1).repeated(src[-1])
        if out is None:
            return self._stop(node, "a reshape of heads folded into the batch axis")
        self._patch_literal(node, out)
        self.layouts[node] = out
        return None

    def _heads(self, node: fx.Node, li: Layout, axes: list[int], sizes: list[int]) -> None:
        """``view(B, N, H * D) -> (B, N, H, D)``: channels read as ``H`` attention heads of ``D`` each; or
        ``(B, N, 3 * H * D) -> (B, N, 3, H, D)``: a fused q/k/v, stacked on the new axis of size 3.
        Where every channel already is a head of ``D`` rows (in one part per stacked index), the heads axis
        carries the layout; else the next walk makes each head one channel (and cuts the fused parts)."""
        dim, heads = sizes[-1], sizes[-2]
        stack = sizes[0] if len(sizes) == 3 else 1
        ready = all(s.block == dim and s.length == heads for s in li.segments)
        seg = li.segments[0]
        grouped = seg.block % dim == 0 and seg.length * (seg.block // dim) == heads  # GQA: g heads a unit
        if len(li.segments) == stack == 1 and seg.space != FIXED and grouped:
            out = Layout(axes[-2], (Segment(seg.space, seg.length, seg.block // dim),))
            self._patch_literal(node, out)
            self.layouts[node] = out
            return None
        if ready and len(li.segments) == stack:
            for s in li.segments[1:]:  # one view gives q, k and v their head count: the same heads
                self.uf.union(li.segments[0].space, s.space)
            parts = tuple(Layout(axes[-2], (Segment(s.space, heads),)) for s in li.segments)
            self._patch_literal(node, parts[0])
            self.layouts[node] = Stacked(axes[0], parts)
            return None
        if all(s.block == 1 and s.length % dim == 0 and s.space != FIXED for s in li.segments):
            if len(sizes) == 3 and len(li.segments) == 1:
                self._cut(li.segments[0].space, [heads * dim * i for i in range(1, stack)])
            for s in li.segments:
                self.new_units.update({p.node: dim for p in self._writers(s.space) if p.unit == 1})
        return self._stop(node, "a reshape splits the channel axis (other than into attention heads)")

    def _batched(
        self, node: fx.Node, operands: list[Any], product: bool = True, repeats: Sequence[int] = ()
    ) -> None:
        """An op batched over the leading axes of ``operands`` (``product``: matmul, attention), or one
        position by position (``where``): a layout on a batch axis (attention heads) passes through, and
        operands laid out on the same axis keep the same channels (coupled, as q, k and v keep the same
        heads). ``repeats``: how many times the op repeats each operand's heads (``enable_gqa``)."""
        rank = len(self._shape(node))
        aligned = []  # each operand with its layout on the output's axes (a folded one's heads)
        for i, x in enumerate(operands):
            value = self.layouts.get(x)
            li = value.heads if isinstance(value, Folded) else self._layout(x)
            g = repeats[i] if i < len(repeats) else 1
            li = li.repeated(g) if li is not None else None
            aligned.append((x, None if li is None else li.moved(li.axis + rank - len(self._shape(x)))))
        tracked = [li for _x, li in aligned if li is not None]
        if not tracked:
            self.layouts[node] = None
            return None
        folded = [isinstance(self.layouts.get(x), Folded) for x, li in aligned if li is not None]
        if any(folded) and not all(folded):
            return self._stop(node, "heads folded into the batch axis meet heads on an axis of their own")
        first = tracked[0]
        if product and first.axis >= rank - 2:
            return self._stop(node, "a matrix product over the channel axis")
        for x, li in aligned:
            own = first.axis - rank + len(self._shape(x))  # the operand's axis under the output's
            if li is None and own >= 0 and self._shape(x)[own] != 1:
                return self._stop(
                    node, "combined channel by channel with channels left whole (see their reason)"
                )
            shape = [(s.length, s.block) for s in first.segments]
            if li is not None and (
                li.axis != first.axis or [(s.length, s.block) for s in li.segments] != shape
            ):
                self._group_heads(first, li)
                return self._stop(node, "two differently laid-out channel sets meet")
        for li in tracked[1:]:
            for sa, sb in zip(first.segments, li.segments, strict=True):
                if (sa.space == FIXED) != (sb.space == FIXED):
                    return self._stop(node, "combined with channels that cannot be pruned")
                if sa.space != FIXED:
                    self.uf.union(sa.space, sb.space)
        self.layouts[node] = Folded(first.axis, first) if any(folded) else first
        # attention's FLOPs stay fixed: torch's FLOP counter, which the report uses, skips its CPU kernel
        if node.target in ops.MATMUL:
            flops = (
                2.0 * math.prod(self._shape(node)) / self.batch * self._shape(operands[0])[-1]
            )  # 2 out inner
            self.compute.append(ComputeNode(node.name, node.name, flops, first.moved(0), None, "attention"))
        return None

    def _group_heads(self, a: Layout, b: Layout) -> None:
        """Where ``H`` heads meet ``K`` heads each repeated ``g = H / K`` times (grouped-query attention's
        k and v), ask the next walk to make each run of ``g`` of the ``H`` heads one channel."""
        if len(a.segments) != 1 or len(b.segments) != 1 or a.axis != b.axis:
            return
        for one, runs in ((a.segments[0], b.segments[0]), (b.segments[0], a.segments[0])):
            if one.block == 1 and runs.block > 1 and one.length == runs.length * runs.block:
                for p in self._writers(one.space):
                    self.new_units[p.node] = p.unit * runs.block

    def _matmul(self, node: fx.Node) -> None:
        a, b = _args(node)[0], _args(node)[1]
        if len(self._shape(a)) < 3 or len(self._shape(b)) < 3:
            return self._stop(node, "a matrix product over the channel axis")
        return self._batched(node, [a, b])

    def _attention(self, node: fx.Node) -> None:
        """``scaled_dot_product_attention(q, k, v, mask)``: q, k and v keep the same heads."""
        args = _args(node)
        mask = args[3] if len(args) > 3 else node.kwargs.get("attn_mask")
        if self._layout(mask) is not None:
            return self._stop(node, "an attention mask computed from the channels")
        repeats = [1, 1, 1]
        if node.kwargs.get("enable_gqa") and isinstance(args[1], fx.Node) and len(self._shape(args[1])) > 2:
            q_heads, kv_heads = self._shape(args[0])[-3], self._shape(args[1])[-3]  # (..., heads, N, D)
            repeats = [1, q_heads // kv_heads, q_heads // kv_heads]  # each k/v head serves g q heads
        self._batched(node, list(args[:3]), repeats=repeats)
        heads = self.layouts.get(node)
        heads = heads.heads if isinstance(heads, Folded) else heads
        if isinstance(mask, fx.Node) and isinstance(heads, Layout):
            axis = heads.axis - len(self._shape(node)) + len(self._shape(mask))
            if axis >= 0 and self._shape(mask)[axis] != 1:
                patches = self._mask_patches(mask, axis, heads)
                if patches is None and not self._sliced_constant(mask, axis, heads):
                    return self._stop(node, "an attention mask with one entry per head")
                self.patches.extend(patches or [])
        return None

    def _reshape_stacked(self, node: fx.Node, stacked: Stacked) -> None:
        """Axes of one added or removed around stacked parts (they move along); or a single part of stacked
        heads (``split`` into ones along the stacking axis) with that axis squeezed away: the part's heads."""
        src, dst = self._shape(_args(node)[0]), self._shape(node)
        axis, moved = stacked.axis, _unit_axes(src, dst)
        if moved is not None and axis in moved and all(part.axis in moved for part in stacked.parts):
            parts = tuple(part.moved(moved[part.axis]) for part in stacked.parts)
            self.layouts[node] = Stacked(moved[axis], parts)
            return None
        if len(stacked.parts) != 1 or src[axis] != 1 or tuple(dst) != src[:axis] + src[axis + 1 :]:
            return self._stop(node, "a reshape of stacked heads")
        self.layouts[node] = _unstacked(stacked, axis, 0)
        return None

    def _size_literal(self, node: fx.Node, axis: int) -> tuple[int, Any]:
        """Where a reshape states the size of its output's ``axis``: (argument, item), and the value."""
        args = _args(node)
        if node.target in ops.UNFLATTEN:  # unflatten(x, dim, sizes)
            item = axis - int(args[1]) % len(self._shape(args[0]))
            return 2, (item, args[2][item] if 0 <= item < len(args[2]) else None)
        literal = node.target in ops.RESHAPE or node.target in ops.EXPAND
        sizes = args[1] if literal and isinstance(args[1], list | tuple) else ()
        return 1, (axis, sizes[axis] if axis < len(sizes) else None)

    def _patch_literal(self, node: fx.Node, out: Layout) -> None:
        arg, (item, value) = self._size_literal(node, out.axis)
        if isinstance(value, int) and value != -1 and value == out.columns:
            self.patches.append(ShapePatch(node.name, arg, item, out))

    def _axis_moves(self, node: fx.Node) -> list[int]:
        return axis_moves(node, len(self._shape(node)))

    def _permute(self, node: fx.Node) -> None:
        value = self.layouts.get(_args(node)[0])
        if not isinstance(value, Layout | Stacked | Folded):
            self.layouts[node] = None
            return
        where = self._axis_moves(node)
        if isinstance(value, Stacked):
            parts = tuple(part.moved(where[part.axis]) for part in value.parts)
            self.layouts[node] = Stacked(where[value.axis], parts)
        else:
            self.layouts[node] = value.moved(where[value.axis])

    def _reduce(self, node: fx.Node) -> None:
        li = self._layout(_args(node)[0])
        if li is None:
            self.layouts[node] = None
            return None
        rank = len(self._shape(_args(node)[0]))
        dims = _args(node)[1] if len(_args(node)) > 1 else None
        dims = [dims] if isinstance(dims, int) else dims  # any.dim takes one
        dims = list(range(rank)) if dims is None else [int(d) % rank for d in dims]
        keepdim = bool(_args(node)[2]) if len(_args(node)) > 2 else bool(node.kwargs.get("keepdim", False))
        if li.axis in dims:
            return self._stop(node, "a reduction over the channel axis")
        axis = li.axis if keepdim else li.axis - sum(d < li.axis for d in dims)
        self.layouts[node] = li.moved(axis)
        return None

    def _slice(self, node: fx.Node) -> None:
        """``x[..., a:b, ...]``: a crop of another axis keeps the channels; a range of the channel axis
        keeps the spaces inside it (a bound inside a layer's space is cut, as for a split); one index of
        stacked parts (``qkv[i:i + 1]``, a decomposed unbind) keeps that part."""
        li = self._layout(_args(node)[0])
        args = _args(node)
        shape = self._shape(args[0])
        dim = int(args[1]) % len(shape) if len(args) > 1 else 0
        stacked = self.layouts.get(args[0])
        if isinstance(stacked, Stacked):
            first, last, step = slice(*[*args[2:5], None, None, None][:3]).indices(shape[dim])
            if dim != stacked.axis or step != 1 or last - first != 1:
                return self._stop(node, "a slice across stacked heads")
            self.layouts[node] = Stacked(dim, (stacked.parts[first],))
            return None
        if li is None or dim != li.axis:
            self.layouts[node] = li
            return None
        start, end, step = [*args[2:5], None, None, None][:3]  # slice(x, dim, start, end, step)
        begin, stop, _ = slice(start, end).indices(shape[dim])
        if (step or 1) != 1 or begin >= stop:
            return self._stop(node, "a strided slice of the channel axis")
        out = li.between(begin, stop)
        if out is None and li.blocked:
            return self._stop(node, "a slice of flattened channels (inside a layer's channels)")
        if out is None:
            self._cut_at(li, [begin, stop])
            return self._stop(node, "a slice of the channel axis (inside a layer's channels)")
        for arg, bound in ((2, begin), (3, stop)):
            front = li.between(0, bound)
            if front is not None and 0 < bound < li.columns:  # the literal follows the widths in front
                self.patches.append(ShapePatch(node.name, arg, None, front))
        self.layouts[node] = out
        return None

    def _split_channels(self, node: fx.Node) -> None:
        """``torch.split``/``chunk``: along another axis every part keeps the channels; along the channel
        axis each part takes the spaces between its bounds. A bound inside a layer's space is recorded
        (``new_cuts``), and the next pass opens a space per part there (``Producer.part``)."""
        x, sizes = _args(node)[0], [int(v) for v in _args(node)[1]]
        li = self._layout(x)
        dim = int(_args(node)[2]) % len(self._shape(x)) if len(_args(node)) > 2 else 0
        stacked = self.layouts.get(x)
        if isinstance(stacked, Stacked):  # q, k and v apart, each still on a stacking axis of one
            if dim != stacked.axis or sizes != [1] * len(stacked.parts):
                return self._stop(node, "a split across stacked heads")
            self.layouts[node] = {i: Stacked(dim, (part,)) for i, part in enumerate(stacked.parts)}
            return None
        if li is None or dim != li.axis:
            self.layouts[node] = dict.fromkeys(range(len(sizes)), li)
            return None
        bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        parts = [part for a, b in itertools.pairwise(bounds) if (part := li.between(a, b)) is not None]
        if len(parts) < len(sizes) and li.blocked:
            return self._stop(node, "a split of flattened channels (inside a layer's channels)")
        if len(parts) < len(sizes):
            self._cut_at(li, bounds)
            return self._stop(node, "a split of the channel axis (inside a layer's channels)")
        for i, part in enumerate(parts):
            self.patches.append(ShapePatch(node.name, 1, i, part))
        self.layouts[node] = dict(enumerate(parts))
        return None

    def _cut_at(self, layout: Layout, bounds: list[int]) -> None:
        """Cut the spaces of ``layout`` at the columns ``bounds`` that fall inside them."""
        for seg, offset in layout.offsets():
            inside = [b - offset for b in bounds if offset < b < offset + seg.length]
            if inside and seg.space != FIXED:
                self._cut(seg.space, inside)

    def _writers(self, space: int) -> list[Producer]:
        """The layers writing ``space`` or a space coupled with it, but grouped ones (they keep their runs)."""
        root = self.uf.find(space)
        return [
            p for s, p in self.producers.items() if self.uf.find(s) == root and self.blocks.get(s, 1) == 1
        ]

    def _cut(self, space: int, at: list[int]) -> None:
        """Ask the next pass to split the layers writing ``space`` (and those coupled with it) at ``at``."""
        for p in self._writers(space):
            cuts = self.new_cuts.setdefault(p.node, set())
            cuts.update(p.offset + c for c in at if p.offset + c not in self.cuts.get(p.node, ()))

    def _select(self, node: fx.Node) -> None:
        """``x[:, i]`` along another axis (a class token, a time step): the channel axis moves up; along
        the axis of stacked heads, the heads of part ``i`` (``qkv[0]``: q)."""
        x = _args(node)[0]
        dim = int(_args(node)[1]) % len(self._shape(x))
        stacked = self.layouts.get(x)
        if isinstance(stacked, Stacked):
            part = _unstacked(stacked, dim, int(_args(node)[2]))
            if part is None:
                return self._stop(node, "a selection across stacked heads")
            self.layouts[node] = part
            return None
        li = self._layout(x)
        if li is None:
            self.layouts[node] = None
            return None
        if dim == li.axis:
            return self._stop(node, "a selection of single channels")
        self.layouts[node] = li.moved(li.axis - (dim < li.axis))
        return None

    def _unbind(self, node: fx.Node) -> None:
        """``x.unbind(dim)``: each slice keeps the channels (another axis) or the heads of its part (the
        axis of stacked heads: ``q, k, v = qkv.unbind(0)``)."""
        x = _args(node)[0]
        value = self.layouts.get(x)
        dim = (int(_args(node)[1]) if len(_args(node)) > 1 else 0) % len(self._shape(x))
        count = self._shape(x)[dim]
        if isinstance(value, Stacked):
            parts = [_unstacked(value, dim, i) for i in range(count)]
            if any(part is None for part in parts):
                return self._stop(node, "an unbind across stacked heads")
            self.layouts[node] = dict(enumerate(parts))
            return None
        li = self._layout(x)
        if li is not None and dim == li.axis:
            return self._stop(node, "an unbind of the channel axis")
        self.layouts[node] = dict.fromkeys(range(count), li and li.moved(li.axis - (dim < li.axis)))
        return None

    def _softmax(self, node: fx.Node) -> None:
        li = self._layout(_args(node)[0])
        rank = len(self._shape(node))
        if li is not None and int(_args(node)[1]) % rank == li.axis:
            return self._stop(node, "a softmax over the channel axis")
        self.layouts[node] = li
        return None

    def _layer_norm(self, node: fx.Node) -> None:
        li = self._layout(_args(node)[0])
        rank = len(self._shape(_args(node)[0]))
        normalized = len(_args(node)[1])
        if li is not None and li.axis >= rank - normalized:
            return self._stop(node, "LayerNorm normalises over these channels, so removing any changes all")
        self.layouts[node] = {0: li} if node.target is ops.aten.native_layer_norm.default else li
        return None

    # -- results -------------------------------------------------------------------------------
    def groups(self) -> tuple[list[ChannelGroup], dict[int, int]]:
        members: dict[int, list[int]] = {}
        for space in self.producers:
            members.setdefault(self.uf.find(space), []).append(space)
        groups: list[ChannelGroup] = []
        index: dict[int, int] = {}
        for _root, spaces in sorted(members.items()):
            first = self.producers[spaces[0]]
            reasons = [self.poison[s] for s in spaces if s in self.poison]
            in_group = set(spaces)
            consumers = [c for c in self.consumers if c.layout.spaces & in_group]
            skipped = reasons[0] if reasons else None
            coupling = "residual" if in_group & self.additive else None
            if skipped is None and not consumers:
                skipped = "no layer consumes its channels"
            name = first.name if len(spaces) == 1 else f"{first.name}+{len(spaces) - 1}"
            position = max(self.producers[s].position for s in spaces)
            blocks = math.lcm(*(self.blocks.get(s, 1) for s in spaces))
            if skipped is None and (first.size % blocks or blocks == first.size > 1):
                skipped = f"grouped convolutions split its {first.size} channels into {blocks} runs"
            group = ChannelGroup(name, spaces, first.size, position, consumers, skipped, coupling, blocks)
            for s in spaces:
                index[s] = len(groups)
            groups.append(group)
        return groups, index


def probe_shapes(gm: fx.GraphModule, example: tuple[torch.Tensor, ...]) -> dict[str, tuple[int, ...]]:
    """Concrete output shape of every node, from one real run on ``example``."""
    shapes: dict[str, tuple[int, ...]] = {}

    class _Probe(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                shapes[n.name] = tuple(out.shape)
            return out

    with torch.no_grad():
        _Probe(gm).run(*example)
    return shapes


MAX_PASSES = 4  # walks of the graph: each cuts the layers whose split parts the one before found


def analyse(gm: fx.GraphModule, example: tuple[torch.Tensor, ...]) -> GraphAnalysis:
    """Find every prunable channel group of ``gm`` (an unlifted exported module)."""
    shapes = probe_shapes(gm, example)
    cuts: dict[str, set[int]] = {}
    units: dict[str, int] = {}
    for _ in range(MAX_PASSES):  # each pass opens the spaces (parts, heads) the one before found
        tracer = _Tracer(gm, shapes, example[0].shape[0], cuts, units)
        tracer.run()
        found = {node: c for node, c in tracer.new_cuts.items() if c}
        heads = {node: d for node, d in tracer.new_units.items() if units.get(node) != d}
        if not found and not heads:
            break
        for node, c in found.items():
            cuts.setdefault(node, set()).update(c)
        units.update(heads)
    groups, index = tracer.groups()
    return GraphAnalysis(
        producers=tracer.producers,
        param_axes=list(tracer.param_axes.values()),
        consumers=tracer.consumers,
        compute=tracer.compute,
        patches=tracer.patches,
        groups=groups,
        shapes=shapes,
        space_group=index,
        batch=example[0].shape[0],
    )

"""How much each group's pruning costs at the network's output, to allocate widths across layers.

A group's local loss curve ``l_g(k) = L_A(J_k) / tr S`` (from greedy selection, every k at once) says
how much of the layer's own signal is lost, but not what that loss does downstream: a layer whose
output the rest of the network attenuates can lose more. So each group is pruned *alone* (with its
re-fit) to a few probe widths, and the relative output error ``D_g(k) = E||f' - f||^2 / E||f||^2`` is
measured on a small calibration subset. Between probes ``D_g(k) = r_g(k) l_g(k)`` with the ratio
``r_g`` interpolated linearly in k, so the dense local curve keeps its shape and the probes set its
scale. Widths then minimise ``sum_g D_g(k_g)`` under the cost target: ``lagrangian_widths`` is the knob
that ``core.widths.meet_target`` bisects.

A probe changes only the graph downstream of the group's producers: each batch runs once as far as
that boundary (``core.capture``), and every probe width re-runs only the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import fx

from core.calibration import Batch
from core.capture import Cursor, first_change
from core.graph import ChannelGroup, GraphAnalysis
from core.reconstruct import Refits, assign, pruned_tensors
from core.rewrite import patch_shapes

PROBE_FRACTIONS = tuple(i / 8 for i in range(1, 8))  # probe widths, as fractions of a group's size
Curve = np.ndarray  # (m + 1,) indexed by kept width k


@contextmanager
def swapped(
    gm: fx.GraphModule, analysis: GraphAnalysis, tensors: dict[str, torch.Tensor], widths: dict[int, int]
) -> Iterator[None]:
    """``gm`` with the parameters and buffers ``tensors`` (spaces narrowed to ``widths``), then restored."""
    state = dict(gm.named_parameters()) | dict(gm.named_buffers())
    saved = {name: state[name] for name in tensors}
    assign(gm, tensors)
    patch_shapes(gm, analysis, widths)
    try:
        yield
    finally:
        assign(gm, saved)
        patch_shapes(gm, analysis, {})


def _flat(value: object) -> torch.Tensor:
    """Every floating-point tensor in a model output, flattened into one float64 vector."""
    return torch.cat([t.detach().double().flatten() for t in _tensors(value) if t.is_floating_point()])


def _outputs(gm: fx.GraphModule, batches: list[Batch]) -> list[torch.Tensor]:
    """Every floating-point output of ``gm`` per batch, flattened into one float64 vector."""
    with torch.no_grad():
        return [_flat(gm(*b)) for b in batches]


def _tensors(value: object) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def probe_widths(size: int, blocks: int = 1) -> list[int]:
    """The widths probed: ``PROBE_FRACTIONS`` of ``size``, in multiples of ``blocks``."""
    runs = size // blocks
    return sorted({blocks * max(1, min(runs - 1, round(f * runs))) for f in PROBE_FRACTIONS if runs > 1})


def output_curves(
    gm: fx.GraphModule,
    analysis: GraphAnalysis,
    groups: list[ChannelGroup],
    orders: dict[str, torch.Tensor],
    local: dict[str, Curve],
    refits_for: Callable[[ChannelGroup, torch.Tensor], Refits],
    batches: list[Batch],
    on_group: Callable[[int, int], None] | None = None,
) -> dict[str, Curve]:
    """``D_g(k)`` for every group and width k in 0..m (``D_g(m) = 0``), from probes at a few widths.

    ``orders[g]`` is greedy's pick order, ``local[g]`` the local loss curve ``l_g``, ``refits_for(g, J)``
    the re-fit maps for ``g`` keeping ``J``.
    """
    reference = _outputs(gm, batches)
    energy = sum(float((r**2).sum()) for r in reference)
    curves = {}
    for i, g in enumerate(groups):
        ks = probe_widths(g.size, g.blocks)
        probes = [orders[g.name][:k].sort().values for k in ks]
        errors = _probe(gm, analysis, g, probes, refits_for, batches, reference)
        ratios = [
            e / max(energy, 1e-300) / max(float(local[g.name][k]), 1e-12)
            for k, e in zip(ks, errors, strict=True)
        ]
        ratio = np.interp(np.arange(g.size + 1), ks, ratios) if ks else np.zeros(g.size + 1)
        curves[g.name] = ratio * local[g.name]
        curves[g.name][g.size] = 0.0
        if on_group is not None:
            on_group(i + 1, len(groups))
    return curves


def _probe(
    gm: fx.GraphModule,
    analysis: GraphAnalysis,
    g: ChannelGroup,
    probes: list[torch.Tensor],
    refits_for: Callable[[ChannelGroup, torch.Tensor], Refits],
    batches: list[Batch],
    reference: list[torch.Tensor],
) -> list[float]:
    """``sum ||f' - f||^2`` (``f``: ``reference``, per batch) with ``g`` keeping each of ``probes`` in turn.
    Only what a probe changes runs again: each batch runs once as far as ``g``'s producers."""
    tensors = [pruned_tensors(gm, analysis, {s: j for s in g.spaces}, refits_for(g, j)) for j in probes]
    start = first_change(gm, *analysis.rewritten_by(g))
    output = next(n.name for n in gm.graph.nodes if n.op == "output")
    errors = [0.0] * len(probes)
    for b, ref in zip(batches, reference, strict=True):
        cursor = Cursor(gm, 1, budget=1 << 62)  # one batch's values at one cut: no more than its pass holds
        cursor.values(0, b, set(), start)  # as far as the group's producers, once
        for i, (kept, new) in enumerate(zip(probes, tensors, strict=True)):
            with swapped(gm, analysis, new, {s: len(kept) for s in g.spaces}):
                errors[i] += float(((_flat(cursor.values(0, b, {output}, start)[output]) - ref) ** 2).sum())
    return errors


def lagrangian_widths(
    groups: list[ChannelGroup], curves: dict[str, Curve], unit_cost: dict[str, float], t: float
) -> dict[str, int]:
    """Per group, ``argmin_k D_g(k) + lam c_g k`` with ``lam = 10^(8 - 16 t)``: cost rises with t.

    ``c_g`` is the cost (as a fraction of the whole) of one of ``g``'s channels; k runs over multiples
    of the group's ``blocks``.
    """
    lam = 10.0 ** (8.0 - 16.0 * t)
    out = {}
    for g in groups:
        k = np.arange(g.blocks, g.size + 1, g.blocks)
        out[g.name] = int(k[np.argmin(curves[g.name][k] + lam * unit_cost[g.name] * k)])
    return out

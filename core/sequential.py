"""Sequential re-fit: each consumer is re-fitted to the *already pruned* network upstream of it.

The independent re-fit ``A_J = S_FJ (S_JJ + tau I)^-1`` uses the original network's statistics, so the
errors of earlier layers add up. Here groups are rewritten in topological order; for each one the
calibration data runs once through the original network and through the partly rewritten one. With
``output_level`` (``refit="output"``), 2-D convolutions and linear layers are re-fitted on their output
where ``core.output_fit`` applies (whole input patches as predictors, the original output as target, a
residual branch's error taken up where the output is added to one); every other consumer has its inputs
re-fitted by ridge regression of the original activations on the pruned ones: ``A = C (S'_JJ + tau I)^-1`` with ``C = E[z_F z'_J^T]`` (original x
pruned) and ``S' = E[z'_J z'_J^T]``. Each forward pass stops at the last node it needs and, where the
activations it left at the next group's first changed node fit in ``CACHE_BYTES``, the next group's pass
starts from them (``core.capture.Cursor``): about one forward pass per network in all on a chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import fx

from core.capture import Cursor, first_change
from core.covariance import _rows
from core.graph import ChannelGroup, Consumer, GraphAnalysis
from core.layout import Layout
from core.output_fit import OutputFit, plan
from core.reconstruct import Kept, Refits, assign, pruned_tensors
from core.rewrite import patch_shapes
from core.selection import ridge_solve

CACHE_BYTES = 1 << 30  # activations kept between layers (per network), to resume passes midway


def _observed(analysis: GraphAnalysis, consumers: list[Consumer]) -> dict[str, Layout]:
    """Each node feeding one of ``consumers``, with its channel layout (as a tensor axis)."""
    out = {}
    for c in consumers:
        rank = len(analysis.shapes[c.observed])
        out[c.observed] = c.layout.moved(1 if c.kind == "conv" else rank - 1)
    return out


def _cross_fit(
    cursors: tuple[Cursor, Cursor],
    starts: list[int],
    observed: dict[str, Layout],
    g: ChannelGroup,
    kept: Kept,
    done: dict[int, int],
    batches: Iterable[tuple[torch.Tensor, ...]],
    ridge: float,
    fits: list[OutputFit],
) -> dict[tuple[str, int], torch.Tensor]:
    """``A`` per (observed node, space) by ridge regression of original on pruned activations; the
    output-level ``fits`` are fed from the same passes."""
    cross: dict[tuple[str, int], torch.Tensor] = {}
    gram: dict[tuple[str, int], torch.Tensor] = {}
    energy: dict[tuple[str, int], float] = {}
    names = set(observed).union(*(f.nodes() for f in fits))
    for i, batch in enumerate(batches):
        before, after = (c.values(i, batch, names, at) for c, at in zip(cursors, starts, strict=True))
        for f in fits:
            f.add(after, before)
        for node, layout in observed.items():
            now = dict(layout.offsets(done))
            for seg, offset in layout.offsets():
                if seg.space not in g.spaces or seg.space not in kept:
                    continue
                x = _rows(before[node], layout, offset, seg.length, seg.block).double()  # (n, m)
                z = _rows(after[node], layout, now[seg], seg.length, seg.block).double()[:, kept[seg.space]]
                key = (node, seg.space)
                cross[key] = cross.get(key, 0) + x.T @ z  # sum z_F z'_J^T   (m, k)
                gram[key] = gram.get(key, 0) + z.T @ z  # sum z'_J z'_J^T  (k, k)
                energy[key] = energy.get(key, 0.0) + float((x * x).sum())  # tr(sum z_F z_F^T)
    maps = {}
    for key, s in gram.items():
        tau = ridge * energy[key] / cross[key].shape[0]  # tau = ridge tr(S) / m, as the independent re-fit
        maps[key] = ridge_solve(s, cross[key].T.contiguous(), tau).T  # A = C (S' + tau I)^-1
    return maps


def _majorise(
    cursors: tuple[Cursor, Cursor],
    starts: list[int],
    batches: list[tuple[torch.Tensor, ...]],
    fits: list[OutputFit],
    steps: int,
) -> None:
    """``steps`` majorisation passes for the ``fits`` a ReLU follows (``core.output_fit``)."""
    rectified = [f for f in fits if f.rectifier is not None]
    names = set().union(*(f.nodes() for f in rectified))
    for _ in range(steps if rectified else 0):
        for f in rectified:
            f.begin_step()
        for i, batch in enumerate(batches):
            before, after = (c.values(i, batch, names, at) for c, at in zip(cursors, starts, strict=True))
            for f in rectified:
                f.majorise(after, before)


def sequential_refit(
    work: fx.GraphModule,
    original: fx.GraphModule,
    analysis: GraphAnalysis,
    groups: list[ChannelGroup],
    kept: Kept,
    batches: list[tuple[torch.Tensor, ...]],
    ridge: float,
    on_group: Callable[[int, int], None] | None = None,
    output_level: bool = True,
    rectified_steps: int = 0,
) -> None:
    """Rewrite ``work`` (a copy of ``original``) group by group, re-fitting consumers as it goes: on
    their output where ``core.output_fit`` applies and ``output_level`` (with ``rectified_steps``
    majorisation passes where a ReLU follows), else on their input."""
    done: dict[int, int] = {}
    ordered = [g for g in sorted(groups, key=lambda g: g.position) if any(s in kept for s in g.spaces)]
    samples = sum(b[0].shape[0] for b in batches)
    cursors = Cursor(original, len(batches), CACHE_BYTES), Cursor(work, len(batches), CACHE_BYTES)
    for i, g in enumerate(ordered):
        starts = [first_change(c.gm, *analysis.rewritten_by(g)) for c in cursors]
        planned = (
            plan(work, original, analysis, c, g, kept, done, ridge, samples, rectified_steps > 0)
            for c in g.consumers
        )
        fits = [f for f in planned if f is not None] if output_level else []
        direct = {f.consumer.node for f in fits}
        by_channel = [c for c in g.consumers if c.node not in direct]
        maps = _cross_fit(
            cursors, starts, _observed(analysis, by_channel), g, kept, done, batches, ridge, fits
        )
        _majorise(cursors, starts, batches, fits, rectified_steps)
        refits: Refits = {}
        for c in by_channel:
            for s in set(g.spaces) & c.layout.spaces:
                if (c.observed, s) in maps:
                    refits[(c.weight, s)] = maps[(c.observed, s)].cpu()
        mine = {s: kept[s] for s in g.spaces if s in kept}
        new = pruned_tensors(work, analysis, mine, refits, done)
        for f in fits:
            w = f.weight()
            assert w.shape == new[f.consumer.weight].shape, (f.consumer.node, w.shape)
            new[f.consumer.weight] = w.to(new[f.consumer.weight])
        assign(work, new)
        done.update({s: len(j) for s, j in mine.items()})
        patch_shapes(work, analysis, done)
        if on_group is not None:
            on_group(i + 1, len(ordered))

"""Sequential re-fit: each consumer is re-fitted to the *already pruned* network upstream of it.

The independent re-fit ``A_J = S_FJ (S_JJ + tau I)^-1`` uses the original network's statistics, so the
errors of earlier layers add up. Here groups are rewritten in topological order; for each one the
calibration data runs through the original network and through the partly rewritten one, and the
consumers' inputs are re-fitted by ridge regression of the original activations on the pruned ones:
``A = C (S'_JJ + tau I)^-1`` with ``C = E[z_F z'_J^T]`` (original x pruned) and ``S' = E[z'_J z'_J^T]``.
Each forward pass stops at the last node it needs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import fx

from core.covariance import _rows
from core.graph import ChannelGroup, GraphAnalysis
from core.layout import Layout
from core.reconstruct import Kept, Refits, assign, pruned_tensors
from core.rewrite import patch_shapes
from core.selection import ridge_solve


class _Captured(Exception):
    """Raised to end a forward pass once every wanted node has run."""


def capture(gm: fx.GraphModule, names: set[str], inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """The outputs of the nodes ``names`` on ``inputs``, running the graph only as far as needed."""
    found: dict[str, torch.Tensor] = {}

    class _Interpreter(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if n.name in names:
                found[n.name] = out.detach()
                if len(found) == len(names):
                    raise _Captured
            return out

    with torch.no_grad(), contextlib.suppress(_Captured):
        _Interpreter(gm).run(*inputs)
    return found


def _observed(analysis: GraphAnalysis, g: ChannelGroup) -> dict[str, Layout]:
    """Each node feeding a consumer of ``g``, with its channel layout (as a tensor axis)."""
    out = {}
    for c in g.consumers:
        rank = len(analysis.shapes[c.observed])
        out[c.observed] = c.layout.moved(1 if c.kind == "conv" else rank - 1)
    return out


def _cross_fit(
    original: fx.GraphModule,
    work: fx.GraphModule,
    observed: dict[str, Layout],
    g: ChannelGroup,
    kept: Kept,
    done: dict[int, int],
    batches: Iterable[tuple[torch.Tensor, ...]],
    ridge: float,
) -> dict[tuple[str, int], torch.Tensor]:
    """``A`` per (observed node, space) by ridge regression of original on pruned activations."""
    cross: dict[tuple[str, int], torch.Tensor] = {}
    gram: dict[tuple[str, int], torch.Tensor] = {}
    energy: dict[tuple[str, int], float] = {}
    names = set(observed)
    for batch in batches:
        before, after = capture(original, names, batch), capture(work, names, batch)
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


def sequential_refit(
    work: fx.GraphModule,
    original: fx.GraphModule,
    analysis: GraphAnalysis,
    groups: list[ChannelGroup],
    kept: Kept,
    batches: list[tuple[torch.Tensor, ...]],
    ridge: float,
    on_group: Callable[[int, int], None] | None = None,
) -> None:
    """Rewrite ``work`` (a copy of ``original``) group by group, re-fitting consumers as it goes."""
    done: dict[int, int] = {}
    ordered = [g for g in sorted(groups, key=lambda g: g.position) if any(s in kept for s in g.spaces)]
    for i, g in enumerate(ordered):
        observed = _observed(analysis, g)
        maps = _cross_fit(original, work, observed, g, kept, done, batches, ridge)
        refits: Refits = {}
        for c in g.consumers:
            for s in set(g.spaces) & c.layout.spaces:
                if (c.observed, s) in maps:
                    refits[(c.weight, s)] = maps[(c.observed, s)].cpu()
        mine = {s: kept[s] for s in g.spaces if s in kept}
        assign(work, pruned_tensors(work, analysis, mine, refits, done))
        done.update({s: len(j) for s, j in mine.items()})
        patch_shapes(work, analysis, done)
        if on_group is not None:
            on_group(i + 1, len(ordered))

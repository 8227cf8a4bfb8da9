"""Sequential re-fit: each consumer is re-fitted to the *already pruned and re-fitted* network upstream.

The independent re-fit ``A_J = S_FJ (S_JJ + tau I)^-1`` uses the original network's statistics, so the
errors of earlier layers add up. Here every producer is narrowed first (the consumers keep their columns
``J``), then the consumers are re-fitted in topological order, each once everything it reads is final:
a residual stream's readers see the stream as the earlier blocks leave it, pruned and re-fitted. Each
step runs the calibration data through the original network and the rewritten one. With
``output_level`` (``refit="output"``), 2-D convolutions and linear layers are re-fitted on their output
where ``core.output_fit`` applies (whole input patches as predictors, the original output as target, a
residual branch's error taken up where the output is added to one), and so is a layer whose input
channels are all kept but changed by the pruning upstream (one reading a group kept whole); every other
consumer of a narrowed space has its inputs re-fitted by ridge regression of the original activations on
the pruned ones, ``W' = W A`` with ``A = C (S'_JJ + tau I)^-1``, ``C = E[z_F z'_J^T]`` (original x
pruned), ``S' = E[z'_J z'_J^T]``. Consumers that neither read nor take up each other's output share a
step. Each pass stops at the last node it needs and, where the activations it left where the last step's
weights are first read fit in ``CACHE_BYTES``, the next step starts from them (``core.capture.Cursor``):
about one forward pass per network in all on a chain. A step's majorisation passes read what its first
pass captured, held in memory up to ``STEP_BYTES`` (the rest is computed again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx

from core.capture import Cursor, downstream, first_change, nbytes
from core.covariance import _rows
from core.graph import ChannelGroup, Consumer, GraphAnalysis
from core.layout import Layout, channel_columns
from core.output_fit import OutputFit, plan
from core.reconstruct import Kept, Refits, assign, pruned_tensors
from core.rewrite import patch_shapes
from core.selection import block_diagonal, ridge_solve

CACHE_BYTES = 1 << 30  # activations kept between layers (per network), to resume passes midway
STEP_BYTES = 1 << 30  # captured values a step keeps for its majorisation passes, which read the same

Values = dict[str, Any]


@dataclass
class _Step:
    """Consumers re-fitted together: on their output (``fits``) or on their input channels (``by_channel``)."""

    fits: list[OutputFit]
    by_channel: list[Consumer]

    @property
    def weights(self) -> set[str]:
        return {f.consumer.weight for f in self.fits} | {c.weight for c in self.by_channel}


def _consumers(
    work: fx.GraphModule, groups: list[ChannelGroup], kept: Kept, reached: set[str]
) -> list[Consumer]:
    """Every consumer that reads a narrowed space or a node the narrowing ``reached`` (a layer reading a
    group kept whole behind pruned ones), once per weight, in graph order."""
    index = {n.name: i for i, n in enumerate(work.graph.nodes)}
    found: dict[str, Consumer] = {}
    for g in groups:
        for c in g.consumers:
            if c.layout.spaces & set(kept) or c.observed in reached:
                found.setdefault(c.weight, c)
    return sorted(found.values(), key=lambda c: index.get(c.node, len(index)))


def _steps(work: fx.GraphModule, planned: list[tuple[Consumer, OutputFit | None]]) -> list[_Step]:
    """Group the consumers into steps: each one after every consumer whose weight changes its input, and
    where it can, after those whose weight changes the addend whose error it takes up (in a cycle, two
    branches of one sum, the first in graph order goes first and the other absorbs what is left)."""
    reach = {c.weight: {n.name for n in downstream(work, {c.weight})} for c, _ in planned}

    def changed_by(c: Consumer, node: str | None) -> set[str]:  # the other weights that change ``node``
        return {w for w, nodes in reach.items() if w != c.weight and node in nodes}

    reads = {c.weight: changed_by(c, c.observed) for c, _ in planned}
    takes_up = {c.weight: changed_by(c, f.addend.node if f and f.addend else None) for c, f in planned}
    remaining, steps = list(planned), []
    while remaining:
        pending = {c.weight for c, _ in remaining}
        ready = [(c, f) for c, f in remaining if not reads[c.weight] & pending]
        settled = [(c, f) for c, f in ready if not takes_up[c.weight] & pending]
        chosen = settled or ready[:1] or remaining[:1]
        steps.append(_Step([f for _, f in chosen if f], [c for c, f in chosen if f is None]))
        taken = {c.weight for c, _ in chosen}
        remaining = [(c, f) for c, f in remaining if c.weight not in taken]
    return steps


def _observed(analysis: GraphAnalysis, consumers: list[Consumer]) -> dict[str, Layout]:
    """Each node feeding one of ``consumers``, with its channel layout (as a tensor axis)."""
    out = {}
    for c in consumers:
        rank = len(analysis.shapes[c.observed])
        out[c.observed] = c.layout.moved(rank - 1 if c.kind == "linear" else 1)
    return out


@dataclass
class _Passes:
    """One step's passes over the calibration data: per batch, the original network's values and the
    pruned one's. The weights change only once the step ends, so the values a pass asks to ``keep`` are
    held (up to ``budget`` bytes, batch by batch) and a later pass of the step reads them from memory."""

    cursors: tuple[Cursor, Cursor]
    start: int
    batches: list[tuple[torch.Tensor, ...]]
    budget: int
    held: dict[int, tuple[Values, Values]] = field(default_factory=dict)

    def run(
        self, names: tuple[set[str], set[str]], keep: tuple[set[str], set[str]] = (set(), set())
    ) -> Iterator[tuple[Values, Values]]:
        """``(original, pruned)`` values of ``names`` per batch; where a batch is held, what it holds."""
        used = sum(nbytes(a) + nbytes(b) for a, b in self.held.values())
        for i, batch in enumerate(self.batches):
            held = self.held.get(i)
            if held is not None and all(n <= h.keys() for n, h in zip(names, held, strict=True)):
                yield held
                continue
            before = self.cursors[0].values(i, batch, names[0], self.start)
            after = self.cursors[1].values(i, batch, names[1], self.start)
            yield before, after
            kept = {n: before[n] for n in keep[0]}, {n: after[n] for n in keep[1]}
            size = nbytes(kept[0]) + nbytes(kept[1])
            if any(keep) and used + size <= self.budget:
                self.held[i], used = kept, used + size


def _names(fits: list[OutputFit], observed: Iterable[str] = ()) -> tuple[set[str], set[str]]:
    """The nodes ``fits`` (and the channel re-fits of the ``observed`` nodes) read in each network."""
    nodes = [f.nodes() for f in fits]
    return set(observed).union(*(o for o, _ in nodes)), set(observed).union(*(p for _, p in nodes))


def _cross_fit(
    passes: _Passes,
    observed: dict[str, Layout],
    kept: Kept,
    ridge: float,
    fits: list[OutputFit],
    rectified: bool,
    grouped: dict[str, int],
    head_dims: dict[int, int],
) -> dict[tuple[str, int], torch.Tensor]:
    """``A`` per (observed node, narrowed space) by ridge regression of original on pruned activations
    (block diagonal where a convolution with ``grouped[node]`` groups reads the node; over every column
    of a space of heads of ``head_dims[space]`` columns);
    the output-level ``fits`` are fed from the same passes, which hold what the ``rectified`` ones'
    majorisation passes will read again."""
    widths = {s: len(j) for s, j in kept.items()}
    cross: dict[tuple[str, int], torch.Tensor] = {}
    gram: dict[tuple[str, int], torch.Tensor] = {}
    energy: dict[tuple[str, int], float] = {}
    keep = _names([f for f in fits if f.rectifier is not None]) if rectified else (set(), set())
    for before, after in passes.run(_names(fits, observed), keep):
        for f in fits:
            f.add(after, before)
        for node, layout in observed.items():
            now = dict(layout.offsets(widths))
            for seg, offset in layout.offsets():
                if seg.space not in kept:
                    continue
                by_column = seg.space in head_dims
                x = _rows(before[node], layout, offset, seg.length, seg.block, by_column).double()  # (n, m)
                z = _rows(after[node], layout, now[seg], widths[seg.space], seg.block, by_column).double()
                key = (node, seg.space)
                cross[key] = cross.get(key, 0) + x.T @ z  # sum z_F z'_J^T   (m, k)
                gram[key] = gram.get(key, 0) + z.T @ z  # sum z'_J z'_J^T  (k, k)
                energy[key] = energy.get(key, 0.0) + float((x * x).sum())  # tr(sum z_F z_F^T)
    maps = {}
    for key, s in gram.items():
        tau = ridge * energy[key] / cross[key].shape[0]  # tau = ridge tr(S) / m, as the independent re-fit
        j = channel_columns(kept[key[1]], head_dims.get(key[1], 1))
        maps[key] = _cross_map(s, cross[key], tau, j, grouped.get(key[0], 1))
    return maps


def _cross_map(
    gram: torch.Tensor, cross: torch.Tensor, tau: float, kept: torch.Tensor, blocks: int
) -> torch.Tensor:
    """``A = C (S' + tau I)^-1``; with ``blocks``, each run of channels from its own kept ones only."""
    return block_diagonal(
        cross.shape[0],
        kept,
        blocks,
        lambda f, j: ridge_solve(gram[j][:, j], cross[f][:, j].T.contiguous(), tau).T,
    )


def _majorise(passes: _Passes, fits: list[OutputFit], steps: int) -> None:
    """``steps`` majorisation passes for the ``fits`` a ReLU follows (``core.output_fit``)."""
    rectified = [f for f in fits if f.rectifier is not None]
    names = _names(rectified)
    for _ in range(steps if rectified else 0):
        for f in rectified:
            f.begin_step()
        for before, after in passes.run(names):
            for f in rectified:
                f.majorise(after, before)


def _refitted(
    original: fx.GraphModule,
    analysis: GraphAnalysis,
    kept: Kept,
    step: _Step,
    maps: dict[tuple[str, int], torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The step's new weights: ``W' = W A`` from the original weights for the channel re-fits (rows and
    other spaces' columns sliced), the solved ``W'`` for the output-level fits."""
    refits: Refits = {}
    for c in step.by_channel:
        for s in c.layout.spaces & set(kept):
            if (c.observed, s) in maps:
                refits[(c.weight, s)] = maps[(c.observed, s)].cpu()
    new = pruned_tensors(original, analysis, kept, refits, {c.weight for c in step.by_channel})
    return new | {f.consumer.weight: f.weight() for f in step.fits}


def sequential_refit(
    work: fx.GraphModule,
    original: fx.GraphModule,
    analysis: GraphAnalysis,
    groups: list[ChannelGroup],
    kept: Kept,
    batches: list[tuple[torch.Tensor, ...]],
    ridge: float,
    on_step: Callable[[int, int], None] | None = None,
    output_level: bool = True,
    rectified_steps: int = 0,
    head_dims: dict[int, int] | None = None,
) -> None:
    """Narrow ``work`` (a copy of ``original``) to ``kept``, then re-fit its consumers step by step: on
    their output where ``core.output_fit`` applies and ``output_level`` (with ``rectified_steps``
    majorisation passes where a ReLU follows), else on their input channels (every column of a space
    of attention heads, ``head_dims``: space -> D)."""
    narrowed = pruned_tensors(work, analysis, kept, {})
    assign(work, narrowed)
    patch_shapes(work, analysis, {s: len(j) for s, j in kept.items()})
    samples = sum(b[0].shape[0] for b in batches)
    reached = {n.name for n in downstream(work, set(narrowed))}
    del narrowed  # the narrowed tensors live on in ``work`` until their re-fit replaces them
    consumers = _consumers(work, groups, kept, reached)
    fits = [
        plan(work, original, analysis, c, kept, ridge, samples, rectified_steps > 0) if output_level else None
        for c in consumers
    ]
    planned = [  # a layer reading no narrowed space is re-fitted on its output or not at all
        (c, f) for c, f in zip(consumers, fits, strict=True) if f is not None or c.layout.spaces & set(kept)
    ]
    steps = _steps(work, planned)
    del fits, planned  # only the steps hold the fits now, and each is dropped once done (G is F x F)
    cursors = Cursor(original, len(batches), CACHE_BYTES), Cursor(work, len(batches), CACHE_BYTES)
    start = 0
    for i in range(len(steps)):
        step, steps[i] = steps[i], _Step([], [])
        passes = _Passes(cursors, start, batches, STEP_BYTES)
        observed = _observed(analysis, step.by_channel)
        grouped = {c.observed: c.groups for c in step.by_channel if c.groups > 1}
        maps = _cross_fit(
            passes, observed, kept, ridge, step.fits, rectified_steps > 0, grouped, head_dims or {}
        )
        _majorise(passes, step.fits, rectified_steps)
        del passes  # what it held
        new = _refitted(original, analysis, kept, step, maps)
        present = dict(work.named_parameters())
        for name, w in new.items():
            assert w.shape == present[name].shape, (name, w.shape, present[name].shape)
        assign(work, {name: w.to(present[name]) for name, w in new.items()})
        start = first_change(work, step.weights, set())
        if on_step is not None:
            on_step(i + 1, len(steps))

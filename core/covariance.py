"""Streaming uncentered second moments ``S = (1/n) sum phi phi^T`` at each observed tensor.

Observers are spliced into a copy of the graph right after each observed node; every batch adds
``X^T X`` for the channels of each space found there, so memory is ``O(sum m^2)`` whatever the
calibration size. Each batch's product runs in float32 (TF32 off), the running sum is float64.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import fx

from core.layout import FIXED, Layout


@dataclass
class Moments:
    """Running ``sum X^T X`` and row count for one space at one observed tensor."""

    total: torch.Tensor  # (m, m) float64
    rows: int = 0

    @property
    def second_moment(self) -> torch.Tensor:
        return self.total / max(self.rows, 1)  # S = (1/n) sum phi phi^T


@dataclass(frozen=True)
class Observation:
    """Gather statistics for ``spaces`` at the output of ``node``, whose channel ``layout`` is known;
    those in ``by_column`` (attention heads) column by column, not a channel's block of columns folded."""

    node: str
    layout: Layout
    spaces: frozenset[int]
    by_column: frozenset[int] = frozenset()


def _rows(
    t: torch.Tensor, layout: Layout, offset: int, length: int, block: int, by_column: bool = False
) -> torch.Tensor:
    """The observations of one segment as a (n, length) matrix, or (N, length*block) ``by_column``."""
    x = t.movedim(layout.axis, -1)  # (..., columns)
    x = x.reshape(-1, x.shape[-1])[:, offset : offset + length * block]  # (N, length*block)
    if block > 1 and not by_column:  # a flattened channel owns `block` consecutive columns
        x = x.reshape(-1, length, block).transpose(1, 2).reshape(-1, length)  # (N*block, length)
    return x


def _observer(obs: Observation, store: dict[tuple[str, int], Moments]) -> Callable[[torch.Tensor], None]:
    def observe(t: torch.Tensor) -> None:
        for seg, offset in obs.layout.offsets():
            if seg.space == FIXED or seg.space not in obs.spaces:
                continue
            by_column = seg.space in obs.by_column
            x = _rows(t.detach(), obs.layout, offset, seg.length, seg.block, by_column).float()
            key = (obs.node, seg.space)
            m = store.get(key)
            if m is None:
                m = store[key] = Moments(
                    torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
                )
            m.total += (x.T @ x).double()
            m.rows += x.shape[0]

    return observe


def instrument(gm: fx.GraphModule, observations: Iterable[Observation]) -> tuple[fx.GraphModule, dict]:
    """A copy of ``gm`` that records moments into the returned dict as it runs."""
    observed = copy.deepcopy(gm)
    store: dict[tuple[str, int], Moments] = {}
    nodes = {n.name: n for n in observed.graph.nodes}
    for obs in observations:
        node = nodes[obs.node]
        with observed.graph.inserting_after(node):
            observed.graph.call_function(_observer(obs, store), (node,))
    observed.recompile()
    return observed, store


def collect_moments(
    gm: fx.GraphModule,
    observations: list[Observation],
    batches: Iterable[tuple[torch.Tensor, ...]],
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> dict[tuple[str, int], Moments]:
    """Run every batch through an instrumented copy of ``gm``; return moments by (node, space)."""
    observed, store = instrument(gm, observations)
    observed.to(device)
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.no_grad():
            for i, batch in enumerate(batches):
                observed(*(x.to(device, non_blocking=True) for x in batch))
                if on_batch is not None:
                    on_batch(i)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    return store

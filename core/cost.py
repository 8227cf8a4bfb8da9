"""FLOPs and parameter counts as functions of the kept widths, for the width search.

A conv or linear layer's FLOPs are proportional to its weight's size, so each scales with the ratio
of its kept input and output widths, and attention's matrix products (``q @ k^T``, ``a @ v``) with the
heads kept; FLOPs the analysis does not model are fixed.
Parameters likewise: each tensor's size scales with the ratio of every channel axis it has.
"""

from __future__ import annotations

import math

from torch import fx

from core.graph import GraphAnalysis
from core.layout import Layout

Widths = dict[int, int]  # space -> kept channels


def _ratio(layout: Layout | None, widths: Widths) -> float:
    if layout is None:
        return 1.0
    return layout.columns_for(widths) / layout.columns


class CostModel:
    def __init__(self, analysis: GraphAnalysis, gm: fx.GraphModule, measured_flops: float) -> None:
        self.compute = analysis.compute
        self.modelled_flops = sum(c.flops for c in self.compute)
        self.fixed_flops = max(measured_flops - self.modelled_flops, 0.0)
        axes: dict[str, list[Layout]] = {}
        for pa in analysis.param_axes:
            axes.setdefault(pa.target, []).append(pa.layout)
        self.parameters = [(p.numel(), axes.get(name, [])) for name, p in gm.named_parameters()]
        self.total_flops = self.flops({})
        self.total_params = self.params({})

    def flops(self, widths: Widths) -> float:
        """Per-sample FLOPs (a multiply-add counts 2) at ``widths``."""
        scaled = sum(c.flops * _ratio(c.inputs, widths) * _ratio(c.outputs, widths) for c in self.compute)
        return self.fixed_flops + scaled

    def params(self, widths: Widths) -> float:
        return sum(n * math.prod(_ratio(lay, widths) for lay in lays) for n, lays in self.parameters)

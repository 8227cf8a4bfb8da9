"""Write the pruned network: slice producers and per-channel parameters, re-fit consumers.

Producer rows, BatchNorm entries, depthwise kernels and per-channel scales keep the indices ``J``.
A consumer's input axis becomes ``W' = W A_J`` (per kernel position for a conv, per ``H*W`` block after a
flatten; over whole columns for attention heads, whose map is ``H*D x k*D``) when a re-fit map is given,
else it keeps the columns ``J`` (the L1 and random baselines).
A grouped convolution's input axis holds, for each block of output rows, only its own run of channels:
each block takes its run's part of ``A_J`` (block diagonal) or of ``J``.
A space that keeps every channel is left exactly as it was.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from core.graph import GraphAnalysis, ParamAxis
from core.layout import FIXED, channel_columns
from core.selection import runs

Kept = dict[int, torch.Tensor]  # space -> sorted kept indices (absent: keeps everything)
Refits = dict[tuple[str, int], torch.Tensor]  # (consumer weight, space) -> A_J (m x k; by column: mD x kD)


def _edit_axis(t: torch.Tensor, pa: ParamAxis, kept: Kept, refits: Refits) -> torch.Tensor:
    """Edit one axis for the spaces in ``kept``."""
    if pa.groups > 1:
        return _edit_grouped(t, pa, kept, refits)
    pieces = []
    for seg, offset in pa.layout.offsets():
        part = t.narrow(pa.axis, offset, seg.length * seg.block)
        keep = kept.get(seg.space) if seg.space != FIXED else None
        if keep is None:
            pieces.append(part)
            continue
        refit = refits.get((pa.target, seg.space)) if pa.refit else None
        if refit is not None:
            by_column = refit.shape[0] == seg.columns  # a map over a head space's columns, not its channels
            pieces.append(_apply_refit(part, pa.axis, refit, 1 if by_column else seg.block))
        else:
            cols = channel_columns(keep, seg.block)  # channel j -> its block
            pieces.append(part.index_select(pa.axis, cols.to(t.device)))
    return torch.cat(pieces, dim=pa.axis)


def _edit_grouped(t: torch.Tensor, pa: ParamAxis, kept: Kept, refits: Refits) -> torch.Tensor:
    """A grouped convolution's input axis (one space): row block b keeps or re-fits its run b."""
    (seg,) = pa.layout.segments
    keep = kept.get(seg.space)
    if keep is None:
        return t
    refit = refits.get((pa.target, seg.space))
    rows = t.shape[0] // pa.groups
    pieces = []
    for b, (f, j) in enumerate(runs(seg.length, keep, pa.groups)):
        part = t.narrow(0, b * rows, rows)
        if refit is not None:
            pieces.append(_apply_refit(part, pa.axis, refit[f][:, j], 1))
        else:
            pieces.append(part.index_select(pa.axis, (keep[j] - int(f[0])).to(t.device)))
    return torch.cat(pieces, dim=0)


def _apply_refit(part: torch.Tensor, axis: int, a: torch.Tensor, block: int) -> torch.Tensor:
    """``W' = W A_J`` along ``axis``, where each channel owns ``block`` consecutive columns."""
    w = part.movedim(axis, -1).double()  # (..., m*block)
    lead = w.shape[:-1]
    w = w.reshape(*lead, -1, block).transpose(-1, -2)  # (..., block, m)
    w = w @ a.to(w.device)  # (..., block, k)
    w = w.transpose(-1, -2).reshape(*lead, -1)  # (..., k*block)
    return w.to(part.dtype).movedim(-1, axis)


def pruned_tensors(
    gm: fx.GraphModule,
    analysis: GraphAnalysis,
    kept: Kept,
    refits: Refits,
    only: set[str] | None = None,
) -> dict[str, torch.Tensor]:
    """The new value of every parameter or buffer (of those named in ``only``, where given) that changes
    when the spaces in ``kept`` keep those channels."""
    state = dict(gm.named_parameters()) | dict(gm.named_buffers())
    by_target: dict[str, list[ParamAxis]] = {}
    for pa in analysis.param_axes:
        if any(s in kept for s in pa.layout.spaces) and (only is None or pa.target in only):
            by_target.setdefault(pa.target, []).append(pa)
    out = {}
    with torch.no_grad():
        for target, axes in by_target.items():
            t = state[target].detach()
            for pa in sorted(axes, key=lambda p: p.axis):
                t = _edit_axis(t, pa, kept, refits)
            out[target] = t.contiguous()
    return out


def assign(gm: fx.GraphModule, tensors: dict[str, torch.Tensor]) -> None:
    """Replace parameters and buffers of ``gm`` by name, keeping their kind."""
    for target, value in tensors.items():
        owner_name, _, attr = target.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(value, requires_grad=False)
        elif attr in owner._buffers:
            owner._buffers[attr] = value
        else:
            setattr(owner, attr, value)

"""Channel layouts: which producer's channels sit where along a tensor's channel axis.

A *space* is the output-channel axis of one producer (a conv or linear layer with a parameter weight).
As a tensor flows through channel-wise ops its channel axis keeps pointing at the same spaces; a concat
along that axis lays several spaces side by side; a flatten into a linear layer turns every channel into
a block of ``H*W`` columns. ``FIXED`` marks channels no producer owns (e.g. the model input): they are
never pruned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

FIXED = -1


@dataclass(frozen=True)
class Segment:
    """``length`` consecutive channels of one space; each channel spans ``block`` columns."""

    space: int
    length: int
    block: int = 1

    @property
    def columns(self) -> int:
        return self.length * self.block


@dataclass(frozen=True)
class Layout:
    """The spaces laid along ``axis`` of a tensor, in order."""

    axis: int
    segments: tuple[Segment, ...]

    @property
    def columns(self) -> int:
        return sum(s.columns for s in self.segments)

    @property
    def spaces(self) -> set[int]:
        return {s.space for s in self.segments if s.space != FIXED}

    @property
    def blocked(self) -> bool:
        return any(s.block > 1 for s in self.segments)

    def moved(self, axis: int) -> Layout:
        return replace(self, axis=axis)

    def repeated(self, times: int) -> Layout:
        """Each channel spanning ``times`` as many columns (a merge with the axis after it, a repeat)."""
        return replace(self, segments=tuple(replace(s, block=s.block * times) for s in self.segments))

    def offsets(self, widths: dict[int, int] | None = None) -> list[tuple[Segment, int]]:
        """Each segment with the column where it starts (spaces in ``widths`` already narrowed)."""
        out, start = [], 0
        for seg in self.segments:
            out.append((seg, start))
            length = widths.get(seg.space, seg.length) if widths and seg.space != FIXED else seg.length
            start += length * seg.block
        return out

    def between(self, begin: int, end: int) -> Layout | None:
        """The layout of columns ``[begin, end)``: the segments between them, or None where either falls
        inside a segment."""
        starts = {offset: i for i, (_seg, offset) in enumerate(self.offsets())} | {
            self.columns: len(self.segments)
        }
        if begin not in starts or end not in starts:
            return None
        return replace(self, segments=self.segments[starts[begin] : starts[end]])

    def columns_for(self, widths: dict[int, int]) -> int:
        """Width of this axis once every space ``s`` keeps ``widths[s]`` channels."""
        return sum(
            (s.length if s.space == FIXED else widths.get(s.space, s.length)) * s.block for s in self.segments
        )


def channel_columns(channels: torch.Tensor, block: int) -> torch.Tensor:
    """The columns of ``channels`` where each channel owns ``block`` consecutive columns, in order."""
    return (channels[:, None] * block + torch.arange(block, device=channels.device)).flatten()


def kept_columns(layout: Layout | None, kept: Mapping[int, torch.Tensor], columns: int) -> torch.Tensor:
    """The columns of an axis laid out as ``layout`` that remain once each space ``s`` keeps the channels
    ``kept[s]`` (all of them where absent), as indices into the original axis of ``columns``."""
    if layout is None:
        return torch.arange(columns)
    out = []
    for seg, offset in layout.offsets():
        chans = kept.get(seg.space, torch.arange(seg.length))
        out.append(offset + channel_columns(chans, seg.block))
    return torch.cat(out)


@dataclass(frozen=True)
class Stacked:
    """Layouts stacked along ``axis``: index ``i`` of that axis holds channels laid out as ``parts[i]``
    (a fused q/k/v projection viewed as ``(3, heads, head_dim)``: q's, k's and v's heads)."""

    axis: int
    parts: tuple[Layout, ...]


@dataclass(frozen=True)
class Folded:
    """Attention heads folded into a batch axis: ``axis`` has ``batch * heads`` entries, the heads laid out
    as ``heads`` the inner factor (``nn.MultiheadAttention`` views q as ``(N, B * H, D)`` for ``bmm``)."""

    axis: int
    heads: Layout

    def moved(self, axis: int) -> Folded:
        return Folded(axis, self.heads.moved(axis))

"""Width allocation: how many channels each group keeps.

Three rules: ``alpha`` (each group keeps the fewest channels whose retained ratio reaches alpha),
a global target on FLOPs or parameters (one shared knob found by bisection, so fast-decaying spectra
shrink most, then a channel-by-channel fill to land within tolerance), and explicit widths.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core.errors import ConfigError, TargetUnreachableError
from core.graph import ChannelGroup

GroupWidths = dict[str, int]
Priority = Callable[[str, int, int, float], float]  # (group, width, larger width, cost added) -> gain rate


def for_alpha(groups: list[ChannelGroup], retained: dict[str, np.ndarray], alpha: float) -> GroupWidths:
    """Per group, the smallest k >= 1 (a multiple of its ``blocks``) with ``retained[k] >= alpha``
    (``retained[k]``: ratio kept by k). ``alpha = 1`` keeps every channel, even ones the data never
    excites."""
    out = {}
    for g in groups:
        if alpha >= 1.0:
            out[g.name] = g.size
            continue
        ks = np.arange(g.blocks, g.size + 1, g.blocks)
        reached = retained[g.name][ks] >= alpha - 1e-12
        out[g.name] = int(ks[np.argmax(reached)]) if reached.any() else g.size
    return out


def for_fraction(groups: list[ChannelGroup], fraction: float) -> GroupWidths:
    """The same fraction of every group (the usual allocation of the L1 and random baselines)."""
    return {
        g.name: g.blocks * max(1, min(g.size // g.blocks, round(fraction * g.size / g.blocks)))
        for g in groups
    }


def explicit(groups: list[ChannelGroup], skipped: dict[str, str], widths: dict[str, int]) -> GroupWidths:
    sizes = {g.name: g.size for g in groups}
    blocks = {g.name: g.blocks for g in groups}
    for name, k in widths.items():
        if name in skipped:
            raise ConfigError(f"widths names group {name!r}, which cannot be pruned: {skipped[name]}")
        if name not in sizes:
            raise ConfigError(f"widths names unknown group {name!r}; prunable groups: {', '.join(sizes)}")
        if k > sizes[name]:
            raise ConfigError(f"widths asks {k} channels of {name!r}, which has {sizes[name]}")
        if k % blocks[name]:
            raise ConfigError(
                f"widths asks {k} channels of {name!r}, which a grouped convolution splits into "
                f"{blocks[name]} runs: give a multiple of {blocks[name]}"
            )
    return {name: widths.get(name, size) for name, size in sizes.items()}


def meet_target(
    groups: list[ChannelGroup],
    knob: Callable[[float], GroupWidths],
    cost: Callable[[GroupWidths], float],
    target: float,
    priority: Priority,
    what: str,
    limiting: list[str],
    tolerance: float = 0.01,
) -> GroupWidths:
    """Widths whose ``cost`` (a fraction of the original) is within ``tolerance`` (relative) of target.

    ``knob(t)`` maps t in [0, 1] to widths with cost non-decreasing in t; bisection finds the largest
    t under target; then single channels (a run's worth where a grouped convolution needs equal runs)
    are added where ``priority(group, width, new width, added_cost)`` is highest.
    """
    full = {g.name: g.size for g in groups}
    if cost(full) <= target * (1 + tolerance):
        return full
    floor = {g.name: g.blocks for g in groups}
    step = floor
    if cost(floor) > target * (1 + tolerance):
        raise TargetUnreachableError(
            f"{what} target {target:.4g} cannot be met: even one channel per prunable group keeps "
            f"{cost(floor):.4g}; the cost is held by layers that cannot be pruned: {', '.join(limiting[:8])}"
        )
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if cost(knob(mid)) <= target:
            lo = mid
        else:
            hi = mid
    widths = {name: max(step[name], k) for name, k in knob(lo).items()}
    if cost(widths) > target * (1 + tolerance):
        widths = floor
    sizes = {g.name: g.size for g in groups}
    while cost(widths) < target * (1 - tolerance / 2):
        best, best_p = None, -float("inf")
        for name, k in widths.items():
            if k >= sizes[name]:
                continue
            trial = {**widths, name: k + step[name]}
            added = cost(trial)
            if added > target * (1 + tolerance / 2):
                continue
            p = priority(name, k, k + step[name], added - cost(widths))
            if p > best_p:
                best, best_p = name, p
        if best is None:
            break
        widths[best] += step[best]
    if cost(widths) < target * (1 - tolerance):  # coarse channels: no single addition lands in the band
        widths = _swap_into_band(widths, sizes, step, cost, target, tolerance, priority)
    return widths


def _swap_into_band(
    widths: GroupWidths,
    sizes: dict[str, int],
    step: dict[str, int],
    cost: Callable[[GroupWidths], float],
    target: float,
    tolerance: float,
    priority: Priority,
) -> GroupWidths:
    """Add a channel to one group and take one from another, choosing the pair with the best
    priority balance among those whose cost lands within ``tolerance`` of the target."""
    now = cost(widths)
    best, best_score = None, -float("inf")
    for a, ka in widths.items():
        if ka >= sizes[a]:
            continue
        added = {**widths, a: ka + step[a]}
        gain = priority(a, ka, ka + step[a], cost(added) - now)
        for b, kb in widths.items():
            if b == a or kb <= step[b]:
                continue
            trial = {**added, b: kb - step[b]}
            c = cost(trial)
            if abs(c - target) > target * tolerance:
                continue
            score = gain - priority(b, kb - step[b], kb, cost(added) - c)
            if score > best_score:
                best, best_score = trial, score
    return best if best is not None else widths

"""The spectrum of a layer's second moment and the theory's quantities derived from it."""

from __future__ import annotations

import math

import torch


def eigenvalues(s: torch.Tensor) -> torch.Tensor:
    """Eigenvalues ``mu_1 >= mu_2 >= ...`` of the symmetric matrix ``s`` (clipped at 0)."""
    mu = torch.linalg.eigvalsh(0.5 * (s + s.T))
    return mu.flip(0).clamp_min(0.0)


def degrees_of_freedom(mu: torch.Tensor, lam: float) -> float:
    """``N(lambda) = sum_j mu_j / (mu_j + lambda)``."""
    if lam <= 0:
        return float((mu > 0).sum())
    return float((mu / (mu + lam)).sum())


def theory_width(dof: float) -> float:
    """The theory's sufficient width ``5 N log(80 N)`` (far too loose to prune by; reported only)."""
    return 5.0 * dof * math.log(80.0 * dof) if dof > 1.0 / 80.0 else 0.0


def bias_lambda(mu: torch.Tensor, width: int) -> float:
    """The ``lambda`` at which the theory certifies ``width``: solves ``5 N log(80 N) = width``.

    ``theory_width(N(lambda))`` falls as ``lambda`` grows, so a bisection on ``log lambda`` finds it.
    Returned relative to ``tr S`` (so 0.01 means lambda = 0.01 tr S).
    """
    trace = float(mu.sum())
    if trace <= 0:
        return 0.0
    lo, hi = -30.0, 10.0  # log10 of lambda / tr S
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if theory_width(degrees_of_freedom(mu, 10.0**mid * trace)) > width:
            lo = mid
        else:
            hi = mid
    return 10.0**hi

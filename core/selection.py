"""Greedy forward channel selection with rank-one Schur updates (the fast form of spectral pruning).

With ``R = S`` and ``J = {}``, each step adds the channel ``k`` maximising
``(theta ||R[:,k]||^2 + (1-theta) R[:,k]^T G R[:,k]) / (R_kk + tau)`` and updates
``R <- R - R[:,k] R[k,:] / (R_kk + tau)``. ``G = W^T W`` (scaled to trace m) folds the consumers'
weights in, so ``tr(R)`` is the input-aware loss ``L_A`` and ``tr(G R)`` the output-aware ``L_B``.
Every step is O(m^2); no inverse per candidate. Where a grouped convolution splits the channels into
``blocks`` equal runs, a pick may come only from a run with the fewest picks so far, so every width
that is a multiple of ``blocks`` keeps the same number from each run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class Selection:
    """Channels in the order greedy picked them, with both losses after each prefix."""

    order: torch.Tensor  # (m,) long: order[:k] is the kept set of width k
    loss_input: torch.Tensor  # (m+1,) L_A after k picks
    loss_output: torch.Tensor  # (m+1,) L_B after k picks
    trace: float  # tr S

    def retained(self, k: int) -> float:
        """``1 - L_A(J_k) / tr S``."""
        return 1.0 - float(self.loss_input[k]) / self.trace if self.trace > 0 else 1.0


def consumer_gram(weights: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """``G = sum_c sum_positions W^T W`` over consumers, scaled so ``tr G = m``.

    Each weight is (out, m / groups, positions) with its ``groups``: kernel positions for a conv, H*W
    blocks for flatten->linear; a grouped convolution's row block b reads only run b of the m channels,
    so its part of ``G`` is block diagonal.
    """
    g = sum(_gram(w, groups) for w, groups in weights)  # (m, m)
    assert isinstance(g, torch.Tensor)
    tr = float(torch.trace(g))
    return g * (g.shape[0] / tr) if tr > 0 else g


def _gram(w: torch.Tensor, groups: int) -> torch.Tensor:
    """``sum_positions W^T W`` of one consumer (out, m / groups, positions), block by block."""
    rows = w.shape[0] // groups
    blocks = [torch.einsum("oip,ojp->ij", part, part) for part in w.split(rows)]
    return blocks[0] if groups == 1 else torch.block_diag(*blocks)


def greedy_select(
    s: torch.Tensor,
    g: torch.Tensor | None,
    theta: float,
    tau: float,
    steps: int | None = None,
    blocks: int = 1,
) -> Selection:
    """Run greedy selection on second moment ``s`` (m x m, float64) for ``steps`` picks (default m),
    in turn from ``blocks`` equal runs of channels."""
    m = s.shape[0]
    run = torch.arange(m, device=s.device) // (m // blocks)  # the run each channel belongs to
    count = torch.zeros(blocks, dtype=torch.long, device=s.device)
    steps = m if steps is None else min(steps, m)
    r = s.clone()
    g = torch.eye(m, dtype=s.dtype, device=s.device) if g is None else g
    col_a = (r * r).sum(0)  # ||R[:,k]||^2
    col_b = (r * (g @ r)).sum(0)  # R[:,k]^T G R[:,k]
    la, lb = [float(torch.trace(r))], [float(torch.trace(g @ r))]
    trace = la[0]
    picked = torch.zeros(m, dtype=torch.bool, device=s.device)
    order: list[int] = []
    for _ in range(steps):
        if la[-1] <= 1e-12 * trace:  # the rest is explained: no pick changes anything
            break
        gain = (theta * col_a + (1 - theta) * col_b) / (torch.diagonal(r) + tau)
        gain = gain.masked_fill(picked | (count[run] > count.min()), -torch.inf)
        k = int(torch.argmax(gain))
        count[run[k]] += 1
        v = r[:, k].clone()
        d = float(v[k]) + tau
        rv, gv = r @ v, g @ v
        rgv = r @ gv
        vv, vgv = float(v @ v), float(v @ gv)
        col_a += -2 * v * rv / d + v * v * vv / d**2  # ||R'[:,j]||^2
        col_b += -2 * v * rgv / d + v * v * vgv / d**2  # R'[:,j]^T G R'[:,j]
        r -= torch.outer(v, v) / d  # R <- R - r r^T / (R_kk + tau)
        picked[k] = True
        order.append(k)
        la.append(la[-1] - vv / d)
        lb.append(lb[-1] - vgv / d)
    rest = torch.nonzero(~picked).flatten()
    rest = rest[torch.argsort(torch.diagonal(r)[rest], descending=True)]
    full = balanced(torch.cat([torch.tensor(order, dtype=torch.long, device=s.device), rest]), blocks)
    pad = m + 1 - len(la)
    loss_a = torch.tensor(la + [max(la[-1], 0.0)] * pad, dtype=torch.float64).clamp_min(0.0)
    loss_b = torch.tensor(lb + [max(lb[-1], 0.0)] * pad, dtype=torch.float64).clamp_min(0.0)
    return Selection(full.cpu(), loss_a, loss_b, trace)


def balanced(order: torch.Tensor, blocks: int) -> torch.Tensor:
    """``order`` re-ranked so each prefix whose length is a multiple of ``blocks`` holds as many channels
    of each run (of ``m / blocks`` consecutive ones): each pass takes every run's next channel, in
    ``order``'s rank. An order that already has this property comes back unchanged."""
    if blocks == 1:
        return order
    run = order // (len(order) // blocks)
    rank = torch.empty_like(order)
    for b in range(blocks):
        mine = run == b
        rank[mine] = torch.arange(int(mine.sum()), device=order.device)  # its place within its run
    key = rank * len(order) + torch.arange(len(order), device=order.device)  # pass, then original rank
    return order[torch.argsort(key)]


def runs(m: int, kept: torch.Tensor, blocks: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per run of ``m / blocks`` consecutive channels: its channels and the positions in ``kept`` of
    those it keeps."""
    size = m // blocks
    owner = kept.cpu() // size
    return [
        (torch.arange(b * size, (b + 1) * size), torch.nonzero(owner == b).flatten()) for b in range(blocks)
    ]


def refit_map(s: torch.Tensor, kept: torch.Tensor, tau: float, blocks: int = 1) -> torch.Tensor:
    """``A_J = S_FJ (S_JJ + tau I)^-1`` (m x |J|): the kept channels' best linear stand-in for all; with
    ``blocks``, block diagonal: each run of channels from its own kept ones (a grouped convolution's)."""
    if blocks > 1:
        return block_diagonal(
            s.shape[0], kept, blocks, lambda f, j: refit_map(s[f][:, f], kept[j] - int(f[0]), tau)
        )
    return ridge_solve(s[kept][:, kept], s[:, kept].T.contiguous(), tau).T  # A^T = (S_JJ + tau I)^-1 S_JF


def block_diagonal(
    m: int,
    kept: torch.Tensor,
    blocks: int,
    solve: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The (m x |J|) map whose block for each run is ``solve(its channels, its positions in kept)``."""
    out: torch.Tensor | None = None
    for f, j in runs(m, kept, blocks):
        part = solve(f, j)
        if out is None:
            out = part.new_zeros(m, len(kept))
        out[f.to(part.device)[:, None], j.to(part.device)[None, :]] = part
    assert out is not None
    return out


def ridge_solve(gram: torch.Tensor, rhs: torch.Tensor, tau: float) -> torch.Tensor:
    """``(G + tau I)^-1 B`` for a symmetric PSD ``G`` (k x k), by Cholesky.

    A second moment summed from float32 products can be indefinite by rounding (~1e-7 of its largest
    eigenvalue), more than ``tau`` covers when one channel dwarfs the rest: the ridge then grows tenfold
    until the factorisation succeeds.
    """
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    sym = 0.5 * (gram + gram.T)
    floor = 1e-12 * float(torch.diagonal(sym).abs().max()) if gram.numel() else 0.0
    ridge = max(tau, floor)
    for _ in range(12):
        chol, info = torch.linalg.cholesky_ex(sym + ridge * eye)
        if int(info) == 0:
            return torch.cholesky_solve(rhs, chol)
        ridge = max(ridge * 10.0, 1e-300)
    return torch.linalg.lstsq(sym + ridge * eye, rhs).solution


def losses(s: torch.Tensor, g: torch.Tensor | None, kept: torch.Tensor, tau: float) -> tuple[float, float]:
    """``L_A = tr R_J`` and ``L_B = tr(G R_J)`` with ``R_J = S - S_FJ (S_JJ + tau I)^-1 S_JF``."""
    if len(kept) == s.shape[0]:
        return 0.0, 0.0
    r = s - refit_map(s, kept, tau) @ s[kept]  # R_J = S - A_J S_JF
    loss_b = float(torch.trace(g @ r)) if g is not None else float(torch.trace(r))
    return float(torch.trace(r)), loss_b

"""The numerical pieces: greedy Schur selection, re-fit map, spectrum, planted redundancy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core import CompressionConfig, compress
from core.selection import balanced, consumer_gram, greedy_select, losses, refit_map, ridge_solve
from core.spectrum import bias_lambda, degrees_of_freedom, eigenvalues, theory_width
from tests.core import models


def _moment(n: int = 4000, m: int = 12, rank: int = 12, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    x = z @ torch.randn(rank, m, generator=gen, dtype=torch.float64)
    return x.T @ x / n


def test_schur_updates_match_the_closed_form_residual() -> None:
    s = _moment()
    g = torch.eye(12, dtype=torch.float64)
    sel = greedy_select(s, g, theta=0.3, tau=1e-9)
    for k in (1, 4, 8, 11):
        kept = sel.order[:k]
        loss_a, loss_b = losses(s, g, kept, 1e-9)
        assert float(sel.loss_input[k]) == pytest.approx(loss_a, rel=1e-6, abs=1e-9)
        assert float(sel.loss_output[k]) == pytest.approx(loss_b, rel=1e-6, abs=1e-9)
    assert sel.retained(12) == pytest.approx(1.0)
    assert sorted(sel.order.tolist()) == list(range(12))


def test_greedy_first_pick_maximises_explained_energy() -> None:
    s = _moment(seed=3)
    sel = greedy_select(s, None, theta=1.0, tau=0.0)
    gains = [(s[:, k] @ s[:, k]) / s[k, k] for k in range(12)]  # ||S[:,k]||^2 / S_kk
    assert int(sel.order[0]) == int(torch.stack(gains).argmax())


def test_refit_map_reconstructs_dependent_channels_exactly() -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(2000, 5, generator=gen, dtype=torch.float64)
    x = torch.cat([base, base @ torch.randn(5, 3, generator=gen, dtype=torch.float64)], dim=1)
    s = x.T @ x / len(x)
    a = refit_map(s, torch.arange(5), tau=1e-10)
    assert torch.allclose(x[:, :5] @ a.T, x, atol=1e-6)


def test_spectrum_quantities() -> None:
    mu = eigenvalues(torch.diag(torch.tensor([4.0, 1.0, 0.0], dtype=torch.float64)))
    assert mu.tolist() == [4.0, 1.0, 0.0]
    assert degrees_of_freedom(mu, 1.0) == pytest.approx(4 / 5 + 1 / 2)
    assert theory_width(2.0) == pytest.approx(10 * torch.log(torch.tensor(160.0)).item())
    lam = bias_lambda(mu, 20)
    assert theory_width(degrees_of_freedom(mu, lam * 5.0)) == pytest.approx(20, rel=1e-3)


class _Planted(nn.Module):
    """A hidden layer whose 16 units are 6 independent ones, 5 duplicates and 5 linear combinations."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        base_w, base_b = torch.randn(6, 10, generator=gen), torch.randn(6, generator=gen)
        mix = torch.randn(5, 6, generator=gen)
        self.hidden = nn.Linear(10, 16)
        self.out = nn.Linear(16, 4)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.cat([base_w, base_w[:5], mix @ base_w]))
            self.hidden.bias.copy_(torch.cat([base_b, base_b[:5], mix @ base_b]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x))


class _PlantedConv(nn.Module):
    """Conv channels after ReLU: 8 independent filters and 8 exact duplicates of them."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)
        with torch.no_grad():
            self.conv1.weight[8:] = self.conv1.weight[:8]
            self.conv1.bias[8:] = self.conv1.bias[:8]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(torch.relu(y).mean(dim=(2, 3)))


@pytest.mark.parametrize(
    ("model", "shape", "layer", "rank"),
    [
        (_Planted, (10,), "hidden", 6),
        (_PlantedConv, (3, 12, 12), "conv1", 8),
    ],
)
def test_planted_redundancy_is_removed_without_error(model, shape, layer, rank) -> None:
    torch.manual_seed(0)
    net = model().eval()
    x = torch.randn(512, *shape)
    program = models.export(net, x[:4])
    # a ridge of 1e-7 of the mean energy: the re-fit is exact up to that shrinkage
    result = compress(program, x, CompressionConfig(alpha=0.9999, ridge=1e-7), measure_latency=False)
    entry = next(e for e in result.report["layers"] if e["name"] == layer)
    assert entry["width_after"] == rank
    x_test = torch.randn(256, *shape)
    with torch.no_grad():
        y0, y1 = program.module()(x_test), result.program.module()(x_test)
    assert float((y1 - y0).norm() / y0.norm()) < 1e-5


def test_ridge_solve_matches_the_exact_solve_and_survives_rounding_indefiniteness() -> None:
    torch.manual_seed(0)
    a = torch.randn(6, 6, dtype=torch.float64)
    gram, rhs = a @ a.T, torch.randn(6, 2, dtype=torch.float64)
    exact = torch.linalg.solve(gram + 1e-3 * torch.eye(6, dtype=torch.float64), rhs)
    assert torch.allclose(ridge_solve(gram, rhs, 1e-3), exact, atol=1e-10)
    # one channel dwarfs the rest and rounding left a slightly negative direction the ridge does not cover
    skewed = torch.diag(torch.tensor([1e8, 1.0, -1e-3], dtype=torch.float64))
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.cholesky(skewed + 1e-6 * torch.eye(3, dtype=torch.float64))
    solved = ridge_solve(skewed, torch.ones(3, 1, dtype=torch.float64), 1e-6)
    assert torch.isfinite(solved).all() and solved[1, 0] == pytest.approx(1.0, rel=1e-2)


def test_greedy_in_runs_keeps_every_run_equal_and_explains_within_runs() -> None:
    """With ``blocks`` runs, each width that is a multiple of ``blocks`` keeps as many of each run,
    and on a block-diagonal second moment the losses are those of the block-diagonal re-fit."""
    blocks, m = 3, 12
    parts = [_moment(m=4, rank=3, seed=b) for b in range(blocks)]  # rank 3 per run: one channel redundant
    s = torch.block_diag(*parts)
    sel = greedy_select(s, None, theta=1.0, tau=1e-9, blocks=blocks)
    for k in range(blocks, m + 1, blocks):
        per_run = torch.bincount(sel.order[:k] // 4, minlength=blocks)
        assert per_run.tolist() == [k // blocks] * blocks
        kept = sel.order[:k].sort().values
        a = refit_map(s, kept, 1e-9, blocks)
        for b in range(blocks):  # no run borrows from another
            rows = slice(4 * b, 4 * b + 4)
            assert torch.all(a[rows][:, kept // 4 != b] == 0)
        assert float(sel.loss_input[k]) == pytest.approx(float(torch.trace(s - a @ s[kept])), abs=1e-7)
    assert float(sel.loss_input[9]) < 1e-6 * float(torch.trace(s))  # three per run explain each rank-3 run


def test_balanced_order_takes_each_run_in_turn() -> None:
    order = torch.tensor([0, 1, 2, 3, 6, 7, 4, 5])  # runs of two: {0,1} {2,3} {4,5} {6,7}
    assert balanced(order, 1).tolist() == order.tolist()
    assert balanced(order, 4).tolist() == [0, 2, 6, 4, 1, 3, 7, 5]
    assert balanced(balanced(order, 4), 4).tolist() == [0, 2, 6, 4, 1, 3, 7, 5]


def test_a_grouped_consumers_gram_is_that_of_its_dense_equivalent() -> None:
    gen = torch.Generator().manual_seed(0)
    grouped = torch.randn(12, 2, 9, generator=gen, dtype=torch.float64)  # 12 outputs, 3 groups of 2 inputs
    dense = torch.zeros(12, 6, 9, dtype=torch.float64)
    for b in range(3):
        dense[4 * b : 4 * b + 4, 2 * b : 2 * b + 2] = grouped[4 * b : 4 * b + 4]
    plain = torch.randn(5, 6, 1, generator=gen, dtype=torch.float64)
    assert torch.allclose(consumer_gram([(grouped, 3), (plain, 1)]), consumer_gram([(dense, 1), (plain, 1)]))

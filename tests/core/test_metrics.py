"""Metrics against published figures and against direct counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from core.metrics import Agreement, count_flops, latency_ms


def _vgg16() -> nn.Module:
    layers: list[nn.Module] = []
    c = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU()]
            c = int(v)
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(512 * 7 * 7, 4096),
        nn.ReLU(),
        nn.Linear(4096, 4096),
        nn.ReLU(),
        nn.Linear(4096, 1000),
    )


def test_vgg16_flops_and_params_match_the_papers_table() -> None:
    with torch.device("meta"):
        model = _vgg16()
        x = torch.empty(1, 3, 224, 224)
    assert count_flops(model, (x,)) / 1e9 == pytest.approx(30.94, abs=0.01)  # Suzuki et al., Table: 30.94 G
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(138.36, abs=0.01)


def test_latency_is_a_positive_median() -> None:
    model = nn.Linear(8, 8)
    assert latency_ms(model, (torch.randn(1, 8),), repeats=5) > 0


def test_agreement_counts() -> None:
    acc = Agreement()
    ref = torch.tensor([[3.0, 1, 0, 0, 0, 0], [0, 3.0, 1, 0, 0, 0]])
    out = torch.tensor([[1.0, 3, 0, 0, 0, 0], [0, 3.0, 1, 0, 0, 0]])
    acc.update(out, ref, torch.tensor([0, 2]))
    summary = acc.summary()
    assert summary["agreement"] == 0.5
    assert summary["top1"] == 0.0
    assert summary["top5"] == 1.0

"""Small real models, their exported programs, zip archives, and a runner for fresh Python processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.export import Dim, ExportedProgram


class ConvNet(nn.Module):
    """conv-BN-ReLU twice, then flatten -> linear: the CNN shape the pruning engine sees most."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # (N, 8, 8, 8)
        x = torch.relu(self.bn2(self.conv2(x)))  # (N, 16, 4, 4)
        return self.fc(torch.flatten(x, 1))  # (N, 10)


class TransformerBlock(nn.Module):
    """Pre-norm attention + GELU MLP over a short sequence, mean-pooled into a classifier."""

    def __init__(self, width: int = 16, heads: int = 2, classes: int = 5) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        x = x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))
        return self.head(x.mean(1))  # (N, classes)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _randomise_batch_norm(model: nn.Module) -> None:
    """Non-trivial running statistics, so that a lost batch norm changes the outputs."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


@dataclass
class Case:
    """A model, an input batch for it, and its program exported with a dynamic batch."""

    name: str
    model: nn.Module
    example: torch.Tensor
    program: ExportedProgram

    def expected(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)


def make_case(name: str) -> Case:
    torch.manual_seed(0)
    model: nn.Module
    if name == "convnet":
        model, example = ConvNet(), torch.randn(3, 3, 16, 16)
        _randomise_batch_norm(model)
    elif name == "transformer":
        model, example = TransformerBlock(), torch.randn(3, 6, 16)
    else:
        model, example = MLP(), torch.randn(3, 12)
    model.eval()
    program = torch.export.export(model, (example,), dynamic_shapes=({0: Dim("batch")},))
    return Case(name, model, example, program)


@pytest.fixture(scope="session")
def convnet() -> Case:
    return make_case("convnet")


@pytest.fixture(scope="session")
def transformer() -> Case:
    return make_case("transformer")


@pytest.fixture(scope="session")
def mlp() -> Case:
    return make_case("mlp")


def write_zip(path: Path, entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """A zip archive at ``path`` holding ``entries`` (name -> bytes)."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def run_fresh_python(code: str, cwd: Path, timeout: float = 180) -> Any:
    """Run ``code`` in a new isolated interpreter (``-I``: no project on the path) and return the JSON
    it prints on its last line."""
    completed = subprocess.run(
        [sys.executable, "-I", "-c", textwrap.dedent(code)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def fresh_python() -> Any:
    """:func:`run_fresh_python`, for tests (test modules do not import conftest)."""
    return run_fresh_python

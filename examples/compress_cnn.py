"""Compress a small CNN with specprune's library API, in a notebook or a script.

    .venv/bin/python examples/compress_cnn.py

It builds a VGG-style network (random weights: swap in your trained model), exports it with a dynamic
batch dimension, prunes it to half its FLOPs, prints the before/after table and saves the result as a
standalone ``.pt2`` file that ``torch.export.load`` runs without specprune installed.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from core import CompressionConfig, compress


def make_model() -> nn.Module:
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(
        *block(3, 32),
        nn.MaxPool2d(2),
        *block(32, 64),
        nn.MaxPool2d(2),
        *block(64, 128),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 4 * 4, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    ).eval()


def main() -> None:
    torch.manual_seed(0)
    model = make_model()
    calibration = torch.randn(512, 3, 32, 32)  # use ~1024 real, preprocessed training images
    labels = torch.randint(0, 10, (512,))  # optional: enables top-1/top-5 in the report
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (calibration[:2],), dynamic_shapes=({0: batch},))

    def progress(stage: str, fraction: float) -> None:
        print(f"\r{stage:<15} {fraction:6.1%}", end="", flush=True)

    result = compress(
        program, calibration, CompressionConfig(flops_ratio=0.5), labels=labels, progress=progress
    )
    print()
    report = result.report
    for key in ("params", "flops", "top1", "agreement"):
        print(f"{key:<10} {report['original'][key]!s:>14} -> {report['compressed'][key]!s:>14}")
    for layer in report["layers"]:
        print(
            f"  {layer['name']:<6} {layer['width_before']:>4} -> {layer['width_after']:<4} dof={layer['dof']:.1f}"
        )
    torch.export.save(result.program, "compressed.pt2")
    with open("report.json", "w") as f:
        json.dump(report, f, indent=1)
    print("saved compressed.pt2 and report.json")


if __name__ == "__main__":
    main()

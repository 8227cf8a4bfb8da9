"""Defaults from evidence: test accuracy against theta, ridge and the number of calibration samples.

    python -m bench.sweep --model small_cnn --ratio 0.25

Writes ``bench/results/sweep.json`` and ``bench/results/sweep.png``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.models import load_checkpoint
from bench.quality import RESULTS, cifar_tensors, export
from core import CompressionConfig, compress


def top1(program, calib, evaluation, **config) -> float:
    report = compress(
        program, calib, CompressionConfig(**config), evaluation=evaluation, measure_latency=False
    ).report
    return float(report["compressed"]["top1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--thetas", nargs="+", type=float, default=[0.0, 0.3, 0.7, 1.0])
    parser.add_argument("--ridges", nargs="+", type=float, default=[1e-6, 1e-5, 1e-3, 1e-2])
    parser.add_argument("--samples", nargs="+", type=int, default=[256, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--eval", type=int, default=2000, dest="evaluation")
    parser.add_argument("--out", type=Path, default=RESULTS / "sweep.json")
    args = parser.parse_args()
    model, _ = load_checkpoint(args.model)
    # compress draws calibration_samples (default 1,024) at random from these, seeded: never a head slice,
    # which would follow the archive's class order
    calib, x_test, y_test = cifar_tensors(max(args.samples), args.evaluation, seed=0)
    program = export(model, calib)
    evaluation = (x_test, y_test)
    grid = []
    for theta in args.thetas:
        for ridge in args.ridges:
            acc = top1(program, calib, evaluation, flops_ratio=args.ratio, theta=theta, ridge=ridge)
            grid.append({"theta": theta, "ridge": ridge, "top1": acc})
            print(f"theta={theta:<4} ridge={ridge:<7g} top1={100 * acc:.1f}", flush=True)
    sizes = []
    for n in args.samples:
        acc = top1(program, calib, evaluation, flops_ratio=args.ratio, calibration_samples=n)
        sizes.append({"samples": n, "top1": acc})
        print(f"calibration_samples={n:<5} top1={100 * acc:.1f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"model": args.model, "ratio": args.ratio, "grid": grid, "samples": sizes}, indent=1)
    )
    plot(grid, sizes, args.out.with_suffix(".png"), f"{args.model}, {args.ratio:g} of the FLOPs")


def plot(grid: list[dict], sizes: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for ridge in sorted({g["ridge"] for g in grid}):
        rows = [g for g in grid if g["ridge"] == ridge]
        left.plot(
            [g["theta"] for g in rows], [100 * g["top1"] for g in rows], marker="o", label=f"ridge {ridge:g}"
        )
    left.set(xlabel="theta (weight of L_A)", ylabel="test top-1 (%)", title=title)
    left.legend()
    right.semilogx([s["samples"] for s in sizes], [100 * s["top1"] for s in sizes], marker="o", base=2)
    right.set(
        xlabel="calibration samples", ylabel="test top-1 (%)", title="calibration size (defaults otherwise)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()

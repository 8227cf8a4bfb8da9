"""Quality benchmark: test accuracy of spectral, l1 and random pruning without fine-tuning.

    python -m bench.quality --models small_cnn resnet20 vgg11_bn --ratios 0.75 0.5 0.25

For each trained checkpoint (``bench/checkpoints/<name>.safetensors``) and FLOPs ratio it prunes with
``spectral`` (its own adaptive widths), ``spectral`` with the input-level re-fit (``refit="sequential"``),
``spectral`` with the earlier width rules (``allocation="spectrum"``, ``residual="keep"``), then ``l1``
and ``random`` (a) at spectral's per-layer widths and
(b) at their own allocation (the same fraction of every layer) for the same FLOPs, and evaluates all on
the CIFAR-10 test split. Results go to ``bench/results/quality.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from bench.cifar import load_cifar10, normalize
from bench.models import load_checkpoint
from core import CompressionConfig, compress

RESULTS = Path(__file__).resolve().parent / "results"


def cifar_tensors(
    calibration: int, evaluation: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(calibration images from train, test images, test labels), normalised NCHW float32."""
    x_train, _ = load_cifar10("train")
    x_test, y_test = load_cifar10("test")
    pick = (
        torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[:calibration]
        .sort()
        .values
    )
    calib = normalize(x_train[pick.numpy()])
    # the test split is ordered by class: evaluate on a seeded draw, never on its head
    test = (
        torch.randperm(len(x_test), generator=torch.Generator().manual_seed(seed + 1))[:evaluation]
        .sort()
        .values
    )
    return calib, normalize(x_test[test.numpy()]), torch.from_numpy(y_test[test.numpy()].copy())


def export(model: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    return torch.export.export(model.eval(), (example[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))


def run_one(
    program: Any, calib: torch.Tensor, evaluation: tuple, config: CompressionConfig
) -> dict[str, Any]:
    start = time.perf_counter()
    report = compress(program, calib, config, evaluation=evaluation, measure_latency=False).report
    return {
        "method": config.method,
        "top1": report["compressed"]["top1"],
        "flops_kept": report["compressed"]["flops"] / report["original"]["flops"],
        "params_kept": report["compressed"]["params"] / report["original"]["params"],
        "widths": {layer["name"]: layer["width_after"] for layer in report["layers"]},
        "seconds": round(time.perf_counter() - start, 1),
        "original_top1": report["original"]["top1"],
    }


def bench_model(
    name: str,
    ratios: list[float],
    calib: torch.Tensor,
    evaluation: tuple,
    settings: dict[str, Any],
    spectral_only: bool = False,
) -> list[dict]:
    """One table row per ratio; ``settings``: config keys every spectral run shares (theta, ...)."""
    model, _ = load_checkpoint(name)
    program = export(model, calib)
    common = settings | {"calibration_samples": len(calib)}
    rows = []
    for ratio in ratios:
        spectral = run_one(program, calib, evaluation, CompressionConfig(flops_ratio=ratio, **common))
        row: dict[str, Any] = {
            "model": name,
            "ratio": ratio,
            "original": spectral["original_top1"],
            "spectral": spectral,
        }
        if not spectral_only:
            row |= _comparisons(program, calib, evaluation, ratio, spectral["widths"], common)
        rows.append(row)
        print(markdown_row(row), flush=True)
    return rows


def _comparisons(
    program: Any, calib: torch.Tensor, evaluation: tuple, ratio: float, widths: dict, common: dict
) -> dict[str, Any]:
    """The other columns: earlier spectral variants, and l1 / random at spectral's widths and their own."""
    row = {
        # the earlier re-fit: each consumer's input, channel by channel
        "spectral_input_refit": run_one(
            program, calib, evaluation, CompressionConfig(flops_ratio=ratio, refit="sequential", **common)
        ),
        # the earlier default: one retained-energy level, streams whole
        "spectral_uniform_energy": run_one(
            program,
            calib,
            evaluation,
            CompressionConfig(flops_ratio=ratio, allocation="spectrum", residual="keep", **common),
        ),
    }
    for method in ("l1", "random"):
        row[f"{method}_same_widths"] = run_one(
            program, calib, evaluation, CompressionConfig(method=method, widths=widths)
        )
        row[f"{method}_own"] = run_one(
            program, calib, evaluation, CompressionConfig(method=method, flops_ratio=ratio)
        )
    return row


HEADER = (
    "| model | FLOPs kept | original | spectral | spectral (input re-fit) | spectral (energy widths, streams whole) "
    "| l1 (same widths) | random (same widths) | l1 (own) | random (own) |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def markdown_row(row: dict[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}"

    cells = [
        row["model"],
        f"{row['spectral']['flops_kept']:.3f}",
        pct(row["original"]),
        pct(row["spectral"]["top1"]),
    ]
    cells += [
        pct(row[k]["top1"] if k in row else None)
        for k in (
            "spectral_input_refit",
            "spectral_uniform_energy",
            "l1_same_widths",
            "random_same_widths",
            "l1_own",
            "random_own",
        )
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["small_cnn"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.75, 0.5, 0.25])
    parser.add_argument("--calibration", type=int, default=1024)
    parser.add_argument("--eval", type=int, default=10000, dest="evaluation")
    parser.add_argument("--theta", type=float, default=CompressionConfig().theta)
    parser.add_argument("--ridge", type=float, default=CompressionConfig().ridge)
    parser.add_argument("--rectified-steps", type=int, default=CompressionConfig().rectified_steps)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "quality.json")
    parser.add_argument("--spectral-only", action="store_true", help="skip the comparison columns")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    calib, x_test, y_test = cifar_tensors(args.calibration, args.evaluation, args.seed)
    print(HEADER, flush=True)
    settings = {"theta": args.theta, "ridge": args.ridge, "rectified_steps": args.rectified_steps}
    rows = []
    for name in args.models:
        rows += bench_model(name, args.ratios, calib, (x_test, y_test), settings, args.spectral_only)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()

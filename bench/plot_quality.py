"""Plot the quality tables: test accuracy against the FLOPs kept, one panel per model.

    python -m bench.plot_quality bench/results/quality-*.json --out bench/results/quality.png

Reads the JSON files ``bench.quality`` writes (every row with its comparison columns) and draws, for each
model, spectral and the L1 / random baselines (at spectral's widths and at their own) from the original
network at 1.0 down to the smallest ratio.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.quality import RESULTS

SERIES = {  # row key -> (label, line style)
    "spectral": ("spectral (defaults)", "-o"),
    "spectral_input_refit": ("spectral, input re-fit", "--o"),
    "l1_same_widths": ("l1, spectral's widths", "-s"),
    "random_same_widths": ("random, spectral's widths", "-^"),
    "l1_own": ("l1, own widths", ":s"),
    "random_own": ("random, own widths", ":^"),
}


def by_model(paths: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """Rows of every file, grouped by model and sorted by the FLOPs kept."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        for row in json.loads(path.read_text())["rows"]:
            rows.setdefault(row["model"], []).append(row)
    return {m: sorted(r, key=lambda row: -row["spectral"]["flops_kept"]) for m, r in rows.items()}


def plot(rows: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 4), squeeze=False)
    for ax, (model, model_rows) in zip(axes[0], rows.items(), strict=True):
        original = 100 * model_rows[0]["original"]
        for key, (label, style) in SERIES.items():
            points = [(r[key]["flops_kept"], 100 * r[key]["top1"]) for r in model_rows if key in r]
            if points:
                xs, ys = zip(*[(1.0, original), *points], strict=True)
                ax.plot(xs, ys, style, label=label)
        ax.axhline(original - 3, color="grey", lw=0.8, ls="--")  # the targets: within 3 points at 0.5 ...
        ax.axhline(original - 12, color="grey", lw=0.8, ls=":")  # ... and within 12 at 0.25
        ax.set(xlabel="FLOPs kept", ylabel="test top-1 (%)", title=f"{model}, no fine-tuning", ylim=(0, 100))
        ax.invert_xaxis()
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS / "quality.png")
    args = parser.parse_args()
    plot(by_model(args.files), args.out)


if __name__ == "__main__":
    main()

"""`make bench`: the CPU benchmarks in one run (about 15 minutes on 2 cores).

Runs the quality table on every committed checkpoint, the theta/ridge/calibration sweep, the speed of the
analysis, and the service benchmark, each as its own process, and prints where the results went.
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.models import CHECKPOINT_DIR

STEPS: list[list[str]] = [
    [
        "bench.quality",
        "--models",
        *sorted(p.stem for p in CHECKPOINT_DIR.glob("*.safetensors")),
        "--ratios",
        "0.75",
        "0.5",
        "0.25",
        "--eval",
        "2000",
    ],
    [
        "bench.sweep",
        "--model",
        "small_cnn",
        "--ratio",
        "0.25",
        "--thetas",
        "0",
        "0.3",
        "1",
        "--ridges",
        "1e-5",
        "1e-3",
        "--samples",
        "256",
        "1024",
        "4096",
    ],
    ["bench.speed", "--model", "vgg16_bn", "--size", "32", "--samples", "1024"],
    ["bench.service"],
]


def main() -> None:
    for step in STEPS:
        start = time.perf_counter()
        print(f"== python -m {' '.join(step)}", flush=True)
        subprocess.run([sys.executable, "-m", *step], check=True)
        print(f"== {step[0]} took {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()

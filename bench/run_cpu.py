"""`make bench`: the CPU benchmarks in one run, under 20 minutes on 2 cores.

A quick pass over every part: the quality table on the SmallCNN at 0.5 and 0.25 of the FLOPs, a reduced
theta/ridge/calibration sweep (both into ``bench/results/make_bench/``), the speed of the analysis and
the service benchmark, each as its own process. BENCHMARKS.md names the longer command behind each full
table (every checkpoint, three ratios, the whole sweep, recovery).
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench.quality import RESULTS

QUICK = RESULTS / "make_bench"  # the quick runs write here, never over the full tables' results

STEPS: list[list[str]] = [
    [
        "bench.quality",
        *("--models", "small_cnn", "--ratios", "0.5", "0.25", "--eval", "2000"),
        *("--out", str(QUICK / "quality.json")),
    ],
    [
        "bench.sweep",
        *("--model", "small_cnn", "--ratio", "0.25", "--thetas", "0", "0.3", "1", "--ridges", "1e-5", "1e-3"),
        *("--samples", "256", "1024", "4096", "--out", str(QUICK / "sweep.json")),
    ],
    ["bench.speed", "--model", "vgg16_bn", "--size", "32", "--samples", "1024"],
    ["bench.service"],
]


def main() -> None:
    begin = time.perf_counter()
    for step in STEPS:
        start = time.perf_counter()
        print(f"== python -m {' '.join(step)}", flush=True)
        subprocess.run([sys.executable, "-m", *step], check=True)
        print(f"== {step[0]} took {time.perf_counter() - start:.0f} s", flush=True)
    print(f"== make bench took {time.perf_counter() - begin:.0f} s in all", flush=True)


if __name__ == "__main__":
    main()

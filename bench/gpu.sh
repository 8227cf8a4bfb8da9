#!/usr/bin/env bash
# The GPU part of the benchmarks, as one script that finishes in under 8 minutes on one H100.
# Run from the repository root on a machine with CUDA and the project installed (.venv):
#   bash bench/gpu.sh
# It writes bench/results/speed-cuda-*.json (and prints the card's name with every figure).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 420 "$PY" -m bench.speed --model vgg16_bn_imagenet --size 224 --samples 4096 --batch 128 --device cuda
timeout 60 "$PY" -m bench.speed --model vgg16_bn --size 32 --samples 4096 --batch 512 --device cuda

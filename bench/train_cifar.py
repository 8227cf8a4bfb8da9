"""Train a ``bench.models`` network on the CIFAR-10 train split and save it as safetensors + JSON sidecar.

    python -m bench.train_cifar --model small_cnn --epochs 6 --out bench/checkpoints/small_cnn.safetensors

SGD with Nesterov momentum under a one-cycle learning-rate schedule (Smith & Topin 2019), random crop
(4-pixel zero padding) and horizontal flip, batch 128. The sidecar records the test accuracy, the
command, the seed, the date and the wall time, so a checkpoint says how it was made.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from bench.cifar import ARCHIVE, CACHE_DIR, CLASSES, MEAN, STD, load_cifar10, normalize
from bench.models import build_model, sidecar_path

PAD = 4


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop of the zero-padded image and a random horizontal flip, per sample.

    ``images`` is uint8 (B, H, W, C); the result has the same shape and dtype.
    """
    b, h, w, _ = images.shape
    padded = F.pad(images, (0, 0, PAD, PAD, PAD, PAD))  # (B, H+8, W+8, C)
    dy = torch.randint(0, 2 * PAD + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * PAD + 1, (b,), generator=generator)
    rows = dy[:, None] + torch.arange(h)  # (B, H)
    cols = dx[:, None] + torch.arange(w)  # (B, W)
    flip = torch.rand(b, generator=generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on uint8 images ``x`` with labels ``y``."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(normalize(x[start : start + batch_size]))
        correct += int((logits.argmax(1) == torch.from_numpy(y[start : start + batch_size])).sum())
    return correct / len(x)


def train_epoch(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch_size: int,
    generator: torch.Generator,
) -> tuple[float, float]:
    """One pass over a seeded permutation of (x, y); returns (mean loss, train accuracy)."""
    model.train()
    order = torch.randperm(len(x), generator=generator).numpy()
    total_loss, correct, seen = 0.0, 0, 0
    for start in range(0, len(order) - batch_size + 1, batch_size):  # drop the ragged last batch
        idx = np.sort(order[start : start + batch_size])
        images = augment(torch.from_numpy(x[idx]), generator)
        labels = torch.from_numpy(y[idx])
        logits = model(normalize(images))
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += float(loss.detach()) * len(idx)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(idx)
    return total_loss / seen, correct / seen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="bench.models registry name, e.g. small_cnn")
    parser.add_argument(
        "--model-kwargs", default="{}", help="JSON keyword arguments, e.g. '{\"width\": 0.5}'"
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True, help="the .safetensors file to write")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch intra-op threads (the machine is shared)"
    )
    parser.add_argument("--train-limit", type=int, default=None, help="use only the first N train samples")
    parser.add_argument("--test-limit", type=int, default=None, help="evaluate on only N test samples")
    parser.add_argument("--archive", type=Path, default=ARCHIVE, help="the CIFAR-10 image-folder archive")
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR, help="where decoded arrays are cached")
    args = parser.parse_args(argv)
    if args.out.suffix != ".safetensors":
        parser.error("--out must end in .safetensors")
    return args


def subset(x: np.ndarray, y: np.ndarray, limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, class-mixed subset of ``limit`` samples (all of them when ``limit`` is None)."""
    if limit is None or limit >= len(x):
        return x, y
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=limit, replace=False))
    return np.asarray(x[idx]), y[idx]


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train as ``args`` says, write the weights and the sidecar, and return the sidecar."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    model_kwargs = json.loads(args.model_kwargs)
    model = build_model(args.model, **model_kwargs)
    x_train, y_train = subset(
        *load_cifar10("train", args.archive, args.cache_dir), args.train_limit, args.seed
    )
    x_test, y_test = subset(
        *load_cifar10("test", args.archive, args.cache_dir), args.test_limit, args.seed + 1
    )
    x_train = np.ascontiguousarray(x_train)  # into memory once: random batches from an mmap are slow
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay
    )
    steps = args.epochs * (len(x_train) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=steps, pct_start=0.25
    )
    history = []
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        loss, train_acc = train_epoch(
            model, x_train, y_train, optimizer, scheduler, args.batch_size, generator
        )
        test_acc = evaluate(model, x_test, y_test)
        elapsed = time.perf_counter() - started
        history.append(
            {"epoch": epoch, "loss": loss, "train_top1": train_acc, "test_top1": test_acc, "seconds": elapsed}
        )
        print(
            f"epoch {epoch}/{args.epochs} loss {loss:.4f} train {train_acc:.4f} test {test_acc:.4f} ({elapsed:.0f}s)",
            flush=True,
        )
    train_seconds = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out))
    sidecar = {
        "model": args.model,
        "model_kwargs": model_kwargs,
        "classes": list(CLASSES),
        "input": {"shape": [1, 3, 32, 32], "layout": "NCHW", "scale": "[0, 1]", "mean": MEAN, "std": STD},
        "params": sum(p.numel() for p in model.parameters()),
        "test_top1": history[-1]["test_top1"] if history else evaluate(model, x_test, y_test),
        "test_samples": len(x_test),
        "train_samples": len(x_train),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "optimizer": {
            "name": "sgd_nesterov",
            "lr": args.lr,
            "momentum": 0.9,
            "weight_decay": args.weight_decay,
        },
        "schedule": "onecycle(pct_start=0.25)",
        "augmentation": "random crop (pad 4) + horizontal flip",
        "seed": args.seed,
        "threads": args.threads,
        "train_seconds": round(train_seconds, 1),
        "history": history,
        "command": "python -m bench.train_cifar " + shlex.join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or platform.node()}, torch {torch.__version__}",
        "sha256": hashlib.sha256(args.out.read_bytes()).hexdigest(),
    }
    sidecar_path(args.out).write_text(json.dumps(sidecar, indent=2) + "\n")
    return sidecar


def main(argv: list[str] | None = None) -> None:
    sidecar = train(parse_args(argv))
    print(f"test top-1 {sidecar['test_top1']:.4f} after {sidecar['train_seconds']:.0f}s")


if __name__ == "__main__":
    main()

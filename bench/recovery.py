"""Recovery benchmark: accuracy after the same fine-tuning budget for spectral, l1 and random pruning,
and distillation without labels against fine-tuning with labels.

    python -m bench.recovery --model small_cnn --ratios 0.5 0.25 --epochs 1 5 --train 10000

Each "epoch" is one pass over ``--train`` images drawn (seeded) from the CIFAR-10 train split, with the
crop-and-flip augmentation; evaluation on ``--eval`` test images. Writes ``bench/results/recovery.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.cifar import load_cifar10, normalize
from bench.models import load_checkpoint
from bench.quality import RESULTS, cifar_tensors, export
from core import CompressionConfig, compress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.25])
    parser.add_argument("--epochs", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--eval", type=int, default=2000, dest="evaluation")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=RESULTS / "recovery.json")
    args = parser.parse_args()
    model, _ = load_checkpoint(args.model)
    calib, x_test, y_test = cifar_tensors(1024, args.evaluation, seed=0)
    x_train, y_train = load_cifar10("train")
    pick = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(2))[: args.train].numpy()
    training = (normalize(x_train[pick]), torch.from_numpy(y_train[pick].copy()))
    program = export(model, calib)
    rows = []
    for ratio in args.ratios:
        widths = None
        for method in ("spectral", "l1", "random"):
            for mode in ("finetune", "distill") if method == "spectral" else ("finetune",):
                for epochs in args.epochs:
                    recovery = {
                        "mode": mode,
                        "epochs": epochs,
                        "lr": args.lr,
                        "augment": True,
                        "batch_size": 128,
                    }
                    rule = {"flops_ratio": ratio} if widths is None else {"widths": widths}
                    config = CompressionConfig(method=method, recovery=recovery, **rule)
                    result = compress(
                        program,
                        calib,
                        config,
                        labels=None,
                        evaluation=(x_test, y_test),
                        training=training if mode == "finetune" else (training[0], None),
                        measure_latency=False,
                    )
                    report = result.report
                    widths = widths or {layer["name"]: layer["width_after"] for layer in report["layers"]}
                    row = {
                        "ratio": ratio,
                        "method": method,
                        "mode": mode,
                        "epochs": epochs,
                        "original": report["original"]["top1"],
                        "pruned": report["compressed"]["top1"],
                        "recovered": report["recovered"]["top1"],
                        "flops_kept": report["compressed"]["flops"] / report["original"]["flops"],
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1)
    )


if __name__ == "__main__":
    main()

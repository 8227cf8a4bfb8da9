"""Speed of the analysis: wall time of each stage against one plain forward pass over the same data.

    python -m bench.speed --model vgg16_bn --size 32 --samples 1024            # CPU, CIFAR-sized VGG-16-BN
    python -m bench.speed --model vgg16_bn_imagenet --size 224 --samples 4096 --device cuda   # bench/gpu.sh
    python -m bench.speed --model resnet18_imagenet --size 224 --configs default   # a 224x224 ResNet on CPU
    python -m bench.speed --model resnet50_imagenet --size 224 --configs default   # ResNet-50, bottlenecks

Weights are random (with non-trivial BatchNorm statistics) and inputs synthetic: speed does not depend on
them. Writes ``bench/results/speed-<device>-<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch
from torch import nn

from bench.models import build_model
from bench.quality import RESULTS
from core import CompressionConfig, compress


def vgg16_bn_imagenet() -> nn.Module:
    """VGG-16 with BatchNorm at 224x224 (Simonyan & Zisserman 2015): 13 conv + 3 FC, 1000 classes."""
    layers: list[nn.Module] = []
    c = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
            c = int(v)
    head = [nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(True)]
    return nn.Sequential(*layers, nn.Flatten(), *head, nn.Dropout(), nn.Linear(4096, 1000))


def _stem() -> list[nn.Module]:
    """torchvision's ResNet stem: a 7x7 stride-2 convolution and a stride-2 max pool."""
    return [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]


def _downsample(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    """The 1x1 projection shortcut where a block changes the shape, else None (the identity)."""
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class _InPlaceBlock(nn.Module):
    """torchvision's ResNet basic block, written as it is there: ``out += identity``, in-place ReLUs."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.downsample = _downsample(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += identity
        return self.relu(out)


def resnet18_imagenet() -> nn.Module:
    """ResNet-18 at 224x224 (He et al. 2016) as torchvision writes it: 7x7 stem, four stages, 1000 classes."""
    blocks, c_in = [], 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        blocks += [_InPlaceBlock(c_in, c_out, stride), _InPlaceBlock(c_out, c_out, 1)]
        c_in = c_out
    return nn.Sequential(*_stem(), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000))


class _Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck (1x1, 3x3 with the stride, 1x1 to 4x), ``out += identity``."""

    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(c_in, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, c_out, 1, bias=False), nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        out += identity
        return self.relu(out)


def resnet50_imagenet() -> nn.Module:
    """ResNet-50 at 224x224 as torchvision writes it: 3, 4, 6, 3 bottlenecks, 25.6M parameters."""
    blocks: list[nn.Module] = []
    c_in = 64
    for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(count):
            blocks.append(_Bottleneck(c_in, width, stride if i == 0 else 1))
            c_in = 4 * width
    return nn.Sequential(*_stem(), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 1000))


IMAGENET_MODELS = {
    "vgg16_bn_imagenet": vgg16_bn_imagenet,
    "resnet18_imagenet": resnet18_imagenet,
    "resnet50_imagenet": resnet50_imagenet,
}


def build(name: str) -> nn.Module:
    model = IMAGENET_MODELS[name]() if name in IMAGENET_MODELS else build_model(name)
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    return model.eval()


def forward_seconds(module: nn.Module, x: torch.Tensor, batch: int, device: torch.device) -> float:
    """One plain forward pass over ``x`` (host to device copies included, as in the analysis)."""
    module.to(device)
    with torch.no_grad():
        module(x[:batch].to(device))  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, len(x), batch):
            module(x[i : i + batch].to(device, non_blocking=True))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - start


CONFIGS: dict[str, dict[str, str]] = {
    "one_pass": {"refit": "independent", "allocation": "spectrum"},  # the paper's form: one pass in all
    "sensitivity": {"refit": "independent", "allocation": "sensitivity"},  # + output-error probes
    "default": {},  # + sequential re-fit
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16_bn")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    x = torch.randn(args.samples, 3, args.size, args.size)
    model = build(args.model)
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    plain = forward_seconds(program.module(), x, args.batch, device)
    rows = {"forward": plain}
    for name in args.configs:
        options = CONFIGS[name]
        config = CompressionConfig(
            flops_ratio=args.ratio,
            calibration_samples=args.samples,
            device="cuda" if device.type == "cuda" else "cpu",
            **options,
        )
        start = time.perf_counter()
        report = compress(
            program, x, config, evaluation=(x[: args.batch], None), measure_latency=False
        ).report
        total = time.perf_counter() - start
        stages = {k: v for k, v in report["timings"].items() if k != "evaluate"}
        analysis = sum(stages.values())
        rows[name] = {
            "stages": stages,
            "analysis": analysis,
            "total": total,
            "ratio_to_forward": analysis / plain,
        }
        print(
            f"{name:<12} analysis {analysis:7.2f} s = {analysis / plain:5.2f} x forward ({plain:.2f} s); {stages}",
            flush=True,
        )
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    out = {
        "model": args.model,
        "size": args.size,
        "samples": args.samples,
        "batch": args.batch,
        "device": card,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": rows,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,  # Linux: KiB
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"speed-{device.type}-{args.model}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

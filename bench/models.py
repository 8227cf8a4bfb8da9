"""CIFAR-sized models in plain ``torch.nn`` (no torchvision), written to export cleanly with ``torch.export``.

- ``SmallCNN``: conv32-conv32-pool-conv64-conv64-pool-conv128-pool, BN + ReLU, MLP head (~0.66M params).
- ``VGGBN``: VGG-style with BN (Simonyan & Zisserman 2015, the CIFAR variant), configurable depth/width.
- ``ResNetCIFAR``: He et al. 2016, section 4.2 (6n+2 layers, 16/32/64 channels, basic blocks) with
  option-B shortcuts (1x1 conv + BN where the shape changes), so no zero-padding tricks in the graph.
- ``MobileNetLike``: inverted residual blocks with depthwise convolutions (Sandler et al. 2018).
- ``TinyViT``: a small pre-norm transformer encoder over 4x4 patches (Dosovitskiy et al. 2021).

``build_model(name)`` builds one by its registry name; ``load_checkpoint(path)`` rebuilds a trained one
from a ``.safetensors`` file and its JSON sidecar (no pickle anywhere).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


def conv_bn_relu(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias, BN follows) + BN + ReLU, 'same' padding for odd kernels."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """conv32-conv32-pool-conv64-conv64-pool-conv128-pool -> linear 256 -> linear ``num_classes``."""

    def __init__(
        self, num_classes: int = 10, widths: Sequence[int] = (32, 32, 64, 64, 128), hidden: int = 256
    ):
        super().__init__()
        w = list(widths)
        assert len(w) == 5, f"SmallCNN takes 5 conv widths, got {w}"
        self.features = nn.Sequential(
            conv_bn_relu(3, w[0]),
            conv_bn_relu(w[0], w[1]),
            nn.MaxPool2d(2),  # 32 -> 16
            conv_bn_relu(w[1], w[2]),
            conv_bn_relu(w[2], w[3]),
            nn.MaxPool2d(2),  # 16 -> 8
            conv_bn_relu(w[3], w[4]),
            nn.MaxPool2d(2),  # 8 -> 4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (N, w4 * 4 * 4)
            nn.Linear(w[4] * 4 * 4, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


class VGGBN(nn.Module):
    """CIFAR VGG with BN: ``config`` names a layout (or lists widths and 'M' pools); ``width`` scales it."""

    def __init__(
        self, num_classes: int = 10, config: str | Sequence[int | str] = "vgg11", width: float = 1.0
    ):
        super().__init__()
        layout = VGG_CONFIGS[config] if isinstance(config, str) else list(config)
        layers: list[nn.Module] = []
        c_in, pools = 3, 0
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                pools += 1
            else:
                c_out = max(1, round(int(item) * width))
                layers.append(conv_bn_relu(c_in, c_out))
                c_in = c_out
        assert pools == 5, f"a CIFAR VGG pools 32x32 down to 1x1 in five steps, got {pools}"
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in, num_classes))  # (N, c_in) after 1x1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    """The identity, or a 1x1 conv-BN where the stride or the width change (option B)."""
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; a 1x1 conv-BN shortcut where stride or width change."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _PooledResidual(nn.Module):
    """The CIFAR residual nets' frame: stem -> blocks -> global average pool -> linear classifier."""

    def __init__(self, stem: nn.Module, blocks: list[nn.Module], channels: int, num_classes: int):
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.blocks(self.stem(x)))  # (N, C, 1, 1)
        return self.fc(torch.flatten(out, 1))  # (N, C) -> (N, classes)


class ResNetCIFAR(_PooledResidual):
    """CIFAR ResNet of ``depth`` = 6n + 2 layers (20, 32, 44, 56, ...): three stages of n basic blocks."""

    def __init__(self, depth: int = 20, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64)):
        assert (depth - 2) % 6 == 0, f"CIFAR ResNet depth must be 6n+2, got {depth}"
        n = (depth - 2) // 6
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for stage, c_out in enumerate(widths):
            for i in range(n):
                blocks.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        super().__init__(conv_bn_relu(3, widths[0]), blocks, c_in, num_classes)


class GroupedBottleneck(nn.Module):
    """ResNeXt's block: 1x1 conv to ``width``, a grouped 3x3 (``groups`` paths), 1x1 back, plus a shortcut."""

    def __init__(self, c_in: int, c_out: int, width: int, groups: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class ResNeXtCIFAR(_PooledResidual):
    """A small CIFAR ResNeXt: three stages of two grouped bottlenecks (``groups`` paths of 8 channels)."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128), groups: int = 4):
        blocks: list[nn.Module] = []
        c_in = widths[0] // 2
        for stage, width in enumerate(widths):
            for i in range(2):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(GroupedBottleneck(c_in, width, width, groups * 2**stage, stride))
                c_in = width
        super().__init__(conv_bn_relu(3, widths[0] // 2), blocks, c_in, num_classes)


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; identity shortcut when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        self.use_shortcut = stride == 1 and c_in == c_out
        self.expand = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_shortcut else out


class MobileNetLike(nn.Module):
    """A MobileNetV2-style CIFAR net: stem, inverted residual stages ``(c_out, blocks, stride)``, 1x1 head."""

    STAGES: tuple[tuple[int, int, int], ...] = ((16, 1, 1), (24, 2, 1), (32, 2, 2), (64, 2, 2), (96, 1, 1))

    def __init__(self, num_classes: int = 10, expand: int = 4, head: int = 256):
        super().__init__()
        self.stem = conv_bn_relu(3, 16)
        blocks: list[nn.Module] = []
        c_in = 16
        for c_out, count, stride in self.STAGES:
            for i in range(count):
                blocks.append(InvertedResidual(c_in, c_out, stride if i == 0 else 1, expand))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn_relu(c_in, head, kernel=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.head(self.blocks(self.stem(x))))  # (N, head, 1, 1)
        return self.fc(torch.flatten(out, 1))


class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (so each is an ordinary Linear)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        assert dim % heads == 0, f"dim {dim} must divide into {heads} heads"
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape  # (N, T, D)
        q, k, v = (
            p(x).view(n, t, self.heads, d // self.heads).transpose(1, 2) for p in (self.q, self.k, self.v)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # (N, H, T, D/H)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(LN x), then x + MLP(LN x) with a GELU hidden layer."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * mlp_ratio)
        self.fc2 = nn.Linear(dim * mlp_ratio, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """Patch embedding (conv, stride = patch) + learned positions + encoder blocks + mean-pooled head."""

    def __init__(
        self,
        num_classes: int = 10,
        image_size: int = 32,
        patch: int = 4,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 2,
    ):
        super().__init__()
        assert image_size % patch == 0, f"image size {image_size} must be a multiple of the patch {patch}"
        tokens = (image_size // patch) ** 2
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(dim, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # (N, T, D)
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))  # (N, classes)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "vgg11_bn": lambda **kw: VGGBN(config="vgg11", **kw),
    "vgg16_bn": lambda **kw: VGGBN(config="vgg16", **kw),
    "resnet20": lambda **kw: ResNetCIFAR(depth=20, **kw),
    "resnet56": lambda **kw: ResNetCIFAR(depth=56, **kw),
    "resnext_cifar": ResNeXtCIFAR,
    "mobilenet_like": MobileNetLike,
    "tiny_vit": TinyViT,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """A freshly initialised model from the registry (``MODELS``), e.g. ``build_model('vgg11_bn', width=0.5)``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name](**kwargs)


def sidecar_path(weights: Path) -> Path:
    """``small_cnn.safetensors`` -> ``small_cnn.json``."""
    return weights.with_suffix(".json")


def load_checkpoint(weights: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model (eval mode) from ``weights`` and its JSON sidecar; returns (model, sidecar).

    A bare name such as ``'small_cnn'`` means ``bench/checkpoints/small_cnn.safetensors``. Checkpoints over
    the repository's 5 MB file limit (``vgg11_bn``) are not committed, only their sidecar: a missing file
    is reported with the sidecar's command that trains it again (its ``sha256`` checks the result).
    """
    path = Path(weights)
    if path.suffix != ".safetensors":
        path = CHECKPOINT_DIR / f"{weights}.safetensors"
    meta = json.loads(sidecar_path(path).read_text())
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not committed (too large); train it with: {meta['command']}")
    model = build_model(meta["model"], **meta.get("model_kwargs", {}))
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval(), meta

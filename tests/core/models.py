"""Small plain-torch models, one per architecture family the graph analysis must handle."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def randomize_bn(model: nn.Module) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics, as a trained network has."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval()


class VGGLike(nn.Module):
    """Conv-BN-ReLU stacks with pooling, then flatten -> linear (the conv5 -> fc6 case)."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        w = width

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, w), nn.MaxPool2d(2), *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(
            nn.Linear(2 * w * 4 * 4, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(x.view(x.size(0), -1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetLike(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layers = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class GroupedBottleneck(nn.Module):
    """ResNeXt's block: 1x1 -> grouped 3x3 (``groups`` paths) -> 1x1, added to its input."""

    def __init__(self, channels: int, width: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(x + self.bn3(self.conv3(out)))


class ResNeXtLike(nn.Module):
    """A stem and two grouped bottlenecks (cardinality 4), as in ResNeXt and RegNet."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24), nn.ReLU())
        self.layers = nn.Sequential(GroupedBottleneck(24, 32, 4), GroupedBottleneck(24, 32, 4))
        self.fc = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class UNetLike(nn.Module):
    """An encoder, a transposed convolution that upsamples, its output concatenated with the skip."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.inner = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.up = nn.ConvTranspose2d(32, 16, 2, stride=2)
        self.merge = nn.Sequential(nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.down(x)
        x = torch.cat([skip, F.relu(self.up(self.inner(skip)))], dim=1)
        return self.head(F.adaptive_avg_pool2d(self.merge(x), 1).flatten(1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, 2 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * growth)
        self.conv2 = nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn(x))))))
        return torch.cat([x, y], dim=1)


class DenseNetLike(nn.Module):
    def __init__(self, classes: int = 10, growth: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.block = nn.Sequential(
            DenseLayer(16, growth), DenseLayer(16 + growth, growth), DenseLayer(16 + 2 * growth, growth)
        )
        c = 16 + 3 * growth
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.block(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3)))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.body = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.Hardswish(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.use_res else self.body(x)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // 4, 1)
        self.fc2 = nn.Conv2d(c // 4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class MobileNetLike(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.blocks = nn.Sequential(InvertedResidual(16, 24, 4, 2), InvertedResidual(24, 24, 4, 1))
        self.head = nn.Sequential(nn.Conv2d(24, 64, 1), nn.BatchNorm2d(64), nn.Hardswish())
        self.se = SqueezeExcite(64)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.se(self.head(self.blocks(self.stem(x))))
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TinyTransformer(nn.Module):
    """A pre-norm transformer encoder over token sequences; the MLP hidden units are prunable."""

    def __init__(
        self, vocab_dim: int = 12, d: int = 32, heads: int = 4, layers: int = 2, classes: int = 5
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(vocab_dim, d)
        enc = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(enc, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


class SelfAttention(nn.Module):
    """Multi-head self-attention in the two ways models write it: as Hugging Face does (separate q/k/v
    projections, each viewed as heads, ``scaled_dot_product_attention``, an output projection ``o``) or
    as timm does (one fused ``qkv`` projection viewed as ``(3, heads, head_dim)`` and unbound, the
    explicit ``softmax(q k^T) v``, an output projection ``proj``)."""

    def __init__(self, d: int = 32, heads: int = 4, fused_qkv: bool = False) -> None:
        super().__init__()
        self.heads, self.fused_qkv = heads, fused_qkv
        if fused_qkv:
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        else:
            self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        dim = c // self.heads
        if not self.fused_qkv:
            q, k, v = (p(x).view(b, n, self.heads, dim).transpose(1, 2) for p in (self.q, self.k, self.v))
            out = nn.functional.scaled_dot_product_attention(q, k, v)
            return self.o(out.transpose(1, 2).reshape(b, n, c))
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = torch.softmax((q * dim**-0.5) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class ViTBlock(nn.Module):
    def __init__(self, d: int, heads: int, fused_qkv: bool) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2 = (
            nn.LayerNorm(d),
            SelfAttention(d, heads, fused_qkv),
            nn.LayerNorm(d),
        )
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding, two pre-norm blocks (Hugging Face's attention, then timm's), a mean-pooled head:
    attention heads and MLP units are prunable."""

    def __init__(self, d: int = 32, heads: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.blocks = nn.Sequential(ViTBlock(d, heads, fused_qkv=False), ViTBlock(d, heads, fused_qkv=True))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))


class ConvBnSiLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True)
        )


class CSPBottleneck(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.cv1, self.cv2 = ConvBnSiLU(c, c, 3), ConvBnSiLU(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8's CSP block: the first conv's output is chunked in two, bottlenecks chain on the second
    half, and every stage is concatenated."""

    def __init__(self, cin: int, cout: int, n: int = 2) -> None:
        super().__init__()
        c = cout // 2
        self.cv1, self.cv2 = ConvBnSiLU(cin, 2 * c), ConvBnSiLU((2 + n) * c, cout)
        self.m = nn.ModuleList(CSPBottleneck(c) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class CSPNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.block, self.head = ConvBnSiLU(3, 16, 3, 2), C2f(16, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def export(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """Export with a dynamic batch dimension."""
    return torch.export.export(model.eval(), (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))

"""Recovery after pruning: fine-tuning with labels, or distillation from the original without them.

Training runs on the exported program's unlifted module. Its BatchNorm layers stay frozen at their
running statistics (the exported graph is in inference form) and dropout stays off; every weight and
bias trains. Progress is reported per step, a raised exception from the progress callback stops it
between steps, and a checkpoint written every epoch lets a restarted run resume where it stopped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from torch import fx, nn
from torch.nn import functional as F

from core.calibration import Samples
from core.errors import ConfigError, LabelError

Mode = Literal["none", "finetune", "distill"]
MAX_GRAD_NORM = 5.0  # gradient-norm clip: with BatchNorm frozen nothing else bounds a step


@dataclass(frozen=True)
class RecoveryConfig:
    """How to win accuracy back after pruning.

    - ``mode``: ``none``, ``finetune`` (cross-entropy on labels) or ``distill`` (KL divergence to the
      original model's softened outputs; needs no labels).
    - ``epochs`` or ``steps`` (default one epoch); ``lr`` with a cosine decay to zero; ``batch_size``;
      ``optimizer`` ``sgd`` (momentum 0.9, Nesterov) or ``adamw``; ``weight_decay``.
    - ``temperature``: softening for distillation (the loss is scaled by T^2).
    - ``augment``: random crop (4-pixel zero padding) and horizontal flip for image batches; off by default.
    - ``stages``: prune -> recover in this many stages to reach a FLOPs/params target (iterative mode).
    """

    mode: Mode = "none"
    epochs: int | None = None
    steps: int | None = None
    lr: float = 0.01
    batch_size: int = 64
    optimizer: Literal["sgd", "adamw"] = "sgd"
    weight_decay: float = 5e-4
    temperature: float = 4.0
    augment: bool = False
    stages: int = 1

    def __post_init__(self) -> None:
        if self.mode not in ("none", "finetune", "distill"):
            raise ConfigError(f"recovery mode must be none, finetune or distill, got {self.mode!r}")
        if self.epochs is not None and self.steps is not None:
            raise ConfigError("recovery takes epochs or steps, not both")
        for name in ("epochs", "steps"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"recovery {name} must be an integer >= 1, got {value}")
        if not (0 < self.lr < 10):
            raise ConfigError(f"recovery lr must be in (0, 10), got {self.lr}")
        if not (1 <= self.batch_size <= 65536):
            raise ConfigError(f"recovery batch_size must be in [1, 65536], got {self.batch_size}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"recovery optimizer must be sgd or adamw, got {self.optimizer!r}")
        if not (0 <= self.weight_decay < 1) or not (0 < self.temperature <= 100):
            raise ConfigError("recovery weight_decay must be in [0, 1) and temperature in (0, 100]")
        if not (1 <= self.stages <= 20):
            raise ConfigError(f"recovery stages must be in [1, 20], got {self.stages}")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def total_steps(self, samples: int) -> int:
        per_epoch = math.ceil(samples / self.batch_size)
        return self.steps if self.steps is not None else per_epoch * (self.epochs or 1)


@dataclass
class RecoveryResult:
    module: fx.GraphModule
    curve: list[dict[str, Any]] = field(default_factory=list)
    resumed_from_step: int = 0


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip of an (N, C, H, W) batch."""
    if x.dim() != 4:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (2,), generator=gen).tolist()
    out = padded[:, :, dy : dy + h, dx : dx + w]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def _loss(config: RecoveryConfig, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if config.mode == "finetune":
        return F.cross_entropy(out, target)
    t = config.temperature
    # KL(p_teacher || p_student) on softened logits, scaled by T^2 to keep gradient size
    return (
        F.kl_div(
            F.log_softmax(out / t, dim=-1),
            F.log_softmax(target / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        * t
        * t
    )


def _optimizer(config: RecoveryConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
    )


class _Checkpoint:
    """Weights (safetensors), optimizer state and position, written atomically into ``directory``."""

    def __init__(self, directory: Path | None, fingerprint: str) -> None:
        self.directory = directory
        self.fingerprint = fingerprint

    def load(self, module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        if self.directory is None or not (self.directory / "state.json").exists():
            return None
        state = json.loads((self.directory / "state.json").read_text())
        if state.get("fingerprint") != self.fingerprint:
            return None
        module.load_state_dict(load_file(self.directory / "weights.safetensors"), strict=False)
        optimizer.load_state_dict(torch.load(self.directory / "optimizer.pt", weights_only=True))
        return state

    def save(self, module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(weights, self.directory / "weights.safetensors.tmp")
        torch.save(optimizer.state_dict(), self.directory / "optimizer.pt.tmp")
        (self.directory / "state.json.tmp").write_text(json.dumps(state | {"fingerprint": self.fingerprint}))
        for name in ("weights.safetensors", "optimizer.pt", "state.json"):  # state.json last: it commits
            (self.directory / f"{name}.tmp").replace(self.directory / name)


def recover(
    student: fx.GraphModule,
    teacher: nn.Module,
    data: Samples,
    config: RecoveryConfig,
    *,
    device: torch.device,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
    evaluate: Callable[[nn.Module], dict[str, Any]] | None = None,
    checkpoint_dir: Path | None = None,
    fingerprint: str = "",
) -> RecoveryResult:
    """Train ``student`` in place on ``data`` (finetune: its labels; distill: ``teacher``'s outputs)."""
    if config.mode == "finetune" and data.labels is None:
        raise LabelError("recovery mode 'finetune' needs labels; use 'distill' to recover without them")
    student.to(device)
    teacher.to(device)
    params = [p for p in student.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)
    optimizer = _optimizer(config, params)
    total = config.total_steps(len(data))
    ckpt = _Checkpoint(checkpoint_dir, fingerprint)
    state = ckpt.load(student, optimizer) or {"step": 0, "curve": []}
    step, curve = int(state["step"]), list(state["curve"])
    resumed = step
    per_epoch = math.ceil(len(data) / config.batch_size)
    gen = torch.Generator().manual_seed(seed)
    epoch_losses: list[float] = []
    while step < total:
        epoch, offset = divmod(step, per_epoch)
        gen.manual_seed(seed * 7919 + epoch)
        order = torch.randperm(len(data), generator=gen)
        index = order[offset * config.batch_size : (offset + 1) * config.batch_size]
        inputs = tuple(x[index].to(device) for x in data.inputs)
        if config.augment:
            inputs = (_augment(inputs[0], gen), *inputs[1:])
        with torch.no_grad():
            target = data.labels[index].to(device) if config.mode == "finetune" else teacher(*inputs)  # type: ignore[index]
        for group in optimizer.param_groups:  # cosine: lr_s = lr (1 + cos(pi s / total)) / 2
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / total))
        loss = _loss(config, student(*inputs), target)
        optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"recovery diverged at step {step} (loss {float(loss.detach())}); lower lr"
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)  # frozen BN lets one bad step blow up
        optimizer.step()
        step += 1
        epoch_losses.append(float(loss.detach()))
        if progress is not None:
            progress(step / total)
        if step % per_epoch == 0 or step == total:
            point: dict[str, Any] = {
                "epoch": step / per_epoch,
                "step": step,
                "loss": sum(epoch_losses) / len(epoch_losses),
            }
            if evaluate is not None:
                point |= evaluate(student)
            curve.append(point)
            epoch_losses = []
            ckpt.save(student, optimizer, {"step": step, "curve": curve})
    for p in params:
        p.requires_grad_(False)
    return RecoveryResult(student.cpu(), curve, resumed)


def config_from(value: RecoveryConfig | dict[str, Any] | None) -> RecoveryConfig:
    """Accept a RecoveryConfig, its dict form, or None (no recovery)."""
    if value is None:
        return RecoveryConfig()
    if isinstance(value, RecoveryConfig):
        return value
    known = set(RecoveryConfig.__dataclass_fields__)
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"unknown recovery keys: {', '.join(unknown)}")
    return RecoveryConfig(**value)


def as_dict(config: RecoveryConfig) -> dict[str, Any]:
    return asdict(config)

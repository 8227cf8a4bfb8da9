"""What the report measures: parameters, FLOPs, latency, accuracy and agreement."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from core.calibration import Batch, Samples


def count_params(program: torch.export.ExportedProgram) -> int:
    """Trainable parameters (buffers such as BatchNorm running statistics excluded)."""
    state = program.state_dict
    return sum(state[name].numel() for name in program.graph_signature.parameters)


def count_flops(module: nn.Module, example: Batch) -> int:
    """FLOPs of one forward pass on ``example`` (one sample), a multiply-add counting 2."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*example)
    return int(counter.get_total_flops())


def latency_ms(module: nn.Module, example: Batch, repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``repeats`` forward passes on ``example``."""
    device = example[0].device
    times = []
    with torch.no_grad():
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            module(*example)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@dataclass
class Agreement:
    """Running accuracy counts of one model and its agreement with a reference model."""

    samples: int = 0
    top1: int = 0
    top5: int = 0
    agree: int = 0
    err_num: float = 0.0
    err_den: float = 0.0
    labelled: bool = False
    classes: set[int] = field(default_factory=set)

    def update(self, out: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor | None) -> None:
        logits = out.reshape(out.shape[0], -1).float()
        ref_logits = ref.reshape(ref.shape[0], -1).float()
        self.samples += logits.shape[0]
        self.agree += int((logits.argmax(1) == ref_logits.argmax(1)).sum())
        self.err_num += float(((logits - ref_logits) ** 2).sum())
        self.err_den += float((ref_logits**2).sum())
        if labels is not None:
            self.labelled = True
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            labels = labels.to(top.device)
            self.top1 += int((top[:, 0] == labels).sum())
            self.top5 += int((top == labels[:, None]).any(1).sum())

    def summary(self) -> dict[str, float | None]:
        n = max(self.samples, 1)
        return {
            "top1": self.top1 / n if self.labelled else None,
            "top5": self.top5 / n if self.labelled else None,
            "agreement": self.agree / n,
            "output_error": (self.err_num / self.err_den) ** 0.5 if self.err_den > 0 else 0.0,
        }


def primary_output(out: object) -> torch.Tensor:
    """The output scored and reported: the first floating-point tensor in a tensor, tuple, list or dict."""
    for leaf in tree_leaves(out):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point():
            return leaf
    raise TypeError(f"the model returns no floating-point tensor (got {type(out).__name__})")


def _logits(out: object) -> torch.Tensor:
    return primary_output(out).detach().float().cpu()


def predict(module: nn.Module, data: Samples, batch: int, device: torch.device) -> list[torch.Tensor]:
    """The model's outputs on ``data``, batch by batch (kept on the CPU)."""
    with torch.no_grad():
        return [_logits(module(*(x.to(device) for x in inputs))) for inputs in data.batches(batch)]


def score(
    module: nn.Module, reference: list[torch.Tensor], data: Samples, batch: int, device: torch.device
) -> dict[str, float | None]:
    """Accuracy of ``module`` on ``data`` and its agreement with the ``reference`` outputs."""
    return score_outputs(predict(module, data, batch, device), reference, data.labels, batch)


def score_outputs(
    outputs: list[torch.Tensor], reference: list[torch.Tensor], labels: torch.Tensor | None, batch: int
) -> dict[str, float | None]:
    """``score`` for outputs already computed (batch by batch, as ``predict`` returns them)."""
    acc = Agreement()
    per_batch = labels.split(batch) if labels is not None else [None] * len(reference)
    for out, ref, y in zip(outputs, reference, per_batch, strict=True):
        acc.update(out, ref, y)
    return acc.summary()


def class_count(module: nn.Module, example: Batch) -> int | None:
    """The number of classes a classifier predicts (outputs of shape (N, C)); None for other models."""
    with torch.no_grad():
        out = module(*example)
    try:
        logits = primary_output(out)
    except TypeError:
        return None
    return int(logits.shape[1]) if logits.dim() == 2 else None


def check_labels(module: nn.Module, example: Batch, labels: torch.Tensor) -> int:
    """The number of classes the model outputs; raises LabelError for labels outside it."""
    from core.errors import LabelError

    with torch.no_grad():
        out = primary_output(module(*example))
    if out.dim() != 2:
        raise LabelError(f"accuracy needs (N, classes) outputs; the model returns shape {tuple(out.shape)}")
    classes = out.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise LabelError(
            f"labels must lie in [0, {classes - 1}]; got values from {int(labels.min())} to {int(labels.max())}"
        )
    return classes

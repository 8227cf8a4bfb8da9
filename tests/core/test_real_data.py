"""On a CNN trained on real CIFAR-10 images, spectral pruning keeps far more accuracy than L1 or random
pruning at the same widths, without any fine-tuning."""

from __future__ import annotations

import pytest
import torch

from bench.cifar import ARCHIVE, load_cifar10, normalize
from bench.models import load_checkpoint
from core import CompressionConfig, compress

pytestmark = pytest.mark.skipif(not ARCHIVE.exists(), reason="needs ../shared/data/cifar10")


Setup = tuple[torch.export.ExportedProgram, torch.Tensor, torch.Tensor, torch.Tensor]


def _setup(name: str) -> Setup:
    """(exported checkpoint, 512 calibration images, 1,000 test images and their labels)."""
    model, _ = load_checkpoint(name)
    x_train, _ = load_cifar10("train")
    x_test, y_test = load_cifar10("test")
    gen = torch.Generator().manual_seed(0)
    calib = normalize(x_train[torch.randperm(len(x_train), generator=gen)[:512].sort().values.numpy()])
    test = torch.randperm(len(x_test), generator=gen)[:1000].sort().values.numpy()
    program = torch.export.export(model, (calib[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    return program, calib, normalize(x_test[test]), torch.from_numpy(y_test[test].copy())


@pytest.fixture(scope="module")
def cifar() -> Setup:
    return _setup("small_cnn")


def test_spectral_beats_l1_and_random_at_half_the_flops(cifar) -> None:
    program, calib, x_test, y_test = cifar
    evaluation = (x_test, y_test)
    spectral = compress(
        program, calib, CompressionConfig(flops_ratio=0.5), evaluation=evaluation, measure_latency=False
    ).report
    original = spectral["original"]["top1"]
    assert original > 0.8, "the committed checkpoint should be a trained network"
    assert spectral["compressed"]["flops"] / spectral["original"]["flops"] == pytest.approx(0.5, rel=0.01)
    widths = {layer["name"]: layer["width_after"] for layer in spectral["layers"]}
    top1 = {"spectral": spectral["compressed"]["top1"]}
    for method in ("l1", "random"):
        config = CompressionConfig(method=method, widths=widths)
        top1[method] = compress(program, calib, config, evaluation=evaluation, measure_latency=False).report[
            "compressed"
        ]["top1"]
    assert top1["spectral"] > original - 0.08, top1
    assert top1["spectral"] > top1["l1"] + 0.3, top1
    assert top1["spectral"] > top1["random"] + 0.3, top1


def test_sequential_refit_beats_independent_at_a_quarter_of_the_flops(cifar) -> None:
    program, calib, x_test, y_test = cifar
    top1 = {}
    for refit in ("independent", "sequential"):
        config = CompressionConfig(flops_ratio=0.25, refit=refit)
        report = compress(program, calib, config, evaluation=(x_test, y_test), measure_latency=False).report
        top1[refit] = report["compressed"]["top1"]
    assert top1["sequential"] > top1["independent"] + 0.03, top1


def test_output_refit_beats_the_input_refit_on_a_trained_resnet() -> None:
    """ResNet-20 at a quarter of the FLOPs: whole-patch output re-fits (and residual branches fitted to
    their sums) keep far more accuracy than re-fitting each layer's input channel by channel."""
    program, calib, x_test, y_test = _setup("resnet20")
    evaluation = (x_test, y_test)
    output = compress(
        program, calib, CompressionConfig(flops_ratio=0.25), evaluation=evaluation, measure_latency=False
    ).report
    # the allocation's probes do not depend on the re-fit: the same widths, without probing twice
    widths = {layer["name"]: layer["width_after"] for layer in output["layers"]}
    config = CompressionConfig(widths=widths, refit="sequential")
    sequential = compress(program, calib, config, evaluation=evaluation, measure_latency=False).report
    top1 = {"output": output["compressed"]["top1"], "sequential": sequential["compressed"]["top1"]}
    assert top1["output"] > top1["sequential"] + 0.05, top1

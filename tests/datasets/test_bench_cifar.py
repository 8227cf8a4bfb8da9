"""bench/: the CIFAR-10 cache, the models, the training script and the committed SmallCNN checkpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cifar import CLASSES, MEAN, STD, ensure_cache, load_cifar10, normalize
from bench.models import CHECKPOINT_DIR, MODELS, build_model, load_checkpoint
from bench.train_cifar import augment, main
from tests.datasets.builders import image_bytes, write_archive

EXPECTED_PARAMS = {
    "resnet20": (0.26e6, 0.28e6),  # 0.27M in He et al. 2016 (option B adds the 1x1 shortcuts)
    "resnet56": (0.84e6, 0.87e6),
    "small_cnn": (0.5e6, 0.8e6),
    "vgg16_bn": (14e6, 15.5e6),
}


@pytest.fixture
def tiny_cifar(tmp_path: Path) -> Path:
    """A CIFAR-layout archive with 2 train and 1 test image per class (PNG bytes, so pixels are exact)."""
    rng = np.random.default_rng(0)
    files = {}
    for split, count in (("train", 2), ("test", 1)):
        for name in reversed(CLASSES):  # archive order differs from label order
            for i in range(count):
                files[f"{split}/{name}/{i:04d}.jpg"] = image_bytes(
                    rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                )
    return write_archive(tmp_path / "cifar.tar.gz", files, "tar.gz")


@pytest.mark.parametrize(
    "name", ["small_cnn", "vgg11_bn", "resnet20", "resnext_cifar", "mobilenet_like", "tiny_vit"]
)
def test_models_export_and_match_eager(name: str) -> None:
    """One of each architecture (vgg16_bn and resnet56 only repeat their family's blocks)."""
    torch.manual_seed(0)
    model = build_model(name, **({"width": 0.25} if name.startswith("vgg") else {})).eval()
    x = torch.randn(2, 3, 32, 32)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_build_with_the_expected_size(name: str) -> None:
    model = build_model(name).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    low, high = EXPECTED_PARAMS.get(name, (1e4, 2e7))
    assert low <= sum(p.numel() for p in model.parameters()) <= high


def test_unknown_model_is_named() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet18'"):
        build_model("resnet18")


def test_cache_orders_by_class_and_name(tiny_cifar: Path, tmp_path: Path) -> None:
    cache = ensure_cache(tiny_cifar, tmp_path / "cache")
    x, y = load_cifar10("train", tiny_cifar, cache)
    assert x.shape == (20, 32, 32, 3) and x.dtype == np.uint8
    assert y.tolist() == [label for label in range(10) for _ in range(2)]
    assert load_cifar10("test", tiny_cifar, cache)[0].shape == (10, 32, 32, 3)
    with pytest.raises(ValueError, match="split"):
        load_cifar10("val", tiny_cifar, cache)


def test_normalize_values() -> None:
    x = np.full((1, 2, 2, 3), 51, dtype=np.uint8)
    out = normalize(x)
    assert out.shape == (1, 3, 2, 2) and out.dtype == torch.float32
    expected = (torch.tensor([0.2] * 3) - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(out[0, :, 0, 0], expected)
    with pytest.raises(ValueError, match="uint8"):
        normalize(x.astype(np.float32))


def test_augment_crops_and_flips_the_padded_image() -> None:
    images = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (0, 0, 4, 4, 4, 4))
    for i in range(len(images)):
        candidates = [padded[i, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        candidates += [c.flip(1) for c in candidates]
        assert any(torch.equal(out[i], c) for c in candidates)


def test_training_script_writes_weights_and_sidecar(tiny_cifar: Path, tmp_path: Path) -> None:
    out = tmp_path / "ckpt" / "tiny.safetensors"
    args = ["--model", "small_cnn", "--epochs", "1", "--batch-size", "8", "--out", str(out)]
    main([*args, "--archive", str(tiny_cifar), "--cache-dir", str(tmp_path / "cache")])
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["model"] == "small_cnn" and sidecar["epochs"] == 1 and sidecar["train_samples"] == 20
    assert (
        0.0 <= sidecar["test_top1"] <= 1.0
        and sidecar["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    )
    model, _ = load_checkpoint(out)
    assert not model.training


@pytest.mark.slow
def test_committed_small_cnn_checkpoint_is_as_accurate_as_it_says() -> None:
    weights = CHECKPOINT_DIR / "small_cnn.safetensors"
    assert weights.stat().st_size < 5 << 20
    model, sidecar = load_checkpoint("small_cnn")
    assert sidecar["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert sidecar["test_top1"] >= 0.75 and sidecar["test_samples"] == 10_000
    x, y = load_cifar10("test")
    idx = np.random.default_rng(0).choice(len(x), 2000, replace=False)
    with torch.no_grad():
        predicted = model(normalize(x[np.sort(idx)])).argmax(1).numpy()
    accuracy = float((predicted == y[np.sort(idx)]).mean())
    assert abs(accuracy - sidecar["test_top1"]) < 0.035, (accuracy, sidecar["test_top1"])


def test_an_uncommitted_checkpoint_names_the_command_that_trains_it(tmp_path: Path) -> None:
    sidecar = json.loads((CHECKPOINT_DIR / "vgg11_bn.json").read_text())
    (tmp_path / "vgg11_bn.json").write_text(json.dumps(sidecar))
    with pytest.raises(FileNotFoundError, match=r"bench\.train_cifar --model vgg11_bn"):
        load_checkpoint(tmp_path / "vgg11_bn.safetensors")

"""Preprocess: validation, JSON round trip, and each step checked against hand-computed values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from core.datasets import Preprocess, PreprocessError


def rgb(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def test_json_round_trip_and_defaults() -> None:
    p = Preprocess.from_dict(
        {"resize": 36, "center_crop": [32, 30], "mean": [0.5, 0.4, 0.3], "std": 0.25, "layout": "NHWC"}
    )
    assert p.center_crop == (32, 30) and p.std == (0.25,)
    assert Preprocess.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert Preprocess().to_dict() == {
        "resize": None,
        "center_crop": None,
        "mean": None,
        "std": None,
        "channel_order": "rgb",
        "layout": "NCHW",
        "scale": True,
        "interpolation": "bilinear",
        "version": 1,
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"resise": 32}, "unknown preprocess keys: resise"),
        ({"resize": 0}, "resize must be a positive int"),
        ({"resize": [32]}, "resize must be a positive int"),
        ({"center_crop": True}, "center_crop must be a positive int"),
        ({"mean": [0.5, 0.5]}, "1 or 3 values"),
        ({"std": [1.0, 0.0, 1.0]}, "std must be positive"),
        ({"mean": [float("nan")]}, "finite"),
        ({"channel_order": "rbg"}, "channel_order must be one of"),
        ({"layout": "CHW"}, "layout must be one of"),
        ({"scale": "yes"}, "scale must be true or false"),
        ({"resize": [20, 20], "center_crop": 24}, "larger than"),
        ({"channel_order": "gray", "mean": [0.1, 0.2, 0.3]}, "1 or 1 values"),
        ({"version": 2}, "version"),
    ],
)
def test_invalid_descriptions_are_refused(data: dict, message: str) -> None:
    with pytest.raises(PreprocessError, match=message) as err:
        Preprocess.from_dict(data)
    assert err.value.code == "invalid_preprocess"


def test_crop_scale_order_normalise_layout_by_hand() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(6, 7, 3))  # (H, W, C)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    p = Preprocess(center_crop=(2, 4), mean=mean, std=std, channel_order="bgr")
    out = p.apply(rgb(pixels))
    # centre crop of 2x4 in 6x7: top = round(4/2) = 2, left = round(3/2) = 2 (torchvision rounding)
    crop = pixels[2:4, 2:6, ::-1] / 255.0  # (2, 4, C) in BGR
    expected = ((crop - np.array(mean)) / np.array(std)).transpose(2, 0, 1)  # (C, 2, 4)
    assert out.dtype == np.float32 and out.shape == (3, 2, 4) == p.output_shape(7, 6)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_nhwc_without_scaling_keeps_raw_values() -> None:
    pixels = np.arange(2 * 3 * 3).reshape(2, 3, 3) * 10
    out = Preprocess(layout="NHWC", scale=False).apply(rgb(pixels))
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out, pixels.astype(np.float32))


def test_resize_nearest_replicates_pixels() -> None:
    pixels = np.array([[[0, 0, 0], [255, 0, 0]], [[0, 255, 0], [0, 0, 255]]])  # (2, 2, 3)
    out = Preprocess(resize=[4, 4], interpolation="nearest", layout="NHWC", scale=False).apply(rgb(pixels))
    np.testing.assert_array_equal(out, pixels.repeat(2, axis=0).repeat(2, axis=1).astype(np.float32))


def test_resize_int_sets_the_shorter_side() -> None:
    p = Preprocess(resize=16)
    assert p.output_shape(64, 32) == (3, 16, 32)  # (W, H) = (64, 32): height is the shorter side
    assert p.output_shape(30, 45) == (3, 24, 16)
    out = p.apply(rgb(np.full((32, 64, 3), 77)))
    assert out.shape == (3, 16, 32)
    np.testing.assert_allclose(out, 77 / 255.0, rtol=1e-6)  # a constant image stays constant


def test_resize_then_crop_like_torchvision() -> None:
    p = Preprocess(resize=10, center_crop=8)
    assert p.output_shape(20, 10) == (3, 8, 8)
    pixels = np.zeros((10, 20, 3))
    pixels[:, 10:] = 255  # right half white
    out = p.apply(rgb(pixels))
    # resized to 20x10 unchanged, crop columns 6..13: 4 black then 4 white
    np.testing.assert_allclose(out[0, 0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-6)


def test_gray_gives_one_channel_by_itu_r_601_luma() -> None:
    pixels = np.zeros((2, 2, 3))
    pixels[..., 0] = 200  # pure red
    out = Preprocess(channel_order="gray", scale=False, mean=10.0).apply(rgb(pixels))
    assert out.shape == (1, 2, 2)
    np.testing.assert_allclose(out, round(200 * 299 / 1000) - 10.0, atol=1.0)


def test_crop_larger_than_the_image_is_refused() -> None:
    with pytest.raises(PreprocessError, match="larger than"):
        Preprocess(center_crop=40).output_shape(32, 32)

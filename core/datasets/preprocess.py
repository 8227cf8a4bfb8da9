"""``Preprocess``: how an image from an archive becomes a float32 array the model accepts.

Steps, in order (the torchvision ``Resize -> CenterCrop -> ToTensor -> Normalize`` convention):

1. convert to RGB (or to one grey channel for ``channel_order='gray'``);
2. ``resize``: an int resizes the shorter side to it, keeping the aspect ratio; ``[h, w]`` resizes exactly;
3. ``center_crop``: an int crops a centred square, ``[h, w]`` a centred rectangle;
4. ``scale``: divide by 255 so pixels lie in [0, 1];
5. ``channel_order``: ``rgb`` keeps Pillow's order, ``bgr`` reverses it (Caffe/OpenCV-trained models);
6. ``mean`` / ``std``: ``(x - mean) / std`` per channel, both listed in the *output* channel order
   (one value applies to every channel);
7. ``layout``: ``NCHW`` (PyTorch) or ``NHWC`` per sample, i.e. (C, H, W) or (H, W, C).

As JSON: ``{"resize": 256, "center_crop": 224, "mean": [0.485, 0.456, 0.406],
"std": [0.229, 0.224, 0.225], "channel_order": "rgb", "layout": "NCHW", "scale": true}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from core.datasets.errors import PreprocessError

PREPROCESS_VERSION = 1
ChannelOrder = Literal["rgb", "bgr", "gray"]
Layout = Literal["NCHW", "NHWC"]
Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]
CHANNEL_ORDERS: tuple[str, ...] = ("rgb", "bgr", "gray")
LAYOUTS: tuple[str, ...] = ("NCHW", "NHWC")
RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

Size = int | tuple[int, int]


def _as_size(name: str, value: Any) -> Size | None:
    """Validate an int or an ``[h, w]`` pair of positive ints (``None`` passes through)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise PreprocessError(f"{name} must be a positive int or [height, width], got {value!r}")


def _as_stats(name: str, value: Any, channels: int) -> tuple[float, ...] | None:
    """Validate mean/std: one finite number per output channel, or a single one for all."""
    if value is None:
        return None
    values = [value] if isinstance(value, int | float) and not isinstance(value, bool) else value
    if not isinstance(values, list | tuple) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise PreprocessError(f"{name} must be a finite number or a list of them, got {value!r}")
    if len(values) not in (1, channels):
        raise PreprocessError(
            f"{name} needs 1 or {channels} values for {channels} channels, got {len(values)}"
        )
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing for archive datasets; validated on construction, JSON via to_dict/from_dict."""

    resize: int | Sequence[int] | None = None  # normalised to int or (h, w)
    center_crop: int | Sequence[int] | None = None  # normalised to int or (h, w)
    mean: float | Sequence[float] | None = None  # normalised to a tuple
    std: float | Sequence[float] | None = None  # normalised to a tuple
    channel_order: ChannelOrder = "rgb"
    layout: Layout = "NCHW"
    scale: bool = True
    interpolation: Interpolation = "bilinear"
    version: int = PREPROCESS_VERSION

    def __post_init__(self) -> None:
        if self.channel_order not in CHANNEL_ORDERS:
            raise PreprocessError(
                f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {self.channel_order!r}"
            )
        if self.layout not in LAYOUTS:
            raise PreprocessError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        if self.interpolation not in RESAMPLING:
            raise PreprocessError(
                f"interpolation must be one of {', '.join(RESAMPLING)}, got {self.interpolation!r}"
            )
        if not isinstance(self.scale, bool):
            raise PreprocessError(f"scale must be true or false, got {self.scale!r}")
        if self.version != PREPROCESS_VERSION:
            raise PreprocessError(
                f"preprocess version {self.version!r} is not supported (this is {PREPROCESS_VERSION})"
            )
        object.__setattr__(self, "resize", _as_size("resize", self.resize))
        object.__setattr__(self, "center_crop", _as_size("center_crop", self.center_crop))
        object.__setattr__(self, "mean", _as_stats("mean", self.mean, self.channels))
        object.__setattr__(self, "std", _as_stats("std", self.std, self.channels))
        if isinstance(self.std, tuple) and any(s <= 0 for s in self.std):
            raise PreprocessError(f"std must be positive, got {list(self.std)}")
        if isinstance(self.resize, tuple) and self.center_crop is not None:
            self.crop_box(self.resize[1], self.resize[0])  # refuses a crop larger than the exact resize

    @property
    def channels(self) -> int:
        """Channels per output sample: 1 for ``gray``, else 3."""
        return 1 if self.channel_order == "gray" else 3

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, with the schema ``version``."""
        data = asdict(self)
        for key in ("resize", "center_crop", "mean", "std"):
            if isinstance(data[key], tuple):
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        """Inverse of ``to_dict``; unknown keys are refused so a typo is not silently ignored."""
        if not isinstance(data, dict):
            raise PreprocessError(f"preprocess must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise PreprocessError(
                f"unknown preprocess keys: {', '.join(unknown)} (known: {', '.join(cls.__dataclass_fields__)})"
            )
        return cls(**data)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after ``resize``."""
        if self.resize is None:
            return width, height
        if not isinstance(self.resize, int):
            return self.resize[1], self.resize[0]
        short = self.resize
        if width <= height:
            return short, max(1, round(height * short / width))
        return max(1, round(width * short / height)), short

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The (left, top, right, bottom) centre-crop box in an image of (width, height)."""
        if self.center_crop is None:
            return 0, 0, width, height
        ch, cw = (
            (self.center_crop, self.center_crop) if isinstance(self.center_crop, int) else self.center_crop
        )
        if ch > height or cw > width:
            raise PreprocessError(
                f"center_crop {ch}x{cw} is larger than the (resized) image {height}x{width}"
            )
        top = round((height - ch) / 2.0)
        left = round((width - cw) / 2.0)
        return left, top, left + cw, top + ch

    def output_shape(self, width: int, height: int) -> tuple[int, ...]:
        """Per-sample output shape for a source image of (width, height), without decoding it."""
        left, top, right, bottom = self.crop_box(*self.resized_size(width, height))
        h, w = bottom - top, right - left
        return (self.channels, h, w) if self.layout == "NCHW" else (h, w, self.channels)

    def apply(self, image: Image.Image) -> np.ndarray:
        """Decode-ready Pillow image -> float32 array of ``output_shape(image.size)``."""
        image = image.convert("L" if self.channel_order == "gray" else "RGB")
        size = self.resized_size(*image.size)
        if size != image.size:
            image = image.resize(size, RESAMPLING[self.interpolation])
        box = self.crop_box(*image.size)
        if box != (0, 0, *image.size):
            image = image.crop(box)
        x: np.ndarray = np.asarray(image, dtype=np.float32).reshape(
            image.size[1], image.size[0], -1
        )  # (H, W, C)
        if self.scale:
            x = x / np.float32(255.0)
        if self.channel_order == "bgr":
            x = x[:, :, ::-1]
        if self.mean is not None:
            x = x - np.asarray(self.mean, dtype=np.float32)
        if self.std is not None:
            x = x / np.asarray(self.std, dtype=np.float32)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)  # (C, H, W)
        return np.ascontiguousarray(x, dtype=np.float32)

"""ONNX spatial operators as torch functional calls: pooling, resizing and padding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from core.formats.errors import UnsupportedFormatError
from core.formats.onnx_graph import NodeSpec
from core.formats.onnx_ops import Builder, OpContext, Runtime
from core.formats.onnx_values import Value, ints_list, to_tensor

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def torch_pads(onnx_pads: Sequence[Any]) -> list[Any]:
    """ONNX ``[x1_begin, x2_begin, ..., x1_end, x2_end]`` as torch ``F.pad``'s
    ``(last_begin, last_end, ..., first_begin, first_end)``."""
    half = len(onnx_pads) // 2
    pairs = [(onnx_pads[i], onnx_pads[i + half]) for i in range(half)]
    return [p for pair in reversed(pairs) for p in pair]


def split_pads(onnx_pads: Sequence[int], kernel: Sequence[int]) -> tuple[list[int], list[int] | None]:
    """(symmetric padding for the torch op, extra ``F.pad`` pads or ``None``): ONNX allows per-side
    and over-large pads, torch ops only symmetric ones up to half the kernel."""
    half = len(onnx_pads) // 2
    begin, end = list(onnx_pads[:half]), list(onnx_pads[half:])
    if begin == end and all(p <= k // 2 for p, k in zip(begin, kernel, strict=True)):
        return begin, None
    return [0] * half, torch_pads(onnx_pads)


def same_pads(
    auto_pad: str,
    sizes: Sequence[Any],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[Any]:
    """ONNX ``SAME_UPPER`` / ``SAME_LOWER`` padding for the given spatial sizes (ONNX order)."""
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def _pool_geometry(node: NodeSpec) -> tuple[list[int], list[int], list[int], list[int], str]:
    kernel = list(node.attrs["kernel_shape"])
    rank = len(kernel)
    strides = list(node.attrs.get("strides", [1] * rank))
    pads = list(node.attrs.get("pads", [0] * (2 * rank)))
    dilations = list(node.attrs.get("dilations", [1] * rank))
    auto_pad = str(node.attrs.get("auto_pad", "NOTSET"))
    if auto_pad == "VALID":
        pads = [0] * (2 * rank)
    return kernel, strides, pads, dilations, auto_pad


def _max_pool(node: NodeSpec, ctx: OpContext) -> Runtime:
    kernel, strides, pads, dilations, auto_pad = _pool_geometry(node)
    ceil_mode = bool(node.attrs.get("ceil_mode", 0))
    pool = _MAX_POOL[len(kernel)]

    def run(inputs: list[Value]) -> list[Value]:
        x = to_tensor(inputs[0])
        onnx_pads = (
            same_pads(auto_pad, x.shape[2:], kernel, strides, dilations)
            if auto_pad.startswith("SAME")
            else pads
        )
        padding, extra = split_pads(onnx_pads, kernel)
        if extra is not None:
            x = F.pad(x, extra, value=float("-inf"))
        return [pool(x, kernel, strides, padding, dilations, ceil_mode=ceil_mode)]

    if len(node.outputs) > 1 and node.outputs[1]:
        raise UnsupportedFormatError("the ONNX MaxPool returns indices, which is not supported.")
    return run


def _avg_pool(node: NodeSpec, ctx: OpContext) -> Runtime:
    kernel, strides, pads, dilations, auto_pad = _pool_geometry(node)
    if any(d != 1 for d in dilations):
        raise UnsupportedFormatError("the ONNX AveragePool is dilated, which is not supported.")
    ceil_mode = bool(node.attrs.get("ceil_mode", 0))
    include_pad = bool(node.attrs.get("count_include_pad", 0))
    pool = _AVG_POOL[len(kernel)]

    def run(x_value: Value) -> Value:
        x = to_tensor(x_value)
        onnx_pads = (
            same_pads(auto_pad, x.shape[2:], kernel, strides, dilations)
            if auto_pad.startswith("SAME")
            else pads
        )
        padding, extra = split_pads(onnx_pads, kernel)
        if extra is not None:
            if not include_pad:
                raise UnsupportedFormatError("the ONNX AveragePool pads unevenly without counting the pads.")
            x = F.pad(x, extra)
        return pool(x, kernel, strides, padding, ceil_mode=ceil_mode, count_include_pad=include_pad)

    return lambda inputs: [run(inputs[0])]


def _global_average_pool(node: NodeSpec, ctx: OpContext) -> Runtime:
    def run(x_value: Value) -> Value:
        x = to_tensor(x_value)
        if x.dim() == 4:
            return F.adaptive_avg_pool2d(x, 1)
        if x.dim() == 3:
            return F.adaptive_avg_pool1d(x, 1)
        return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)

    return lambda inputs: [run(inputs[0])]


def _global_max_pool(node: NodeSpec, ctx: OpContext) -> Runtime:
    return lambda inputs: [
        to_tensor(inputs[0]).amax(dim=tuple(range(2, to_tensor(inputs[0]).dim())), keepdim=True)
    ]


def _interpolation(node: NodeSpec, mode: str, coordinates: str) -> tuple[str, bool | None]:
    """torch ``F.interpolate`` mode and ``align_corners`` for an ONNX resize mode and coordinate
    transformation (the combinations torch implements)."""
    if mode == "nearest":
        nearest_mode = str(node.attrs.get("nearest_mode", "round_prefer_floor"))
        if coordinates == "asymmetric" and nearest_mode == "floor":
            return "nearest", None
        if coordinates in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn"):
            return ("nearest-exact" if nearest_mode == "round_prefer_ceil" else "nearest"), None
    elif mode in ("linear", "cubic") and coordinates in ("align_corners", "half_pixel", "pytorch_half_pixel"):
        return mode, coordinates == "align_corners"
    raise UnsupportedFormatError(
        f"the ONNX Resize mode {mode!r} with coordinates {coordinates!r} has no torch equivalent."
    )


def _resized(
    x: torch.Tensor, mode: str, align: bool | None, scales: list[float] | None, sizes: list[Any] | None
) -> torch.Tensor:
    spatial = x.dim() - 2
    if mode in ("linear", "cubic"):
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial] if mode == "linear" else "bicubic"
    if sizes is not None:
        return F.interpolate(x, size=tuple(sizes[2:]), mode=mode, align_corners=align)
    assert scales is not None
    if any(abs(s - 1.0) > 1e-9 for s in scales[:2]):
        raise UnsupportedFormatError("the ONNX Resize scales the batch or channel axis.")
    return F.interpolate(x, scale_factor=tuple(scales[2:]), mode=mode, align_corners=align)


def _resize(node: NodeSpec, ctx: OpContext) -> Runtime:
    mode = str(node.attrs.get("mode", "nearest"))
    coordinates = str(node.attrs.get("coordinate_transformation_mode", "half_pixel"))
    if ctx.opset < 11:
        coordinates = "asymmetric"
        node.attrs.setdefault("nearest_mode", "floor")
    if node.attrs.get("antialias", 0) or "axes" in node.attrs:
        raise UnsupportedFormatError("the ONNX Resize uses antialias or axes, which is not supported.")
    if mode == "cubic" and abs(float(node.attrs.get("cubic_coeff_a", -0.75)) + 0.75) > 1e-6:
        raise UnsupportedFormatError("the ONNX Resize uses a cubic coefficient other than -0.75.")
    torch_mode, align = _interpolation(node, mode, coordinates)
    scale_name = node.inputs[1] if ctx.opset < 11 else (node.inputs[2] if len(node.inputs) > 2 else "")
    scale_values = ctx.constant(scale_name) if scale_name else None
    scales = (
        [float(s) for s in scale_values.reshape(-1)]
        if scale_values is not None and scale_values.size
        else None
    )

    def run(inputs: list[Value]) -> list[Value]:
        sizes_value = inputs[3] if len(inputs) > 3 and ctx.opset >= 11 else None
        sizes = ints_list(sizes_value, "Resize sizes") if sizes_value is not None else None
        if sizes is None and scales is None:
            raise UnsupportedFormatError("the ONNX Resize computes its scales at run time.")
        return [_resized(to_tensor(inputs[0]), torch_mode, align, scales, sizes)]

    return run


def _upsample(node: NodeSpec, ctx: OpContext) -> Runtime:
    mode = str(node.attrs.get("mode", "nearest"))
    node.attrs.setdefault("nearest_mode", "floor")
    torch_mode, align = _interpolation(node, mode, "asymmetric" if mode == "nearest" else "half_pixel")
    scales_attr = node.attrs.get("scales")
    scale_values = ctx.constant(node.inputs[1]) if len(node.inputs) > 1 else None
    raw = (
        scales_attr
        if scales_attr is not None
        else (scale_values.reshape(-1) if scale_values is not None else None)
    )
    if raw is None:
        raise UnsupportedFormatError("the ONNX Upsample computes its scales at run time.")
    scales = [float(s) for s in raw]
    return lambda inputs: [_resized(to_tensor(inputs[0]), torch_mode, align, scales, None)]


def _pad(node: NodeSpec, ctx: OpContext) -> Runtime:
    mode = _PAD_MODES.get(str(node.attrs.get("mode", "constant")))
    if mode is None:
        raise UnsupportedFormatError(f"the ONNX Pad mode {node.attrs.get('mode')!r} is not supported.")
    fill = float(node.attrs.get("value", 0.0))
    if ctx.opset >= 11 and len(node.inputs) > 2 and node.inputs[2]:
        constant = ctx.constant(node.inputs[2])
        if constant is None:
            raise UnsupportedFormatError("the ONNX Pad computes its fill value at run time.")
        fill = float(constant.reshape(()))

    def run(inputs: list[Value]) -> list[Value]:
        x = to_tensor(inputs[0])
        pads = list(node.attrs["pads"]) if ctx.opset < 11 else ints_list(inputs[1], "Pad amounts")
        if len(inputs) > 3 and inputs[3] is not None:
            axes = [a % x.dim() for a in ints_list(inputs[3], "Pad axes")]
            full = [0] * (2 * x.dim())
            for i, axis in enumerate(axes):
                full[axis], full[axis + x.dim()] = pads[i], pads[i + len(axes)]
            pads = full
        torch_order = torch_pads(pads)
        while len(torch_order) >= 2 and torch_order[-1] == 0 and torch_order[-2] == 0:
            torch_order = torch_order[:-2]  # leading axes without padding (torch pads trailing axes)
        if mode == "constant":
            return [F.pad(x, torch_order, mode="constant", value=fill)]
        return [F.pad(x, torch_order, mode=mode)]

    return run


def _depth_to_space(node: NodeSpec, ctx: OpContext) -> Runtime:
    """``DepthToSpace``: ``CRD`` mode is ``pixel_shuffle``; ``DCR`` (the default) reads the block offset
    from the leading channels."""
    b, crd = int(node.attrs["blocksize"]), str(node.attrs.get("mode", "DCR")) == "CRD"

    def run(x: Value) -> Value:
        t = to_tensor(x)
        if crd:
            return F.pixel_shuffle(t, b)
        n, c, h, w = t.shape
        blocks = t.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        return blocks.reshape(n, c // (b * b), h * b, w * b)

    return lambda inputs: [run(inputs[0])]


def _space_to_depth(node: NodeSpec, ctx: OpContext) -> Runtime:
    b = int(node.attrs["blocksize"])

    def run(x: Value) -> Value:
        t = to_tensor(x)
        n, c, h, w = t.shape
        blocks = t.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
        return blocks.reshape(n, c * b * b, h // b, w // b)

    return lambda inputs: [run(inputs[0])]


SPATIAL_OPS: dict[str, Builder] = {
    "MaxPool": _max_pool,
    "AveragePool": _avg_pool,
    "GlobalAveragePool": _global_average_pool,
    "GlobalMaxPool": _global_max_pool,
    "Resize": _resize,
    "Upsample": _upsample,
    "Pad": _pad,
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
}

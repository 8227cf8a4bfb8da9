"""ONNX operators with weights as standard torch modules, so the exported program calls
``aten.conv2d`` / ``aten.linear`` / ``aten.batch_norm`` / ``aten.layer_norm`` on parameters.

Each node gets its own module (weights shared by several ONNX nodes are copied) named after its
weight (``features.0.weight`` -> ``features.0``), so that pruning one layer never changes another and
the report's layer names match the original model's.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.formats.errors import UnsupportedFormatError
from core.formats.onnx_graph import NodeSpec
from core.formats.onnx_ops import Builder, OpContext, Runtime
from core.formats.onnx_spatial import same_pads, torch_pads
from core.formats.onnx_values import Value, to_tensor

_CONVS: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_TRANSPOSED: dict[int, type[nn.Module]] = {
    1: nn.ConvTranspose1d,
    2: nn.ConvTranspose2d,
    3: nn.ConvTranspose3d,
}


class BatchNorm(nn.modules.batchnorm._BatchNorm):
    """Inference batch norm over dimension 1 of an input of any rank >= 2 (ONNX
    ``BatchNormalization``); forwards to ``F.batch_norm`` with the running statistics."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of rank >= 2, got rank {input.dim()}")


def _parameter(array: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.ascontiguousarray(array).copy()), requires_grad=False)


def _weight(node: NodeSpec, ctx: OpContext, index: int, what: str) -> np.ndarray | None:
    """The constant at input ``index`` (``None`` when the input is absent)."""
    if len(node.inputs) <= index or not node.inputs[index]:
        return None
    value = ctx.constant(node.inputs[index])
    if value is None:
        raise UnsupportedFormatError(
            f"the ONNX {node.op_type} {node.name!r} computes its {what} at run time."
        )
    ctx.absorb(node, index)
    return value


def layer_name(node: NodeSpec, *candidates: str) -> str:
    """The module path for a layer: its weight's name without ``.weight`` (or bias without
    ``.bias``; ``_weight``/``_bias`` as in ``attn.in_proj_bias``), else the module the exporter names
    (where it folded a BatchNorm into anonymous ``onnx::Conv_161`` weights, or made a transposed copy of
    a weight), else the first non-empty candidate, else the node's name."""
    for name in candidates:
        for suffix in (".weight", ".bias", "_weight", "_bias"):
            if name.endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)]
    return node.scope or next((c for c in candidates if c), node.name or "layer")


def _conv_weights(node: NodeSpec, ctx: OpContext) -> tuple[np.ndarray, np.ndarray | None, int]:
    """A ``Conv`` / ``ConvTranspose`` node's weight, bias and spatial rank (1 to 3)."""
    weight = _weight(node, ctx, 1, "weight")
    assert weight is not None
    rank = weight.ndim - 2
    if rank not in _CONVS:
        raise UnsupportedFormatError(
            f"the ONNX {node.op_type} {node.name!r} is {rank}-D; 1-D to 3-D are supported."
        )
    return weight, _weight(node, ctx, 2, "bias"), rank


def _add_conv(
    node: NodeSpec, ctx: OpContext, conv: nn.Module, weight: np.ndarray, bias: np.ndarray | None
) -> nn.Module:
    """``conv`` with the node's weight and bias, added to the module under the weight's name."""
    conv.weight = _parameter(weight)
    if bias is not None:
        conv.bias = _parameter(bias)
    return ctx.add_layer(layer_name(node, node.inputs[1], node.inputs[2] if bias is not None else ""), conv)


def _conv(node: NodeSpec, ctx: OpContext) -> Runtime:
    weight, bias, rank = _conv_weights(node, ctx)
    groups = int(node.attrs.get("group", 1))
    kernel = list(weight.shape[2:])
    strides = list(node.attrs.get("strides", [1] * rank))
    dilations = list(node.attrs.get("dilations", [1] * rank))
    pads = list(node.attrs.get("pads", [0] * (2 * rank)))
    auto_pad = str(node.attrs.get("auto_pad", "NOTSET"))
    if auto_pad != "NOTSET":
        pads = [0] * (2 * rank)
    symmetric = pads[:rank] == pads[rank:]
    conv = _CONVS[rank](
        weight.shape[1] * groups,
        weight.shape[0],
        kernel,
        strides,
        pads[:rank] if symmetric else 0,
        dilations,
        groups,
        bias is not None,
    )
    module = _add_conv(node, ctx, conv, weight, bias)

    def run(x_value: Value) -> Value:
        x = to_tensor(x_value)
        if auto_pad.startswith("SAME"):
            x = F.pad(x, torch_pads(same_pads(auto_pad, x.shape[2:], kernel, strides, dilations)))
        elif not symmetric:
            x = F.pad(x, torch_pads(pads))
        return module(x)

    return lambda inputs: [run(inputs[0])]


def _conv_transpose(node: NodeSpec, ctx: OpContext) -> Runtime:
    """``ConvTranspose`` with explicit pads; asymmetric pads crop the full output (ONNX's
    ``out = stride (in - 1) + output_padding + dilation (k - 1) + 1 - pad_begin - pad_end``)."""
    weight, bias, rank = _conv_weights(node, ctx)
    if "output_shape" in node.attrs or str(node.attrs.get("auto_pad", "NOTSET")) != "NOTSET":
        raise UnsupportedFormatError(
            f"the ONNX ConvTranspose {node.name!r} sets output_shape or auto_pad; export it with explicit pads."
        )
    groups = int(node.attrs.get("group", 1))
    pads = list(node.attrs.get("pads", [0] * (2 * rank)))
    begin, end = pads[:rank], pads[rank:]
    symmetric = begin == end
    conv = _TRANSPOSED[rank](
        weight.shape[0],
        weight.shape[1] * groups,
        list(weight.shape[2:]),
        list(node.attrs.get("strides", [1] * rank)),
        begin if symmetric else 0,
        list(node.attrs.get("output_padding", [0] * rank)),
        groups,
        bias is not None,
        list(node.attrs.get("dilations", [1] * rank)),
    )
    module = _add_conv(node, ctx, conv, weight, bias)

    def run(x_value: Value) -> Value:
        y = module(to_tensor(x_value))
        if symmetric:
            return y
        crop = [slice(None), slice(None)]
        crop += [slice(b, size - e) for b, e, size in zip(begin, end, y.shape[2:], strict=True)]
        return y[tuple(crop)]

    return lambda inputs: [run(inputs[0])]


def _linear(node: NodeSpec, ctx: OpContext) -> Runtime:
    """A fused ``Gemm`` / ``MatMul`` + ``Add`` (see :func:`core.formats.onnx_graph.fuse_linear`)."""
    weight: np.ndarray = node.attrs["weight"]
    bias: np.ndarray | None = node.attrs["bias"]
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    linear.weight = _parameter(weight)
    if bias is not None:
        linear.bias = _parameter(bias)
    module = ctx.add_layer(layer_name(node, node.attrs["weight_name"], node.attrs["bias_name"]), linear)
    return lambda inputs: [module(to_tensor(inputs[0]))]


def _batch_norm(node: NodeSpec, ctx: OpContext) -> Runtime:
    if node.attrs.get("training_mode", 0):
        raise UnsupportedFormatError(f"the ONNX BatchNormalization {node.name!r} is in training mode.")
    if any(node.outputs[1:]):
        raise UnsupportedFormatError(f"the ONNX BatchNormalization {node.name!r} returns running statistics.")
    scale, shift, mean, var = (_weight(node, ctx, i, "statistics") for i in (1, 2, 3, 4))
    assert scale is not None and shift is not None and mean is not None and var is not None
    norm = BatchNorm(scale.shape[0], eps=float(node.attrs.get("epsilon", 1e-5)))
    norm.weight = _parameter(scale)
    norm.bias = _parameter(shift)
    norm.running_mean = torch.from_numpy(mean.astype(scale.dtype).copy())
    norm.running_var = torch.from_numpy(var.astype(scale.dtype).copy())
    norm.eval()
    module = ctx.add_layer(layer_name(node, node.inputs[1], node.inputs[2]), norm)
    return lambda inputs: [module(to_tensor(inputs[0]))]


def _layer_norm(node: NodeSpec, ctx: OpContext) -> Runtime:
    if any(node.outputs[1:]):
        raise UnsupportedFormatError(f"the ONNX LayerNormalization {node.name!r} returns its statistics.")
    scale = _weight(node, ctx, 1, "scale")
    assert scale is not None
    shift = _weight(node, ctx, 2, "bias")
    axis = int(node.attrs.get("axis", -1))
    norm = nn.LayerNorm(
        tuple(scale.shape), eps=float(node.attrs.get("epsilon", 1e-5)), bias=shift is not None
    )
    norm.weight = _parameter(scale)
    if shift is not None:
        norm.bias = _parameter(shift)
    module = ctx.add_layer(
        layer_name(node, node.inputs[1], node.inputs[2] if shift is not None else ""), norm
    )

    def run(x_value: Value) -> Value:
        x = to_tensor(x_value)
        normalized = tuple(x.shape[axis % x.dim() :])
        if normalized == tuple(scale.shape):
            return module(x)
        weight = module.weight.expand(normalized)
        bias = module.bias.expand(normalized) if module.bias is not None else None
        return F.layer_norm(x, normalized, weight, bias, module.eps)

    return lambda inputs: [run(inputs[0])]


class InstanceNorm(nn.Module):
    """``InstanceNormalization``: each channel of each sample normalised over its own positions."""

    def __init__(self, scale: np.ndarray, shift: np.ndarray, eps: float) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = _parameter(scale), _parameter(shift), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)


def _instance_norm(node: NodeSpec, ctx: OpContext) -> Runtime:
    scale, shift = _weight(node, ctx, 1, "scale"), _weight(node, ctx, 2, "bias")
    assert scale is not None and shift is not None
    norm = InstanceNorm(scale, shift, float(node.attrs.get("epsilon", 1e-5)))
    module = ctx.add_layer(layer_name(node, node.inputs[1], node.inputs[2]), norm)
    return lambda inputs: [module(to_tensor(inputs[0]))]


def _prelu(node: NodeSpec, ctx: OpContext) -> Runtime:
    """``PRelu``: a torch ``PReLU`` where the slope is one number or one per channel of axis 1 (its
    trailing dimensions 1, as exporters write it for NCHW), else the broadcast formula."""
    slope = _weight(node, ctx, 1, "slope")
    assert slope is not None
    prelu = nn.PReLU(slope.size)
    prelu.weight = _parameter(slope.reshape(-1))
    module = ctx.add_layer(layer_name(node, node.inputs[1]), prelu)
    per_channel = slope.size == 1 or all(d == 1 for d in slope.shape[1:])

    def run(x_value: Value) -> Value:
        x = to_tensor(x_value)
        if per_channel and (slope.size == 1 or x.dim() == slope.ndim + 1):
            return module(x)
        return torch.where(x >= 0, x, x * module.weight.reshape(slope.shape))  # x < 0: slope x

    return lambda inputs: [run(inputs[0])]


LAYER_OPS: dict[str, Builder] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Linear": _linear,
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "InstanceNormalization": _instance_norm,
    "PRelu": _prelu,
}

"""ONNX operators as torch functional calls: element-wise math, activations and shape manipulation.

Each builder reads a node's attributes once, when the module is built, and returns the function run
on every forward pass. Layer operators (with weights) are in :mod:`core.formats.onnx_layers`;
pooling, resizing and padding in :mod:`core.formats.onnx_spatial`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from core.formats.errors import UnsupportedFormatError
from core.formats.onnx_graph import NodeSpec
from core.formats.onnx_values import (
    ONNX_DTYPES,
    Ints,
    Value,
    from_numpy,
    ints_binary,
    ints_index,
    ints_list,
    to_ints,
    to_tensor,
)

Runtime = Callable[[list[Value]], list[Value]]
ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


class OpContext(Protocol):
    """What a builder may ask of the module under construction."""

    opset: int

    def constant(self, name: str) -> np.ndarray | None: ...

    def absorb(self, node: NodeSpec, index: int) -> None:
        """Input ``index`` of ``node`` now lives in a layer: the step does not read it at run time."""

    def add_layer(self, hint: str, module: ModuleT) -> ModuleT: ...


Builder = Callable[[NodeSpec, OpContext], Runtime]


def _one(fn: Callable[..., Value]) -> Runtime:
    """A runtime returning the single output of ``fn(*inputs)``."""
    return lambda inputs: [fn(*inputs)]


# -- element-wise ---------------------------------------------------------------------------------

_INT_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Div": operator.floordiv,
    "Equal": lambda a, b: int(a == b),
    "Less": lambda a, b: int(a < b),
    "Greater": lambda a, b: int(a > b),
}


def _tensor_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if not a.dtype.is_floating_point and not b.dtype.is_floating_point:
        return torch.div(a, b, rounding_mode="trunc")
    return torch.div(a, b)


_TENSOR_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Div": _tensor_div,
    "Pow": torch.pow,
    "Equal": torch.eq,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
}


def _binary(node: NodeSpec, ctx: OpContext) -> Runtime:
    int_fn = _INT_BINARY.get(node.op_type)
    tensor_fn = _TENSOR_BINARY[node.op_type]

    def run(a: Value, b: Value) -> Value:
        if int_fn is not None and isinstance(a, Ints) and isinstance(b, Ints):
            return ints_binary(int_fn, a, b)
        return tensor_fn(to_tensor(a), to_tensor(b))

    return _one(run)


def _variadic(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Builder:
    def build(node: NodeSpec, ctx: OpContext) -> Runtime:
        def run(inputs: list[Value]) -> list[Value]:
            tensors = [to_tensor(v) for v in inputs if v is not None]
            result = tensors[0]
            for tensor in tensors[1:]:
                result = fn(result, tensor)
            return [result]

        return run

    return build


def _unary(fn: Callable[[torch.Tensor], torch.Tensor]) -> Builder:
    return lambda node, ctx: _one(lambda x: fn(to_tensor(x)))


def _where(node: NodeSpec, ctx: OpContext) -> Runtime:
    def run(cond: Value, a: Value, b: Value) -> Value:
        if isinstance(cond, Ints) and isinstance(a, Ints) and isinstance(b, Ints):
            pairs = ints_binary(lambda x, y: (x, y), a, b)
            return ints_binary(lambda c, pair: pair[0] if c else pair[1], cond, pairs)
        return torch.where(to_tensor(cond).bool(), to_tensor(a), to_tensor(b))

    return _one(run)


def _mod(node: NodeSpec, ctx: OpContext) -> Runtime:
    """``Mod``: the sign of the divisor (Python's ``%``), or of the dividend with ``fmod=1`` (C's)."""
    fn = torch.fmod if node.attrs.get("fmod", 0) else torch.remainder
    return _one(lambda a, b: fn(to_tensor(a), to_tensor(b)))


def _mean(node: NodeSpec, ctx: OpContext) -> Runtime:
    total = _variadic(torch.add)(node, ctx)
    return lambda inputs: [to_tensor(total(inputs)[0]) / sum(v is not None for v in inputs)]


def _is_inf(node: NodeSpec, ctx: OpContext) -> Runtime:
    negative, positive = (
        bool(node.attrs.get("detect_negative", 1)),
        bool(node.attrs.get("detect_positive", 1)),
    )

    def run(x: Value) -> Value:
        tensor = to_tensor(x)
        return (torch.isneginf(tensor) & negative) | (torch.isposinf(tensor) & positive)

    return _one(run)


def _cast_like(node: NodeSpec, ctx: OpContext) -> Runtime:
    return _one(lambda x, like: to_tensor(x).to(to_tensor(like).dtype))


def _trilu(node: NodeSpec, ctx: OpContext) -> Runtime:
    """``Trilu``: the upper (``upper=1``, the default) or lower triangle of the last two axes, from the
    diagonal ``k`` (a causal attention mask)."""
    upper = bool(node.attrs.get("upper", 1))

    def run(x: Value, k: Value | None = None) -> Value:
        diagonal = int(ints_list(k, "a Trilu diagonal")[0]) if k is not None else 0
        return (torch.triu if upper else torch.tril)(to_tensor(x), diagonal)

    return _one(run)


def _not(node: NodeSpec, ctx: OpContext) -> Runtime:
    return _one(lambda x: torch.logical_not(to_tensor(x)))


def _cast(node: NodeSpec, ctx: OpContext) -> Runtime:
    dtype = _dtype(int(node.attrs["to"]))

    def run(x: Value) -> Value:
        if isinstance(x, Ints) and not dtype.is_floating_point and dtype != torch.bool:
            return x
        return to_tensor(x).to(dtype)

    return _one(run)


def _dtype(onnx_type: int) -> torch.dtype:
    if onnx_type not in ONNX_DTYPES:
        raise UnsupportedFormatError(f"the ONNX graph uses element type {onnx_type}, which is not supported.")
    return ONNX_DTYPES[onnx_type]


# -- activations ----------------------------------------------------------------------------------


def _gelu(node: NodeSpec, ctx: OpContext) -> Runtime:
    approximate = str(node.attrs.get("approximate", "none"))
    return _one(lambda x: F.gelu(to_tensor(x), approximate=approximate))


def _leaky_relu(node: NodeSpec, ctx: OpContext) -> Runtime:
    slope = float(node.attrs.get("alpha", 0.01))
    return _one(lambda x: F.leaky_relu(to_tensor(x), slope))


def _elu(node: NodeSpec, ctx: OpContext) -> Runtime:
    alpha = float(node.attrs.get("alpha", 1.0))
    return _one(lambda x: F.elu(to_tensor(x), alpha))


def _celu(node: NodeSpec, ctx: OpContext) -> Runtime:
    alpha = float(node.attrs.get("alpha", 1.0))
    return _one(lambda x: F.celu(to_tensor(x), alpha))


SELU_ALPHA, SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875  # ONNX's and torch's


def _selu(node: NodeSpec, ctx: OpContext) -> Runtime:
    alpha = float(node.attrs.get("alpha", SELU_ALPHA))
    gamma = float(node.attrs.get("gamma", SELU_GAMMA))
    if abs(alpha - SELU_ALPHA) < 1e-6 and abs(gamma - SELU_GAMMA) < 1e-6:
        return _one(lambda x: F.selu(to_tensor(x)))
    return _one(lambda x: gamma * F.elu(to_tensor(x), alpha))  # gamma (x > 0 ? x : alpha (e^x - 1))


def _thresholded_relu(node: NodeSpec, ctx: OpContext) -> Runtime:
    alpha = float(node.attrs.get("alpha", 1.0))
    return _one(lambda x: F.threshold(to_tensor(x), alpha, 0.0))  # x where x > alpha, else 0


def _lrn(node: NodeSpec, ctx: OpContext) -> Runtime:
    """``LRN``: ``y = x / (bias + alpha / size * sum of x^2 over a window of size channels)^beta``, the
    window from ``floor((size - 1) / 2)`` channels before to ``ceil((size - 1) / 2)`` after."""
    size = int(node.attrs["size"])
    alpha, beta = float(node.attrs.get("alpha", 1e-4)), float(node.attrs.get("beta", 0.75))
    bias = float(node.attrs.get("bias", 1.0))
    before = (size - 1) // 2

    def run(x_value: Value) -> Value:
        x = to_tensor(x_value)
        squares = F.pad(x.pow(2).transpose(1, -1), (before, size - 1 - before)).transpose(1, -1)
        window = squares.unfold(1, size, 1).sum(-1)  # (N, C, ...): each channel's window
        return x / (bias + alpha / size * window).pow(beta)

    return _one(run)


def _hard_sigmoid(node: NodeSpec, ctx: OpContext) -> Runtime:
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    if abs(alpha - 1.0 / 6.0) < 1e-6 and abs(beta - 0.5) < 1e-6:
        return _one(lambda x: F.hardsigmoid(to_tensor(x)))
    return _one(lambda x: torch.clamp(to_tensor(x) * alpha + beta, 0.0, 1.0))


def _clip(node: NodeSpec, ctx: OpContext) -> Runtime:
    """``Clip``; bounds are attributes before opset 11 and constant inputs after. (0, 6) is ReLU6."""
    if ctx.opset < 11:
        low, high = node.attrs.get("min"), node.attrs.get("max")
    else:
        low, high = (_scalar_constant(ctx, name) for name in ([*node.inputs[1:], "", ""])[:2])
    if low == 0.0 and high == 6.0:
        return lambda inputs: [F.relu6(to_tensor(inputs[0]))]
    return lambda inputs: [torch.clamp(to_tensor(inputs[0]), low, high)]


def _scalar_constant(ctx: OpContext, name: str) -> float | None:
    if not name:
        return None
    value = ctx.constant(name)
    if value is None or value.size != 1:
        raise UnsupportedFormatError(
            "the ONNX graph computes a Clip bound at run time, which is not supported."
        )
    return float(value.reshape(()))


def _softmax(log: bool) -> Builder:
    """``Softmax``/``LogSoftmax``; before opset 13 the input is viewed as 2-D at ``axis``."""

    def build(node: NodeSpec, ctx: OpContext) -> Runtime:
        legacy = ctx.opset < 13
        axis = int(node.attrs.get("axis", 1 if legacy else -1))
        fn = torch.log_softmax if log else torch.softmax

        def run(x: Value) -> Value:
            tensor = to_tensor(x)
            dim = axis % tensor.dim()
            if not legacy or dim == tensor.dim() - 1:
                return fn(tensor, dim)
            flat = tensor.reshape(math.prod(tensor.shape[:dim]), -1)  # (outer, inner)
            return fn(flat, 1).reshape(tensor.shape)

        return _one(run)

    return build


def _dropout(node: NodeSpec, ctx: OpContext) -> Runtime:
    def run(inputs: list[Value]) -> list[Value]:
        x = to_tensor(inputs[0])
        outputs: list[Value] = [x, torch.ones_like(x, dtype=torch.bool)]
        return outputs[: len(node.outputs)]

    return run


def _identity(node: NodeSpec, ctx: OpContext) -> Runtime:
    return lambda inputs: [inputs[0]]


# -- shapes ---------------------------------------------------------------------------------------


def _shape(node: NodeSpec, ctx: OpContext) -> Runtime:
    start, end = node.attrs.get("start", 0), node.attrs.get("end")

    def run(x: Value) -> Value:
        if isinstance(x, Ints):
            return Ints(() if x.scalar else (len(x.values),))
        return Ints(tuple(to_tensor(x).shape)[start:end])

    return _one(run)


def _size(node: NodeSpec, ctx: OpContext) -> Runtime:
    return _one(lambda x: Ints((to_tensor(x).numel(),), scalar=True))


def _reshape(node: NodeSpec, ctx: OpContext) -> Runtime:
    allow_zero = bool(node.attrs.get("allowzero", 0))

    def run(x: Value, shape: Value) -> Value:
        dims = ints_list(shape, "a Reshape target")
        if isinstance(x, Ints) and dims in ([], [-1], [1]):
            return Ints(x.values, scalar=not dims)
        tensor = to_tensor(x)
        if not allow_zero:
            dims = [tensor.shape[i] if isinstance(d, int) and d == 0 else d for i, d in enumerate(dims)]
        return torch.reshape(tensor, dims)

    return _one(run)


def _flatten(node: NodeSpec, ctx: OpContext) -> Runtime:
    axis = int(node.attrs.get("axis", 1))

    def run(x: Value) -> Value:
        tensor = to_tensor(x)
        dim = axis % tensor.dim() if axis < 0 else axis
        if dim == 1 and tensor.dim() >= 2:
            return torch.flatten(tensor, 1)
        return tensor.reshape(math.prod(tensor.shape[:dim]), -1)  # (outer, inner)

    return _one(run)


def _transpose(node: NodeSpec, ctx: OpContext) -> Runtime:
    perm = node.attrs.get("perm")

    def run(x: Value) -> Value:
        tensor = to_tensor(x)
        return tensor.permute(perm if perm is not None else list(reversed(range(tensor.dim()))))

    return _one(run)


def _axes(node: NodeSpec, ctx: OpContext, from_input_opset: int) -> Callable[[list[Value]], list[int] | None]:
    """Axes given as an attribute (older opsets) or as the second input (``from_input_opset`` on)."""
    if ctx.opset < from_input_opset:
        axes = node.attrs.get("axes")
        return lambda inputs: list(axes) if axes is not None else None
    return lambda inputs: ints_list(inputs[1], "axes") if len(inputs) > 1 and inputs[1] is not None else None


def _squeeze(node: NodeSpec, ctx: OpContext) -> Runtime:
    axes_of = _axes(node, ctx, 13)

    def run(inputs: list[Value]) -> list[Value]:
        x, axes = inputs[0], axes_of(inputs)
        if isinstance(x, Ints) and len(x.values) == 1:
            return [Ints(x.values, scalar=True)]
        tensor = to_tensor(x)
        return [tensor.squeeze() if axes is None else tensor.squeeze(tuple(axes))]

    return run


def _unsqueeze(node: NodeSpec, ctx: OpContext) -> Runtime:
    axes_of = _axes(node, ctx, 13)

    def run(inputs: list[Value]) -> list[Value]:
        x, axes = inputs[0], axes_of(inputs) or []
        if isinstance(x, Ints) and x.scalar and axes in ([0], [-1]):
            return [Ints(x.values)]
        tensor = to_tensor(x)
        rank = tensor.dim() + len(axes)
        for axis in sorted(a % rank for a in axes):
            tensor = tensor.unsqueeze(axis)
        return [tensor]

    return run


def _concat(node: NodeSpec, ctx: OpContext) -> Runtime:
    axis = int(node.attrs["axis"])

    def run(inputs: list[Value]) -> list[Value]:
        if all(isinstance(v, Ints) for v in inputs):
            return [Ints(tuple(x for v in inputs for x in v.values))]  # type: ignore[union-attr]
        return [torch.cat([to_tensor(v) for v in inputs], dim=axis)]

    return run


def _split(node: NodeSpec, ctx: OpContext) -> Runtime:
    axis = int(node.attrs.get("axis", 0))
    count = len(node.outputs)

    def run(inputs: list[Value]) -> list[Value]:
        tensor = to_tensor(inputs[0])
        if ctx.opset >= 13 and len(inputs) > 1 and inputs[1] is not None:
            sizes = ints_list(inputs[1], "Split sizes")
        elif "split" in node.attrs:
            sizes = list(node.attrs["split"])
        else:
            size = tensor.shape[axis]
            chunk = -(-size // count)
            sizes = [chunk] * (count - 1) + [size - chunk * (count - 1)]
        return list(torch.split(tensor, sizes, dim=axis))

    return run


def _slice(node: NodeSpec, ctx: OpContext) -> Runtime:
    def params(inputs: list[Value]) -> tuple[list[Any], list[Any], list[int] | None, list[int] | None]:
        if ctx.opset < 10:
            axes = node.attrs.get("axes")
            return list(node.attrs["starts"]), list(node.attrs["ends"]), axes and list(axes), None
        extra = [*inputs[3:5], None, None][:2]
        axes = ints_list(extra[0], "Slice axes") if extra[0] is not None else None
        steps = ints_list(extra[1], "Slice steps") if extra[1] is not None else None
        return ints_list(inputs[1], "Slice starts"), ints_list(inputs[2], "Slice ends"), axes, steps

    def run(inputs: list[Value]) -> list[Value]:
        starts, ends, axes, steps = params(inputs)
        axes = axes if axes is not None else list(range(len(starts)))
        steps = steps if steps is not None else [1] * len(starts)
        if any(isinstance(s, int) and s <= 0 for s in steps):
            raise UnsupportedFormatError(
                "the ONNX graph slices with a negative step, which is not supported."
            )
        x = inputs[0]
        if isinstance(x, Ints):
            return [Ints(x.values[slice(starts[0], ends[0], steps[0])])]
        tensor = to_tensor(x)
        index: list[slice] = [slice(None)] * tensor.dim()
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            index[axis % tensor.dim()] = slice(start, end, step)
        return [tensor[tuple(index)]]

    return run


def _gather(node: NodeSpec, ctx: OpContext) -> Runtime:
    axis = int(node.attrs.get("axis", 0))

    def run(data: Value, indices: Value) -> Value:
        if isinstance(data, Ints) and isinstance(indices, Ints):
            return ints_index(data, indices)
        tensor = to_tensor(data)
        dim = axis % tensor.dim()
        if isinstance(indices, Ints) and indices.scalar:
            return tensor.select(dim, indices.values[0])
        index = to_tensor(indices)
        index = torch.where(index < 0, index + tensor.shape[dim], index)
        picked = torch.index_select(tensor, dim, index.reshape(-1))
        return picked.reshape(*tensor.shape[:dim], *index.shape, *tensor.shape[dim + 1 :])

    return _one(run)


def _expand(node: NodeSpec, ctx: OpContext) -> Runtime:
    def run(x: Value, shape: Value) -> Value:
        tensor = to_tensor(x)
        target = torch.broadcast_shapes(tuple(tensor.shape), tuple(ints_list(shape, "an Expand shape")))
        return tensor.expand(target)

    return _one(run)


def _tile(node: NodeSpec, ctx: OpContext) -> Runtime:
    return _one(lambda x, repeats: torch.tile(to_tensor(x), tuple(ints_list(repeats, "Tile repeats"))))


def _gather_elements(node: NodeSpec, ctx: OpContext) -> Runtime:
    axis = int(node.attrs.get("axis", 0))

    def run(data: Value, indices: Value) -> Value:
        tensor, index = to_tensor(data), to_tensor(indices)
        dim = axis % tensor.dim()
        return torch.gather(tensor, dim, torch.where(index < 0, index + tensor.shape[dim], index))

    return _one(run)


def _constant_of_shape(node: NodeSpec, ctx: OpContext) -> Runtime:
    from onnx import numpy_helper

    value = node.attrs.get("value")
    fill = numpy_helper.to_array(value).reshape(-1) if value is not None else np.zeros(1, dtype=np.float32)
    fill_tensor = torch.from_numpy(fill.copy())

    def run(shape: Value) -> Value:
        return torch.full(
            tuple(ints_list(shape, "a ConstantOfShape shape")), fill_tensor.item(), dtype=fill_tensor.dtype
        )

    return _one(run)


def _range(node: NodeSpec, ctx: OpContext) -> Runtime:
    def run(start: Value, limit: Value, delta: Value) -> Value:
        if isinstance(start, Ints) and isinstance(limit, Ints) and isinstance(delta, Ints):
            return Ints(tuple(range(start.values[0], limit.values[0], delta.values[0])))
        return torch.arange(to_tensor(start).item(), to_tensor(limit).item(), to_tensor(delta).item())

    return _one(run)


# -- reductions and matrix products ---------------------------------------------------------------


def _reduce(fn: Callable[..., torch.Tensor], axes_input_opset: int) -> Builder:
    def build(node: NodeSpec, ctx: OpContext) -> Runtime:
        keep = bool(node.attrs.get("keepdims", 1))
        noop_if_empty = bool(node.attrs.get("noop_with_empty_axes", 0))
        axes_of = _axes(node, ctx, axes_input_opset)

        def run(inputs: list[Value]) -> list[Value]:
            tensor, axes = to_tensor(inputs[0]), axes_of(inputs)
            if not axes:
                if noop_if_empty:
                    return [tensor]
                axes = list(range(tensor.dim()))
            return [fn(tensor, dim=tuple(axes), keepdim=keep)]

        return run

    return build


def _sum_square(t: torch.Tensor, dim: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    return t.square().sum(dim, keepdim=keepdim)


def _l2(t: torch.Tensor, dim: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    return t.square().sum(dim, keepdim=keepdim).sqrt()


def _prod(t: torch.Tensor, dim: tuple[int, ...], keepdim: bool) -> torch.Tensor:
    for d in sorted((d % t.dim() for d in dim), reverse=True):  # torch.prod takes one axis at a time
        t = t.prod(d, keepdim=keepdim)
    return t


def _arg_extreme(largest: bool) -> Builder:
    """``ArgMax``/``ArgMin`` along ``axis``; ``select_last_index`` picks the last of equal extremes."""

    def build(node: NodeSpec, ctx: OpContext) -> Runtime:
        axis, keep = int(node.attrs.get("axis", 0)), bool(node.attrs.get("keepdims", 1))
        last = bool(node.attrs.get("select_last_index", 0))
        fn = torch.argmax if largest else torch.argmin

        def run(x: Value) -> Value:
            tensor = to_tensor(x)
            dim = axis % tensor.dim()
            if not last:
                return fn(tensor, dim, keepdim=keep)
            return tensor.shape[dim] - 1 - fn(tensor.flip(dim), dim, keepdim=keep)

        return _one(run)

    return build


def _cum_sum(node: NodeSpec, ctx: OpContext) -> Runtime:
    """``CumSum`` along the axis input; ``exclusive`` leaves each value out of its own sum, ``reverse``
    sums from the end."""
    exclusive, reverse = bool(node.attrs.get("exclusive", 0)), bool(node.attrs.get("reverse", 0))

    def run(x: Value, axis: Value) -> Value:
        tensor = to_tensor(x)
        dim = int(ints_list(axis, "a CumSum axis")[0]) % tensor.dim()
        flipped = tensor.flip(dim) if reverse else tensor
        total = flipped.cumsum(dim)
        if exclusive:
            total = total - flipped
        return total.flip(dim) if reverse else total

    return _one(run)


def _top_k(node: NodeSpec, ctx: OpContext) -> Runtime:
    axis = int(node.attrs.get("axis", -1))
    largest, ordered = bool(node.attrs.get("largest", 1)), bool(node.attrs.get("sorted", 1))

    def run(inputs: list[Value]) -> list[Value]:
        k = int(ints_list(inputs[1], "a TopK count")[0])
        values, indices = torch.topk(to_tensor(inputs[0]), k, dim=axis, largest=largest, sorted=ordered)
        return [values, indices]

    return run


def _einsum(node: NodeSpec, ctx: OpContext) -> Runtime:
    equation = str(node.attrs["equation"])

    def run(inputs: list[Value]) -> list[Value]:
        return [torch.einsum(equation, *(to_tensor(v) for v in inputs))]

    return run


def _matmul(node: NodeSpec, ctx: OpContext) -> Runtime:
    return _one(lambda a, b: torch.matmul(to_tensor(a), to_tensor(b)))


def _gemm(node: NodeSpec, ctx: OpContext) -> Runtime:
    """``Gemm`` with a computed weight (constant weights become ``Linear``)."""
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    trans_a, trans_b = bool(node.attrs.get("transA", 0)), bool(node.attrs.get("transB", 0))

    def run(inputs: list[Value]) -> list[Value]:
        a, b = to_tensor(inputs[0]), to_tensor(inputs[1])
        result = torch.matmul(a.t() if trans_a else a, b.t() if trans_b else b) * alpha
        if len(inputs) > 2 and inputs[2] is not None:
            result = result + beta * to_tensor(inputs[2])
        return [result]

    return run


BASIC_OPS: dict[str, Builder] = {
    **dict.fromkeys(_TENSOR_BINARY, _binary),
    "Where": _where,
    "Not": _not,
    "Trilu": _trilu,
    "Mod": _mod,
    "Mean": _mean,
    "IsNaN": _unary(torch.isnan),
    "IsInf": _is_inf,
    "CastLike": _cast_like,
    "Sin": _unary(torch.sin),
    "Cos": _unary(torch.cos),
    "Round": _unary(torch.round),  # half to even, as ONNX
    "Sum": _variadic(torch.add),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Cast": _cast,
    "Relu": _unary(torch.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Erf": _unary(torch.erf),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Sqrt": _unary(torch.sqrt),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Softplus": _unary(F.softplus),
    "HardSwish": _unary(F.hardswish),
    "Gelu": _gelu,
    "LeakyRelu": _leaky_relu,
    "Elu": _elu,
    "Celu": _celu,
    "Selu": _selu,
    "ThresholdedRelu": _thresholded_relu,
    "Softsign": _unary(F.softsign),
    "Mish": _unary(F.mish),
    "Sign": _unary(torch.sign),
    "LRN": _lrn,
    "HardSigmoid": _hard_sigmoid,
    "Clip": _clip,
    "Softmax": _softmax(log=False),
    "LogSoftmax": _softmax(log=True),
    "Dropout": _dropout,
    "Identity": _identity,
    "Shape": _shape,
    "Size": _size,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Transpose": _transpose,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Gather": _gather,
    "Expand": _expand,
    "ConstantOfShape": _constant_of_shape,
    "Range": _range,
    "ReduceMean": _reduce(torch.mean, 18),
    "ReduceSum": _reduce(torch.sum, 13),
    "ReduceMax": _reduce(torch.amax, 18),
    "ReduceMin": _reduce(torch.amin, 18),
    "ReduceProd": _reduce(_prod, 18),
    "ReduceL2": _reduce(_l2, 18),
    "ReduceSumSquare": _reduce(_sum_square, 18),
    "ReduceLogSumExp": _reduce(torch.logsumexp, 18),
    "ArgMax": _arg_extreme(largest=True),
    "ArgMin": _arg_extreme(largest=False),
    "CumSum": _cum_sum,
    "TopK": _top_k,
    "Einsum": _einsum,
    "Tile": _tile,
    "GatherElements": _gather_elements,
    "MatMul": _matmul,
    "Gemm": _gemm,
}

__all__ = ["BASIC_OPS", "Builder", "OpContext", "Runtime", "from_numpy", "to_ints"]

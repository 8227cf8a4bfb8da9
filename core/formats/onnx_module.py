"""An ONNX graph as a plain ``nn.Module``: standard layer modules plus a list of functional steps.

``forward`` walks the ONNX nodes in order with a name -> value table; ``torch.export`` traces that
walk into an ordinary ATen graph whose weights are the module's parameters and buffers.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.formats.errors import UnsupportedFormatError
from core.formats.onnx_graph import GraphSpec, NodeSpec
from core.formats.onnx_layers import LAYER_OPS
from core.formats.onnx_ops import BASIC_OPS, Builder, ModuleT, Runtime
from core.formats.onnx_spatial import SPATIAL_OPS
from core.formats.onnx_values import Ints, Value, from_numpy, to_tensor

OPS: Mapping[str, Builder] = {**BASIC_OPS, **SPATIAL_OPS, **LAYER_OPS}
SUPPORTED_OPS: frozenset[str] = frozenset(OPS) - {"Linear"} | {"Constant"}
"""ONNX operator types the converter accepts (``Linear`` is internal: fused Gemm/MatMul)."""

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class _Step:
    run: Runtime
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    op_type: str


class _Container(nn.Module):
    """An empty module that only groups layers under a dotted name (``features`` in ``features.0``)."""


class OnnxModule(nn.Module):
    """The converted graph. Call it with the ONNX graph's inputs, in order."""

    def __init__(self, graph: GraphSpec) -> None:
        super().__init__()
        self.opset = graph.opset
        self._constants = graph.constants
        self._input_names = [name for name, _, _ in graph.inputs]
        self._output_names = list(graph.outputs)
        self._static: dict[str, Ints] = {}
        self._buffer_paths: dict[str, str] = {}
        self._absorbed: set[tuple[int, int]] = set()  # (id of node, input index) held by a layer
        self._steps = [self._build(node) for node in graph.nodes]
        self._bind_constants()
        self._constants = {}  # built: the values now live in parameters, buffers and _static

    # -- OpContext -------------------------------------------------------------------------------

    def constant(self, name: str) -> np.ndarray | None:
        """The constant value called ``name``, or ``None`` when it is computed at run time."""
        return self._constants.get(name)

    def absorb(self, node: NodeSpec, index: int) -> None:
        """Input ``index`` of ``node`` was copied into a layer's parameters: not a run-time input."""
        self._absorbed.add((id(node), index))

    def add_layer(self, hint: str, module: ModuleT) -> ModuleT:
        """Register ``module`` under the dotted path ``hint`` (made unique and attribute-safe)."""
        parts = [_attribute(p) for p in hint.split(".")]
        parent: nn.Module = self
        for part in parts[:-1]:
            child = parent._modules.get(part)
            if child is None and not hasattr(parent, part):
                child = _Container()
                parent.add_module(part, child)
            if not isinstance(child, _Container):
                return self.add_layer("_".join(parts), module)
            parent = child
        parent.add_module(_unique(parent, parts[-1]), module)
        return module

    # -- building --------------------------------------------------------------------------------

    def _build(self, node: NodeSpec) -> _Step:
        builder = OPS.get(node.op_type)
        if builder is None:
            raise UnsupportedFormatError(f"the ONNX operator {node.op_type} is not supported.")
        run = builder(node, self)
        inputs = tuple("" if (id(node), i) in self._absorbed else x for i, x in enumerate(node.inputs))
        return _Step(run, inputs, tuple(node.outputs), node.op_type)

    def _bind_constants(self) -> None:
        """Constants read at run time: small integer vectors stay Python values, the rest become
        buffers (so they live in the program's state, not in its code)."""
        needed = {name for step in self._steps for name in step.inputs if name in self._constants}
        needed |= {name for name in self._output_names if name in self._constants}
        for index, name in enumerate(sorted(needed)):
            value = from_numpy(self._constants[name])
            if isinstance(value, Ints):
                self._static[name] = value
            else:
                path = f"onnx_constant_{index}"
                self.register_buffer(path, value)
                self._buffer_paths[name] = path

    # -- running ---------------------------------------------------------------------------------

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self._input_names):
            raise TypeError(f"expected {len(self._input_names)} inputs, got {len(inputs)}")
        env: dict[str, Value] = dict(self._static)
        env.update({name: self.get_buffer(path) for name, path in self._buffer_paths.items()})
        env.update(zip(self._input_names, inputs, strict=True))
        for step in self._steps:
            results = step.run([env[name] if name else None for name in step.inputs])
            env.update(zip(step.outputs, results, strict=False))
        outputs = tuple(to_tensor(env[name]) for name in self._output_names)
        return outputs[0] if len(outputs) == 1 else outputs


def _attribute(part: str) -> str:
    """One component of a layer path as an attribute the generated code can name: unsafe characters
    replaced, and a Python keyword (``in`` of ``in.weight``) given a trailing underscore."""
    name = _UNSAFE_CHARS.sub("_", part) or "_"
    return f"{name}_" if keyword.iskeyword(name) else name


def _unique(parent: nn.Module, name: str) -> str:
    candidate, suffix = name, 1
    while candidate in parent._modules or hasattr(parent, candidate):
        candidate = f"{name}_{suffix}"
        suffix += 1
    return candidate

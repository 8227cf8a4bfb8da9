"""An ONNX graph as plain Python data, checked and rewritten for conversion to torch.

- :func:`read_graph` refuses external data, foreign operator domains and unsupported operators, folds
  ``Constant`` nodes into the constants table and decodes attributes.
- :func:`fuse_linear` turns ``Gemm`` and ``MatMul`` (+ bias ``Add``) with a constant weight into one
  ``Linear`` node, so the torch program has ``aten.linear`` with its weight and bias as parameters.
- :func:`fuse_erf_gelu` turns the ``x * 0.5 * (1 + erf(x / sqrt(2)))`` subgraph into one ``Gelu``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from core.formats.errors import CorruptModelError, UnsupportedFormatError

_STANDARD_DOMAINS = ("", "ai.onnx")
EXTERNAL_DATA_HINT = (
    "Upload a .zip holding the .onnx file and the data files it names, side by side (zip model.zip "
    "model.onnx model.onnx.data), or re-export with the weights inside the file: torch.onnx.export(..., "
    "external_data=False), or onnx.save(onnx.load('model.onnx'), 'model.onnx', save_as_external_data=False)."
)


@dataclass
class NodeSpec:
    """One ONNX node: operator, input/output value names ('' for an absent optional input), decoded
    attributes, and the path of the module the exporter says it came from ('' where it does not)."""

    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    scope: str = ""


@dataclass
class GraphSpec:
    """A whole ONNX graph: its nodes in topological order, constant values by name, graph inputs
    (name, element type, dims with ``None`` for symbolic ones, or ``None`` for an unknown rank) and
    output names."""

    nodes: list[NodeSpec]
    constants: dict[str, np.ndarray]
    inputs: list[tuple[str, int, list[int | None] | None]]
    outputs: list[str]
    opset: int


def read_graph(model: Any, supported_ops: frozenset[str]) -> GraphSpec:
    """Decode ``model`` (an ``onnx.ModelProto``) or refuse it with the reason."""
    from onnx import numpy_helper

    refuse_external_data(model)
    opset = _default_opset(model)
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    if len(graph.sparse_initializer) > 0:
        raise UnsupportedFormatError("the ONNX graph has sparse initializers, which are not supported.")
    nodes: list[NodeSpec] = []
    for node in graph.node:
        spec = _decode(node)
        if node.domain not in _STANDARD_DOMAINS:
            raise UnsupportedFormatError(
                f"the ONNX graph uses operator domain {node.domain!r} ({node.op_type})."
            )
        if spec.op_type == "Constant":
            constants[spec.outputs[0]] = _constant_value(spec)
        elif spec.op_type == "Identity" and spec.inputs[0] in constants:
            # an exporter's alias of a weight (the legacy exporter writes one per shared initializer)
            constants[spec.outputs[0]] = constants[spec.inputs[0]]
        else:
            nodes.append(spec)
    unsupported = sorted({n.op_type for n in nodes} - supported_ops)
    if unsupported:
        raise UnsupportedFormatError(f"the ONNX graph uses unsupported operators: {', '.join(unsupported)}.")
    inputs = [_graph_input(v) for v in graph.input if v.name not in constants]
    return GraphSpec(nodes, constants, inputs, [v.name for v in graph.output], opset)


def refuse_external_data(model: Any) -> None:
    """Refuse any tensor stored outside the file: reading it would open arbitrary paths."""
    from onnx import TensorProto

    for tensor in _all_tensors(model.graph):
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise UnsupportedFormatError(
                f"the ONNX tensor {tensor.name!r} is stored in an external file ({location!r}); "
                "external data is refused.",
                EXTERNAL_DATA_HINT,
            )


ExternalReader = Callable[[str, int, int], bytes | None]  # (file, offset, length) -> bytes, None: no file


def files_beside(directory: Path) -> ExternalReader:
    """Reads the data files in ``directory`` (the model's own directory), nothing outside it."""
    root = directory.resolve()

    def read(name: str, offset: int, length: int) -> bytes | None:
        source = (root / name).resolve()
        if source.parent != root or not source.is_file():
            return None
        with open(source, "rb") as stream:
            stream.seek(offset)
            return stream.read(length)

    return read


def inline_external_data(model: Any, read: ExternalReader, where: str = "beside the model") -> None:
    """Read every external tensor of ``model`` into it, from data files named by a plain file name and
    found by ``read``; any other location is refused."""
    from onnx import TensorProto, helper

    for tensor in _all_tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        name = info.get("location", "")
        # bytes = prod(dims) * itemsize
        expected = (
            math.prod(tensor.dims) * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        )
        offset, length = int(info.get("offset", 0)), int(info.get("length", expected))
        raw = read(name, offset, length) if name and PurePosixPath(name).name == name else None
        if raw is None:
            raise UnsupportedFormatError(
                f"the ONNX tensor {tensor.name!r} is stored in {name!r}, which is not a file {where}.",
                EXTERNAL_DATA_HINT,
            )
        if length != expected or len(raw) != expected:
            raise CorruptModelError(
                f"the ONNX tensor {tensor.name!r} needs {expected} bytes; {name!r} holds {len(raw)} at "
                f"offset {offset}."
            )
        tensor.raw_data = raw
        tensor.data_location = TensorProto.DEFAULT
        del tensor.external_data[:]


def _all_tensors(graph: Any) -> list[Any]:
    from onnx import AttributeProto

    tensors = list(graph.initializer) + [s.values for s in graph.sparse_initializer]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                tensors.append(attr.t)
            elif attr.type == AttributeProto.TENSORS:
                tensors.extend(attr.tensors)
            elif attr.type == AttributeProto.SPARSE_TENSOR:
                tensors.append(attr.sparse_tensor.values)
            elif attr.type == AttributeProto.GRAPH:
                tensors.extend(_all_tensors(attr.g))
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    tensors.extend(_all_tensors(sub))
    return tensors


def _default_opset(model: Any) -> int:
    versions = [o.version for o in model.opset_import if o.domain in _STANDARD_DOMAINS]
    if not versions:
        raise UnsupportedFormatError("the ONNX model does not import the standard operator set.")
    return int(versions[0])


def _decode(node: Any) -> NodeSpec:
    from onnx import helper

    attrs: dict[str, Any] = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        attrs[attr.name] = value.decode() if isinstance(value, bytes) else value
    scope = module_path(node.name, {p.key: p.value for p in node.metadata_props})
    return NodeSpec(node.op_type, list(node.input), list(node.output), attrs, node.name, scope)


def module_path(node_name: str, metadata: dict[str, str]) -> str:
    """The module a node was exported from: the dynamo exporter's last name scope
    (``['', 'h.0', 'h.0.c_attn', 'addmm']`` -> ``h.0.c_attn``), or the TorchScript-based exporter's
    scoped node name (``/features/features.1/body/body.0/Conv`` -> ``features.1.body.0``: each scope is a
    module's attribute, with its parent's when that is a container index, so a scope extending the one
    before it adds only its last part); '' when neither says."""
    scopes = re.findall(r"'([^']*)'", metadata.get("pkg.torch.onnx.name_scopes", ""))
    if len(scopes) >= 2 and scopes[-2]:
        return scopes[-2]
    scopes = [s for s in node_name.split("/")[1:-1] if s] if node_name.startswith("/") else []
    parts = [
        scope[len(before) + 1 :] if scope.startswith(before + ".") else scope
        for before, scope in zip(["", *scopes], scopes, strict=False)
    ]
    return ".".join(parts)


def _constant_value(spec: NodeSpec) -> np.ndarray:
    from onnx import numpy_helper

    attrs = spec.attrs
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    raise UnsupportedFormatError(f"the ONNX Constant {spec.name!r} holds a value kind that is not supported.")


def _graph_input(value: Any) -> tuple[str, int, list[int | None] | None]:
    """(name, element type, dims): ``None`` for a symbolic dim, dims ``None`` when the rank is unknown."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return value.name, int(tensor_type.elem_type), None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
    return value.name, int(tensor_type.elem_type), dims


def _consumers(nodes: list[NodeSpec]) -> dict[str, list[NodeSpec]]:
    users: dict[str, list[NodeSpec]] = {}
    for node in nodes:
        for name in node.inputs:
            if name:
                users.setdefault(name, []).append(node)
    return users


def _sole_user(value: str, users: dict[str, list[NodeSpec]], outputs: set[str]) -> NodeSpec | None:
    found = users.get(value, [])
    return found[0] if len(found) == 1 and value not in outputs else None


def _other_input(node: NodeSpec, value: str) -> str:
    return node.inputs[1] if node.inputs[0] == value else node.inputs[0]


def fuse_linear(graph: GraphSpec) -> None:
    """Rewrite constant-weight ``Gemm`` / ``MatMul`` (+ ``Add`` bias) nodes as ``Linear`` nodes whose
    attrs hold ``weight`` (out, in) and ``bias`` (out,) or ``None``, and the source names."""
    users = _consumers(graph.nodes)
    outputs = set(graph.outputs)
    removed: set[int] = set()
    rewritten: list[NodeSpec] = []
    for node in graph.nodes:
        if id(node) in removed:
            continue
        if node.op_type == "Gemm":
            rewritten.extend(_gemm_as_linear(node, graph.constants))
        elif node.op_type == "MatMul" and _is_matrix(graph.constants.get(node.inputs[1])):
            weight = graph.constants[node.inputs[1]].T
            add = _sole_user(node.outputs[0], users, outputs)
            bias_name = _other_input(add, node.outputs[0]) if add is not None and add.op_type == "Add" else ""
            bias = _as_bias(graph.constants.get(bias_name), weight.shape[0])
            out = add.outputs[0] if add is not None and bias is not None else node.outputs[0]
            if add is not None and bias is not None:
                removed.add(id(add))
            attrs = {"weight": weight, "bias": bias, "weight_name": node.inputs[1], "bias_name": bias_name}
            rewritten.append(NodeSpec("Linear", [node.inputs[0]], [out], attrs, node.name, node.scope))
        else:
            rewritten.append(node)
    graph.nodes = rewritten


def _gemm_as_linear(node: NodeSpec, constants: dict[str, np.ndarray]) -> list[NodeSpec]:
    """Y = alpha * A' B' + beta * C as ``Linear`` when B is constant and C is a constant bias."""
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else ""
    b_value = constants.get(b)
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    if not _is_matrix(b_value) or (c and c not in constants):
        return [node]
    assert b_value is not None
    weight = (b_value if node.attrs.get("transB", 0) else b_value.T) * np.asarray(alpha, dtype=b_value.dtype)
    bias = _as_bias(constants[c] * np.asarray(beta, dtype=constants[c].dtype), weight.shape[0]) if c else None
    if c and bias is None:
        return [node]
    prefix: list[NodeSpec] = []
    if node.attrs.get("transA", 0):
        transposed = f"{node.outputs[0]}__a_t"
        prefix.append(NodeSpec("Transpose", [a], [transposed], {"perm": [1, 0]}, f"{node.name}_transA"))
        a = transposed
    attrs = {"weight": weight, "bias": bias, "weight_name": b, "bias_name": c}
    return [*prefix, NodeSpec("Linear", [a], [node.outputs[0]], attrs, node.name, node.scope)]


def _is_matrix(value: np.ndarray | None) -> bool:
    return value is not None and value.ndim == 2 and value.dtype.kind == "f"


def _as_bias(value: np.ndarray | None, width: int) -> np.ndarray | None:
    """A constant that broadcasts as a per-output-feature bias, flattened to (width,)."""
    if value is None or value.dtype.kind != "f" or value.ndim > 2:
        return None
    if value.size == width and (value.ndim == 0 or value.shape[-1] == width):
        return value.reshape(width)
    if value.size == 1:
        return np.full((width,), value.reshape(()), dtype=value.dtype)
    return None


def fuse_erf_gelu(graph: GraphSpec) -> None:
    """Rewrite ``x * 0.5 * (1 + erf(x / sqrt(2)))`` (any operand order, 0.5 applied first or last,
    ``Div`` by sqrt(2) or ``Mul`` by 1/sqrt(2)) as ``Gelu(x)``."""
    users = _consumers(graph.nodes)
    outputs = set(graph.outputs)
    producers = {out: n for n in graph.nodes for out in n.outputs}
    replaced: dict[int, NodeSpec | None] = {}
    for node in graph.nodes:
        if node.op_type == "Erf" and id(node) not in replaced:
            match = _match_gelu(node, graph.constants, producers, users, outputs)
            if match is not None:
                matched, gelu = match
                for old in matched:
                    replaced[id(old)] = None
                replaced[id(matched[-1])] = gelu
    graph.nodes = [replaced.get(id(n), n) for n in graph.nodes if replaced.get(id(n), n) is not None]  # type: ignore[misc]


def _match_gelu(
    erf: NodeSpec,
    constants: dict[str, np.ndarray],
    producers: dict[str, NodeSpec],
    users: dict[str, list[NodeSpec]],
    outputs: set[str],
) -> tuple[list[NodeSpec], NodeSpec] | None:
    scale = producers.get(erf.inputs[0])
    if scale is None or _sole_user(scale.outputs[0], users, outputs) is not erf:
        return None
    x = _scaled_input(scale, constants)
    add = _sole_user(erf.outputs[0], users, outputs)
    if x is None or add is None or add.op_type != "Add":
        return None
    if not _is_constant(constants, _other_input(add, erf.outputs[0]), 1.0):
        return None
    mul = _sole_user(add.outputs[0], users, outputs)
    if mul is None or mul.op_type != "Mul":
        return None
    other = _other_input(mul, add.outputs[0])
    if other == x:  # x * (1 + erf), then * 0.5
        half = _sole_user(mul.outputs[0], users, outputs)
        if half is None or half.op_type != "Mul":
            return None
        if not _is_constant(constants, _other_input(half, mul.outputs[0]), 0.5):
            return None
        chain = [scale, erf, add, mul, half]
    else:  # (x * 0.5) * (1 + erf)
        half = producers.get(other)
        if half is None or half.op_type != "Mul" or _sole_user(half.outputs[0], users, outputs) is not mul:
            return None
        if x not in half.inputs or not _is_constant(constants, _other_input(half, x), 0.5):
            return None
        chain = [half, scale, erf, add, mul]
    return chain, NodeSpec("Gelu", [x], [chain[-1].outputs[0]], {"approximate": "none"}, erf.name)


def _scaled_input(node: NodeSpec, constants: dict[str, np.ndarray]) -> str | None:
    """x when ``node`` is ``x / sqrt(2)`` or ``x * (1/sqrt(2))``."""
    if node.op_type == "Div" and _is_constant(constants, node.inputs[1], math.sqrt(2.0)):
        return node.inputs[0]
    if node.op_type == "Mul":
        for i in (0, 1):
            if _is_constant(constants, node.inputs[1 - i], 1.0 / math.sqrt(2.0)):
                return node.inputs[i]
    return None


def _is_constant(constants: dict[str, np.ndarray], name: str, value: float) -> bool:
    array = constants.get(name)
    return array is not None and array.size == 1 and abs(float(array.reshape(())) - value) < 1e-4

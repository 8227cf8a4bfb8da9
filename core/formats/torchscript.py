"""TorchScript archives (``torch.jit.save``) in and out.

In: ``torch.jit.load`` unpickles ``data.pkl`` with TorchScript's own restricted unpickler (it builds
only TorchScript types and tensors, never calls Python callables), but it does run the TorchScript
``__setstate__`` methods defined in the archive, and the model's code may call ATen operators that
touch files (``aten::save``, ``aten::from_file``). So the sources are scanned before loading (no
``__setstate__``), the loaded graph is checked before anything runs (ATen/prim operators only, none
with side effects), and then the model is converted with torch's ``TS2EPConverter`` and re-exported
with standard convolutions, real parameters and a dynamic batch dimension.

Out: ``torch.jit.trace`` of the program's module, with size arithmetic kept symbolic so a dynamic
batch stays dynamic; the input shapes travel in the archive's ``extra/specprune.json``.
"""

from __future__ import annotations

import json
import operator
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.export import ExportedProgram

from core.errors import CalibrationError
from core.formats.archive_safety import (
    DEFAULT_LIMITS,
    ArchiveLimits,
    ZipInventory,
    check_zip,
    open_zip,
    read_entry,
)
from core.formats.errors import (
    CorruptModelError,
    ExampleInputRequiredError,
    UnsupportedFormatError,
    first_line,
)
from core.formats.pickle_scan import pickle_globals
from core.formats.program import example_inputs, export_module, input_shapes

METADATA_FILE = "specprune.json"
_SETSTATE = re.compile(rb"\bdef\s+__setstate__\b")
_ALLOWED_NAMESPACES = frozenset({"aten", "prim"})
_DENIED_KINDS = frozenset(
    {
        "aten::save", "aten::from_file", "aten::wait", "prim::PythonOp", "prim::IgnoredPythonOp",
        "prim::rpc_async", "prim::rpc_sync", "prim::rpc_remote", "prim::fork", "prim::awaitable",
        "prim::awaitable_wait", "prim::awaitable_nowait", "prim::CallFunction", "prim::CallMethod",
    }
)  # fmt: skip
_MAX_SOURCE_BYTES = 64 << 20
_SCRIPT_PICKLE_MODULES = ("__torch__.", "torch.", "collections.OrderedDict", "builtins.set")
_CONV_BY_RANK = {
    1: torch.ops.aten.conv1d.default,
    2: torch.ops.aten.conv2d.default,
    3: torch.ops.aten.conv3d.default,
}
_CONV_T_BY_RANK = {
    1: torch.ops.aten.conv_transpose1d.default,
    2: torch.ops.aten.conv_transpose2d.input,
    3: torch.ops.aten.conv_transpose3d.input,
}
_EXAMPLE_BATCH = 2


def load_torchscript(
    path: str | os.PathLike[str],
    *,
    inventory: ZipInventory | None = None,
    example_inputs: Sequence[torch.Tensor] | None = None,
    limits: ArchiveLimits = DEFAULT_LIMITS,
) -> ExportedProgram:
    """The program for a TorchScript archive. ``example_inputs`` are needed unless the archive was
    written by :func:`save_torchscript` or its first layer is a linear layer."""
    inventory = inventory or check_zip(path, limits)
    check_torchscript_archive(path, inventory)
    metadata = _read_metadata(path, inventory)
    module = _jit_load(path)
    check_script_graph(module.inlined_graph)
    inputs = list(example_inputs) if example_inputs is not None else _inputs_from(metadata, module)
    _run_once(module, inputs)
    return _to_exported_program(module, inputs, _dynamic_dims(metadata, inputs))


def save_torchscript(
    program: ExportedProgram, path: str | os.PathLike[str], inputs: Sequence[torch.Tensor] | None = None
) -> None:
    """``torch.jit.trace`` of the program, runnable with ``torch.jit.load`` alone."""
    args = tuple(inputs) if inputs is not None else example_inputs(program)
    module = traceable_module(program)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, args, check_trace=False, _store_inputs=False)
    metadata = {
        "input_shapes": [list(shape) for shape in input_shapes(program)],
        "input_dtypes": [str(a.dtype).removeprefix("torch.") for a in args],
    }
    torch.jit.save(traced, os.fspath(path), _extra_files={METADATA_FILE: json.dumps(metadata)})


def traceable_module(program: ExportedProgram) -> torch.fx.GraphModule:
    """``program.module()`` rewritten so ``torch.jit.trace`` records size arithmetic instead of
    freezing it: ``aten.sym_size`` becomes ``Tensor.size`` and the operators fed by sizes become
    Tensor methods (the tracer only tracks sizes through those). Guards are dropped."""
    module = program.module()
    graph = module.graph
    symbolic: set[torch.fx.Node] = set()
    for node in list(graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            graph.erase_node(node)
        elif node.op == "call_function" and node.target is torch.ops.aten.sym_size.int:
            with graph.inserting_before(node):
                size = graph.call_method("size", node.args)
            node.replace_all_uses_with(size)
            graph.erase_node(node)
            symbolic.add(size)
        elif node.op == "call_function" and any(a in symbolic for a in node.all_input_nodes):
            if isinstance(node.target, torch._ops.OpOverload):
                _as_method_call(node)
            else:
                symbolic.add(node)  # Python arithmetic on sizes: the tracer follows it
    module.recompile()
    module.validate_inputs = False  # type: ignore[assignment]
    return module


def _as_method_call(node: torch.fx.Node) -> None:
    name = node.target._opname  # type: ignore[union-attr]
    if hasattr(torch.Tensor, name):
        node.op, node.target = "call_method", name
    elif hasattr(torch, name):
        node.target = getattr(torch, name)


# -- loading ----------------------------------------------------------------------------------------


def check_torchscript_archive(path: str | os.PathLike[str], inventory: ZipInventory) -> None:
    """Static checks before ``torch.jit.load``: no TorchScript ``__setstate__`` (the loader runs
    it), and pickles that name only TorchScript classes and torch's tensor rebuilders (TorchScript's
    unpickler refuses anything else, but a clear refusal beats a loader error)."""
    with open_zip(path) as archive:
        for name in inventory.names:
            relative = inventory.relative(name)
            if relative.endswith(".pkl") and "/" not in relative:
                _check_script_pickle(relative, read_entry(archive, name, _MAX_SOURCE_BYTES))
            if not relative.startswith("code/") or relative.endswith(".debug_pkl"):
                continue
            if _SETSTATE.search(read_entry(archive, name, _MAX_SOURCE_BYTES)):
                raise UnsupportedFormatError(
                    f"the TorchScript code {relative!r} defines __setstate__, which would run on load."
                )


def _check_script_pickle(name: str, data: bytes) -> None:
    try:
        names = pickle_globals(data)
    except (ValueError, IndexError, KeyError, EOFError) as exc:
        raise CorruptModelError(f"the TorchScript record {name!r} is damaged.") from exc
    foreign = sorted(n for n in names if not n.startswith(_SCRIPT_PICKLE_MODULES))
    if foreign:
        raise UnsupportedFormatError(
            f"the TorchScript record {name!r} names Python callables ({', '.join(foreign[:3])}), "
            "which TorchScript never writes."
        )


def check_script_graph(graph: torch._C.Graph) -> None:
    """Every node is an ATen or prim operator without effects outside the process."""
    for node in _all_nodes(graph.block()):
        kind = node.kind()
        if kind.split("::", 1)[0] not in _ALLOWED_NAMESPACES or kind in _DENIED_KINDS:
            raise UnsupportedFormatError(f"the TorchScript model calls {kind}, which is not accepted.")


def _all_nodes(block: torch._C.Block) -> list[torch._C.Node]:
    nodes = []
    for node in block.nodes():
        nodes.append(node)
        for inner in node.blocks():
            nodes.extend(_all_nodes(inner))
    return nodes


def _read_metadata(path: str | os.PathLike[str], inventory: ZipInventory) -> dict[str, Any]:
    name = f"{inventory.prefix}extra/{METADATA_FILE}"
    if name not in inventory.names:
        return {}
    with open_zip(path) as archive:
        try:
            metadata = json.loads(read_entry(archive, name, 1 << 20))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}
    return metadata if isinstance(metadata, dict) else {}


def _jit_load(path: str | os.PathLike[str]) -> torch.jit.ScriptModule:
    try:
        module = torch.jit.load(os.fspath(path), map_location="cpu")
    except Exception as exc:  # the C++ loader raises RuntimeError and friends on damaged archives
        raise CorruptModelError(f"the TorchScript archive cannot be loaded ({first_line(exc)}).") from exc
    return module.eval()


def _inputs_from(metadata: dict[str, Any], module: torch.jit.ScriptModule) -> list[torch.Tensor]:
    """Example inputs from our metadata file, else from a linear first layer, else refuse."""
    shapes, dtypes = metadata.get("input_shapes"), metadata.get("input_dtypes")
    if isinstance(shapes, list) and isinstance(dtypes, list) and len(shapes) == len(dtypes):
        generator = torch.Generator().manual_seed(0)
        return [
            torch.randn([_EXAMPLE_BATCH if d is None else int(d) for d in shape], generator=generator).to(
                getattr(torch, str(dtype))
            )
            for shape, dtype in zip(shapes, dtypes, strict=True)
        ]
    features = _linear_input_features(module)
    if features is not None:
        return [torch.randn(_EXAMPLE_BATCH, features)]
    raise ExampleInputRequiredError(
        "a TorchScript archive does not record its input shape.",
        "Pass an example input with the shape the model takes.",
    )


def _linear_input_features(module: torch.jit.ScriptModule) -> int | None:
    """In-features of the linear layer that consumes the model's only input directly, if any."""
    inputs = list(module.inlined_graph.inputs())[1:]
    if len(inputs) != 1:
        return None
    for use in inputs[0].uses():
        user = use.user
        if user.kind() == "aten::linear":
            weight = _attribute_tensor(module, list(user.inputs())[1])
            return int(weight.shape[1]) if weight is not None and weight.dim() == 2 else None
    return None


def _attribute_tensor(module: torch.jit.ScriptModule, value: torch._C.Value) -> torch.Tensor | None:
    """The tensor a chain of ``prim::GetAttr`` nodes reads from ``self``."""
    names = []
    node = value.node()
    while node.kind() == "prim::GetAttr":
        names.append(node.s("name"))
        node = next(node.inputs()).node()
    target: Any = module
    for name in reversed(names):
        target = getattr(target, name, None)
    return target if isinstance(target, torch.Tensor) else None


def _run_once(module: torch.jit.ScriptModule, inputs: list[torch.Tensor]) -> None:
    try:
        with torch.no_grad():
            module(*inputs)
    except Exception as exc:  # the TorchScript interpreter raises RuntimeError with the model's message
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise CalibrationError(
            f"the TorchScript model does not accept inputs of shape {shapes}: {first_line(exc)}"
        ) from exc


def _dynamic_dims(metadata: dict[str, Any], inputs: list[torch.Tensor]) -> list[list[int]]:
    """Dynamic dimensions as recorded by :func:`save_torchscript`, else the batch dimension."""
    shapes = metadata.get("input_shapes")
    if isinstance(shapes, list) and len(shapes) == len(inputs):
        return [[i for i, d in enumerate(shape) if d is None] for shape in shapes]
    return [[0] if t.dim() > 0 else [] for t in inputs]


def _to_exported_program(
    module: torch.jit.ScriptModule, inputs: list[torch.Tensor], dynamic_dims: list[list[int]]
) -> ExportedProgram:
    from torch._export.converter import TS2EPConverter

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = TS2EPConverter(module, tuple(inputs)).convert()
    except Exception as exc:  # the converter raises many error types on constructs it lacks
        raise UnsupportedFormatError(
            f"the TorchScript model could not be converted ({first_line(exc)})."
        ) from exc
    graph_module = converted.module()
    _restore_parameters(graph_module, {name for name, _ in module.named_parameters()})
    _standard_convolutions(graph_module)
    _drop_guards(graph_module)
    _scalarize_size_arithmetic(graph_module)
    try:
        return export_module(graph_module, inputs, dynamic_dims)
    except Exception as exc:  # torch.export raises many error types
        raise UnsupportedFormatError(
            f"the TorchScript model could not be exported ({first_line(exc)})."
        ) from exc


def _restore_parameters(module: torch.nn.Module, names: set[str]) -> None:
    """The converter turns parameters into buffers; make them parameters again."""
    for name in names:
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        tensor = owner._buffers.pop(leaf, None)
        if tensor is not None:
            owner.register_parameter(leaf, torch.nn.Parameter(tensor.detach().clone(), requires_grad=False))


def _standard_convolutions(module: torch.fx.GraphModule) -> None:
    """``aten.convolution`` / ``aten._convolution`` (what traced TorchScript records) as
    ``aten.conv{1,2,3}d`` / ``aten.conv_transpose{1,2,3}d``."""
    generic = (torch.ops.aten.convolution.default, torch.ops.aten._convolution.default)
    for node in module.graph.nodes:
        if node.op != "call_function" or node.target not in generic:
            continue
        x, weight, bias, stride, padding, dilation, transposed, output_padding, groups = node.args[:9]
        rank = len(stride)
        if transposed:
            node.target = _CONV_T_BY_RANK[rank]
            node.args = (x, weight, bias, stride, padding, output_padding, groups, dilation)
        else:
            node.target = _CONV_BY_RANK[rank]
            node.args = (x, weight, bias, stride, padding, dilation, groups)
        node.kwargs = {}
    module.recompile()


_SCALAR_BINARY = {
    torch.ops.aten.mul.Tensor: operator.mul,
    torch.ops.aten.add.Tensor: operator.add,
    torch.ops.aten.sub.Tensor: operator.sub,
    torch.ops.aten.floor_divide.default: operator.floordiv,
}
_RUNTIME_ASSERTS = (
    torch.ops.aten._assert_scalar.default,
    torch.ops.aten.sym_constrain_range.default,
    torch.ops.aten.sym_constrain_range_for_size.default,
)


def _scalarize_size_arithmetic(module: torch.fx.GraphModule) -> None:
    """Traced TorchScript computes with sizes as 0-dim tensors (``NumToTensor`` ... ``Int``), which
    the converter turns into ``scalar_tensor`` ... ``_local_scalar_dense``: data-dependent values with
    runtime asserts pinned to the traced batch. Rewrite those chains as plain integer arithmetic on
    the sizes, and drop the asserts, so that export sees ordinary symbolic sizes again."""
    graph = module.graph
    scalar_of: dict[torch.fx.Node, Any] = {}
    for node in list(graph.nodes):
        if node.op == "get_attr":
            value = _attribute(module, str(node.target))
            if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
                scalar_of[node] = int(value)
        elif node.op != "call_function":
            continue
        elif node.target in _RUNTIME_ASSERTS:
            graph.erase_node(node)
        elif node.target is torch.ops.aten.scalar_tensor.default and not isinstance(node.args[0], float):
            scalar_of[node] = node.args[0]
        elif node.target is torch.ops.aten._to_copy.default and node.args[0] in scalar_of:
            if not node.kwargs.get("dtype", torch.int64).is_floating_point:
                scalar_of[node] = scalar_of[node.args[0]]
        elif node.target in _SCALAR_BINARY and all(_is_scalar(a, scalar_of) for a in node.args):
            with graph.inserting_before(node):
                operands = tuple(scalar_of.get(a, a) for a in node.args)
                scalar_of[node] = graph.call_function(_SCALAR_BINARY[node.target], operands)
        elif node.target is torch.ops.aten._local_scalar_dense.default and node.args[0] in scalar_of:
            node.replace_all_uses_with(scalar_of[node.args[0]])
            graph.erase_node(node)
    graph.eliminate_dead_code()
    module.recompile()


def _is_scalar(arg: Any, scalar_of: dict[torch.fx.Node, Any]) -> bool:
    return (isinstance(arg, int) and not isinstance(arg, bool)) or arg in scalar_of


def _attribute(module: torch.nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part, None)
    return value


def _drop_guards(module: torch.fx.GraphModule) -> None:
    for node in list(module.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            module.graph.erase_node(node)
    module.recompile()
    module.validate_inputs = False  # type: ignore[assignment]

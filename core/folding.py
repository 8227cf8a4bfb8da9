"""Weights computed from parameters alone (weight norm, spectral norm, weight standardisation), folded
into plain parameters: at inference nothing changes them, and a layer with a parameter of its own is one
the analysis can prune."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from core import ops


def computed_weights_folded(gm: fx.GraphModule) -> None:
    """A layer's weight or bias computed from parameters alone (weight norm's ``_weight_norm(v, g)``,
    weight standardisation, a spectral norm's ``W / sigma``) becomes a parameter holding that value, as
    in inference nothing changes it: the analysis finds the layer, and the compressed model stores the
    plain weight (under ``<layer>.weight``). Only where those parameters feed nothing else."""
    layers = ops.CONV | ops.CONV_TRANSPOSE | ops.LINEAR
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in layers:
            continue
        for index, role in ((1, "weight"), (2, "bias")):
            source = node.args[index] if len(node.args) > index else None
            computed = _parameters_only(source, node)
            if computed is not None:
                _fold(gm, node, index, role, computed)
                changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()


def _parameters_only(root: Any, layer: fx.Node) -> list[fx.Node] | None:
    """The ops computing ``root`` from parameters and buffers only (deterministic, side-effect free, read
    by nothing outside them but ``layer``), in graph order, the parameters' ``get_attr`` first; else None."""
    if not isinstance(root, fx.Node) or root.op != "call_function" or set(root.users) != {layer}:
        return None
    found: dict[fx.Node, None] = {}
    stack = [root]
    while stack:
        node = stack.pop()
        if node in found:
            continue
        found[node] = None
        if node.op == "get_attr":
            continue
        target = node.target
        if (
            node.op != "call_function"
            or not isinstance(target, torch._ops.OpOverload)
            or target._schema.is_mutable
            or torch.Tag.nondeterministic_seeded in target.tags
        ):
            return None
        stack.extend(node.all_input_nodes)
    inside = set(found) | {layer}
    if any(not set(n.users) <= inside for n in found):
        return None
    order = {n: i for i, n in enumerate(layer.graph.nodes)}
    return sorted(found, key=order.__getitem__)


def _fold(gm: fx.GraphModule, layer: fx.Node, index: int, role: str, computed: list[fx.Node]) -> None:
    """Evaluate ``computed`` (its last node is ``layer``'s input ``index``), store the value as a parameter
    of the layer's module, read it there instead, and drop the ops and the parameters they read."""
    values: dict[fx.Node, Any] = {}
    for node in computed:
        if node.op == "get_attr":
            values[node] = _attribute(gm, str(node.target))
        else:
            call_args, call_kwargs = fx.node.map_arg((node.args, node.kwargs), values.__getitem__)
            values[node] = node.target(*call_args, **call_kwargs)  # type: ignore[operator]
    sources = [values[n] for n in computed if n.op == "get_attr"]
    value = values[computed[-1]].detach().clone()
    trainable = any(isinstance(t, torch.nn.Parameter) and t.requires_grad for t in sources)
    val = computed[-1].meta.get("val")
    args = list(layer.args)
    args[index] = None  # detached while the ops go and their parameters are freed
    layer.args = tuple(args)
    for node in reversed(computed):
        gm.graph.erase_node(node)
    readers = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for target in {str(n.target) for n in computed if n.op == "get_attr"} - readers:
        _delete_attribute(gm, target)  # freed before naming: a standardised weight keeps its name
    name = _free_name(gm, _module_path(layer), role)
    owner, _, leaf = name.rpartition(".")
    (gm.get_submodule(owner) if owner else gm).register_parameter(
        leaf, torch.nn.Parameter(value, requires_grad=trainable)
    )
    with gm.graph.inserting_before(layer):
        read = gm.graph.get_attr(name)
    read.meta["val"] = val
    args[index] = read
    layer.args = tuple(args)


def _module_path(layer: fx.Node) -> str:
    """The path of the module that called ``layer`` ('' for the root)."""
    stack = layer.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


def _free_name(gm: fx.GraphModule, path: str, role: str) -> str:
    """``<path>.<role>`` where the module exists and has no such attribute yet, else a free name beside it."""
    try:
        owner = gm.get_submodule(path) if path else gm
    except AttributeError:
        owner, path = gm, path.replace(".", "_")
        role = f"{path}_{role}" if path else role
        path = ""
    leaf, suffix = role, 0
    while hasattr(owner, leaf):
        suffix += 1
        leaf = f"{role}_{suffix}"
    return f"{path}.{leaf}" if path else leaf


def _attribute(gm: fx.GraphModule, target: str) -> Any:
    owner, _, leaf = target.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, leaf)


def _delete_attribute(gm: fx.GraphModule, target: str) -> None:
    owner, _, leaf = target.rpartition(".")
    delattr(gm.get_submodule(owner) if owner else gm, leaf)

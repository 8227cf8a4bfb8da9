"""Turn the edited module back into a standalone ExportedProgram: literal sizes patched to the new
widths, re-exported with the original's dynamic dimensions."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from core.cost import Widths
from core.graph import GraphAnalysis


def out_of_place(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` with in-place ops (``x += y``, ``relu_``) made functional; itself when it has none.

    The analysis replays the graph from saved activations, which an in-place op would overwrite.
    """
    mutating = any(
        isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable
        for n in program.graph.nodes
    )
    return program.run_decompositions({}) if mutating else program


def patch_shapes(gm: fx.GraphModule, analysis: GraphAnalysis, widths: Widths) -> None:
    """Rewrite literal sizes (``view(-1, 512*7*7)``, depthwise ``groups``) to the new widths."""
    if not analysis.patches:
        return
    nodes = {n.name: n for n in gm.graph.nodes}
    for patch in analysis.patches:
        node = nodes[patch.node]
        args = list(node.args)
        value = patch.layout.columns_for(widths) * patch.factor
        if patch.item is None:
            args[patch.arg] = value
        else:
            items = list(args[patch.arg])  # type: ignore[arg-type]
            items[patch.item] = value
            args[patch.arg] = items
        node.args = tuple(args)
    gm.recompile()


def dynamic_dims(program: torch.export.ExportedProgram) -> list[dict[int, Any]]:
    """For each user input, the dims that were symbolic in ``program`` (kept dynamic on re-export)."""
    user_inputs = set(program.graph_signature.user_inputs)
    out = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta.get("val")
            shape = getattr(val, "shape", ())
            out.append({i: torch.export.Dim.DYNAMIC for i, d in enumerate(shape) if not isinstance(d, int)})
    return out


def reexport(
    gm: fx.GraphModule, original: torch.export.ExportedProgram, example: tuple[torch.Tensor, ...]
) -> torch.export.ExportedProgram:
    """Export ``gm`` afresh, keeping every dynamic dim the original had."""
    dims = dynamic_dims(original)
    dynamic = tuple(d or None for d in dims) if any(dims) else None
    with torch.no_grad():
        program = torch.export.export(gm, example, dynamic_shapes=dynamic, strict=False)
    # export keeps its example inputs inside the saved archive: never ship the user's data
    program.example_inputs = (tuple(torch.zeros_like(x) for x in example), {})
    return program


def input_specs(program: torch.export.ExportedProgram) -> list[tuple[tuple[int | None, ...], torch.dtype]]:
    """Shape (None for a symbolic dim) and dtype of each user input."""
    user_inputs = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta["val"]
            specs.append((tuple(d if isinstance(d, int) else None for d in val.shape), val.dtype))
    return specs

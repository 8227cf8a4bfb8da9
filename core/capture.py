"""Run a graph in part: only as far as the nodes whose outputs are wanted, or only from where a change starts."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import fx


class _Captured(Exception):
    """Raised to end a forward pass once every wanted node has run."""


def capture(gm: fx.GraphModule, names: set[str], inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """The outputs of the nodes ``names`` on ``inputs``, running the graph only as far as needed
    (tensors detached; a symbolic size comes back as its value)."""
    found: dict[str, Any] = {}

    class _Interpreter(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if n.name in names:
                found[n.name] = out.detach() if isinstance(out, torch.Tensor) else out
                if len(found) == len(names):
                    raise _Captured
            return out

    with torch.no_grad(), contextlib.suppress(_Captured):
        _Interpreter(gm).run(*inputs)
    return found


def downstream(gm: fx.GraphModule, targets: set[str]) -> set[fx.Node]:
    """The nodes whose values change when the parameters or buffers ``targets`` change."""
    changed: set[fx.Node] = set()
    for n in gm.graph.nodes:  # topological order
        if (n.op == "get_attr" and n.target in targets) or any(a in changed for a in n.all_input_nodes):
            changed.add(n)
    return changed


def boundary(changed: set[fx.Node]) -> set[str]:
    """The unchanged nodes that ``changed`` nodes read (parameters aside): a resumed run starts there."""
    return {a.name for n in changed for a in n.all_input_nodes if a not in changed and a.op != "get_attr"}


def resume(
    gm: fx.GraphModule,
    start: dict[str, torch.Tensor],
    changed: set[fx.Node],
    inputs: tuple[torch.Tensor, ...],
) -> Any:
    """``gm``'s output on ``inputs``, computing only the ``changed`` nodes: every other node's value is
    taken from ``start`` (the ``boundary`` values of an earlier run on the same inputs)."""
    env = {n: start.get(n.name) for n in gm.graph.nodes if n not in changed and n.op != "get_attr"}
    with torch.no_grad():
        return fx.Interpreter(gm).run(*inputs, initial_env=env)

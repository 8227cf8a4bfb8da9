"""Run a graph only as far as the nodes whose outputs are wanted."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import fx


class _Captured(Exception):
    """Raised to end a forward pass once every wanted node has run."""


def capture(gm: fx.GraphModule, names: set[str], inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """The outputs of the nodes ``names`` on ``inputs``, running the graph only as far as needed."""
    found: dict[str, torch.Tensor] = {}

    class _Interpreter(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if n.name in names:
                found[n.name] = out.detach()
                if len(found) == len(names):
                    raise _Captured
            return out

    with torch.no_grad(), contextlib.suppress(_Captured):
        _Interpreter(gm).run(*inputs)
    return found

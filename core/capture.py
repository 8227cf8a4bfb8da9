"""Run a graph in part: only as far as the nodes whose outputs are wanted, and from where it last changed."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import fx


class _Captured(Exception):
    """Raised to end a forward pass once every wanted node has run."""


def downstream(gm: fx.GraphModule, targets: set[str]) -> set[fx.Node]:
    """The nodes whose values change when the parameters or buffers ``targets`` change."""
    changed: set[fx.Node] = set()
    for n in gm.graph.nodes:  # topological order
        if (n.op == "get_attr" and n.target in targets) or any(a in changed for a in n.all_input_nodes):
            changed.add(n)
    return changed


def first_change(gm: fx.GraphModule, params: set[str], nodes: set[str]) -> int:
    """The index of the first computed node of ``gm`` that reads the parameters or buffers ``params``
    (directly or not), or is one of ``nodes``: everything before it is untouched by their rewrite."""
    index = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    hit = [index[n.name] for n in downstream(gm, params) if n.op not in ("get_attr", "placeholder")]
    return min(hit + [index[n] for n in nodes if n in index] + [len(index)])


class Cursor:
    """Runs a graph batch by batch, each run starting where the previous one left a snapshot.

    A run that only needs what lies at or after node index ``start`` (nothing before it has changed since
    the snapshot) resumes from the values live at the snapshot's index instead of the input: a layer-by-
    layer re-fit then costs about one forward pass per network instead of one per layer. Parameters are
    always read afresh. A batch's snapshot is kept only while all of them hold at most ``budget`` bytes:
    where they do not all fit, the batches whose snapshot does still resume.
    """

    def __init__(self, gm: fx.GraphModule, batches: int, budget: int) -> None:
        self.gm, self.budget = gm, budget
        self.nodes = list(gm.graph.nodes)
        self.saved: list[tuple[int, dict[fx.Node, Any]] | None] = [None] * batches

    def values(self, i: int, inputs: tuple[torch.Tensor, ...], names: set[str], start: int) -> dict[str, Any]:
        """The outputs of ``names`` for batch ``i`` (the same ``inputs`` at every call); the values live
        at node ``start`` are kept for the next call, which resumes from them unless it starts earlier."""
        saved = self.saved[i]
        begin, env = (saved[0], saved[1]) if saved is not None and saved[0] <= start else (0, {})
        live = _live(self.nodes, start)
        found: dict[str, Any] = {}
        snapshot: dict[fx.Node, Any] = {}
        at = self.nodes[start] if start < len(self.nodes) else None

        class _Interpreter(fx.Interpreter):
            def run_node(self, n: fx.Node) -> Any:
                if n is at:
                    snapshot.update({m: self.env[m] for m in live})
                out = super().run_node(n)
                if n.name in names:
                    found[n.name] = out.detach() if isinstance(out, torch.Tensor) else out
                if len(found) == len(names) and (snapshot or not live):
                    raise _Captured
                return out

        initial = {n: env.get(n) for n in self.nodes[:begin] if n.op != "get_attr"} if begin else None
        with torch.no_grad(), contextlib.suppress(_Captured):
            _Interpreter(self.gm).run(*inputs, initial_env=initial)
        for n in live:  # a value before ``start`` that is wanted comes from the snapshot
            if n.name in names and n.name not in found and n in snapshot:
                found[n.name] = snapshot[n]
        if len(found) < len(names) and begin:  # wanted from before the snapshot: run from the input
            self.saved[i] = None
            return self.values(i, inputs, names, start)
        self._keep(i, start, snapshot if len(snapshot) == len(live) else None)
        return found

    def _keep(self, i: int, start: int, snapshot: dict[fx.Node, Any] | None) -> None:
        old, self.saved[i] = self.saved[i], None
        held = sum(nbytes(s[1]) for s in self.saved if s is not None)
        if snapshot is not None and held + nbytes(snapshot) <= self.budget:
            self.saved[i] = (start, snapshot)
        elif old is not None and old[0] <= start:  # this run resumed from it: nothing before it changed
            self.saved[i] = old


def _live(nodes: list[fx.Node], start: int) -> list[fx.Node]:
    """Computed nodes before index ``start`` that a node at or after it reads."""
    before = set(nodes[:start])
    return [n for n in nodes[:start] if n.op != "get_attr" and any(u not in before for u in n.users)]


def nbytes(values: dict[Any, Any]) -> int:
    """Bytes held by the tensors among ``values``."""
    return sum(v.numel() * v.element_size() for v in values.values() if isinstance(v, torch.Tensor))

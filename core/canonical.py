"""The exported program as a module in the forms the graph analysis reads.

``editable(program)`` is what the analysis reads and pruning edits: dead code dropped, each symbolic
size product its reader's own, ``chunk``/``split`` with explicit sizes, two-operand ``einsum`` matrix
products as ``matmul``, matrix products with a parameter as ``linear`` layers, and weights computed from
parameters alone folded into plain ones (:mod:`core.folding`). Each pass computes the same function.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx

from core import ops
from core.folding import computed_weights_folded

aten = torch.ops.aten


def editable(program: torch.export.ExportedProgram) -> fx.GraphModule:
    """``program`` as a module the analysis reads and pruning edits: without dead code, each symbolic
    size product its reader's own, splits explicit and linear layers as such."""
    gm = program.module()
    without_dead_code(gm)
    own_size_products(gm)
    explicit_splits(gm)
    einsum_products(gm)
    linear_layers(gm)
    computed_weights_folded(gm)
    return gm


def explicit_splits(gm: fx.GraphModule) -> None:
    """``chunk``/``split`` with one size for every part become ``split_with_sizes`` with the size of each
    (read from the traced shapes), so that pruning can give each part its own width."""
    changed = False
    for node in gm.graph.nodes:
        if node.target not in ops.EQUAL_SPLITS:
            continue
        parts, dim = node.meta.get("val"), node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        sizes = [part.shape[dim] for part in parts or ()]
        if not sizes or not all(isinstance(n, int) for n in sizes):
            continue  # a symbolic size (the batch axis): nothing to prune there
        node.target, node.args, node.kwargs = (
            torch.ops.aten.split_with_sizes.default,
            (node.args[0], sizes, dim),
            {},
        )
        changed = True
    if changed:
        gm.recompile()


def without_dead_code(gm: fx.GraphModule) -> None:
    """Drop what no output reads (``nn.MultiheadAttention`` averages attention weights it then discards):
    the analysis need not follow it, nor the pruned model compute it."""
    if gm.graph.eliminate_dead_code():
        gm.recompile()


def own_size_products(gm: fx.GraphModule) -> None:
    """Give each reader of a symbolic size product (``batch * heads``, which export shares among the
    attention layers) its own copy, so that narrowing one layer's heads patches only that layer's views."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not operator.mul:
            continue
        for user in list(node.users)[1:]:
            with gm.graph.inserting_after(node):
                copy = gm.graph.call_function(operator.mul, node.args, node.kwargs)
            copy.meta = dict(node.meta)
            user.replace_input_with(node, copy)
            changed = True
    if changed:
        gm.recompile()


def einsum_products(gm: fx.GraphModule) -> None:
    """A two-operand ``einsum`` that is a matrix product (one summed index; the indices of both operands
    leading, each operand's own ones next) becomes ``permute`` + ``matmul`` + ``permute``, the form the
    analysis follows: ``bhqd,bhkd->bhqk`` is ``q @ k^T``, ``bhqk,bhkd->bhqd`` is ``a @ v``, and
    ``bni,oi->bno`` with a weight is a linear layer."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.target is not aten.einsum.default or node.kwargs or len(node.args[1]) != 2:
            continue
        plan = _matmul_plan(str(node.args[0]))
        if plan is None:
            continue
        a, b = node.args[1]
        with gm.graph.inserting_before(node):
            product = _call(gm, aten.matmul.default, _permuted(gm, a, plan[0]), _permuted(gm, b, plan[1]))
            result = _permuted(gm, product, plan[2])
        node.replace_all_uses_with(result)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.recompile()


def _matmul_plan(equation: str) -> tuple[list[int], list[int], list[int]] | None:
    """The permutations of ``a``, ``b`` and ``a' @ b'`` that compute ``einsum(equation, a, b)``, or None
    where it is not one matrix product: ``a'`` is (shared, a's own, summed), ``b'`` (shared, summed, b's
    own), and with nothing shared ``b`` may be a matrix that ``a``'s leading indices broadcast over."""
    inputs, arrow, out = equation.replace(" ", "").partition("->")
    terms = inputs.split(",")
    if not arrow or len(terms) != 2 or "." in equation:
        return None
    left, right = terms
    if any(len(set(t)) != len(t) for t in (left, right, out)):
        return None
    shared = [c for c in left if c in right and c in out]
    summed = [c for c in left if c in right and c not in out]
    own_a, own_b = [c for c in left if c not in right], [c for c in right if c not in left]
    if len(summed) != 1 or len(own_b) != 1 or set(out) != set(shared + own_a + own_b):
        return None
    if len(own_a) != 1 and (shared or not own_a):
        return None
    order_a, order_b = shared + own_a + summed, shared + summed + own_b
    produced = shared + own_a + own_b
    return (
        [left.index(c) for c in order_a],
        [right.index(c) for c in order_b],
        [produced.index(c) for c in out],
    )


def _permuted(gm: fx.GraphModule, node: Any, dims: list[int]) -> Any:
    return node if dims == sorted(dims) else _call(gm, aten.permute.default, node, dims)


def _call(gm: fx.GraphModule, target: Any, *args: Any) -> fx.Node:
    """A new ``target(*args)`` node, its ``val`` computed from its inputs' (fake) values where they have them."""
    node = gm.graph.call_function(target, args)
    vals = [a.meta.get("val") if isinstance(a, fx.Node) else a for a in args]
    modes = [v.fake_mode for v in vals if isinstance(v, torch._subclasses.FakeTensor)]
    if modes and all(v is not None for v in vals):
        with modes[0]:
            node.meta["val"] = target(*vals)
    return node


def linear_layers(gm: fx.GraphModule) -> None:
    """Matrix products with a parameter that compute a linear layer become ``linear(x, W, b)`` (the same
    function), so that the analysis finds the layer:

    - ``addmm(b, x, W.t())`` and ``mm(x, W.t())``, as a core-ATen decomposition writes a linear layer, and
      ``bmm(x, W.t().expand(B, -1, -1))``, as it writes one on a non-contiguous input; ``matmul(x, W.t())``;
    - ``addmm(b, x, W)``, ``mm(x, W)`` and ``matmul(x, W)`` with ``W`` stored ``(in, out)`` (Hugging Face's
      ``Conv1D`` in GPT-2, hand-written ``x @ W + b``): the parameter is replaced by its transpose, so
      the module's copy of ``W`` is ``(out, in)`` from here on, as ``nn.Linear`` stores it.
    """
    tensors = dict(gm.named_parameters()) | dict(gm.named_buffers())
    changed = False
    for node in list(gm.graph.nodes):
        if node.target not in _PRODUCTS or node.kwargs:
            continue
        bias, x, w = node.args if node.target is aten.addmm.default else (None, *node.args)
        chain = _transposed_parameter(w, tensors, batched=node.target is aten.bmm.default)
        if chain is None and node.target is not aten.bmm.default:
            chain = _stored_in_out(w, gm, tensors)
        vector = isinstance(bias, fx.Node) and bias.op == "get_attr" and tensors[str(bias.target)].dim() == 1
        if chain is None or (bias is not None and not vector):
            continue
        if chain[0] is chain[-1]:  # W stored (in, out): keep its transpose instead
            _transpose_parameter(gm, str(chain[-1].target), tensors)
        with gm.graph.inserting_before(node):
            linear = gm.graph.call_function(aten.linear.default, (x, chain[-1]) + ((bias,) if bias else ()))
        linear.meta = dict(node.meta)
        node.replace_all_uses_with(linear)
        for op in [node, *chain[:-1]]:
            gm.graph.erase_node(op)
        changed = True
    if changed:
        gm.recompile()


_PRODUCTS = (aten.addmm.default, aten.mm.default, aten.bmm.default, aten.matmul.default)


def _transposed_parameter(node: Any, tensors: dict[str, torch.Tensor], batched: bool) -> list[fx.Node] | None:
    """``W.t()`` (``permute(W, [1, 0])``) of a 2-D parameter, broadcast over a batch where ``batched``
    (``expand``, ``view``) and read only there: the ops from ``node`` back to ``W``'s ``get_attr``,
    last; else None."""
    operand = getattr(node, "meta", {}).get("val")
    chain = []
    while isinstance(node, fx.Node) and len(node.users) == 1:
        chain.append(node)
        if batched and node.target in (aten.expand.default, aten.view.default):
            node = node.args[0]
            continue
        transpose = node.target is aten.t.default or (
            node.target is aten.permute.default and list(node.args[1]) == [1, 0]  # type: ignore[arg-type]
        )
        weight = node.args[0] if transpose else None
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
            return None
        w = tensors.get(str(weight.target))
        if (
            w is None
            or w.dim() != 2
            or operand is None
            or tuple(operand.shape[-2:]) != (w.shape[1], w.shape[0])
        ):
            return None
        return [*chain, weight]
    return None


def _stored_in_out(node: Any, gm: fx.GraphModule, tensors: dict[str, torch.Tensor]) -> list[fx.Node] | None:
    """``[node]`` where ``node`` reads a 2-D parameter that nothing else reads (no other node, no tied
    parameter sharing its storage); else None."""
    if not (isinstance(node, fx.Node) and node.op == "get_attr" and len(node.users) == 1):
        return None
    w = tensors.get(str(node.target))
    if not isinstance(w, torch.nn.Parameter) or w.dim() != 2:
        return None
    readers = [n for n in gm.graph.nodes if n.op == "get_attr" and n.target == node.target]
    tied = [
        t
        for t in tensors.values()
        if t is not w and t.untyped_storage().data_ptr() == w.untyped_storage().data_ptr()
    ]
    return [node] if len(readers) == 1 and not tied else None


def _transpose_parameter(gm: fx.GraphModule, name: str, tensors: dict[str, torch.Tensor]) -> None:
    """Replace parameter ``name`` of ``gm`` by its transpose (a new tensor: the program it came from keeps
    its own)."""
    owner, _, leaf = name.rpartition(".")
    w = tensors[name]
    transposed = torch.nn.Parameter(w.detach().t().contiguous(), requires_grad=w.requires_grad)
    setattr(gm.get_submodule(owner), leaf, transposed)
    tensors[name] = transposed

"""What a ``.pt2`` program may contain before torch's deserializer sees it.

``torch.export.load`` (torch 2.13) is not safe on untrusted files; each of these runs code from the file:
- pickled payloads: weights or constants with ``use_pickle``, opaque objects (``pickle.loads``),
  custom objects, and the sample inputs, which fall back to ``torch.load`` with ``weights_only`` off when the
  safe unpickler refuses them;
- symbolic shape expressions (``expr_str``), parsed by ``sympy.sympify``, which calls ``eval``;
- ``guards_code``, Python source that ``ExportedProgram.module()`` passes to ``exec``;
- graph node targets resolved by attribute lookup from ``torch`` (``torch.os.system`` resolves);
- pytree specs (``in_spec``/``out_spec``) whose contexts import any module by name;
- AOTInductor shared libraries.
So a program is accepted only when its node targets are ATen/prims operators or a short list of
symbolic-arithmetic builtins, its expressions use only sympy constructors and symbol names, its
pytree specs use only built-in containers, and its guards are dropped (the range constraints still
check inputs).
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable
from typing import Any

import torch

from core.formats.errors import UnsupportedFormatError

_OP_NAMESPACES = frozenset({"aten", "prims"})
# ATen operators with side effects outside the tensor world (file I/O).
_DENIED_OPS = frozenset({"from_file", "save", "load", "_print", "print"})
_OPERATOR_NAMES = frozenset(
    {
        "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pos", "pow", "abs",
        "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "not_", "invert",
    }
)  # fmt: skip
_MATH_NAMES = frozenset({"ceil", "floor", "trunc", "sqrt", "exp", "log", "sin", "cos", "tan", "fabs"})
_TORCH_SYM_NAMES = frozenset(
    {"sym_max", "sym_min", "sym_not", "sym_float", "sym_int", "sym_ite", "sym_sqrt", "sym_sum"}
)
_OP_TARGET = re.compile(
    r"torch\.ops\.(?P<ns>[A-Za-z_][A-Za-z0-9_]*)\.(?P<op>[A-Za-z_][A-Za-z0-9_]*)\.[A-Za-z0-9_]+"
)

# Names a symbolic expression may use: sympy constructors and torch's sympy functions.
_SYMPY_NAMES = frozenset(
    {
        "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs",
        "floor", "ceiling", "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not",
        "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality", "Unequality",
        "oo", "zoo", "nan", "true", "false", "True", "False", "Piecewise",
        "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite",
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
        "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
        "RoundDecimal", "ToFloat", "Identity", "OpaqueUnaryFn_sqrt",
    }
)  # fmt: skip
_TREE_TYPES = frozenset(
    {
        None,
        "builtins.tuple",
        "builtins.list",
        "builtins.dict",
        "collections.OrderedDict",
        "torch.fx.immutable_collections.immutable_list",
        "torch.fx.immutable_collections.immutable_dict",
    }
)
_SYMBOL_NAME = re.compile(r"[a-z]{1,4}\d+")
_EXPR_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|'(?P<quoted>[A-Za-z_][A-Za-z0-9_]*)'"
    r"|(?P<op>\*\*|[-+*/%(),=<>]))"
)
_MAX_EXPR_CHARS = 10_000


def check_program_json(doc: dict[str, Any]) -> dict[str, Any]:
    """Refuse a serialized program whose targets or expressions could run code; return it with its
    guards dropped. Walks the whole document, so nested graphs are covered."""
    if not isinstance(doc, dict) or "graph_module" not in doc:
        raise UnsupportedFormatError("the .pt2 program description has no graph.")
    _walk(doc)
    doc["guards_code"] = []
    return doc


def _walk(value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str):
                if key in ("target", "as_operator"):
                    check_operator_name(item)
                elif key == "expr_str":
                    check_sym_expr(item)
                elif key in ("in_spec", "out_spec"):
                    check_tree_spec(item)
            else:
                _walk(item)
    elif isinstance(value, list):
        for item in value:
            _walk(item)


def check_operator_name(target: str) -> None:
    """Accept ``torch.ops.{aten,prims}.<op>.<overload>`` and a few symbolic-arithmetic builtins."""
    match = _OP_TARGET.fullmatch(target)
    if match:
        if match["ns"] in _OP_NAMESPACES and match["op"] not in _DENIED_OPS:
            return
        raise UnsupportedFormatError(f"the program calls operator {target!r}, which is not accepted.")
    module, _, name = target.partition(".")
    allowed = {"_operator": _OPERATOR_NAMES, "math": _MATH_NAMES, "torch": _TORCH_SYM_NAMES}.get(module)
    if allowed is None or name not in allowed:
        raise UnsupportedFormatError(f"the program calls {target!r}, which is not an ATen operator.")


def check_tree_spec(serialized: str) -> None:
    """A pytree spec may only nest the built-in containers: other node types' contexts name a module
    that the loader imports (``defaultdict`` factories, enums)."""
    try:
        _, schema = json.loads(serialized)
    except (ValueError, TypeError) as exc:
        raise UnsupportedFormatError("the program has a malformed input/output structure.") from exc
    pending = [schema]
    while pending:
        node = pending.pop()
        if not isinstance(node, dict) or node.get("type") not in _TREE_TYPES:
            kind = node.get("type") if isinstance(node, dict) else node
            raise UnsupportedFormatError(
                f"the program's inputs or outputs use the container {kind!r}, which is not accepted."
            )
        if "__enum__" in str(node.get("context")):
            raise UnsupportedFormatError(
                "the program's input/output structure refers to an enum, which is not accepted."
            )
        pending.extend(node.get("children_spec") or [])


def check_sym_expr(expr: str) -> None:
    """Accept only sympy constructors, symbol names, numbers and arithmetic: the string is later
    given to ``sympy.sympify``, which evaluates it as Python."""
    if len(expr) > _MAX_EXPR_CHARS:
        raise UnsupportedFormatError("the program has a symbolic shape expression that is too long.")
    position = 0
    stripped = expr.rstrip()
    while position < len(stripped):
        token = _EXPR_TOKEN.match(stripped, position)
        if token is None or token.end() == position:
            raise UnsupportedFormatError(f"the program has a malformed shape expression {expr[:80]!r}.")
        name = token["name"] or token["quoted"]
        if name is not None and not _is_expr_name(name, quoted=token["quoted"] is not None):
            raise UnsupportedFormatError(
                f"the program's shape expression uses {name!r}, which is not accepted."
            )
        position = token.end()


def _is_expr_name(name: str, *, quoted: bool) -> bool:
    if "__" in name:
        return False
    if quoted:
        return _SYMBOL_NAME.fullmatch(name) is not None
    return name in _SYMPY_NAMES or _SYMBOL_NAME.fullmatch(name) is not None


_SAFE_CALLABLES: frozenset[Callable[..., Any]] = frozenset(
    [getattr(operator, n) for n in _OPERATOR_NAMES]
    + [getattr(math, n) for n in _MATH_NAMES]
    + [getattr(torch, n) for n in _TORCH_SYM_NAMES if hasattr(torch, n)]
)


def check_program_graph(program: torch.export.ExportedProgram) -> None:
    """After deserialization: every node of every graph calls an accepted ATen/prims operator or a
    symbolic-arithmetic builtin, and nothing else (no modules, methods or higher-order operators)."""
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if node.op in ("placeholder", "output", "get_attr"):
                continue
            if node.op != "call_function" or not _is_safe_target(node.target):
                raise UnsupportedFormatError(
                    f"the program's node {node.name!r} calls {node.target!r}, which is not accepted."
                )


def _is_safe_target(target: Any) -> bool:
    if isinstance(target, torch._ops.OpOverload):
        namespace = target.namespace
        return namespace in _OP_NAMESPACES and target._opname not in _DENIED_OPS
    try:
        return target in _SAFE_CALLABLES
    except TypeError:  # unhashable
        return False

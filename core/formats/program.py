"""Facts about an ``ExportedProgram`` that every format needs: shapes, example inputs, a run, and
``torch.export`` with a dynamic batch dimension where the model allows one."""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.export import Dim, ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind
from torch.fx.experimental.symbolic_shapes import optimization_hint
from torch.utils import _pytree as pytree

from core.errors import SpecpruneError

log = logging.getLogger(__name__)

Shape = tuple[int | None, ...]
"""A tensor shape; ``None`` marks a dynamic dimension (the batch, usually)."""

_DEFAULT_DYNAMIC_SIZE = 2


@dataclass
class LoadedModel:
    """A model read from a file: the program plus the shapes it takes and gives.

    ``input_shape`` / ``output_shape`` describe the first user input / output (``None`` where the
    program has none); ``input_shapes`` / ``output_shapes`` list them all.
    """

    program: ExportedProgram
    format: str
    input_shape: Shape | None
    output_shape: Shape | None
    input_shapes: tuple[Shape, ...] = ()
    output_shapes: tuple[Shape, ...] = ()

    @property
    def dynamic_batch(self) -> bool:
        """Whether the first input's leading dimension is dynamic."""
        return bool(self.input_shape) and self.input_shape[0] is None  # type: ignore[index]

    @classmethod
    def describe(cls, program: ExportedProgram, format: str) -> LoadedModel:
        inputs = input_shapes(program)
        outputs = output_shapes(program)
        return cls(
            program=program,
            format=format,
            input_shape=inputs[0] if inputs else None,
            output_shape=outputs[0] if outputs else None,
            input_shapes=inputs,
            output_shapes=outputs,
        )


def user_input_nodes(program: ExportedProgram) -> list[torch.fx.Node]:
    """Placeholders of the program's user inputs, in call order."""
    names = [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]
    by_name = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    return [by_name[name] for name in names]


def user_output_nodes(program: ExportedProgram) -> list[Any]:
    """Nodes (or constants) the program returns to its caller, in order."""
    output = next(n for n in program.graph.nodes if n.op == "output")
    returned = list(output.args[0])
    specs = program.graph_signature.output_specs
    return [value for spec, value in zip(specs, returned, strict=True) if spec.kind == OutputKind.USER_OUTPUT]


def input_shapes(program: ExportedProgram) -> tuple[Shape, ...]:
    return tuple(_shape_of(node) for node in user_input_nodes(program) if _is_tensor_node(node))


def input_dtypes(program: ExportedProgram) -> tuple[torch.dtype, ...]:
    return tuple(node.meta["val"].dtype for node in user_input_nodes(program) if _is_tensor_node(node))


def output_shapes(program: ExportedProgram) -> tuple[Shape, ...]:
    nodes = user_output_nodes(program)
    return tuple(_shape_of(n) for n in nodes if isinstance(n, torch.fx.Node) and _is_tensor_node(n))


def _is_tensor_node(node: torch.fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.Tensor)


def _shape_of(node: torch.fx.Node) -> Shape:
    return tuple(d if isinstance(d, int) else None for d in node.meta["val"].shape)


def example_inputs(program: ExportedProgram) -> tuple[torch.Tensor, ...]:
    """Positional inputs the program accepts: its stored example inputs when it has them, else
    random tensors of its input shapes (dynamic dimensions at their traced size)."""
    stored = program.example_inputs
    if stored is not None:
        args, kwargs = stored
        if not kwargs and all(isinstance(a, torch.Tensor) for a in args):
            return tuple(a.detach().clone() for a in args)
    generator = torch.Generator().manual_seed(0)
    return tuple(_random_like(node.meta["val"], generator) for node in user_input_nodes(program))


def _random_like(fake: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    shape = [
        d if isinstance(d, int) else optimization_hint(d, fallback=_DEFAULT_DYNAMIC_SIZE) for d in fake.shape
    ]
    if fake.dtype.is_floating_point:
        return torch.randn(shape, generator=generator, dtype=fake.dtype)
    if fake.dtype == torch.bool:
        return torch.zeros(shape, dtype=torch.bool)
    return torch.zeros(shape, dtype=fake.dtype)


def with_batch(inputs: Sequence[torch.Tensor], batch: int) -> tuple[torch.Tensor, ...]:
    """The inputs with their leading dimension repeated or cut to ``batch``."""
    resized = []
    for tensor in inputs:
        if tensor.dim() == 0:
            resized.append(tensor)
            continue
        reps = -(-batch // tensor.shape[0])
        tiled = tensor.repeat(reps, *([1] * (tensor.dim() - 1)))
        resized.append(tiled[:batch].clone())
    return tuple(resized)


def run_program(program: ExportedProgram, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The program's outputs for ``inputs``, flattened to a list of tensors."""
    with torch.no_grad():
        outputs = program.module()(*inputs)
    return [t for t in pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor)]


def export_module(
    module: torch.nn.Module,
    inputs: Sequence[torch.Tensor],
    dynamic_dims: Sequence[Sequence[int]] | None = None,
) -> ExportedProgram:
    """``torch.export.export`` of ``module`` in eval mode, with ``dynamic_dims[i]`` (dimension indices
    of input ``i``) dynamic. When the model fixes a dimension the export is retried with only the
    batch dimensions dynamic, then fully static."""
    with contextlib.suppress(NotImplementedError):  # modules unlifted from a program refuse eval()
        module.eval()
    args = tuple(inputs)
    if dynamic_dims is None:
        dynamic_dims = [[0] if a.dim() > 0 else [] for a in args]
    batch_only = [[d for d in dims if d == 0] for dims in dynamic_dims]
    attempts = [dynamic_dims, batch_only, [[] for _ in args]]
    last_error: Exception | None = None
    for dims in _unique(attempts):
        spec: Any = _spec(dims)
        if spec is not None and _takes_varargs(module):
            spec = (spec,)  # dynamic_shapes follow forward's parameters: one tuple for *inputs
        try:
            return torch.export.export(module, _sized_for_export(args, dims), dynamic_shapes=spec)
        except SpecpruneError:
            raise
        except Exception as exc:  # export raises many error types; the next attempt is stricter
            log.info("export with dynamic dims %s failed: %s", dims, exc)
            last_error = exc
    assert last_error is not None
    raise last_error


def _takes_varargs(module: torch.nn.Module) -> bool:
    parameters = list(inspect.signature(module.forward).parameters.values())
    return len(parameters) == 1 and parameters[0].kind is inspect.Parameter.VAR_POSITIONAL


def _unique(attempts: list[Sequence[Sequence[int]]]) -> list[Sequence[Sequence[int]]]:
    seen: list[Sequence[Sequence[int]]] = []
    for attempt in attempts:
        if attempt not in seen:
            seen.append(attempt)
    return seen


def _spec(dims: Sequence[Sequence[int]]) -> tuple[dict[int, Any] | None, ...] | None:
    if not any(dims):
        return None
    batch = Dim("batch")  # one object: every input's batch dimension is the same size
    return tuple({d: Dim(f"d{i}_{d}") if d else batch for d in ds} or None for i, ds in enumerate(dims))


def _sized_for_export(
    args: tuple[torch.Tensor, ...], dims: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, ...]:
    """Dynamic dimensions of size 0 or 1 get specialised by export; grow them to 2 by repetition."""
    sized = []
    for tensor, ds in zip(args, dims, strict=True):
        for d in ds:
            if tensor.shape[d] < 2:
                tensor = torch.cat([tensor] * 2, dim=d) if tensor.shape[d] == 1 else tensor
        sized.append(tensor)
    return tuple(sized)

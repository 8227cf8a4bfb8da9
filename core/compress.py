"""The one verb: ``compress(program, calibration, config) -> CompressionResult``.

Stages: analyse the graph, gather second moments on the calibration data, pick widths, select
channels from the output side inward, rewrite the weights, re-export, and measure both models.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import fx

from core import calibration as cal
from core import canonical, metrics, rewrite, sensitivity, spectrum, widths
from core.config import CompressionConfig
from core.cost import CostModel, Widths
from core.covariance import Moments, Observation, collect_moments
from core.errors import ConfigError, UnsupportedModelError
from core.graph import ChannelGroup, GraphAnalysis, analyse, probe_shapes
from core.layout import channel_columns, kept_columns
from core.reconstruct import Kept, Refits, assign, pruned_tensors
from core.recovery import recover
from core.selection import balanced, consumer_gram, greedy_select, losses, refit_map
from core.sequential import sequential_refit

Progress = Callable[[str, float], None]
DOF_LAMBDA = 1e-3  # N(lambda) is reported at lambda = 1e-3 tr S: directions above 0.1% of the energy
COLUMN_LIMIT = 4096  # a group of heads is observed column by column up to this many columns ((m D)^2 moments)
ACTIVATION_BUDGET = {"cpu": 1 << 30, "cuda": 4 << 30}  # bytes of activations per calibration batch


@dataclass
class CompressionResult:
    """``program``: the narrower (and, with recovery, retrained) ExportedProgram; ``report``: the
    JSON-serialisable report; ``pruned_program``: the model right after pruning, before recovery."""

    program: torch.export.ExportedProgram
    report: dict[str, Any]
    pruned_program: torch.export.ExportedProgram | None = None


@dataclass
class _GroupStats:
    """A prunable group's combined second moment and the per-observation ones used to re-fit.

    For a group of attention heads of ``unit`` = D > 1 columns each, ``by_observation`` holds all ``m D``
    columns (a head's dimensions are distinct features: the re-fit maps every one of them), and
    ``second_moment``, which selection and the report use, sums each pair of heads' aligned columns."""

    second_moment: torch.Tensor  # (m, m)
    by_observation: dict[tuple[str, int], torch.Tensor]  # (observed node, space) -> S there
    tau: float
    unit: int = 1


class _Clock:
    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}
        self._stage, self._start = "", time.perf_counter()

    def stage(self, name: str) -> None:
        now = time.perf_counter()
        if self._stage:
            self.timings[self._stage] = round(self.timings.get(self._stage, 0.0) + now - self._start, 4)
        self._stage, self._start = name, now
        self.report(0.0)

    def report(self, fraction: float) -> None:
        if self.progress is not None and self._stage:
            self.progress(self._stage, float(min(max(fraction, 0.0), 1.0)))


def _device(config: CompressionConfig) -> torch.device:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but no CUDA device is available")
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _batch_size(
    shapes: dict[str, tuple[int, ...]], probe_batch: int, device: torch.device, specs: list
) -> int:
    """As many samples as fit the activation budget (every node's output for one sample, float32;
    ``shapes`` as measured on ``probe_batch`` samples)."""
    per_sample = sum(math.prod(s) for s in shapes.values()) * 4 / probe_batch
    fits = int(ACTIVATION_BUDGET[device.type] // max(per_sample, 1))
    return cal.batch_size(specs, max(1, min(256, fits)))


def _head_dim(analysis: GraphAnalysis, g: ChannelGroup) -> int:
    """D where ``g``'s channels are attention heads of D columns that every consumer reads as such (and
    the ``m D`` columns are at most ``COLUMN_LIMIT``): its statistics are gathered column by column, so
    the re-fit maps the kept heads' columns onto every column. Else 1."""
    read = [seg for c in g.consumers for seg in c.layout.segments if seg.space in g.spaces]
    units = {seg.block for seg in read} | {analysis.producers[seg.space].unit for seg in read}
    if len(units) != 1 or g.size * min(units) > COLUMN_LIMIT:
        return 1
    return units.pop()


def _observations(
    analysis: GraphAnalysis, groups: list[ChannelGroup], units: dict[str, int]
) -> list[Observation]:
    """Where each group's statistics are gathered: its consumers' inputs (``units``: ``_head_dim``)."""
    spaces: dict[str, set[int]] = {}
    layouts = {}
    by_column = frozenset(s for g in groups if units[g.name] > 1 for s in g.spaces)
    for g in groups:
        for c in g.consumers:
            rank = len(analysis.shapes[c.observed])
            layouts[c.observed] = c.layout.moved(rank - 1 if c.kind == "linear" else 1)
            spaces.setdefault(c.observed, set()).update(set(g.spaces) & c.layout.spaces)
    return [Observation(node, layouts[node], frozenset(s), by_column & s) for node, s in spaces.items()]


def _group_stats(
    g: ChannelGroup, moments: dict[tuple[str, int], Moments], ridge: float, unit: int
) -> _GroupStats:
    mine = {key: m.second_moment for key, m in moments.items() if key[1] in g.spaces}
    s = sum(mine.values())
    assert isinstance(s, torch.Tensor), f"no statistics reached group {g.name}"
    if unit > 1:  # S_hh' = sum_d S_(h,d),(h',d)
        s = torch.einsum("iaja->ij", s.reshape(g.size, unit, g.size, unit))
    return _GroupStats(s, mine, ridge * float(torch.trace(s)) / g.size, unit)


def _consumer_weights(
    gm: fx.GraphModule, g: ChannelGroup, analysis: GraphAnalysis, kept: Kept
) -> list[tuple[torch.Tensor, int]]:
    """Each consumer's weight columns for ``g`` as (out, m / groups, positions), rows cut to what it
    keeps, with its ``groups``."""
    params = dict(gm.named_parameters())
    out = []
    for c in g.consumers:
        w = params[c.weight].detach().double()
        if c.kind == "conv_transpose":
            w = w.transpose(0, 1)  # (in, out, *kernel) -> (out, in, *kernel)
        outputs = next(cn.outputs for cn in analysis.compute if cn.node == c.node)
        if outputs is not None and outputs.spaces & set(kept):
            w = w.index_select(0, kept_columns(outputs, kept, w.shape[0]).to(w.device))
        if c.groups > 1:  # one segment (the analysis asks it): the whole input axis is g's
            out.append((w.reshape(w.shape[0], w.shape[1], -1), c.groups))
            continue
        for seg, offset in c.layout.offsets():
            if seg.space in g.spaces:
                out.append((w.narrow(1, offset, seg.columns).reshape(w.shape[0], seg.length, -1), 1))
    return out


def _selected_moment(g: ChannelGroup, st: _GroupStats) -> torch.Tensor:
    """The second moment selection works on: where a grouped convolution reads ``g``, the covariance
    between its runs of channels is dropped, as each run is re-fitted from its own kept channels only."""
    s = st.second_moment
    if not any(c.groups > 1 for c in g.consumers):
        return s
    run = torch.arange(g.size, device=s.device) // (g.size // g.blocks)
    return s * (run[:, None] == run[None, :])


def _filter_norms(weight: torch.Tensor, axis: int) -> torch.Tensor:
    """Each output channel's L1 norm, ``axis`` being the weight's output-channel axis (Li et al. 2017)."""
    return weight.detach().abs().movedim(axis, 0).flatten(1).sum(1)


def _space_widths(groups: list[ChannelGroup], chosen: dict[str, int]) -> Widths:
    return {s: chosen[g.name] for g in groups if g.name in chosen for s in g.spaces}


def _allocate(
    config: CompressionConfig,
    groups: list[ChannelGroup],
    skipped: dict[str, str],
    retained: dict[str, np.ndarray],
    cost: CostModel,
    output_loss: dict[str, np.ndarray] | None = None,
) -> dict[str, int]:
    """Widths per prunable group, by the config's width rule (``output_loss``: ``D_g(k)`` curves for
    the sensitivity allocation)."""
    if not groups:
        return {}
    if config.widths is not None:
        return widths.explicit(groups, skipped, config.widths)
    if config.alpha is not None:
        return widths.for_alpha(groups, retained, config.alpha)
    by_flops = config.flops_ratio is not None
    total = cost.total_flops if by_flops else cost.total_params
    measure = cost.flops if by_flops else cost.params

    def ratio(chosen: dict[str, int]) -> float:
        return measure(_space_widths(groups, chosen)) / total

    if config.method == "spectral" and output_loss is not None:
        full = ratio({g.name: g.size for g in groups})
        unit = {
            g.name: (full - ratio({g.name: g.blocks})) / max(g.size - g.blocks, 1) for g in groups
        }  # cost of one channel of g, the others whole

        def knob(t: float) -> dict[str, int]:
            return sensitivity.lagrangian_widths(groups, output_loss, unit, t)

        def priority(name: str, k: int, to: int, added: float) -> float:
            return float(output_loss[name][k] - output_loss[name][to]) / max(added, 1e-12)

    elif config.method == "spectral":

        def knob(t: float) -> dict[str, int]:
            return widths.for_alpha(groups, retained, t)

        def priority(name: str, k: int, to: int, added: float) -> float:
            return float(retained[name][to] - retained[name][k]) / max(added, 1e-12)

    else:
        sizes = {g.name: g.size for g in groups}

        def knob(t: float) -> dict[str, int]:
            return widths.for_fraction(groups, t)

        def priority(name: str, k: int, to: int, added: float) -> float:
            return 1.0 - k / sizes[name]

    floor = _space_widths(groups, {g.name: g.blocks for g in groups})
    limiting = [
        c.weight.removesuffix(".weight")
        for c in sorted(cost.compute, key=lambda c: -(c.flops if by_flops else 0.0))
        if c.kind == "layer"
        and not (c.inputs and c.inputs.spaces & set(floor))
        and not (c.outputs and c.outputs.spaces & set(floor))
    ]
    target = config.flops_ratio if by_flops else config.params_ratio
    assert target is not None
    what = "FLOPs" if by_flops else "parameters"
    limiting += [name for name in skipped if name not in limiting]
    return widths.meet_target(groups, knob, ratio, target, priority, what, limiting)


def _select(
    config: CompressionConfig,
    gm: fx.GraphModule,
    analysis: GraphAnalysis,
    groups: list[ChannelGroup],
    stats: dict[str, _GroupStats],
    chosen: dict[str, int],
    clock: _Clock,
) -> Kept:
    """Kept channel indices per space, layers processed from the output side inward."""
    kept: Kept = {}
    ordered = sorted(groups, key=lambda g: -g.position)
    for i, g in enumerate(ordered):
        k = chosen[g.name]
        clock.report(0.5 + 0.5 * i / max(len(ordered), 1))
        if k >= g.size:
            continue
        if config.method == "spectral":
            st = stats[g.name]
            gram = consumer_gram(_consumer_weights(gm, g, analysis, kept))
            moment = _selected_moment(g, st)
            order = greedy_select(moment, gram, config.theta, st.tau, steps=k, blocks=g.blocks).order
        elif config.method == "l1":
            params = dict(gm.named_parameters())
            producers = [analysis.producers[s] for s in g.spaces]
            score = sum(
                _filter_norms(params[p.weight].narrow(p.axis, p.offset, p.rows), p.axis)
                .reshape(p.size, -1)
                .sum(1)
                for p in producers
            )
            order = torch.argsort(torch.as_tensor(score), descending=True, stable=True)
        else:
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + i)
            order = torch.randperm(g.size, generator=gen)
        chosen_idx = balanced(order, g.blocks)[:k].sort().values.cpu()
        for s in g.spaces:
            kept[s] = chosen_idx
    return kept


def _output_loss(
    gm: fx.GraphModule,
    analysis: GraphAnalysis,
    groups: list[ChannelGroup],
    orders: dict[str, torch.Tensor],
    retained: dict[str, np.ndarray],
    stats: dict[str, _GroupStats],
    batches: list[cal.Batch],
    samples: int,
    config: CompressionConfig,
    device: torch.device,
    clock: _Clock,
) -> dict[str, np.ndarray]:
    """``D_g(k)`` per group, probed on the first calibration batches that hold ``samples``."""
    probe: list[cal.Batch] = []
    while len(probe) < len(batches) and sum(b[0].shape[0] for b in probe) < samples:
        probe.append(tuple(x.to(device) for x in batches[len(probe)]))
    try:
        return sensitivity.output_curves(
            gm.to(device),
            analysis,
            groups,
            orders,
            {name: 1.0 - r for name, r in retained.items()},
            lambda g, kept: _refits([g], stats, {s: kept for s in g.spaces}, config.ridge),
            probe,
            lambda i, n: clock.report(0.25 + 0.25 * i / n),
        )
    finally:
        gm.cpu()


MIN_PROBE_SAMPLES = 64


def _probe_samples(config: CompressionConfig, device: torch.device, groups: int, flops: float) -> int:
    """``probe_samples``, or on a CPU fewer (not under 64) where the probes' estimated cost, every probe
    width of every group over the whole network, would pass ``probe_tflops``."""
    if device.type != "cpu" or config.probe_tflops is None or groups == 0:
        return config.probe_samples
    per_sample = len(sensitivity.PROBE_FRACTIONS) * groups * max(flops, 1.0)
    affordable = int(config.probe_tflops * 1e12 / per_sample)
    return min(config.probe_samples, max(MIN_PROBE_SAMPLES, affordable))


def _probes_bounded(config: CompressionConfig, samples: int, available: int, probed: bool) -> list[str]:
    """The report's warning where the CPU bound made the probes read fewer samples than asked."""
    if not probed or samples >= min(config.probe_samples, available):
        return []
    return [
        f"the sensitivity probes read {samples} samples, not probe_samples={config.probe_samples}, to keep "
        f"their cost on this CPU under probe_tflops={config.probe_tflops:g}; raise or lift it (None) for "
        "less noisy estimates, or run on a GPU"
    ]


def _refits(groups: list[ChannelGroup], stats: dict[str, _GroupStats], kept: Kept, ridge: float) -> Refits:
    """``A_J`` for every consumer of every pruned group, from the statistics at its own input."""
    out: Refits = {}
    for g in groups:
        for c in g.consumers:
            for s in set(g.spaces) & c.layout.spaces:
                if s not in kept:
                    continue
                st = stats[g.name]
                s_obs = st.by_observation[(c.observed, s)]
                tau = ridge * float(torch.trace(s_obs)) / s_obs.shape[0]
                j = channel_columns(kept[s], st.unit).to(s_obs.device)
                out[(c.weight, s)] = refit_map(s_obs, j, tau, c.groups).cpu()
    return out


def _head_rows(analysis: GraphAnalysis, g: ChannelGroup) -> int | None:
    """The rows of each of ``g``'s units where they are attention heads (the report's ``head_dim``)."""
    unit = analysis.producers[g.spaces[0]].unit
    return unit if unit > 1 else None


def _layer_entry(
    g: ChannelGroup, st: _GroupStats | None, gram: torch.Tensor | None, kept: torch.Tensor | None, width: int
) -> dict[str, Any]:
    indices = kept if kept is not None else torch.arange(g.size)
    entry: dict[str, Any] = {
        "name": g.name,
        "width_before": g.size,
        "width_after": width,
        "kept": indices.tolist(),
    }
    if st is None:
        return entry | dict.fromkeys(
            ("eigenvalues", "dof", "theory_width", "retained", "loss_input", "loss_output", "bias_lambda")
        )
    mu = spectrum.eigenvalues(st.second_moment).cpu()
    trace = float(mu.sum())
    dof = spectrum.degrees_of_freedom(mu, DOF_LAMBDA * trace)
    loss_a, loss_b = losses(_selected_moment(g, st), gram, indices.to(st.second_moment.device), st.tau)
    return entry | {
        "eigenvalues": mu.tolist(),
        "dof": dof,
        "theory_width": spectrum.theory_width(dof),
        "retained": 1.0 - loss_a / trace if trace > 0 else 1.0,
        "loss_input": loss_a,
        "loss_output": loss_b,
        "bias_lambda": spectrum.bias_lambda(mu, width),
    }


def _estimation_term(cost: CostModel, space_widths: Widths, n: int) -> float:
    """The theory's estimation term ``sum_l m_l m_(l+1) log(n) / n`` over the layers' widths."""
    total = 0.0
    for c in (c for c in cost.compute if c.kind == "layer"):
        m_in = c.inputs.columns_for(space_widths) if c.inputs else 1
        m_out = c.outputs.columns_for(space_widths) if c.outputs else 1
        total += m_in * m_out
    return total * math.log(max(n, 2)) / max(n, 1)


@dataclass
class _Pruned:
    """One pruning pass: the new program and its part of the report."""

    program: torch.export.ExportedProgram
    report: dict[str, Any]


def _prune(
    program: torch.export.ExportedProgram,
    data: cal.Samples,
    specs: list[cal.InputSpec],
    config: CompressionConfig,
    device: torch.device,
    clock: _Clock,
) -> _Pruned:
    """Analyse, gather statistics, allocate widths, select, re-fit and re-export once."""
    clock.stage("analyse")
    gm = canonical.editable(program)
    probe = tuple(x[:2] if x.shape[0] >= 2 else torch.cat([x, x]) for x in data.inputs)
    probe = probe if cal.batch_size(specs, 2) == 2 else data.batches(cal.batch_size(specs, 2))[0]
    try:
        analysis = analyse(gm, probe)
    except Exception as exc:
        raise UnsupportedModelError(f"the model does not run on the calibration data: {exc}") from exc
    if config.residual == "keep":
        for g in analysis.groups:
            if g.coupling == "residual" and g.skipped is None:
                g.skipped = "residual stream: its channels are tied to an identity path (residual='keep')"
    one = _single(data, specs)
    cost = CostModel(analysis, gm, metrics.count_flops(gm, one) / one[0].shape[0])
    batch = _batch_size(analysis.shapes, probe[0].shape[0], device, specs)
    prunable = analysis.prunable
    skipped = {g.name: g.skipped for g in analysis.groups if g.skipped}

    clock.stage("statistics")
    batches = data.batches(batch)
    if cal.batch_size(specs, 0):  # a static batch dim: only full batches run
        batches = [b for b in batches if b[0].shape[0] == batch] or batches
    units = {g.name: _head_dim(analysis, g) for g in prunable}
    observations = _observations(analysis, prunable, units)
    moments = collect_moments(
        gm, observations, batches, device, lambda i: clock.report((i + 1) / len(batches))
    )
    stats = {g.name: _group_stats(g, moments, config.ridge, units[g.name]) for g in prunable}

    clock.stage("selection")
    grams = {
        g.name: consumer_gram(_consumer_weights(gm, g, analysis, {})).to(stats[g.name].second_moment.device)
        for g in prunable
    }
    retained, orders = {}, {}
    for i, g in enumerate(prunable):
        st = stats[g.name]
        sel = greedy_select(_selected_moment(g, st), grams[g.name], config.theta, st.tau, blocks=g.blocks)
        retained[g.name] = np.array([sel.retained(k) for k in range(g.size + 1)])
        orders[g.name] = sel.order
        clock.report(0.25 * (i + 1) / max(len(prunable), 1))
    output_loss, probe_samples = None, _probe_samples(config, device, len(prunable), cost.total_flops)
    if (
        config.method == "spectral"
        and config.allocation == "sensitivity"
        and config.width_rule.endswith("_ratio")
    ):
        output_loss = _output_loss(
            gm, analysis, prunable, orders, retained, stats, batches, probe_samples, config, device, clock
        )
    chosen = _allocate(config, prunable, skipped, retained, cost, output_loss)
    kept = _select(config, gm, analysis, prunable, stats, chosen, clock)

    clock.stage("reconstruction")
    space_widths = _space_widths(prunable, chosen)
    layers = [
        _layer_entry(g, stats[g.name], grams[g.name], kept.get(g.spaces[0]), chosen[g.name])
        | {"output_loss": float(output_loss[g.name][chosen[g.name]]) if output_loss else None}
        | {"head_dim": _head_rows(analysis, g)}
        for g in prunable
    ]
    if config.method == "spectral" and config.refit in ("output", "sequential"):
        original = canonical.editable(program).to(device)  # the same node names as gm
        on_device = [tuple(x.to(device) for x in b) for b in batches]
        sequential_refit(
            gm.to(device),
            original,
            analysis,
            prunable,
            kept,
            on_device,
            config.ridge,
            lambda i, n: clock.report(i / n),
            output_level=config.refit == "output",
            rectified_steps=config.rectified_steps,
            head_dims={s: units[g.name] for g in prunable if units[g.name] > 1 for s in g.spaces},
        )
        gm.cpu()
    else:
        refits = _refits(prunable, stats, kept, config.ridge) if config.method == "spectral" else {}
        assign(gm, pruned_tensors(gm, analysis, kept, refits))
        rewrite.patch_shapes(gm, analysis, space_widths)

    clock.stage("export")
    example = data.batches(max(2, cal.batch_size(specs, 2)))[0]
    new_program = rewrite.reexport(gm, program, example)
    report = {
        "layers": layers,
        "skipped": [
            {"name": g.name, "width": g.size, "reason": g.skipped} for g in analysis.groups if g.skipped
        ],
        "warnings": ([] if prunable else ["nothing in this model can be pruned; it is returned unchanged"])
        + _probes_bounded(config, probe_samples, len(data), output_loss is not None),
        "calibration": {"samples": len(data), "batch_size": batch, "device": str(device)}
        | ({"probe_samples": min(probe_samples, len(data))} if output_loss else {}),
        "theory": {
            "samples": len(data),
            "dof_lambda": DOF_LAMBDA,
            "estimation_term": {
                "before": _estimation_term(cost, {}, len(data)),
                "after": _estimation_term(cost, space_widths, len(data)),
            },
            "bias_lambda": {entry["name"]: entry["bias_lambda"] for entry in layers},
        },
    }
    return _Pruned(new_program, report)


def compress(
    program: torch.export.ExportedProgram,
    calibration: torch.Tensor | Iterable[Any],
    config: CompressionConfig | None = None,
    labels: torch.Tensor | None = None,
    progress: Progress | None = None,
    *,
    evaluation: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    training: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    checkpoint_dir: Path | None = None,
    measure_latency: bool = True,
) -> CompressionResult:
    """Prune ``program`` by spectral analysis of its activations on ``calibration``.

    ``calibration`` is a tensor (N, ...) or an iterable of batches (tensors, or tuples of tensors for
    several model inputs). ``labels`` (N,) label the calibration data; accuracy is measured on
    ``evaluation`` = (inputs, labels or None) when given, else on the calibration data. Recovery
    (``config.recovery``) trains on ``training`` = (inputs, labels or None), else on the calibration
    data, checkpointing into ``checkpoint_dir`` when given so that a rerun resumes.
    ``progress(stage, fraction)`` is called as work advances; raising from it stops the run.
    """
    config = config or CompressionConfig()
    if not isinstance(program, torch.export.ExportedProgram):
        raise UnsupportedModelError(
            f"compress takes a torch.export.ExportedProgram, got {type(program).__name__}"
        )
    program = rewrite.out_of_place(program)
    clock = _Clock(progress)
    clock.stage("analyse")
    specs = rewrite.input_specs(program)
    data = cal.gather(calibration, limit=config.calibration_samples)
    data.labels = labels
    cal.check(data, specs)
    data = cal.subsample(cal.conform(data, specs), config.calibration_samples, config.seed)
    device = _device(config)
    original = program.module()
    eval_data = _samples(evaluation, specs, "evaluation") or data
    if eval_data.labels is not None:
        metrics.check_labels(original, eval_data.batches(2)[0], eval_data.labels)
    train_data = _samples(training, specs, "training") or data

    clock.stage("evaluate")
    one = _single(data, specs)
    eval_batch = _batch_size(probe_shapes(original, one), one[0].shape[0], torch.device("cpu"), specs)
    if cal.batch_size(specs, 0):  # a static batch dim: evaluate on whole batches only
        eval_data = eval_data.take(torch.arange(max(eval_batch, len(eval_data) // eval_batch * eval_batch)))
    reference = metrics.predict(original, eval_data, eval_batch, torch.device("cpu"))
    quick_data = eval_data.take(torch.arange(min(len(eval_data), 8 * eval_batch)))
    quick_reference = reference[: -(-len(quick_data) // eval_batch)]
    current, pruned, curve = program, None, []
    stages = config.recovery.stages
    for stage in range(stages):
        stage_config = _stage_config(config, program, current, stage, stages, _single(data, specs))
        pruned = _prune(current, data, specs, stage_config, device, clock)
        current = pruned.program
        if config.recovery.enabled:
            clock.stage("recovery")
            result = recover(
                copy.deepcopy(current.module()),  # module() shares storage with the program's state
                original,
                train_data,
                config.recovery,
                device=device,
                seed=config.seed,
                progress=clock.report,
                evaluate=lambda m: _quick_eval(m, quick_reference, quick_data),
                checkpoint_dir=checkpoint_dir / f"stage{stage}" if checkpoint_dir else None,
                fingerprint=json.dumps(config.to_dict(), sort_keys=True),
            )
            curve += [point | {"stage": stage} for point in result.curve]
            clock.stage("export")
            current = rewrite.reexport(
                result.module, current, data.batches(max(2, cal.batch_size(specs, 2)))[0]
            )
    assert pruned is not None

    clock.stage("evaluate")

    def measure(
        p: torch.export.ExportedProgram, module: torch.nn.Module, outputs: list[torch.Tensor] | None = None
    ) -> dict[str, Any]:
        return _measure(p, module, eval_data, one, eval_batch, measure_latency, reference, outputs)

    report: dict[str, Any] = {"original": measure(program, original, reference)}
    report["compressed"] = measure(pruned.program, pruned.program.module())
    if config.recovery.enabled:
        report["recovered"] = measure(current, current.module())
        report["training_curve"] = curve
    clock.stage("")
    report |= pruned.report | {
        "config": config.to_dict(),
        "evaluation": {"samples": len(eval_data), "source": "evaluation" if evaluation else "calibration"},
        "timings": clock.timings,
    }
    report["warnings"] = report["warnings"] + _target_missed(config, report)
    if stages > 1:
        _widths_from_original(report, program, data, specs)
    return CompressionResult(current, report, pruned.program)


def _target_missed(config: CompressionConfig, report: dict[str, Any]) -> list[str]:
    """A warning when the measured FLOPs or parameters kept fall outside 1% of the requested ratio."""
    for rule, key, what in (("flops_ratio", "flops", "FLOPs"), ("params_ratio", "params", "parameters")):
        target = getattr(config, rule)
        before, after = report["original"][key], report["compressed"][key]
        if target is None or not before:
            continue
        kept = after / before
        if abs(kept - target) > 0.01 * target:
            return [
                f"{what} kept are {kept:.3f} of the original, outside 1% of the {rule} target {target:.3g}: "
                "the prunable channels are too few or too coarse to land closer (see skipped)"
            ]
    return []


def _stage_config(
    config: CompressionConfig,
    original: torch.export.ExportedProgram,
    current: torch.export.ExportedProgram,
    stage: int,
    stages: int,
    one: cal.Batch,
) -> CompressionConfig:
    """Stage ``stage`` of ``stages`` keeps ``target^((stage+1)/stages)`` of the original's cost."""
    if stages == 1:
        return config
    by_flops = config.flops_ratio is not None
    target = config.flops_ratio if by_flops else config.params_ratio
    assert target is not None

    def measure(p: torch.export.ExportedProgram) -> float:
        return metrics.count_flops(p.module(), one) if by_flops else metrics.count_params(p)

    goal = target ** ((stage + 1) / stages) * measure(original)
    ratio = min(1.0, goal / measure(current))
    key = "flops_ratio" if by_flops else "params_ratio"
    return dataclasses.replace(config, **{key: ratio})


def _widths_from_original(
    report: dict[str, Any], program: torch.export.ExportedProgram, data: cal.Samples, specs: list
) -> None:
    """After several stages, state each layer's width before the first stage, not the last."""
    analysis = analyse(
        canonical.editable(program),
        tuple(x[:2] if x.shape[0] >= 2 else torch.cat([x, x]) for x in data.inputs),
    )
    sizes = {g.name: g.size for g in analysis.groups}
    for layer in report["layers"]:
        layer["width_before"] = sizes.get(layer["name"], layer["width_before"])


def _samples(
    given: tuple[torch.Tensor, torch.Tensor | None] | None, specs: list[cal.InputSpec], what: str
) -> cal.Samples | None:
    if given is None:
        return None
    x, y = given
    samples = cal.Samples((x,), y)
    cal.check(samples, specs, what=what)
    return cal.conform(samples, specs)


def _single(data: cal.Samples, specs: list) -> cal.Batch:
    """The smallest batch the program accepts (one sample unless its batch dim is static)."""
    return data.batches(cal.batch_size(specs, 1))[0]


def _quick_eval(module: torch.nn.Module, reference: list[torch.Tensor], data: cal.Samples) -> dict[str, Any]:
    """Accuracy and agreement during recovery, on at most 2,048 evaluation samples."""
    batch = reference[0].shape[0] if reference else 1
    after = metrics.score(module, reference, data, batch, next(module.parameters()).device)
    return {"top1": after["top1"], "agreement": after["agreement"]}


def _measure(
    program: torch.export.ExportedProgram,
    module: torch.nn.Module,
    eval_data: cal.Samples,
    one: cal.Batch,
    batch: int,
    measure_latency: bool,
    reference: list[torch.Tensor],
    outputs: list[torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Params, FLOPs, accuracy, agreement with the original's ``reference`` outputs, and latency
    (``outputs``: the module's outputs on ``eval_data`` when already known)."""
    if outputs is None:
        outputs = metrics.predict(module, eval_data, batch, torch.device("cpu"))
    acc = metrics.score_outputs(outputs, reference, eval_data.labels, batch)
    latency = None
    if measure_latency:
        big = eval_data.batches(min(32, len(eval_data)))[0] if one[0].shape[0] == 1 else one
        latency = {
            f"batch_{one[0].shape[0]}": metrics.latency_ms(module, one, repeats=20),
            f"batch_{big[0].shape[0]}": metrics.latency_ms(module, big, repeats=5),
            "device": "cpu",
        }
    return {
        "params": metrics.count_params(program),
        "flops": metrics.count_flops(module, one) / one[0].shape[0],
        **acc,
        "latency_ms": latency,
    }

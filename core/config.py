"""CompressionConfig: the one typed description of what ``compress`` should do."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from core.errors import ConfigError
from core.recovery import RecoveryConfig, config_from

CONFIG_VERSION = 1
Method = Literal["spectral", "l1", "random"]
Device = Literal["auto", "cpu", "cuda"]
Refit = Literal["output", "sequential", "independent"]
REFITS: tuple[str, ...] = ("output", "sequential", "independent")
Allocation = Literal["sensitivity", "spectrum"]
Residual = Literal["prune", "keep"]
METHODS: tuple[str, ...] = ("spectral", "l1", "random")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
WIDTH_RULES: tuple[str, ...] = ("flops_ratio", "params_ratio", "alpha", "widths")


@dataclass(frozen=True)
class CompressionConfig:
    """What to prune and how far. Exactly one width rule: ``flops_ratio``, ``params_ratio``, ``alpha``
    or ``widths``; none given means ``flops_ratio=0.5``.

    - ``method``: ``spectral`` (selection + reconstruction), ``l1`` (Li et al. 2017 filter norms, no
      reconstruction) or ``random`` (seeded, no reconstruction); all share groups and width rules.
    - ``flops_ratio`` / ``params_ratio``: fraction of the original FLOPs / parameters to keep, met within
      1% by one global knob found by bisection (see ``allocation``).
    - ``alpha``: each group keeps the fewest channels whose retained ratio ``1 - L_A(J)/tr S`` >= alpha.
    - ``widths``: explicit kept widths by group name (as in the report's ``layers[].name``); groups not
      named keep their width.
    - ``theta``: weight of the input-aware loss L_A against the output-aware loss L_B (0.3; the sweep
      in BENCHMARKS.md, section 2, finds no value better beyond the calibration draw's variability).
    - ``ridge``: tau = ridge * tr(S) / m, the ridge that keeps S_JJ invertible (dead ReLU units).
    - ``refit``: ``output`` re-fits each consumer, in topological order, to the final pruned network
      upstream (``core.sequential``), on its output from whole input patches where it is a 2-D
      convolution or linear layer (``core.output_fit``), on its input otherwise; ``sequential`` the same
      on every consumer's input (the cheaper earlier default); both take one partial forward pass per
      re-fit step (resumed midway where possible).
      ``independent`` uses the original network's statistics only (one pass in all, the paper's form).
    - ``rectified_steps``: with ``refit="output"``, majorisation steps that fit a layer a ReLU follows to
      what the ReLU passes (a position the original zeroes needs only a non-positive pre-activation);
      each costs one more pass over a re-fit step's data (held in memory where it fits); 0 fits the
      pre-activation itself (``core.output_fit``).
    - ``allocation``: how a FLOPs/params target is split across groups: ``sensitivity`` (local loss
      curves scaled by each group's measured output error, summed error minimised) or ``spectrum`` (one
      retained-energy level for all).
    - ``probe_samples``: the sensitivity allocation probes each group's output error on the first
      calibration batches holding at least this many samples (512); the probes' cost grows with it, the
      noise of their estimates falls with it (BENCHMARKS.md, section 1).
    - ``probe_tflops``: on a CPU, the probes read fewer samples (down to 64) where their estimated cost,
      ``widths x groups x per-sample FLOPs x samples``, would pass this many TFLOP (50: about ten minutes
      on two cores; an ImageNet ResNet-50 probes 64 samples, CIFAR-sized networks keep 512); None lifts
      the bound. Never applied on CUDA.
    - ``residual``: ``prune`` residual streams as coupled groups, or ``keep`` them whole.
    - ``calibration_samples``: at most this many calibration samples are used (seeded draw).
    - ``device``: where statistics and selection run; ``auto`` takes CUDA when present.
    - ``recovery``: fine-tuning or distillation after pruning (``RecoveryConfig`` or its dict form),
      optionally in several prune -> recover stages.
    """

    method: Method = "spectral"
    flops_ratio: float | None = None
    params_ratio: float | None = None
    alpha: float | None = None
    widths: dict[str, int] | None = None
    theta: float = 0.3
    ridge: float = 1e-5
    refit: Refit = "output"
    rectified_steps: int = 2
    allocation: Allocation = "sensitivity"
    probe_samples: int = 512
    probe_tflops: float | None = 50.0
    residual: Residual = "prune"
    calibration_samples: int = 1024
    device: Device = "auto"
    seed: int = 0
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    version: int = field(default=CONFIG_VERSION, compare=False)

    def __post_init__(self) -> None:
        rules = [r for r in WIDTH_RULES if getattr(self, r) is not None]
        if len(rules) > 1:
            raise ConfigError(f"give exactly one width rule, got {', '.join(rules)}")
        if not rules:
            object.__setattr__(self, "flops_ratio", 0.5)
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.refit not in REFITS:
            raise ConfigError(f"refit must be one of {', '.join(REFITS)}, got {self.refit!r}")
        if self.allocation not in ("sensitivity", "spectrum"):
            raise ConfigError(f"allocation must be sensitivity or spectrum, got {self.allocation!r}")
        if self.residual not in ("prune", "keep"):
            raise ConfigError(f"residual must be prune or keep, got {self.residual!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        for name in ("flops_ratio", "params_ratio"):
            value = getattr(self, name)
            if value is not None and not (0.0 < value <= 1.0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be in (0, 1], got {value}")
        if self.alpha is not None and not (0.0 < self.alpha <= 1.0):
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.widths is not None:
            bad = {k: v for k, v in self.widths.items() if not isinstance(v, int) or v < 1}
            if bad or not self.widths:
                raise ConfigError(f"widths must map group names to integers >= 1, got {bad or self.widths}")
        if not (0.0 <= self.theta <= 1.0):
            raise ConfigError(f"theta must be in [0, 1], got {self.theta}")
        if not (0.0 < self.ridge < 1.0):
            raise ConfigError(f"ridge must be in (0, 1), got {self.ridge}")
        steps = self.rectified_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= 10:
            raise ConfigError(f"rectified_steps must be an integer in [0, 10], got {self.rectified_steps!r}")
        if (
            isinstance(self.probe_samples, bool)
            or not isinstance(self.probe_samples, int)
            or self.probe_samples < 1
        ):
            raise ConfigError(f"probe_samples must be an integer >= 1, got {self.probe_samples!r}")
        tflops = self.probe_tflops
        if tflops is not None and (isinstance(tflops, bool) or not (tflops > 0.0 and math.isfinite(tflops))):
            raise ConfigError(f"probe_tflops must be a positive number or None, got {tflops!r}")
        if self.calibration_samples < 1:
            raise ConfigError(f"calibration_samples must be >= 1, got {self.calibration_samples}")
        object.__setattr__(self, "recovery", config_from(self.recovery))  # type: ignore[arg-type]
        if self.recovery.stages > 1 and self.width_rule not in ("flops_ratio", "params_ratio"):
            raise ConfigError("iterative recovery (stages > 1) needs a flops_ratio or params_ratio target")

    @property
    def width_rule(self) -> str:
        """The name of the one width rule in force."""
        return next(r for r in WIDTH_RULES if getattr(self, r) is not None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, with the schema ``version``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompressionConfig:
        """Inverse of ``to_dict``; unknown keys are refused."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**data)

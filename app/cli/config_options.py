"""The compression options shared by ``specprune compress`` (run here) and ``specprune submit`` (run by
the service): one width rule, the method, the device, the re-fit, the width allocation, residual streams,
calibration samples, the seed, and ``--config``
for anything else (e.g. recovery). Only the options given are sent; the rest keep their defaults."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from app.cli.failures import CommandError

METHODS = ("spectral", "l1", "random")
DEVICES = ("auto", "cpu", "cuda")
WIDTH_RULES = ("flops_ratio", "params_ratio", "alpha", "widths")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Add the compression options to ``parser``."""
    group = parser.add_argument_group("compression (default: --flops-ratio 0.5, spectral)")
    rule = group.add_mutually_exclusive_group()
    rule.add_argument("--flops-ratio", type=_ratio, metavar="R", help="fraction of FLOPs to keep, in (0, 1]")
    rule.add_argument("--params-ratio", type=_ratio, metavar="R", help="fraction of parameters to keep")
    rule.add_argument(
        "--alpha", type=_ratio, metavar="A", help="retained spectral energy per layer, in (0, 1]"
    )
    rule.add_argument(
        "--widths",
        type=_widths,
        metavar="JSON",
        help="kept width per layer group, e.g. '{\"conv1\": 12}' (or a .json file; a report's layers work too)",
    )
    group.add_argument("--method", choices=METHODS, help="spectral (default), l1 or random")
    group.add_argument("--device", choices=DEVICES, help="auto (default: CUDA when present), cpu or cuda")
    group.add_argument(
        "--refit",
        choices=("output", "sequential", "independent"),
        help="re-fit each layer's output to the pruned network (output, default), its input (sequential), "
        "or from the original network's statistics alone (independent)",
    )
    group.add_argument(
        "--allocation",
        choices=("sensitivity", "spectrum"),
        help="split a FLOPs/params target by measured output error (sensitivity, default) or one energy level",
    )
    group.add_argument(
        "--probe-samples",
        type=_positive_int,
        metavar="N",
        help="samples the sensitivity allocation probes each layer on (512; fewer: faster, noisier)",
    )
    group.add_argument(
        "--residual",
        choices=("prune", "keep"),
        help="prune residual streams as coupled groups (default) or keep",
    )
    group.add_argument(
        "--calibration-samples", type=_positive_int, metavar="N", help="at most N samples (1024)"
    )
    group.add_argument("--seed", type=_seed, metavar="S", help="seeds the calibration draw and random (0)")
    group.add_argument(
        "--config",
        dest="config_json",
        type=_json_object,
        metavar="JSON",
        help='further config keys as a JSON object, e.g. \'{"recovery": {"mode": "distill", "epochs": 2}}\'',
    )


def config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The config the options ask for: ``--config`` overridden by the individual options."""
    config: dict[str, Any] = dict(args.config_json or {})
    given = {
        name: getattr(args, name)
        for name in (
            "flops_ratio",
            "params_ratio",
            "alpha",
            "widths",
            "method",
            "device",
            "refit",
            "allocation",
            "probe_samples",
            "residual",
            "calibration_samples",
            "seed",
        )
        if getattr(args, name) is not None
    }
    if any(name in given for name in WIDTH_RULES):
        for name in WIDTH_RULES:
            config.pop(name, None)
    config.update(given)
    rules = [name for name in WIDTH_RULES if config.get(name) is not None]
    if len(rules) > 1:
        raise CommandError(f"give one width rule, not {' and '.join(rules)}")
    return config


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (0.0 < value <= 1.0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not >= 1")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 2^63)")
    return value


def _json_value(text: str) -> Any:
    """JSON given inline, or the content of a file when ``text`` names one."""
    source = text
    if not text.lstrip().startswith(("{", "[")):
        path = Path(text)
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"{text!r} is neither JSON nor a file")
        try:
            source = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise argparse.ArgumentTypeError(f"cannot read {text}: {exc}") from None
    try:
        return json.loads(source)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc})") from None


def _json_object(text: str) -> dict[str, Any]:
    value = _json_value(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _widths(text: str) -> dict[str, int]:
    """``{"group": width}``; a report is accepted too (its layers' ``width_after``)."""
    value = _json_value(text)
    if isinstance(value, dict) and isinstance(value.get("layers"), list):
        value = {
            layer.get("name"): layer.get("width_after")
            for layer in value["layers"]
            if isinstance(layer, dict)
        }
    if not isinstance(value, dict) or not value:
        raise argparse.ArgumentTypeError('must be a JSON object such as {"conv1": 12}')
    bad = [
        name
        for name, width in value.items()
        if not isinstance(name, str) or type(width) is not int or width < 1
    ]
    if bad:
        raise argparse.ArgumentTypeError(f"widths must be integers >= 1 (check {', '.join(map(str, bad))})")
    return value

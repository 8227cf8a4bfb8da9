"""``specprune compress MODEL --data DATA -o OUT``: compress on this machine with the core library, no
server. Progress goes to stderr, the before/after table to stdout, core's report to ``--report``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from app.cli.config_options import add_config_options, config_from_args
from app.cli.data_sources import local_path
from app.cli.failures import EXIT_FAILED, CommandError, guarded
from app.cli.summary import summary_table
from client.progress import ProgressDisplay

EVAL_SAMPLES = 10_000
BATCH_SIZE = 256


def register(subcommands: Any) -> None:
    parser = subcommands.add_parser(
        "compress",
        help="compress a model here, without a server",
        description="Prune MODEL with calibration data DATA and write the smaller model to OUT "
        "(its format from the extension: .pt2, .onnx, .pt/.ts, .safetensors).",
    )
    parser.add_argument("model", metavar="MODEL", help="a torch.export .pt2, an ONNX or a TorchScript file")
    parser.add_argument(
        "--data",
        required=True,
        metavar="DATA",
        help=".npz/.safetensors with x (and y), or an image archive: a path or a file://, http(s):// or s3:// URI",
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="where to write the compressed model"
    )
    parser.add_argument("--report", metavar="REPORT.json", help="write core's full report here")
    add_config_options(parser)
    data = parser.add_argument_group("data")
    data.add_argument("--eval-data", metavar="DATA", help="separate evaluation data (labelled)")
    data.add_argument(
        "--eval-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="hold out this fraction of DATA for evaluation when it has no test split (default 0)",
    )
    data.add_argument(
        "--preprocess", metavar="JSON", help="image preprocessing for image archives (see README)"
    )
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    parser.set_defaults(func=guarded("compress", run, translate_error))


def translate_error(exc: Exception) -> CommandError | None:
    """Errors about the user's files and options (exit 2) and failures of the run itself (exit 1)."""
    from core.errors import SpecpruneError
    from core.formats import ExportError

    if isinstance(exc, ExportError):
        return CommandError(str(exc), EXIT_FAILED)
    if isinstance(exc, SpecpruneError | OSError):
        return CommandError(_describe(exc))
    if isinstance(exc, MemoryError):
        return CommandError("out of memory; try fewer --calibration-samples", EXIT_FAILED)
    return None


def run(args: argparse.Namespace) -> int:
    paths = _check_paths(args)
    config_dict = config_from_args(args)
    preprocess = _preprocess(args.preprocess)
    _quiet_libraries()
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, UserWarning):  # torch's, not the user's
            warnings.simplefilter("ignore", category)
        from core import CompressionConfig
        from core.formats import format_from_extension

        _quiet_libraries()  # again: importing torch configured its loggers
        config = CompressionConfig.from_dict(config_dict)
        output_format = format_from_extension(paths["output"])
        display = ProgressDisplay()
        try:
            report = _compress(args, paths, config, output_format, preprocess, display)
        finally:
            display.close()
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2, allow_nan=False, default=_jsonable) + "\n")
    print(f"wrote {paths['output']} ({report['formats']['output']})", file=sys.stderr)
    print(summary_table(report))
    for warning in report.get("warnings") or []:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _compress(
    args: argparse.Namespace,
    paths: dict[str, Path],
    config: Any,
    output_format: str,
    preprocess: dict[str, Any] | None,
    display: ProgressDisplay,
) -> dict[str, Any]:
    import torch

    from core import compress
    from core.datasets import Preprocess, check_labels, make_splits
    from core.formats import save_model
    from core.metrics import class_count

    display.update("loading", 0.0)
    steps = Preprocess.from_dict(preprocess) if preprocess else None
    with _open_data(paths["data"], steps) as dataset:
        eval_dataset = _open_data(paths["eval_data"], steps) if "eval_data" in paths else None
        try:
            plan = make_splits(
                dataset,
                config.calibration_samples,
                eval_fraction=args.eval_fraction,
                seed=config.seed,
                eval_dataset=eval_dataset,
                evaluation_samples=EVAL_SAMPLES,
            )
            loaded, example = _load_model(paths["model"], dataset, plan.calibration)
            classes = class_count(loaded.program.module(), (example,))
            labelled = classes is not None
            for source in (dataset, eval_dataset):
                if classes is not None and source is not None and source.has_labels:
                    check_labels(source, classes)
            stream = dataset.stream(plan.calibration, BATCH_SIZE)
            evaluation = None
            if len(plan.evaluation):
                source = eval_dataset if plan.evaluation_source == "eval_dataset" else dataset
                assert source is not None
                x, y = source.read(plan.evaluation)
                evaluation = (
                    torch.from_numpy(x),
                    torch.from_numpy(y) if y is not None and labelled else None,
                )
            display.update("loading", 1.0)
            result = compress(
                loaded.program,
                stream.inputs(),
                config,
                labels=stream.labels() if labelled else None,
                progress=display.update,
                evaluation=evaluation,
                measure_latency=not args.no_latency,
            )
        finally:
            if eval_dataset is not None:
                eval_dataset.close()
    display.update("saving", 0.0)
    save_model(result.program, paths["output"], output_format, inputs=[example])
    _readable_as_usual(paths["output"])
    display.update("saving", 1.0)
    report = dict(result.report)
    report["data"] = plan.report()
    report["formats"] = {"input": loaded.format, "output": output_format}
    if evaluation is None:
        report["warnings"] = [
            *report.get("warnings", []),
            "no evaluation data: accuracy and agreement were measured on the calibration samples; give "
            "--eval-fraction, --eval-data or an archive with a test split for an honest measure",
        ]
    return report


def _open_data(path: Path, preprocess: Any) -> Any:
    """The dataset in ``path``; its errors name the file."""
    from core.datasets import DatasetError, open_dataset

    try:
        return open_dataset(path, preprocess)
    except DatasetError as exc:
        raise CommandError(f"{path}: {exc}") from None


def _load_model(path: Path, dataset: Any, calibration: Any) -> tuple[Any, Any]:
    """The model and an example batch it accepts; errors about the file name it."""
    from core.formats import ModelFileError

    try:
        return _load_with_example(path, dataset, calibration)
    except ModelFileError as exc:
        raise CommandError(f"{path}: {exc}") from None


def _load_with_example(path: Path, dataset: Any, calibration: Any) -> tuple[Any, Any]:
    """A model exported for a fixed batch size gets an example of that size."""
    import torch

    from core.errors import CalibrationError
    from core.formats import ExampleInputRequiredError, check_inputs_fit, load_model

    def examples(count: int) -> torch.Tensor:
        x, _ = dataset.read(calibration[:count])
        return torch.from_numpy(x)

    example = examples(2)
    try:
        return load_model(path, example_input=example, external_data=True), example
    except CalibrationError as mismatch:
        try:
            loaded = load_model(path, external_data=True)
        except ExampleInputRequiredError:
            raise mismatch from None
        batch = loaded.input_shape[0] if loaded.input_shape else None
        if batch is None or batch == example.shape[0] or len(calibration) < batch:
            raise mismatch from None
        example = examples(batch)
        check_inputs_fit(loaded, [example])
        return loaded, example


def _quiet_libraries() -> None:
    """Progress and the table are the output; the exporters' informational logs are not."""
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("torch", "onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _readable_as_usual(path: Path) -> None:
    """Give the written file the permissions a new file gets here (it was made as a private temp file)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _check_paths(args: argparse.Namespace) -> dict[str, Path]:
    paths = {"model": Path(args.model), "data": local_path(args.data), "output": Path(args.output)}
    if args.eval_data:
        paths["eval_data"] = local_path(args.eval_data)
    for name in ("model", "data", "eval_data"):
        path = paths.get(name)
        if path is not None and not path.is_file():
            raise CommandError(f"{path}: no such file")
    for name in ("output",):
        parent = paths[name].parent
        if not parent.is_dir():
            raise CommandError(f"{paths[name]}: the directory {parent} does not exist")
    if args.report and not Path(args.report).parent.is_dir():
        raise CommandError(f"{args.report}: the directory {Path(args.report).parent} does not exist")
    if not 0.0 <= args.eval_fraction < 1.0:
        raise CommandError(f"--eval-fraction must be in [0, 1), got {args.eval_fraction}")
    return paths


def _preprocess(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--preprocess is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise CommandError("--preprocess must be a JSON object")
    return value


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")

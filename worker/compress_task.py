"""The ``compress`` task of the sandboxed child: one job from its files to its outputs.

Open the data (``worker.data_io``), load the model with the first calibration samples as its example
input (``worker.model_io``, through ``core.formats`` only), check the labels against the model's
classes, compress -- with recovery when configured, checkpointing every epoch so that a later attempt
resumes -- and write the model in the requested format, its weights, the pre-recovery model and the
report under ``JOB_DIR/out``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

Progress = Callable[[str, float], None]


def run(job_dir: Path, spec: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Run the job described by ``spec``; returns the ``done`` message fields."""
    progress("loading", 0.0)
    import torch

    from core import CompressionConfig, compress
    from core.metrics import class_count
    from worker import checkpoints, data_io, model_io

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    config = CompressionConfig.from_dict(spec["config"])
    with data_io.JobData.open(job_dir, spec["data"], config.calibration_samples, config.seed) as data:
        loaded, example = model_io.load(job_dir / spec["model"], data.examples)
        output_format = model_io.resolve_output_format(spec["output_format"], loaded.format)
        data.check_labels(class_count(loaded.program.module(), (example,)))
        calibration, labels = data.calibration()
        evaluation = data.evaluation()
        training = data.training(int(spec["data"]["training_samples"])) if config.recovery.enabled else None
        progress("loading", 1.0)
        resume = checkpoints.resume_point(job_dir)
        snapshots = checkpoints.Snapshots(job_dir)

        def on_progress(stage: str, fraction: float) -> None:
            progress(stage, fraction)
            if stage == "recovery":  # between training steps: no checkpoint is being written now
                snapshots.take()

        result = compress(
            loaded.program,
            calibration,
            config,
            labels=labels,
            progress=on_progress,
            evaluation=evaluation,
            training=training,
            checkpoint_dir=job_dir / checkpoints.CHECKPOINT_DIR if config.recovery.enabled else None,
            measure_latency=bool(spec.get("measure_latency", True)),
        )
        report = dict(result.report)
        report["warnings"] = [*report.get("warnings", []), *data.warnings]
        report["data"] = data.report()
    report["formats"] = {"input": loaded.format, "output": output_format}
    if config.recovery.enabled:
        report["recovery_resume"] = resume
    progress("saving", 0.0)
    pruned = result.pruned_program if config.recovery.enabled else None
    files = model_io.save_outputs(result.program, pruned, job_dir / "out", output_format, example)
    (job_dir / "out" / "report.json").write_text(json.dumps(report, allow_nan=False, default=_jsonable))
    progress("saving", 1.0)
    return {
        "model": files.pop("model"),
        "format": output_format,
        "input_format": loaded.format,
        "report": "out/report.json",
        "artifacts": files,
    }


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")

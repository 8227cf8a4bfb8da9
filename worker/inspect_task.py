"""The ``inspect_dataset`` task of the sandboxed child: open an uploaded dataset with ``core.datasets``
and describe it (format, samples, input shape, classes, splits), every image header checked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run(job_dir: Path, spec: dict[str, Any], progress: Callable[[str, float], None]) -> dict[str, Any]:
    """Describe ``spec['dataset']`` into ``out/info.json``; returns the ``done`` message fields."""
    progress("inspecting", 0.0)
    from core.datasets import Preprocess, open_dataset

    preprocess = Preprocess.from_dict(spec["preprocess"]) if spec.get("preprocess") else None
    work = job_dir / "tmp"
    work.mkdir(exist_ok=True)
    with open_dataset(job_dir / spec["dataset"], preprocess, work_dir=work, check_images=True) as dataset:
        info = {
            "format": dataset.format,
            "samples": dataset.samples,
            "input_shape": list(dataset.input_shape),
            "classes": dataset.classes,
            "splits": dataset.split_counts(),
            "labelled": dataset.has_labels,
        }
    out = job_dir / "out"
    out.mkdir(exist_ok=True)
    (out / "info.json").write_text(json.dumps(info))
    progress("inspecting", 1.0)
    return {"info": "out/info.json"}

"""The quality plot reads what ``bench.quality`` writes: rows grouped by model, largest ratio first."""

from __future__ import annotations

import json
from pathlib import Path

from bench.plot_quality import by_model, plot


def _row(model: str, flops: float, top1: float) -> dict:
    run = {"flops_kept": flops, "top1": top1}
    return {"model": model, "original": 0.9, "spectral": run, "l1_own": {"flops_kept": flops, "top1": 0.1}}


def test_rows_are_grouped_by_model_and_drawn(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"rows": [_row("net", 0.25, 0.6), _row("net", 0.5, 0.8)]}))
    second.write_text(json.dumps({"rows": [_row("other", 0.5, 0.7)]}))
    rows = by_model([first, second])
    assert list(rows) == ["net", "other"]
    assert [r["spectral"]["flops_kept"] for r in rows["net"]] == [0.5, 0.25]
    out = tmp_path / "quality.png"
    plot(rows, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

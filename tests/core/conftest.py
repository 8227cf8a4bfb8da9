from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

FRESH_LOADER = textwrap.dedent(
    """
    import sys
    for blocked in ("core", "app", "worker", "tests", "bench"):
        sys.modules[blocked] = None  # the project must not be needed to run its output
    import json, torch
    from torch.utils.flop_counter import FlopCounterMode
    program = torch.export.load(sys.argv[1])
    x = torch.load(sys.argv[2], weights_only=True)
    with torch.no_grad():
        y = program.module()(x)
        counter = FlopCounterMode(display=False)
        with counter:
            program.module()(x[:1])
    torch.save(y, sys.argv[3])
    print(json.dumps({"shape": list(y.shape), "flops": counter.get_total_flops()}))
    """
)


@pytest.fixture
def run_fresh(tmp_path: Path):
    """Save ``program``, load and run it on ``x`` in a fresh interpreter; return (output, info)."""

    def run(program: torch.export.ExportedProgram, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        import json

        model, inputs, outputs = tmp_path / "model.pt2", tmp_path / "x.pt", tmp_path / "y.pt"
        torch.export.save(program, model)
        torch.save(x, inputs)
        proc = subprocess.run(
            [sys.executable, "-c", FRESH_LOADER, str(model), str(inputs), str(outputs)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return torch.load(outputs, weights_only=True), json.loads(proc.stdout.strip().splitlines()[-1])

    return run

"""`specprune compress` end to end in a subprocess: progress on stderr, the before/after table on stdout,
core's report, an output that loads in a fresh process; bad files and options exit 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.servers import run_specprune


def _fresh_load(path: Path) -> int:
    """Parameters of the model in ``path``, loaded with plain torch in a new interpreter."""
    code = (
        "import sys, torch\n"
        "m = torch.export.load(sys.argv[1]).module()\n"
        "assert m(torch.randn(3, 3, 8, 8)).shape == (3, 10)\n"
        "print(sum(p.numel() for p in m.parameters()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def test_compress_writes_the_model_the_report_and_the_table(
    model_and_data: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = model_and_data
    out, report_path = tmp_path / "small.pt2", tmp_path / "report.json"
    args = ["compress", str(model), "--data", str(data), "-o", str(out), "--report", str(report_path)]
    result = run_specprune(*args, "--flops-ratio", "0.5", "--eval-fraction", "0.25", "--no-latency")
    assert result.returncode == 0, result.stderr

    table = result.stdout.splitlines()
    assert table[0].split() == ["original", "compressed", "change"]
    assert [line.split()[0] for line in table[1:]] == ["params", "FLOPs", "top-1", "agreement", "latency"]
    assert "\r" not in result.stderr and "saving 100%" in result.stderr.splitlines()
    assert "statistics 0%" in result.stderr.splitlines() and "Traceback" not in result.stderr

    report = json.loads(report_path.read_text())
    original, compressed = report["original"], report["compressed"]
    assert abs(compressed["flops"] / original["flops"] - 0.5) <= 0.05  # a tiny model: coarse steps
    assert report["config"]["flops_ratio"] == 0.5 and report["data"]["evaluation_samples"] == 16
    assert report["formats"] == {"input": "pt2", "output": "pt2"}
    assert f"{original['params'] / 1000:.2f} K" in table[1] and f"{compressed['params']}" in table[1]
    assert _fresh_load(out) == compressed["params"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask

    widths = {layer["name"]: layer["width_after"] for layer in report["layers"]}
    weights = tmp_path / "l1.safetensors"
    again = run_specprune(
        "compress", str(model), "--data", str(data), "-o", str(weights), "--method", "l1",
        "--widths", str(report_path), "--report", str(tmp_path / "l1.json"), "--no-latency",
        "--refit", "independent", "--allocation", "spectrum", "--residual", "keep", "--probe-samples", "64",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    l1 = json.loads((tmp_path / "l1.json").read_text())
    assert {layer["name"]: layer["width_after"] for layer in l1["layers"]} == widths
    assert l1["config"]["method"] == "l1" and l1["formats"]["output"] == "safetensors"
    assert [l1["config"][k] for k in ("refit", "allocation", "residual", "probe_samples")] == [
        "independent",
        "spectrum",
        "keep",
        64,
    ]
    assert weights.read_bytes()[8:9] == b"{"  # safetensors: an 8-byte header length, then JSON


BAD_INPUT = [
    (["missing.pt2", "--data", "{data}", "-o", "{out}"], "missing.pt2: no such file"),
    (["{model}", "--data", "{data}", "-o", "/no/such/dir/out.pt2"], "does not exist"),
    (
        ["{model}", "--data", "{data}", "-o", "{out}", "--flops-ratio", "0.5", "--alpha", "0.9"],
        "not allowed with",
    ),
    (["{model}", "--data", "{data}", "-o", "{out}", "--flops-ratio", "1.5"], "not in (0, 1]"),
    (["{model}", "--data", "{data}", "-o", "{out}", "--widths", "{{conv"], "not valid JSON"),
    (["{model}", "--data", "{data}", "-o", "{tmp}/out.bin"], "no output format has the extension '.bin'"),
    (["{data}", "--data", "{data}", "-o", "{out}"], "data.npz: a zip archive that holds no model"),
    (["{model}", "--data", "{model}", "-o", "{out}"], "model.pt2: "),
    (["{model}", "--data", "{narrow}", "-o", "{out}"], "shape"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_exits_2_with_one_line(
    model_and_data: tuple[Path, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    import numpy as np

    model, data = model_and_data
    narrow = tmp_path / "narrow.npz"
    np.savez(narrow, x=np.zeros((8, 5, 8, 8), dtype=np.float32))
    values = {"model": model, "data": data, "out": tmp_path / "out.pt2", "tmp": tmp_path, "narrow": narrow}
    result = run_specprune("compress", *[arg.format(**values) for arg in args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("specprune compress: error: "), result.stderr
    assert message in errors[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "out.pt2").exists()


def test_compress_reads_data_by_file_and_http_uri(model_and_data: tuple[Path, Path], tmp_path: Path) -> None:
    import functools
    import http.server
    import threading

    model, data = model_and_data
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(data.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for source in (data.as_uri(), f"http://127.0.0.1:{server.server_port}/{data.name}"):
            out = tmp_path / "small.pt2"
            result = run_specprune(
                "compress",
                str(model),
                "--data",
                source,
                "-o",
                str(out),
                "--flops-ratio",
                "0.7",
                "--no-latency",
            )
            assert result.returncode == 0, result.stderr
            assert out.is_file()
            out.unlink()
        missing = run_specprune(
            "compress",
            str(model),
            "--data",
            f"http://127.0.0.1:{server.server_port}/nope.npz",
            "-o",
            str(tmp_path / "x.pt2"),
        )
        assert missing.returncode == 2 and "could not fetch" in missing.stderr
    finally:
        server.shutdown()


def test_compress_reads_an_onnx_model_with_its_external_data(
    model_and_data: tuple[Path, Path], tmp_path: Path
) -> None:
    """``torch.onnx.export`` writes the weights beside the model by default; the command reads them."""
    import torch

    model, data = model_and_data
    onnx_path = tmp_path / "model.onnx"
    program = torch.export.load(model)  # a test fixture of our own, not an upload
    torch.onnx.export(program, (), str(onnx_path), dynamo=True, external_data=True)
    assert (tmp_path / "model.onnx.data").is_file()
    out = tmp_path / "small.pt2"
    result = run_specprune(
        "compress",
        str(onnx_path),
        "--data",
        str(data),
        "-o",
        str(out),
        "--flops-ratio",
        "0.6",
        "--no-latency",
    )
    assert result.returncode == 0, result.stderr
    assert _fresh_load(out) > 0

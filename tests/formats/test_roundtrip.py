"""Every output format: written, recognised from its content, read back, numerically the original,
and runnable in a fresh process with only its standard runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.export import ExportedProgram

from core.errors import CalibrationError
from core.formats import (
    ExampleInputRequiredError,
    UnsupportedFormatError,
    detect_format,
    format_from_extension,
    load_model,
    save_model,
    save_safetensors,
)

# Names that lie about the content: detection must not care.
MISLEADING_NAMES = {"pt2": "model.onnx", "onnx": "weights.pt", "torchscript": "model.pt2"}
TOLERANCE = {"pt2": 1e-5, "torchscript": 1e-5, "onnx": 1e-4}


@pytest.fixture(params=["convnet", "transformer"])
def case(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


def _outputs(program: ExportedProgram, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return program.module()(x)


@pytest.mark.parametrize("fmt", ["pt2", "onnx", "torchscript"])
def test_round_trip_keeps_numbers_and_shapes(case, fmt: str, tmp_path: Path) -> None:
    path = tmp_path / MISLEADING_NAMES[fmt]
    save_model(case.program, path, fmt)

    assert detect_format(path) == fmt
    loaded = load_model(path)

    feature_shape = tuple(case.example.shape[1:])
    assert loaded.format == fmt
    assert loaded.input_shape == (None, *feature_shape)
    assert loaded.output_shape is not None and loaded.output_shape[0] is None
    assert loaded.dynamic_batch
    for batch in (1, 4):
        x = torch.randn(batch, *feature_shape)
        got, want = _outputs(loaded.program, x), case.expected(x)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=TOLERANCE[fmt], atol=TOLERANCE[fmt])


def test_loaded_programs_expose_standard_layers(convnet, tmp_path: Path) -> None:
    """What the pruning engine looks for: aten.conv2d / aten.linear calls on parameters."""
    for fmt in ("pt2", "onnx", "torchscript"):
        path = tmp_path / f"model.{fmt}"
        save_model(convnet.program, path, fmt)
        program = load_model(path).program
        targets = {n.target for n in program.graph.nodes if n.op == "call_function"}
        assert torch.ops.aten.conv2d.default in targets, fmt
        assert torch.ops.aten.linear.default in targets, fmt
        parameters = set(program.graph_signature.parameters)
        assert {"conv1.weight", "conv2.weight", "fc.weight", "fc.bias"} <= parameters, (fmt, parameters)


def test_outputs_run_in_fresh_processes(case, tmp_path: Path, fresh_python) -> None:
    for fmt, name in (("pt2", "model.pt2"), ("onnx", "model.onnx"), ("torchscript", "model.pt")):
        save_model(case.program, tmp_path / name, fmt)
    save_safetensors(case.program, tmp_path / "weights.safetensors")
    x = torch.randn(5, *case.example.shape[1:])  # a batch size the export never saw
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "want.npy", case.expected(x).numpy())

    torch_side = fresh_python(
        """
        import json, numpy as np, torch
        from safetensors.torch import load_file
        x = torch.from_numpy(np.load("x.npy")); want = np.load("want.npy")
        def report(out):
            out = out.detach().numpy()
            return {"shape": list(out.shape), "error": float(np.abs(out - want).max())}
        result = {
            "pt2": report(torch.export.load("model.pt2").module()(x)),
            "torchscript": report(torch.jit.load("model.pt")(x)),
            "tensors": sorted(load_file("weights.safetensors")),
        }
        print(json.dumps(result))
        """,
        tmp_path,
    )
    onnx_side = fresh_python(
        """
        import json, sys, numpy as np, onnxruntime as ort
        x = np.load("x.npy"); want = np.load("want.npy")
        session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {session.get_inputs()[0].name: x})
        print(json.dumps({"shape": list(out.shape), "error": float(np.abs(out - want).max()),
                          "input": session.get_inputs()[0].shape, "torch_imported": "torch" in sys.modules}))
        """,
        tmp_path,
    )
    want_shape = [5, *case.expected(x).shape[1:]]
    for fmt in ("pt2", "torchscript"):
        assert torch_side[fmt]["shape"] == want_shape
        assert torch_side[fmt]["error"] < 1e-5
    assert onnx_side["shape"] == want_shape
    assert onnx_side["error"] < 1e-4
    assert onnx_side["input"] == ["batch", *case.example.shape[1:]]
    assert onnx_side["torch_imported"] is False
    assert torch_side["tensors"] == sorted(case.program.state_dict)


def test_safetensors_holds_every_weight(convnet, tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_model(convnet.program, path, "safetensors")
    written = load_file(path)
    assert set(written) == set(convnet.program.state_dict)
    assert "bn1.running_mean" in written and "conv1.weight" in written
    for name, tensor in convnet.program.state_dict.items():
        torch.testing.assert_close(written[name], tensor.detach())


def test_static_batch_stays_static(mlp, tmp_path: Path) -> None:
    static = torch.export.export(mlp.model, (mlp.example,))
    for fmt in ("pt2", "onnx", "torchscript"):
        path = tmp_path / f"static.{fmt}"
        save_model(static, path, fmt)
        loaded = load_model(path, example_input=mlp.example)
        assert loaded.input_shape == tuple(mlp.example.shape), fmt
        torch.testing.assert_close(
            _outputs(loaded.program, mlp.example), mlp.expected(mlp.example), rtol=1e-4, atol=1e-4
        )


def test_torchscript_from_torch_jit_save(convnet, mlp, tmp_path: Path) -> None:
    """A user's own traced archive: input shape from the example (CNN) or the first linear (MLP)."""
    traced = torch.jit.trace(convnet.model, convnet.example)
    torch.jit.save(traced, tmp_path / "user_cnn.pt")
    with pytest.raises(ExampleInputRequiredError):
        load_model(tmp_path / "user_cnn.pt")  # a traced archive does not record its input shape
    loaded = load_model(tmp_path / "user_cnn.pt", example_input=convnet.example[:1])
    assert loaded.input_shape == (None, 3, 16, 16)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(_outputs(loaded.program, x), convnet.expected(x), rtol=1e-5, atol=1e-5)

    scripted = torch.jit.script(mlp.model)
    torch.jit.save(scripted, tmp_path / "user_mlp.pt")
    loaded = load_model(tmp_path / "user_mlp.pt")
    assert loaded.input_shape == (None, 12)
    torch.testing.assert_close(
        _outputs(loaded.program, mlp.example), mlp.expected(mlp.example), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("out.pt2", "pt2"),
        ("out.ONNX", "onnx"),
        ("out.pt", "torchscript"),
        ("out.ts", "torchscript"),
        ("out.torchscript", "torchscript"),
        ("out.safetensors", "safetensors"),
    ],
)
def test_format_from_extension(name: str, fmt: str) -> None:
    assert format_from_extension(name) == fmt


def test_format_from_unknown_extension_is_refused() -> None:
    with pytest.raises(UnsupportedFormatError, match=r"\.h5"):
        format_from_extension("out.h5")


def test_import_is_lean(fresh_python) -> None:
    """Importing the formats package pulls in neither the web stack nor onnxruntime, nor CUDA."""
    root = Path(__file__).resolve().parents[2]
    result = fresh_python(
        f"""
        import json, sys
        sys.path.insert(0, {str(root)!r})
        import torch, core.formats
        heavy = sorted(m for m in ("fastapi", "sqlalchemy", "celery", "onnxruntime") if m in sys.modules)
        print(json.dumps({{"heavy": heavy, "cuda": torch.cuda.is_initialized()}}))
        """,
        root,
    )
    assert result == {"heavy": [], "cuda": False}


def test_example_input_that_does_not_fit_is_a_calibration_error(convnet, tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    save_model(convnet.program, path, "pt2")
    with pytest.raises(
        CalibrationError, match=r"takes shape \(N, 3, 16, 16\), the data has shape \(2, 3, 32, 32\)"
    ):
        load_model(path, example_input=torch.randn(2, 3, 32, 32))
    assert load_model(path, example_input=torch.randn(7, 3, 16, 16)).dynamic_batch


def test_a_file_its_runtime_refuses_is_an_export_error(tmp_path: Path) -> None:
    """onnxruntime has no bfloat16 convolution on CPU: the ONNX file cannot be verified, so it is not
    handed out; pt2 is."""
    from core.formats import ExportError

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).to(torch.bfloat16).eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16)
    program = torch.export.export(model, (x,))
    with pytest.raises(ExportError, match=r"does not load in its runtime.*Ask for pt2"):
        save_model(program, tmp_path / "model.onnx", "onnx", inputs=[x])
    assert not (tmp_path / "model.onnx").exists()
    save_model(program, tmp_path / "model.pt2", "pt2", inputs=[x])
    assert torch.equal(load_model(tmp_path / "model.pt2").program.module()(x), model(x))

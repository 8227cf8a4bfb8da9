"""Format detection from content, and a clear refusal for everything that is not a model we accept."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from core.formats import (
    CorruptModelError,
    ModelFileError,
    UnsupportedFormatError,
    detect_format,
    load_model,
    save_model,
)
from tests.formats.conftest import write_zip


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _refusal(path: Path) -> ModelFileError:
    """detect_format and load_model agree on the refusal; return it."""
    with pytest.raises(ModelFileError) as detected:
        detect_format(path)
    with pytest.raises(type(detected.value)):
        load_model(path)
    return detected.value


def test_pickled_module_is_refused_with_export_hint(convnet, tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"  # a misleading name: the content decides
    torch.save(convnet.model, path)
    error = _refusal(path)
    assert isinstance(error, UnsupportedFormatError) and error.code == "unsupported_format"
    assert "nn.Module" in error.reason
    assert "torch.export.save(torch.export.export(model.eval(), (example,))" in str(error)


def test_legacy_pickled_module_is_refused(convnet, tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save(convnet.model, path, _use_new_zipfile_serialization=False)
    assert "nn.Module" in _refusal(path).reason


@pytest.mark.parametrize("legacy", [False, True])
def test_state_dict_is_refused(convnet, tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "weights.pth"
    torch.save(convnet.model.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    error = _refusal(path)
    assert isinstance(error, UnsupportedFormatError)
    assert "state dict" in error.reason
    assert "load_state_dict" in error.hint


def test_keras_h5_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "model.h5", b"\x89HDF\r\n\x1a\n" + bytes(2048))
    error = _refusal(path)
    assert "HDF5" in error.reason and "tf2onnx" in error.hint


def test_keras_v3_archive_is_refused(tmp_path: Path) -> None:
    path = write_zip(
        tmp_path / "model.keras",
        {"config.json": b"{}", "metadata.json": b"{}", "model.weights.h5": b"\x89HDF"},
    )
    assert "Keras" in _refusal(path).reason


def test_saved_model_in_zip_is_refused(tmp_path: Path) -> None:
    entries = {"export/saved_model.pb": b"\x08\x01", "export/variables/variables.index": b"x"}
    error = _refusal(write_zip(tmp_path / "model.zip", entries))
    assert "SavedModel" in error.reason and "tf2onnx" in error.hint


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_saved_model_in_tar_is_refused(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "model.tar"
    with tarfile.open(path, mode) as archive:
        for name, data in {
            "export/saved_model.pb": b"\x08\x01",
            "export/variables/variables.index": b"x",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    assert "SavedModel" in _refusal(path).reason


def test_saved_model_protobuf_is_refused(tmp_path: Path) -> None:
    meta_info = b"\x12\x06" + b"serve" + b"\x00" + b"tensorflow_version 2.15.0"
    path = _write(tmp_path / "saved_model.pb", b"\x08\x01\x12" + bytes([len(meta_info)]) + meta_info)
    assert "TensorFlow" in _refusal(path).reason


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "model.onnx", random.Random(0).randbytes(4096))
    error = _refusal(path)
    assert error.code == "unsupported_format"
    assert "none of the accepted formats" in error.reason


def test_empty_file_is_refused(tmp_path: Path) -> None:
    error = _refusal(_write(tmp_path / "model.pt2", b""))
    assert error.code == "unsupported_format" and "empty" in error.reason


def test_safetensors_and_numpy_are_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    assert "weights alone" in _refusal(tmp_path / "w.safetensors").reason
    np.save(tmp_path / "w.npy", np.zeros(3))
    assert "NumPy" in _refusal(tmp_path / "w.npy").reason


def test_truncated_pt2_is_corrupt(convnet, tmp_path: Path) -> None:
    whole = tmp_path / "model.pt2"
    save_model(convnet.program, whole, "pt2", verify=False)
    data = whole.read_bytes()
    error = _refusal(_write(tmp_path / "cut.pt2", data[: len(data) // 2]))
    assert isinstance(error, CorruptModelError) and error.code == "corrupt_model"


def test_truncated_onnx_is_corrupt(convnet, tmp_path: Path) -> None:
    whole = tmp_path / "model.onnx"
    save_model(convnet.program, whole, "onnx", verify=False)
    data = whole.read_bytes()
    error = _refusal(_write(tmp_path / "cut.onnx", data[: int(len(data) * 0.6)]))
    assert isinstance(error, CorruptModelError) and "ONNX" in error.reason


def test_truncated_torchscript_is_corrupt(convnet, tmp_path: Path) -> None:
    whole = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(convnet.model, convnet.example), whole)
    data = whole.read_bytes()
    assert isinstance(_refusal(_write(tmp_path / "cut.pt", data[: len(data) - 100])), CorruptModelError)


def test_onnx_with_external_data_is_refused(tmp_path: Path) -> None:
    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 4])
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../etc/weights.bin")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    assert detect_format(path) == "onnx"
    with pytest.raises(UnsupportedFormatError, match="external") as refused:
        load_model(path)
    assert "save_as_external_data=False" in refused.value.hint


def test_torch_package_is_refused(tmp_path: Path) -> None:
    entries = {
        "pkg/.data/version": b"6",
        "pkg/.data/extern_modules": b"",
        "pkg/model/__init__.py": b"import os",
    }
    assert "torch.package" in _refusal(write_zip(tmp_path / "model.pt", entries)).reason


def test_aot_inductor_package_is_refused(tmp_path: Path) -> None:
    entries = {
        "m/archive_format": b"pt2",
        "m/archive_version": b"0",
        "m/data/aotinductor/model/model.so": b"\x7fELF",
    }
    assert "AOTInductor" in _refusal(write_zip(tmp_path / "model.pt2", entries)).reason


def test_onnx_detection_needs_a_graph(tmp_path: Path) -> None:
    model = onnx.ModelProto(ir_version=8)
    path = _write(tmp_path / "model.onnx", model.SerializeToString() + b"\x12\x03abc")
    assert isinstance(_refusal(path), CorruptModelError)

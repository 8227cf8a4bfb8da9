"""Model formats through the service: ONNX and TorchScript in, any format out, the weights alone as
safetensors; clearly wrong files refused at submission with a hint; files crafted to run code when
loaded never run it (their marker file never appears)."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.service.conftest import Api, assert_problem
from tests.service.files import FAST, cnn, random_data, run_job, save_onnx, save_pt2, save_torchscript, submit


@pytest.fixture
def formats_api(api_factory) -> Api:
    return api_factory(**FAST)


def _torch_save(obj: object, **kwargs: object) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _saved_model_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in {
            "export/saved_model.pb": b"\x08\x01\x12\x00",
            "export/variables/variables.index": b"x",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _refused_files(tmp_path: Path) -> dict[str, tuple[bytes, str, str]]:
    """Files that are no model in an accepted format: what the refusal must say it is, and how to do better."""
    model = cnn()
    pt2 = save_pt2(model, (2, 3, 8, 8), tmp_path / "ok.pt2").read_bytes()
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    export, convert = "torch.export.save", "tf2onnx"
    return {
        "pickled nn.Module": (_torch_save(model), "nn.Module", export),
        "bare state dict": (_torch_save(model.state_dict()), "state dict", "load_state_dict"),
        "legacy torch.save": (
            _torch_save(model.state_dict(), _use_new_zipfile_serialization=False),
            "pickle",
            export,
        ),
        "Keras .h5": (b"\x89HDF\r\n\x1a\n" + b"\x00" * 600, "HDF5", convert),
        "Keras .keras": (
            _zip({"config.json": b"{}", "metadata.json": b"{}", "model.weights.h5": b""}),
            "Keras",
            convert,
        ),
        "TF SavedModel zip": (
            _zip({"m/saved_model.pb": b"\x08\x01", "m/variables/v.index": b""}),
            "SavedModel",
            convert,
        ),
        "TF SavedModel tar.gz": (_saved_model_tar(), "SavedModel", convert),
        "TFLite": (b"\x1c\x00\x00\x00TFL3" + b"\x00" * 100, "TensorFlow Lite", convert),
        "safetensors weights": (
            len(header).to_bytes(8, "little") + header + b"\x00" * 4,
            "weights alone",
            export,
        ),
        "npz data": (random_data(4), "NumPy", export),
        "empty": (b"", "empty", export),
        "unknown bytes": (b"GIF89a" + bytes(range(256)) * 4, "none of the accepted formats", export),
        "truncated pt2": (pt2[: len(pt2) // 2], "truncated", "complete file"),
        "two ONNX files zipped": (_zip({"a.onnx": b"x", "b.onnx": b"x"}), "2 ONNX files", "one .onnx"),
    }


def test_clearly_wrong_model_files_are_refused_at_submission_with_a_hint(
    sqlite_api: Api, tmp_path: Path
) -> None:
    for case, (content, what, how) in _refused_files(tmp_path).items():
        body = assert_problem(
            submit(sqlite_api, content, dataset=random_data(8)), 415, "unsupported-model-format"
        )
        assert what in body["detail"], (case, body["detail"])
        assert how in body["hint"] and body["hint"] in body["detail"], (case, body["hint"])
    assert sqlite_api.stored_keys("tenants") == []


def test_onnx_in_onnx_out_and_the_weights_alone(formats_api: Api, tmp_path: Path) -> None:
    import onnxruntime
    from safetensors.numpy import load as load_safetensors

    onnx_file = save_onnx(cnn(), (2, 3, 8, 8), tmp_path / "net.onnx")
    response = submit(formats_api, onnx_file, dataset=random_data(64), name="net.onnx")
    assert response.status_code == 202 and response.json()["model"]["format"] == "onnx"
    outcome, job = run_job(formats_api, response.json()["id"])
    assert outcome == "succeeded", job["error"]
    url = f"/jobs/{job['id']}/model"
    model = formats_api.client.get(url)
    assert 'filename="net.pruned.onnx"' in model.headers["content-disposition"]
    session = onnxruntime.InferenceSession(model.content, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape == (5, 10)
    weights = formats_api.client.get(url, params={"format": "safetensors"})
    assert (
        weights.status_code == 200
        and 'filename="net.pruned.safetensors"' in weights.headers["content-disposition"]
    )
    assert weights.headers["etag"] == f'"{__import__("hashlib").sha256(weights.content).hexdigest()}"'
    tensors = load_safetensors(weights.content)
    kept = {layer["name"]: layer["width_after"] for layer in job["result"]["layers"]}
    assert kept and all(tensors[f"{name}.weight"].shape[0] == width for name, width in kept.items()), (
        kept,
        list(tensors),
    )
    assert formats_api.client.get(url, params={"variant": "pruned"}).content == model.content  # no recovery
    assert_problem(formats_api.client.get(url, params={"format": "pt2"}), 404, "not-found")
    assert_problem(formats_api.client.get(url, params={"format": "h5"}), 422, "validation-error")


def test_onnx_zipped_with_its_external_data(formats_api: Api, tmp_path: Path) -> None:
    """``torch.onnx.export`` writes the weights beside the model by default: the two, zipped, are one
    upload."""
    import onnxruntime

    folder = tmp_path / "export"
    folder.mkdir()
    save_onnx(cnn(), (2, 3, 8, 8), folder / "net.onnx", external_data=True)
    assert (folder / "net.onnx.data").is_file()
    archive = _zip({f"net/{p.name}": p.read_bytes() for p in folder.iterdir()})
    response = submit(formats_api, archive, dataset=random_data(64), name="net.zip")
    assert response.status_code == 202 and response.json()["model"]["format"] == "onnx"
    outcome, job = run_job(formats_api, response.json()["id"])
    assert outcome == "succeeded", job["error"]
    model = formats_api.client.get(f"/jobs/{job['id']}/model")
    assert 'filename="net.pruned.onnx"' in model.headers["content-disposition"]
    session = onnxruntime.InferenceSession(model.content, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((5, 3, 8, 8)).astype(np.float32)
    assert session.run(None, {session.get_inputs()[0].name: x})[0].shape == (5, 10)


def test_torchscript_in_pt2_out(formats_api: Api, tmp_path: Path) -> None:
    import torch

    scripted = save_torchscript(cnn(), (2, 3, 8, 8), tmp_path / "net.pt")
    response = submit(
        formats_api, scripted, dataset=random_data(64), name="net.pt", config='{"output_format": "pt2"}'
    )
    assert response.json()["model"]["format"] == "torchscript"
    outcome, job = run_job(formats_api, response.json()["id"])
    assert outcome == "succeeded", job["error"]
    download = formats_api.client.get(f"/jobs/{job['id']}/model")
    assert 'filename="net.pruned.pt2"' in download.headers["content-disposition"]
    path = tmp_path / "out.pt2"
    path.write_bytes(download.content)  # our own output: plain torch.export.load runs it
    program = torch.export.load(str(path))
    assert tuple(program.module()(torch.randn(3, 3, 8, 8)).shape) == (3, 10)
    report = formats_api.client.get(f"/jobs/{job['id']}/report").json()
    assert report["formats"] == {"input": "torchscript", "output": "pt2"}


class _CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def _rewrite(source: bytes, replace: dict[str, bytes]) -> bytes:
    """A torch zip archive with entries (by path under its top folder) replaced."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(source)) as old, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as new:
        prefix = old.namelist()[0].split("/", 1)[0] + "/"
        for info in old.infolist():
            new.writestr(info.filename, replace.get(info.filename[len(prefix) :], old.read(info.filename)))
    return out.getvalue()


def _crafted_pt(marker: Path) -> bytes:
    """A torch.save archive whose data.pkl opens the marker when unpickled."""
    import torch

    return _rewrite(
        _torch_save({"w": torch.zeros(2)}), {"data.pkl": pickle.dumps(_CreatesMarker(marker), protocol=2)}
    )


def _crafted_pt2(pt2: bytes, marker: Path) -> bytes:
    """A .pt2 whose first weight is declared pickled and holds the payload (torch.export.load runs it)."""
    with zipfile.ZipFile(io.BytesIO(pt2)) as archive:
        prefix = archive.namelist()[0].split("/", 1)[0] + "/"
        config = json.loads(archive.read(prefix + "data/weights/model_weights_config.json"))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    return _rewrite(
        pt2,
        {
            "data/weights/model_weights_config.json": json.dumps(config).encode(),
            f"data/weights/{first['path_name']}": pickle.dumps(_CreatesMarker(marker), protocol=2),
        },
    )


def test_crafted_pickles_never_run(formats_api: Api, tmp_path: Path) -> None:
    pt_marker, pt2_marker = tmp_path / "ran_pt", tmp_path / "ran_pt2"
    crafted_pt = tmp_path / "model.pt"
    crafted_pt.write_bytes(_crafted_pt(pt_marker))
    plain = save_pt2(cnn(), (2, 3, 8, 8), tmp_path / "plain.pt2").read_bytes()
    crafted_pt2 = tmp_path / "model.pt2"
    crafted_pt2.write_bytes(_crafted_pt2(plain, pt2_marker))
    unsafe = (  # the payloads are live: loading the files the unsafe way runs them
        "import sys, torch\n"
        "for load in (lambda: torch.load(sys.argv[1], weights_only=False), lambda: torch.export.load(sys.argv[2])):\n"
        "    try:\n        load()\n    except Exception:\n        pass\n"
    )
    subprocess.run(
        [sys.executable, "-c", unsafe, str(crafted_pt), str(crafted_pt2)], capture_output=True, timeout=120
    )
    assert pt_marker.exists() and pt2_marker.exists(), (
        "the crafted payloads did not run even when loaded unsafely"
    )
    pt_marker.unlink()
    pt2_marker.unlink()

    refused = assert_problem(
        submit(formats_api, crafted_pt, dataset=random_data(16), name="model.pt"),
        415,
        "unsupported-model-format",
    )
    assert "never unpickled" in refused["detail"]
    response = submit(formats_api, crafted_pt2, dataset=random_data(16))
    assert response.status_code == 202  # its directory is a pt2 archive's; the sandbox reads the rest
    outcome, job = run_job(formats_api, response.json()["id"])
    assert outcome == "failed" and job["error"]["code"] == "unsupported_format", job["error"]
    assert "pickle" in job["error"]["message"]
    assert not pt_marker.exists() and not pt2_marker.exists()


def test_a_token_model_calibrates_on_integer_ids(formats_api: Api, tmp_path: Path) -> None:
    """A language model takes token ids: an ``.npz`` whose ``x`` holds integers calibrates it as they
    are (an image model given them fails with the reason); uint8 ``x`` (raw pixels) fails as such."""
    import torch
    from torch import nn

    from tests.service.files import npz_bytes

    class TokenClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.fc, self.head = nn.Embedding(50, 16), nn.Linear(16, 32), nn.Linear(32, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.fc(self.embed(ids))).mean(1))

    ids = torch.randint(0, 50, (2, 12))
    program = torch.export.export(
        TokenClassifier().eval(), (ids,), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(tmp_path / "tokens.pt2"))
    rng = np.random.default_rng(0)
    data = npz_bytes(rng.integers(0, 50, (128, 12)).astype(np.int64), rng.integers(0, 4, 128))
    response = submit(formats_api, tmp_path / "tokens.pt2", dataset=data, config='{"flops_ratio": 0.6}')
    assert response.status_code == 202, response.text
    outcome, job = run_job(formats_api, response.json()["id"])
    assert outcome == "succeeded", job["error"]
    assert [layer["name"] for layer in job["result"]["layers"]] == ["fc"]
    path = tmp_path / "out.pt2"
    path.write_bytes(formats_api.client.get(f"/jobs/{job['id']}/model").content)
    assert torch.export.load(str(path)).module()(torch.randint(0, 50, (3, 12))).shape == (3, 4)

    image_model = save_pt2(cnn(), (2, 3, 8, 8), tmp_path / "cnn.pt2")
    ints = npz_bytes(rng.integers(0, 50, (64, 3, 8, 8)).astype(np.int64))
    outcome, job = run_job(formats_api, submit(formats_api, image_model, dataset=ints).json()["id"])
    assert outcome == "failed" and "takes torch.float32, the data is torch.int64" in job["error"]["message"]
    pixels = npz_bytes(rng.integers(0, 255, (64, 3, 8, 8)).astype(np.uint8))
    outcome, job = run_job(formats_api, submit(formats_api, image_model, dataset=pixels).json()["id"])
    assert outcome == "failed" and job["error"]["code"] == "invalid_dataset", job["error"]
    assert "already preprocessed" in job["error"]["message"]

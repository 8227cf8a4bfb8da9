"""Files crafted to run code when loaded: the code never runs, the file is refused.

Each payload creates a marker file when it runs. Every test first proves the payload is live by
loading the file the unsafe way in a separate process (the marker appears), then loads it with
``core.formats`` in this process and checks that the marker never appears.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from core.formats import (
    UnsupportedFormatError,
    detect_format,
    load_model,
    save_model,
)


class _CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _payload(marker: Path) -> bytes:
    return pickle.dumps(_CreatesMarker(marker), protocol=2)


def _rewrite(
    source: Path, target: Path, replace: dict[str, bytes], add: dict[str, bytes] | None = None
) -> Path:
    """Copy a torch zip archive, replacing entries (by path under the top folder) and adding some."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        prefix = old.namelist()[0].split("/", 1)[0] + "/"
        for info in old.infolist():
            relative = info.filename[len(prefix) :]
            new.writestr(info.filename, replace.get(relative, old.read(info.filename)))
        for relative, data in (add or {}).items():
            new.writestr(prefix + relative, data)
    return target


def _entry(archive_path: Path, relative: str) -> bytes:
    with zipfile.ZipFile(archive_path) as archive:
        prefix = archive.namelist()[0].split("/", 1)[0] + "/"
        return archive.read(prefix + relative)


def _prove_live(fresh_python, tmp_path: Path, marker: Path, unsafe_load: str) -> None:
    """Run ``unsafe_load`` in a fresh process and check the payload ran there; then remove the marker."""
    result = fresh_python(
        f"""
        import json, os, pickle, zipfile, torch
        try:
            {unsafe_load}
        except Exception:
            pass
        print(json.dumps({{"ran": os.path.exists({str(marker)!r})}}))
        """,
        tmp_path,
    )
    assert result["ran"], "the crafted payload did not run even when loaded unsafely"
    marker.unlink()


def _torch_save_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_pickle_payload_in_pt_never_runs(tmp_path: Path, fresh_python) -> None:
    marker = tmp_path / "ran_pt"
    plain = tmp_path / "plain.pt"
    plain.write_bytes(_torch_save_bytes({"w": torch.zeros(2)}))
    crafted = _rewrite(plain, tmp_path / "model.pt", {"data.pkl": _payload(marker)})
    _prove_live(fresh_python, tmp_path, marker, f"torch.load({str(crafted)!r}, weights_only=False)")

    with pytest.raises(UnsupportedFormatError, match="pickled Python object"):
        detect_format(crafted)
    with pytest.raises(UnsupportedFormatError):
        load_model(crafted)
    assert not marker.exists()


@pytest.fixture
def plain_pt2(convnet, tmp_path: Path) -> Path:
    path = tmp_path / "plain.pt2"
    save_model(convnet.program, path, "pt2", verify=False)
    return path


def _evil_sample_inputs(plain: Path, target: Path, marker: Path) -> Path:
    inner = tmp = target.with_suffix(".inner")
    tmp.write_bytes(_torch_save_bytes((torch.zeros(1),)))
    evil_inner = _rewrite(inner, target.with_suffix(".evil_inner"), {"data.pkl": _payload(marker)})
    return _rewrite(plain, target, {"data/sample_inputs/model.pt": evil_inner.read_bytes()})


def _pickled_weight(plain: Path, target: Path, marker: Path) -> Path:
    config = json.loads(_entry(plain, "data/weights/model_weights_config.json"))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    replace = {
        "data/weights/model_weights_config.json": json.dumps(config).encode(),
        f"data/weights/{first['path_name']}": _payload(marker),
    }
    return _rewrite(plain, target, replace)


def _opaque_constant(plain: Path, target: Path, marker: Path) -> Path:
    config = json.loads(_entry(plain, "data/constants/model_constants_config.json"))
    config["config"]["evil"] = {
        "path_name": "opaque_obj_0",
        "is_param": False,
        "use_pickle": True,
        "tensor_meta": None,
    }
    return _rewrite(
        plain,
        target,
        {"data/constants/model_constants_config.json": json.dumps(config).encode()},
        {"data/constants/opaque_obj_0": _payload(marker)},
    )


def _program_json_edit(plain: Path, target: Path, marker: Path, edit: str) -> Path:
    document = json.loads(_entry(plain, "models/model.json"))
    code = f"__import__('builtins').open({str(marker)!r}, 'w')"
    if edit == "sympy_expression":
        _replace_first(document, "expr_str", f"{code} and Symbol('s77', positive=True, integer=True)")
    else:
        document["guards_code"] = [f"{code} is not None"]
    return _rewrite(plain, target, {"models/model.json": json.dumps(document).encode()})


def _replace_first(node: object, key: str, value: str) -> bool:
    if isinstance(node, dict):
        if key in node and isinstance(node[key], str):
            node[key] = value
            return True
        return any(_replace_first(v, key, value) for v in node.values())
    if isinstance(node, list):
        return any(_replace_first(v, key, value) for v in node)
    return False


@pytest.mark.parametrize(
    "variant", ["sample_inputs", "pickled_weight", "opaque_constant", "sympy_expression"]
)
def test_payloads_in_pt2_never_run(variant: str, plain_pt2: Path, tmp_path: Path, fresh_python) -> None:
    marker = tmp_path / f"ran_{variant}"
    target = tmp_path / "model.pt2"
    if variant == "sample_inputs":
        crafted = _evil_sample_inputs(plain_pt2, target, marker)
    elif variant == "pickled_weight":
        crafted = _pickled_weight(plain_pt2, target, marker)
    elif variant == "opaque_constant":
        crafted = _opaque_constant(plain_pt2, target, marker)
    else:
        crafted = _program_json_edit(plain_pt2, target, marker, variant)
    _prove_live(fresh_python, tmp_path, marker, f"torch.export.load({str(crafted)!r})")

    with pytest.raises(UnsupportedFormatError):
        detect_format(crafted)
    with pytest.raises(UnsupportedFormatError):
        load_model(crafted)
    assert not marker.exists()


def test_guard_code_in_pt2_is_never_executed(convnet, plain_pt2: Path, tmp_path: Path, fresh_python) -> None:
    """Guards are Python source that ExportedProgram.module() passes to exec; ours drops them."""
    marker = tmp_path / "ran_guards"
    crafted = _program_json_edit(plain_pt2, tmp_path / "model.pt2", marker, "guards_code")
    _prove_live(
        fresh_python,
        tmp_path,
        marker,
        f"torch.export.load({str(crafted)!r}).module()(torch.ones(2, 3, 16, 16))",
    )

    loaded = load_model(crafted)
    with torch.no_grad():
        outputs = loaded.program.module()(convnet.example)
    torch.testing.assert_close(outputs, convnet.expected(convnet.example))
    assert not marker.exists()


def test_pt2_calling_a_non_aten_function_is_refused(plain_pt2: Path, tmp_path: Path) -> None:
    document = json.loads(_entry(plain_pt2, "models/model.json"))
    nodes = document["graph_module"]["graph"]["nodes"]
    relu = next(n for n in nodes if n["target"] == "torch.ops.aten.relu.default")
    relu["target"] = "torch.os.system"
    crafted = _rewrite(
        plain_pt2, tmp_path / "model.pt2", {"models/model.json": json.dumps(document).encode()}
    )
    with pytest.raises(UnsupportedFormatError, match=r"torch\.os\.system"):
        load_model(crafted)


def test_pickle_payload_in_torchscript_never_runs(convnet, tmp_path: Path, fresh_python) -> None:
    marker = tmp_path / "ran_ts"
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.trace(convnet.model, convnet.example), plain)
    crafted = _rewrite(plain, tmp_path / "model.pt", {"data.pkl": _payload(marker)})
    read_pickle = f"pickle.loads(zipfile.ZipFile({str(crafted)!r}).read('plain/data.pkl'))"
    _prove_live(fresh_python, tmp_path, marker, read_pickle)

    with pytest.raises(UnsupportedFormatError, match=r"names Python callables \(io\.open\)"):
        detect_format(crafted)
    with pytest.raises(UnsupportedFormatError):
        load_model(crafted, example_input=convnet.example)
    assert not marker.exists()


class _SetstateWritesFile(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(4))
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool, str]:
        return (self.scale, self.training, self.marker)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool, str]) -> None:
        self.scale = state[0]
        self.training = state[1]
        self.marker = state[2]
        torch.save(torch.zeros(1), self.marker)


class _ForwardWritesFile(torch.nn.Module):
    def __init__(self, marker: str) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(4))
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.marker)
        return x * self.scale


@pytest.mark.parametrize(
    ("module_class", "unsafe_use", "reason", "detected"),
    [
        (_SetstateWritesFile, "torch.jit.load(PATH)", "__setstate__", False),
        (_ForwardWritesFile, "torch.jit.load(PATH)(torch.ones(2, 4))", "aten::save", True),
    ],
)
def test_torchscript_code_with_side_effects_never_runs(
    module_class: type[torch.nn.Module],
    unsafe_use: str,
    reason: str,
    detected: bool,
    tmp_path: Path,
    fresh_python,
) -> None:
    """``__setstate__`` is refused from the sources before loading; ``aten::save`` in ``forward`` from
    the loaded graph before anything runs."""
    marker = tmp_path / "ran_script"
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(module_class(str(marker))), path)
    _prove_live(fresh_python, tmp_path, marker, unsafe_use.replace("PATH", repr(str(path))))

    if detected:
        assert detect_format(path) == "torchscript"
    else:
        with pytest.raises(UnsupportedFormatError, match=reason):
            detect_format(path)
    with pytest.raises(UnsupportedFormatError, match=reason):
        load_model(path, example_input=torch.ones(2, 4))
    assert not marker.exists()


def test_pt2_importing_modules_through_its_specs_is_refused(plain_pt2: Path, tmp_path: Path) -> None:
    """A defaultdict node in a pytree spec names a module the loader would import."""
    document = json.loads(_entry(plain_pt2, "models/model.json"))
    signature = document["graph_module"]["module_call_graph"][0]["signature"]
    context = {"default_factory_module": "antigravity", "default_factory_name": "geohash", "dict_context": []}
    leaf = {"type": None, "context": None, "children_spec": []}
    spec = {"type": "collections.defaultdict", "context": json.dumps(context), "children_spec": [leaf]}
    signature["out_spec"] = json.dumps([1, spec])
    crafted = _rewrite(
        plain_pt2, tmp_path / "model.pt2", {"models/model.json": json.dumps(document).encode()}
    )
    with pytest.raises(UnsupportedFormatError, match=r"collections\.defaultdict"):
        load_model(crafted)

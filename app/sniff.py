"""Recognise uploaded files by their content: magic bytes and a zip archive's directory, nothing more.

Nothing here parses or loads a model or a dataset. A file that is clearly of the wrong kind (a pickled
``nn.Module``, a bare state dict, a Keras or TensorFlow file, an empty or unknown file) is refused at
once with a hint on how to produce one that works; everything deeper is checked by ``core.formats`` and
``core.datasets`` in the sandbox when the job runs. Stored objects are read with ranged reads.
"""

from __future__ import annotations

import io
import struct
import zipfile

from app.storage import Storage

# Reading more than this to list an archive means a directory no real model or dataset has.
MAX_DIRECTORY_BYTES = 16 * 1024 * 1024
MAX_ENTRIES = 100_000
HEAD_BYTES = 64 * 1024

MODEL_FORMATS = ("pt2", "onnx", "torchscript")
DATASET_FORMATS = ("npz", "safetensors", "zip", "tar", "tar.gz", "tar.bz2", "tar.xz")

EXPORT_HINT = (
    "Export the model instead: "
    'torch.export.save(torch.export.export(model.eval(), (example,)), "model.pt2"), or '
    'torch.onnx.export(model.eval(), (example,), "model.onnx", dynamo=True, external_data=False), or '
    'torch.jit.save(torch.jit.trace(model.eval(), example), "model.pt").'
)
STATE_DICT_HINT = "For a state dict, load it into the model's class first (model.load_state_dict(weights)). "
TF_HINT = (
    "Convert it to ONNX first (pip install tf2onnx; python -m tf2onnx.convert --saved-model DIR "
    "--output model.onnx, or tf2onnx.convert.from_keras(model, output_path='model.onnx')) and upload "
    "the .onnx file."
)
ZIPPED_ONNX_HINT = "Zip one .onnx file with the external data files it names, side by side."
DATASET_HINT = (
    "Upload an .npz with a float32 array 'x' (samples first, already preprocessed) and optional integer "
    "labels 'y' (numpy.savez('data.npz', x=x, y=y)), a .safetensors file with the same tensors, or an "
    "image folder (<class>/<image> or <split>/<class>/<image>) as .zip, .tar or .tar.gz."
)

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_COMPRESSED_TARS = {b"\x1f\x8b": "tar.gz", b"BZh": "tar.bz2", b"\xfd7zXZ\x00": "tar.xz"}
_TF_MARKERS = (b"tensorflow", b"saved_model", b"keras")


class Refused(Exception):
    """A file refused from its content: ``reason`` says what it is, ``hint`` what to upload instead."""

    def __init__(self, reason: str, hint: str) -> None:
        super().__init__(f"{reason} {hint}")
        self.reason = reason
        self.hint = hint


class _StoredObjectFile(io.RawIOBase):
    """A read-only seekable file over one stored object, each read a ranged read."""

    def __init__(self, storage: Storage, key: str, size: int) -> None:
        self._storage = storage
        self._key = key
        self._size = size
        self._position = 0
        self._budget = MAX_DIRECTORY_BYTES

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def read(self, size: int | None = -1) -> bytes:
        end = self._size if size is None or size < 0 else min(self._size, self._position + size)
        if end <= self._position:
            return b""
        self._budget -= end - self._position
        if self._budget < 0:
            raise ValueError("archive directory too large")
        data = self._storage.read_bytes(self._key, self._position, end - 1)
        self._position += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def archive_names(storage: Storage, key: str, size: int) -> list[str] | None:
    """The entry names of a stored zip archive (from its central directory only), None when it is not
    one, is truncated, or has an absurd directory."""
    if size < 22:
        return None
    try:
        with zipfile.ZipFile(_StoredObjectFile(storage, key, size)) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, struct.error):
        return None
    return names if len(names) <= MAX_ENTRIES else None


def _head(storage: Storage, key: str, size: int) -> bytes:
    return storage.read_bytes(key, 0, min(size, HEAD_BYTES) - 1) if size else b""


def _relative(names: list[str]) -> set[str]:
    """Entry names below the one folder that wraps a torch archive (``model/data.pkl`` -> ``data.pkl``)."""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and all("/" in name for name in names):
        return {name.split("/", 1)[1] for name in names}
    return set(names)


def sniff_model(storage: Storage, key: str, size: int) -> str:
    """The model format the content claims (``pt2``, ``onnx``, ``torchscript``); Refused otherwise."""
    if size == 0:
        raise Refused("the file is empty (0 bytes).", EXPORT_HINT)
    head = _head(storage, key, size)
    if head.startswith(_ZIP_MAGICS):
        return _model_in_zip(storage, key, size)
    _refuse_non_zip_model(head)
    if _looks_like_onnx(head):
        if head[1] == 1 and any(marker in head for marker in _TF_MARKERS):
            raise Refused("a TensorFlow protobuf (a SavedModel's saved_model.pb).", TF_HINT)
        return "onnx"
    if any(marker in head for marker in _TF_MARKERS):
        raise Refused("a TensorFlow protobuf (a SavedModel's saved_model.pb or a GraphDef).", TF_HINT)
    raise Refused(
        "the file is none of the accepted formats (torch.export .pt2, ONNX, TorchScript).", EXPORT_HINT
    )


def _model_in_zip(storage: Storage, key: str, size: int) -> str:
    names = archive_names(storage, key, size)
    if names is None:
        raise Refused(
            "a zip archive whose directory cannot be read: the file is truncated or damaged.",
            "Upload the complete file as written by torch.export.save, torch.jit.save or onnx.save.",
        )
    relative = _relative(names)
    basenames = {name.rsplit("/", 1)[-1] for name in names}
    has_code = any(name.startswith("code/") for name in relative)
    if "archive_format" in relative:
        return "pt2"
    if "serialized_exported_program.json" in relative:
        raise Refused(
            "a .pt2 in the legacy layout of torch < 2.8, which stores weights as pickles.",
            "Re-save it with torch >= 2.10: torch.export.save(program, 'model.pt2').",
        )
    if has_code and "data.pkl" in relative:
        return "torchscript"
    if has_code and "bytecode.pkl" in relative:
        raise Refused(
            "TorchScript saved for the lite interpreter (_save_for_lite_interpreter).",
            "Save it with torch.jit.save(scripted_or_traced_model, 'model.pt') instead.",
        )
    if "data.pkl" in relative:
        raise Refused(
            "a torch.save pickle: a whole nn.Module saved with torch.save(model), or a bare state dict "
            "(weights without the model's graph). Loading a pickle can run code from the file, so it is "
            "never unpickled.",
            STATE_DICT_HINT + EXPORT_HINT,
        )
    if basenames & {"saved_model.pb", "saved_model.pbtxt"}:
        raise Refused("a TensorFlow SavedModel.", TF_HINT)
    if "model.weights.h5" in basenames or {"config.json", "metadata.json"} <= basenames:
        raise Refused("a Keras .keras archive.", TF_HINT)
    if any(name.endswith(".npy") for name in basenames):
        raise Refused("a NumPy .npz archive: data or weights, not a model.", EXPORT_HINT)
    onnx_files = [n for n in names if n.endswith(".onnx") and not _is_macos_metadata(n)]
    if len(onnx_files) == 1:
        return "onnx"  # with its external data files; the sandbox reads them from the archive
    if onnx_files:
        raise Refused(f"a zip archive holding {len(onnx_files)} ONNX files.", ZIPPED_ONNX_HINT)
    raise Refused("a zip archive that holds no model in an accepted format.", EXPORT_HINT)


def _is_macos_metadata(name: str) -> bool:
    """``__MACOSX/...`` and ``._name`` entries: what macOS's Finder adds to a zip about each file."""
    return name.startswith("__MACOSX/") or name.rsplit("/", 1)[-1].startswith("._")


def _refuse_non_zip_model(head: bytes) -> None:
    """Refuse the non-zip files recognisable from their first bytes."""
    if any(head[offset : offset + 8] == _HDF5_MAGIC for offset in (0, 512, 1024, 2048)):
        raise Refused("an HDF5 file (a Keras .h5 model or weights).", TF_HINT)
    if head.startswith(b"\x93NUMPY"):
        raise Refused("a NumPy array file: weights or data, not a model.", EXPORT_HINT)
    if head[4:8] == b"TFL3":
        raise Refused("a TensorFlow Lite flatbuffer.", TF_HINT)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise Refused(
            "a pickle (torch.save in the legacy format, or pickle.dump): loading it can run code from "
            "the file, so it is never unpickled.",
            STATE_DICT_HINT + EXPORT_HINT,
        )
    if head.startswith(b"\x1f\x8b") or head[257:262] == b"ustar":
        raise Refused(
            "a tar or gzip archive (a TensorFlow SavedModel folder, or a model archived).",
            TF_HINT + " Otherwise upload the model file itself, not archived.",
        )
    if _looks_like_safetensors(head):
        raise Refused(
            "a safetensors file: weights alone, without the model's graph.", STATE_DICT_HINT + EXPORT_HINT
        )


def _looks_like_onnx(head: bytes) -> bool:
    """ONNX writers start with ``ir_version`` (field 1, a small varint) followed by another ModelProto
    field: producer_name, producer_version, domain, model_version, doc_string, graph or opset_import."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 20 and head[2] in (
        0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42,
    )  # fmt: skip


def _looks_like_safetensors(head: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON object."""
    if len(head) < 10:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 2 <= header_len < (100 << 20) and head[8:9] == b"{" and head[9:10] in (b'"', b"}", b" ")


def sniff_dataset(storage: Storage, key: str, size: int) -> str:
    """The dataset format the content claims (one of DATASET_FORMATS); Refused otherwise."""
    if size == 0:
        raise Refused("the dataset file is empty (0 bytes).", DATASET_HINT)
    head = _head(storage, key, size)
    if head.startswith(_ZIP_MAGICS):
        names = archive_names(storage, key, size)
        if names is None:
            raise Refused(
                "a zip archive whose directory cannot be read (truncated or damaged).", DATASET_HINT
            )
        return "npz" if any(name.endswith(".npy") for name in names) else "zip"
    if head[257:262] == b"ustar":
        return "tar"
    for magic, name in _COMPRESSED_TARS.items():
        if head.startswith(magic):
            return name
    if _looks_like_safetensors(head):
        return "safetensors"
    raise Refused("the dataset is none of the accepted formats.", DATASET_HINT)

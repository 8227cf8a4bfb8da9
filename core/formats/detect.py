"""Which format a model file is in, judged from its bytes, never from its name.

Accepted: ``pt2`` (a ``torch.export.save`` archive), ``onnx`` (an ONNX ``ModelProto``, or a zip
holding one with the external data files it names) and ``torchscript`` (a ``torch.jit.save``
archive). Everything else is refused with a message that names what was found and says how to export
instead. Detection reads zip entry names, magic bytes and protobuf fields; it never unpickles: a pickle
is only scanned for the globals it names. An accepted archive has also passed the static checks of its
loader (:func:`core.formats.pt2.read_pt2_archive`, :func:`core.formats.torchscript.check_torchscript_archive`).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any

from core.formats.archive_safety import (
    DEFAULT_LIMITS,
    ArchiveLimits,
    ZipInventory,
    check_file_size,
    check_zip,
    open_zip,
    read_entry,
)
from core.formats.errors import EXPORT_HINT, CorruptModelError, UnsupportedFormatError
from core.formats.onnx_graph import inline_external_data
from core.formats.pickle_scan import PickleKind, classify_pickle
from core.formats.pt2 import Pt2Archive, read_pt2_archive
from core.formats.torchscript import check_torchscript_archive

FORMATS: tuple[str, ...] = ("pt2", "onnx", "torchscript")

ONNX_MAX_BYTES = 2 * (1 << 30)  # protobuf's hard limit; bigger ONNX models need external data
_HEAD_BYTES = 1 << 16
_SCAN_BYTES = 4 << 20
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_HDF5_OFFSETS = (0, 512, 1024, 2048)
_TF_MARKERS = (b"tensorflow", b"saved_model", b"keras")

TF_HINT = (
    "Convert it to ONNX first (pip install tf2onnx; python -m tf2onnx.convert --saved-model DIR "
    "--output model.onnx, or tf2onnx.convert.from_keras(model, output_path='model.onnx')) and upload "
    "the .onnx file."
)
ZIPPED_ONNX_HINT = "Zip one .onnx file with the external data files it names, side by side."
STATE_DICT_HINT = (
    "Load the weights into the model's class and export the model: model.load_state_dict(weights); "
    + EXPORT_HINT
)


@dataclass(frozen=True)
class Detection:
    """A recognised model file: its format and what was read to recognise it (the checked zip
    inventory, or the parsed ONNX ``ModelProto``) so that loading does not read it twice."""

    format: str
    inventory: ZipInventory | None = None
    onnx_model: Any = None
    pt2_archive: Pt2Archive | None = None


def detect_format(path: str | os.PathLike[str], *, limits: ArchiveLimits = DEFAULT_LIMITS) -> str:
    """``'pt2'``, ``'onnx'`` or ``'torchscript'``, from the file's content.

    Raises :class:`UnsupportedFormatError` for anything else (pickled modules, state dicts,
    TensorFlow/Keras, empty or unknown files), :class:`CorruptModelError` for a truncated or damaged
    file of an accepted kind and :class:`UnsafeArchiveError` for archives past ``limits``.
    """
    return inspect_model_file(path, limits=limits).format


def inspect_model_file(path: str | os.PathLike[str], *, limits: ArchiveLimits = DEFAULT_LIMITS) -> Detection:
    """Like :func:`detect_format`, returning what was read along the way."""
    size = check_file_size(path, limits)
    if size == 0:
        raise UnsupportedFormatError("the file is empty (0 bytes).")
    with open(path, "rb") as stream:
        head = stream.read(_HEAD_BYTES)
    if head.startswith(_ZIP_MAGICS):
        return _inspect_zip(path, limits)
    _refuse_by_magic(path, head)
    return _inspect_protobuf(path, size, head)


def _refuse_by_magic(path: str | os.PathLike[str], head: bytes) -> None:
    """Refuse the non-zip formats recognisable from their first bytes."""
    if any(head[offset : offset + 8] == _HDF5_MAGIC for offset in _HDF5_OFFSETS):
        raise UnsupportedFormatError("an HDF5 file (a Keras .h5 model or weights).", TF_HINT)
    if head.startswith(b"\x93NUMPY"):
        raise UnsupportedFormatError("a NumPy array file: weights or data, not a model.")
    if head[4:8] == b"TFL3":
        raise UnsupportedFormatError("a TensorFlow Lite flatbuffer.", TF_HINT)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        _refuse_pickle(_read_prefix(path, _SCAN_BYTES), max_pickles=4)
    if head.startswith(b"\x1f\x8b") or head[257:262] == b"ustar":
        _refuse_tar(path, head)
    if _looks_like_safetensors(head):
        raise UnsupportedFormatError("a safetensors file: weights alone, without the graph.", STATE_DICT_HINT)


def _inspect_zip(path: str | os.PathLike[str], limits: ArchiveLimits) -> Detection:
    inventory = check_zip(path, limits)
    names = inventory.relative_names
    if "archive_format" in names:
        return _inspect_pt2(path, inventory, limits)
    if "serialized_exported_program.json" in names:
        raise UnsupportedFormatError(
            "a .pt2 in the legacy layout of torch < 2.8, which stores weights as pickles.",
            "Re-save it with torch >= 2.10: torch.export.save(program, 'model.pt2').",
        )
    has_code = any(name.startswith("code/") for name in names)
    if has_code and "data.pkl" in names:
        check_torchscript_archive(path, inventory)
        return Detection("torchscript", inventory=inventory)
    if has_code and "bytecode.pkl" in names:
        raise UnsupportedFormatError(
            "TorchScript saved for the lite interpreter (_save_for_lite_interpreter).",
            "Save it with torch.jit.save(scripted_or_traced_model, 'model.pt') instead.",
        )
    if ".data/extern_modules" in names or any(name.endswith(".py") for name in names):
        raise UnsupportedFormatError("a torch.package archive: it holds Python code that would run on load.")
    if "data.pkl" in names:
        with open_zip(path) as archive:
            _refuse_pickle(read_entry(archive, f"{inventory.prefix}data.pkl", _SCAN_BYTES * 16))
    if any(_is_onnx_entry(name) for name in inventory.names):
        return _inspect_zipped_onnx(path, inventory, limits)
    _refuse_foreign_zip(inventory)
    raise UnsupportedFormatError("a zip archive that holds no model in an accepted format.")


def _inspect_pt2(path: str | os.PathLike[str], inventory: ZipInventory, limits: ArchiveLimits) -> Detection:
    with open_zip(path) as archive:
        marker = read_entry(archive, f"{inventory.prefix}archive_format", 64)
    if marker.strip() != b"pt2":
        raise UnsupportedFormatError(f"an archive of unknown format {marker[:16]!r}.")
    if any(name.startswith("data/aotinductor/") for name in inventory.relative_names):
        raise UnsupportedFormatError(
            "an AOTInductor package: it holds compiled native code that would run on load.",
            "Upload the torch.export program itself: torch.export.save(program, 'model.pt2').",
        )
    return Detection("pt2", inventory=inventory, pt2_archive=read_pt2_archive(path, inventory, limits))


def _refuse_foreign_zip(inventory: ZipInventory) -> None:
    basenames = {name.rsplit("/", 1)[-1] for name in inventory.names}
    if basenames & {"saved_model.pb", "saved_model.pbtxt"}:
        raise UnsupportedFormatError("a TensorFlow SavedModel.", TF_HINT)
    if "model.weights.h5" in basenames or {"config.json", "metadata.json"} <= basenames:
        raise UnsupportedFormatError("a Keras .keras archive.", TF_HINT)


def _is_onnx_entry(name: str) -> bool:
    """A zip entry that is an ONNX file, not what macOS's Finder adds about one (``__MACOSX/``,
    ``._model.onnx``; ``app.sniff`` judges uploads the same way)."""
    base = name.rsplit("/", 1)[-1]
    return base.endswith(".onnx") and not base.startswith("._") and not name.startswith("__MACOSX/")


def _inspect_zipped_onnx(
    path: str | os.PathLike[str], inventory: ZipInventory, limits: ArchiveLimits
) -> Detection:
    """One ONNX file zipped with the external data files it names, side by side: the data is read
    into the model from the archive (never from the file system)."""
    models = [name for name in inventory.names if _is_onnx_entry(name)]
    if len(models) != 1:
        raise UnsupportedFormatError(f"a zip archive holding {len(models)} ONNX files.", ZIPPED_ONNX_HINT)
    entry = models[0]
    folder = entry[: entry.rfind("/") + 1]
    with open_zip(path) as archive:
        model = _parse_onnx(read_entry(archive, entry, ONNX_MAX_BYTES))
        if model is None or len(model.graph.node) == 0 or len(model.opset_import) == 0:
            raise CorruptModelError(f"the archive's {entry!r} is not a readable ONNX model.")

        files: dict[str, bytes] = {}  # each data file decompressed once

        def read(name: str, offset: int, length: int) -> bytes | None:
            key = folder + name
            if key not in inventory.sizes:
                return None
            if key not in files:
                files[key] = read_entry(archive, key, limits.max_entry_bytes)
            return files[key][offset : offset + length]

        inline_external_data(model, read, where=f"beside {entry!r} in the zip archive")
    return Detection("onnx", inventory=inventory, onnx_model=model)


def _refuse_pickle(data: bytes, max_pickles: int = 1) -> None:
    kind = classify_pickle(data, max_pickles)
    if kind is PickleKind.TENSORS:
        raise UnsupportedFormatError(
            "a bare state dict (weights saved with torch.save, without the model's graph).", STATE_DICT_HINT
        )
    if kind is PickleKind.MODULE:
        raise UnsupportedFormatError(
            "a pickled Python object, e.g. a whole nn.Module saved with torch.save(model): loading it "
            "would run code from the file, so it is never unpickled."
        )
    raise CorruptModelError("a pickle that is truncated or damaged.")


def _refuse_tar(path: str | os.PathLike[str], head: bytes) -> None:
    prefix = _read_prefix(path, _SCAN_BYTES)
    if head.startswith(b"\x1f\x8b"):
        try:
            prefix = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(prefix, _SCAN_BYTES)
        except zlib.error as exc:
            raise CorruptModelError(f"a gzip stream that cannot be decompressed ({exc}).") from exc
    if b"saved_model.pb" in prefix or b"keras_metadata.pb" in prefix:
        raise UnsupportedFormatError("a TensorFlow SavedModel in a tar archive.", TF_HINT)
    raise UnsupportedFormatError("a tar or gzip archive; upload the model file itself.")


def _inspect_protobuf(path: str | os.PathLike[str], size: int, head: bytes) -> Detection:
    """ONNX, or a refusal: ONNX has no magic number, so the file is parsed as a ModelProto."""
    looks_onnx = _looks_like_onnx_header(head)
    if size > ONNX_MAX_BYTES:
        raise UnsupportedFormatError(
            f"a {size}-byte file: ONNX files are limited to 2 GiB.",
            "Save the weights as external data and upload a .zip holding the .onnx file and its data "
            "files, side by side.",
        )
    with open(path, "rb") as stream:
        data = stream.read()
    model = _parse_onnx(data)
    if model is not None and len(model.graph.node) > 0 and len(model.opset_import) > 0:
        return Detection("onnx", onnx_model=model)
    if any(marker in data[:_SCAN_BYTES] for marker in _TF_MARKERS):
        raise UnsupportedFormatError(
            "a TensorFlow protobuf (a SavedModel's saved_model.pb or a GraphDef).", TF_HINT
        )
    if looks_onnx:
        raise CorruptModelError("an ONNX file that is truncated or damaged (its graph cannot be read).")
    raise UnsupportedFormatError(
        "the file is none of the accepted formats (torch.export .pt2, ONNX, TorchScript)."
    )


def _parse_onnx(data: bytes) -> Any:
    import onnx
    from google.protobuf.message import DecodeError

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError):
        return None
    return model


def _looks_like_onnx_header(head: bytes) -> bool:
    """ONNX writers start with ``ir_version`` (field 1, a small varint) followed by another
    ModelProto field: producer_name, producer_version, domain, model_version, doc_string, graph or
    opset_import."""
    return len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 20 and head[2] in (
        0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42,
    )  # fmt: skip


def _looks_like_safetensors(head: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON object."""
    if len(head) < 10:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 2 <= header_len < (100 << 20) and head[8:9] == b"{" and head[9:10] in (b'"', b"}", b" ")


def _read_prefix(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    with open(path, "rb") as stream:
        return stream.read(max_bytes)

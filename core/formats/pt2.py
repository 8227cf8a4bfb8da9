"""``.pt2`` (``torch.export.save``) programs, read without running anything from the file.

``torch.export.load`` is not used on uploads: it unpickles several payloads (falling back to
``torch.load`` with ``weights_only`` off), evaluates shape expressions and executes guard code (see
:mod:`core.formats.pt2_checks`). Instead the archive layout, payload configs and program JSON are
checked first, and only then are torch's non-pickling pieces used: the raw-tensor weight reader and
the program deserializer. The sample inputs, the one pickle a ``.pt2`` always holds, are read with
``torch.load(weights_only=True)`` and refused when that loader refuses them.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import torch
from torch.export import ExportedProgram

from core.formats.archive_safety import (
    DEFAULT_LIMITS,
    ArchiveLimits,
    ZipInventory,
    check_zip,
    open_zip,
    read_entry,
)
from core.formats.errors import CorruptModelError, UnsupportedFormatError
from core.formats.pickle_scan import PickleKind, classify_pickle
from core.formats.pt2_checks import check_program_graph, check_program_json

MODEL_NAME = "model"
_ARCHIVE_VERSION = "0"
_MODEL_JSON = f"models/{MODEL_NAME}.json"
_WEIGHTS_CONFIG = f"data/weights/{MODEL_NAME}_weights_config.json"
_CONSTANTS_CONFIG = f"data/constants/{MODEL_NAME}_constants_config.json"
_SAMPLE_INPUTS = f"data/sample_inputs/{MODEL_NAME}.pt"
_FIXED_ENTRIES = frozenset(
    {
        "archive_format",
        "archive_version",
        "byteorder",
        ".data/version",
        ".data/serialization_id",
        ".format_version",
        ".storage_alignment",
        _MODEL_JSON,
        _WEIGHTS_CONFIG,
        _CONSTANTS_CONFIG,
        _SAMPLE_INPUTS,
    }
)
_WEIGHT_ENTRY = re.compile(r"data/weights/weight_\d+")
_CONSTANT_ENTRY = re.compile(r"data/constants/tensor_\d+")
_MAX_JSON_BYTES = 512 << 20


@dataclass(frozen=True)
class Pt2Archive:
    """A ``.pt2`` that passed the static checks: its inventory, its vetted program description and
    the raw bytes of its sample inputs (a ``torch.save`` archive, not yet unpickled)."""

    inventory: ZipInventory
    program_doc: dict[str, Any]
    sample_inputs: bytes


def read_pt2_archive(
    path: str | os.PathLike[str], inventory: ZipInventory, limits: ArchiveLimits = DEFAULT_LIMITS
) -> Pt2Archive:
    """Check a ``.pt2`` without unpickling anything: layout, raw-tensor payloads, program JSON and
    the globals its sample-inputs pickle names. Raises on anything that could run code."""
    _check_layout(inventory)
    with open_zip(path) as archive:

        def read(name: str) -> bytes:
            return read_entry(archive, inventory.prefix + name, _MAX_JSON_BYTES)

        version = read("archive_version").decode(errors="replace").strip()
        if version != _ARCHIVE_VERSION:
            raise UnsupportedFormatError(f"a .pt2 archive of version {version!r}; version 0 is accepted.")
        _check_payloads(_json(read(_WEIGHTS_CONFIG)), _json(read(_CONSTANTS_CONFIG)), inventory)
        program_doc = check_program_json(_json(read(_MODEL_JSON)))
        samples = read(_SAMPLE_INPUTS) if _SAMPLE_INPUTS in inventory.relative_names else b""
    _scan_sample_inputs(samples, limits)
    return Pt2Archive(inventory, program_doc, samples)


def load_pt2(
    path: str | os.PathLike[str],
    *,
    archive: Pt2Archive | None = None,
    limits: ArchiveLimits = DEFAULT_LIMITS,
) -> ExportedProgram:
    """The program in a ``torch.export.save`` archive, or :class:`UnsupportedFormatError` when the
    archive holds anything that could run code when loaded. ``archive`` skips the checks already
    made by :func:`read_pt2_archive` (as :func:`core.formats.detect.inspect_model_file` does)."""
    archive = archive or read_pt2_archive(path, check_zip(path, limits), limits)
    example_inputs = _load_sample_inputs(archive.sample_inputs)
    program = _deserialize(path, archive.program_doc)
    check_program_graph(program)
    if example_inputs is not None:
        with contextlib.suppress(Exception):  # inputs that do not fit the signature are just dropped
            program.example_inputs = example_inputs
    return program


def save_pt2(program: ExportedProgram, path: str | os.PathLike[str]) -> None:
    """``torch.export.save``; the file passes :func:`load_pt2`'s checks."""
    torch.export.save(program, os.fspath(path))


def _check_layout(inventory: ZipInventory) -> None:
    names = inventory.relative_names
    for required in (_MODEL_JSON, _WEIGHTS_CONFIG, _CONSTANTS_CONFIG, "archive_version"):
        if required not in names:
            raise CorruptModelError(f"the .pt2 archive lacks {required!r}.")
    for name in names:
        if name in _FIXED_ENTRIES or name.startswith("extra/"):
            continue
        if _WEIGHT_ENTRY.fullmatch(name) or _CONSTANT_ENTRY.fullmatch(name):
            continue
        if name.startswith("models/"):
            raise UnsupportedFormatError("a .pt2 archive with several programs; save one program per file.")
        raise UnsupportedFormatError(
            f"the .pt2 archive holds {name!r}, which torch.export.save does not write "
            "(pickled weights, custom objects or compiled code are refused)."
        )


def _check_payloads(weights: Any, constants: Any, inventory: ZipInventory) -> None:
    """Every weight and constant must be a raw tensor record, never a pickle or a Python object."""
    for kind, config, entry in (("weight", weights, _WEIGHT_ENTRY), ("constant", constants, _CONSTANT_ENTRY)):
        payloads = config.get("config") if isinstance(config, dict) else None
        if not isinstance(payloads, dict):
            raise CorruptModelError(f"the .pt2 {kind} config is malformed.")
        for fqn, meta in payloads.items():
            if (
                not isinstance(meta, dict)
                or meta.get("use_pickle") is not False
                or meta.get("tensor_meta") is None
            ):
                raise UnsupportedFormatError(
                    f"the .pt2 {kind} {fqn!r} is stored as a pickled Python object, which is never loaded."
                )
            record = f"{'data/weights' if kind == 'weight' else 'data/constants'}/{meta.get('path_name')}"
            if not entry.fullmatch(record) or record not in inventory.relative_names:
                raise CorruptModelError(f"the .pt2 {kind} {fqn!r} points at a missing record {record!r}.")
            if inventory.sizes[inventory.prefix + record] == 0 and _numel(meta["tensor_meta"]) != 0:
                # torch's reader allocates zeros of the declared size for an empty record
                raise CorruptModelError(f"the .pt2 {kind} {fqn!r} declares elements but stores none.")


def _numel(tensor_meta: Any) -> int:
    sizes = tensor_meta.get("sizes") if isinstance(tensor_meta, dict) else None
    if not isinstance(sizes, list) or not all(
        isinstance(s, dict) and isinstance(s.get("as_int"), int) for s in sizes
    ):
        raise CorruptModelError("a .pt2 tensor has a malformed or symbolic size.")
    return math.prod(s["as_int"] for s in sizes)


def _scan_sample_inputs(data: bytes, limits: ArchiveLimits) -> None:
    """The sample inputs are a nested ``torch.save`` archive: check it like any archive and read the
    globals its pickle names (without unpickling): tensors and containers only."""
    if not data:
        return
    inventory = check_zip(data, limits)
    pickles = [name for name in inventory.names if inventory.relative(name) == "data.pkl"]
    if len(pickles) != 1:
        raise CorruptModelError("the .pt2 sample inputs are not a torch.save archive.")
    with open_zip(data) as archive:
        kind = classify_pickle(read_entry(archive, pickles[0], _MAX_JSON_BYTES))
    if kind is not PickleKind.TENSORS:
        raise UnsupportedFormatError(
            "the .pt2 sample inputs are a pickle that names Python callables: it would run code when loaded."
        )


def _load_sample_inputs(data: bytes) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """The stored example inputs, unpickled by torch's restricted (weights-only) unpickler."""
    if not data:
        return None
    try:
        value = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # the weights-only unpickler raises UnpicklingError, RuntimeError, ...
        raise UnsupportedFormatError(
            f"the .pt2 sample inputs are not plain tensors ({type(exc).__name__}): a pickle that would "
            "need to run code to load is refused."
        ) from exc
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], tuple)
        and isinstance(value[1], dict)
        and all(isinstance(v, torch.Tensor) for v in value[0])
    ):
        return value
    return None


def _deserialize(path: str | os.PathLike[str], program_doc: dict[str, Any]) -> ExportedProgram:
    """torch's own deserializer on checked input: raw tensor records and a vetted program JSON.

    These are private torch 2.13 functions; torch is pinned, and the tests load real archives.
    """
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass
    from torch.export.pt2_archive._package import PT2ArchiveReader, _load_constants, _load_state_dict

    try:
        serialized = _dict_to_dataclass(schema.ExportedProgram, program_doc)
        with PT2ArchiveReader(os.fspath(path)) as reader:
            state_dict = _load_state_dict(reader, MODEL_NAME)
            constants = _load_constants(reader, MODEL_NAME)
        if not isinstance(state_dict, dict) or not isinstance(constants, dict):
            raise UnsupportedFormatError("the .pt2 archive stores weights in the legacy pickled layout.")
        program = ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, None)
    except UnsupportedFormatError:
        raise
    except Exception as exc:  # the deserializer raises many error types on damaged input
        raise CorruptModelError(f"the .pt2 program cannot be read ({type(exc).__name__}: {exc}).") from exc
    program._guards_code = []
    return program


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptModelError(f"a .pt2 JSON record is damaged ({exc}).") from exc

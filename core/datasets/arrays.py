"""Array datasets: ``.npz`` and ``.safetensors`` files holding ``x`` (N, ...) floats (or integer token ids) and
optional ``y`` labels.

Nothing is unpickled: npz members are parsed with ``allow_pickle=False`` semantics (object dtypes are
refused from the header, before any data is read). ``x`` is memory-mapped where the bytes lie in the
file as they are (safetensors, uncompressed npz members); a deflated npz member cannot be mapped, so it
is streamed once -- byte-counted against the limits -- into a private directory and mapped from there.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from safetensors import safe_open

from core.datasets.base import Dataset
from core.datasets.bounded_io import ByteBudget, PrivateDir, copy_bounded
from core.datasets.errors import (
    DatasetError,
    DatasetNaNError,
    DatasetTooLargeError,
    EmptyDatasetError,
    LabelsOutOfRangeError,
)
from core.datasets.limits import DatasetLimits

ZIP_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile.structFileHeader: 30 bytes
SAFETENSORS_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # bit pattern; widened to float32 per batch
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
}


class ArrayDataset(Dataset):
    """``x`` (N, *input_shape) and optional ``y`` (N,) already in memory or memory-mapped."""

    def __init__(
        self,
        format: str,
        x: np.ndarray,
        y: np.ndarray | None,
        workdir: PrivateDir | None = None,
        bfloat16: bool = False,
    ):
        self.format = format
        self._x = x
        self._y = y
        self._workdir = workdir
        self._bfloat16 = bfloat16
        self.input_shape = tuple(int(d) for d in x.shape[1:])
        self.classes = None if y is None or len(y) == 0 else int(y.max()) + 1

    @property
    def samples(self) -> int:
        return int(self._x.shape[0])

    def labels(self) -> np.ndarray | None:
        return self._y

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.asarray(self._x[indices])  # copies just these rows out of the map
        if self._bfloat16:
            x = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16).float().numpy()
        y = None if self._y is None else self._y[indices]
        integer = not self._bfloat16 and x.dtype.kind in "iu"  # token ids
        return np.ascontiguousarray(x, dtype=np.int64 if integer else np.float32), y

    def close(self) -> None:
        self._x = np.empty((0, *self.input_shape), dtype=self._x.dtype)  # drops the memory map
        if self._workdir is not None:
            self._workdir.cleanup()


def validate_arrays(
    x: np.ndarray, y: np.ndarray | None, limits: DatasetLimits, bfloat16: bool = False
) -> None:
    """Shapes, dtypes, label range and finiteness of ``x``, checked in bounded chunks."""
    if x.ndim < 2 or 0 in x.shape[1:]:
        raise DatasetError(
            f"x must have shape (N, *input_shape) with a non-empty input, got {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise EmptyDatasetError("x holds no samples (its first dimension is 0)")
    token_ids = x.dtype.kind == "i" or x.dtype in (np.uint16, np.uint32)  # uint8 is raw pixels
    if not bfloat16 and x.dtype.kind != "f" and not token_ids:
        raise DatasetError(
            f"x must be float32 and already preprocessed (or signed integer token ids), got {x.dtype}; "
            "normalise it and save x.astype(numpy.float32)"
        )
    if y is not None:
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise DatasetError(
                f"y must be a 1-D integer array of class indices, got {y.dtype} {tuple(y.shape)}"
            )
        if len(y) != x.shape[0]:
            raise DatasetError(f"x has {x.shape[0]} samples but y has {len(y)} labels")
        if y.dtype.kind == "i" and int(y.min()) < 0:
            raise LabelsOutOfRangeError(f"labels must be >= 0, found {int(y.min())}")
    if bfloat16 or x.dtype.kind == "f":
        _check_finite(x, limits.scan_chunk_bytes, bfloat16)


def _check_finite(x: np.ndarray, chunk_bytes: int, bfloat16: bool) -> None:
    row_bytes = max(1, x.itemsize * int(np.prod(x.shape[1:])))
    rows = max(1, chunk_bytes // row_bytes)
    for start in range(0, x.shape[0], rows):
        chunk = x[start : start + rows]
        # bfloat16 bit patterns: exponent all ones means NaN or Inf
        finite = (chunk & 0x7F80) != 0x7F80 if bfloat16 else np.isfinite(chunk)
        if not finite.all():
            bad = start + int(np.argwhere(~finite.reshape(len(chunk), -1).all(axis=1))[0, 0])
            raise DatasetNaNError(f"x holds NaN or infinite values (first in sample {bad})")


# ---- npz ------------------------------------------------------------------------------------------


def _read_npy_header(f: IO[bytes], name: str) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """(shape, fortran_order, dtype) from a .npy header; refuses object dtypes (they need pickle)."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, SyntaxError, struct.error, EOFError) as e:
        raise DatasetError(f"{name} in the npz is not a valid .npy array: {e}") from e
    if dtype.hasobject:
        raise DatasetError(
            f"{name} in the npz is an object array, which would need pickle to load; save plain numeric "
            "arrays (allow_pickle=False is enforced)"
        )
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _stored_member_map(path: Path, info: zipfile.ZipInfo, name: str) -> np.ndarray:
    """Memory-map an uncompressed npz member in place: local header -> .npy header -> data."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        fields = ZIP_LOCAL_HEADER.unpack(f.read(ZIP_LOCAL_HEADER.size))
        if fields[0] != b"PK\x03\x04":
            raise DatasetError(f"the npz's local header for {name} is corrupt")
        start = info.header_offset + ZIP_LOCAL_HEADER.size + fields[10] + fields[11]
        f.seek(start)
        shape, fortran, dtype = _read_npy_header(f, name)
        offset = f.tell()
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if offset + nbytes > start + info.file_size:
        raise DatasetError(f"{name} in the npz is truncated: its header promises {nbytes:,} bytes")
    if nbytes == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _deflated_member_map(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, workdir: PrivateDir, budget: ByteBudget
) -> np.ndarray:
    """Stream a compressed npz member into ``workdir`` (bytes counted) and map it from there."""
    with zf.open(info) as src:
        _read_npy_header(src, name)  # refuse object arrays before writing anything
    target = workdir.path / f"{name}.npy"
    with zf.open(info) as src, open(target, "wb") as dst:
        copy_bounded(src, dst, budget)
    try:
        return np.load(target, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise DatasetError(f"{name} in the npz cannot be read: {e}") from e


def _small_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, max_items: int) -> np.ndarray:
    """Load a small member (``y``) fully, refusing pickles and more than ``max_items`` elements."""
    with zf.open(info) as f:
        shape, _, _ = _read_npy_header(f, name)
    if int(np.prod(shape)) > max_items:
        raise DatasetError(f"{name} has shape {shape}, more entries than x has samples ({max_items})")
    with zf.open(info) as f:
        try:
            return np.lib.format.read_array(f, allow_pickle=False)
        except ValueError as e:
            raise DatasetError(f"{name} in the npz cannot be read: {e}") from e


def read_npz(path: Path, limits: DatasetLimits, work_parent: Path | None = None) -> ArrayDataset:
    """Open an ``.npz`` with ``x`` (and optional ``y``) members."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"the npz is not a readable zip file: {e}") from e
    with zf:
        members = {i.filename.removesuffix(".npy"): i for i in zf.infolist() if i.filename.endswith(".npy")}
        if "x" not in members:
            raise DatasetError(
                f"the npz has no array named 'x' (found: {', '.join(sorted(members)) or 'none'})"
            )
        if len(zf.infolist()) > limits.max_members:
            raise DatasetTooLargeError(f"the npz has more than {limits.max_members:,} members")
        budget = ByteBudget(limits.max_bytes, "the npz")
        workdir: PrivateDir | None = None
        info = members["x"]
        if info.flag_bits & 0x1:
            raise DatasetError("the npz is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            x = _stored_member_map(path, info, "x")
        else:
            workdir = PrivateDir(work_parent)
            x = _deflated_member_map(zf, info, "x", workdir, budget)
        n = int(x.shape[0]) if x.ndim else 0
        y = _small_member(zf, members["y"], "y", max(n, 1)) if "y" in members else None
    try:
        validate_arrays(x, y, limits)
    except DatasetError:
        if workdir is not None:
            workdir.cleanup()
        raise
    return ArrayDataset("npz", x, None if y is None else y.astype(np.int64), workdir)


# ---- safetensors ----------------------------------------------------------------------------------


def _safetensors_header(path: Path, limits: DatasetLimits) -> tuple[dict[str, Any], int]:
    """The parsed JSON header and the offset where tensor data starts."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise DatasetError("the safetensors file is shorter than its 8-byte header length")
        (n,) = struct.unpack("<Q", prefix)
        if n > limits.max_header_bytes or n + 8 > size:
            raise DatasetError(f"the safetensors header length {n:,} does not fit the file ({size:,} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DatasetError(f"the safetensors header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise DatasetError("the safetensors header is not a JSON object")
    try:  # the reference parser's own consistency checks (offsets, overlaps, dtypes)
        with safe_open(str(path), framework="numpy") as checked:
            checked.keys()
    except Exception as e:
        raise DatasetError(f"the safetensors file is malformed: {e}") from e
    return header, 8 + n


def _safetensors_map(path: Path, header: dict[str, Any], data_start: int, name: str) -> np.ndarray:
    entry = header[name]
    dtype_name = entry.get("dtype")
    if dtype_name not in SAFETENSORS_DTYPES:
        raise DatasetError(f"tensor {name!r} has dtype {dtype_name}, which a dataset cannot use")
    dtype = SAFETENSORS_DTYPES[dtype_name]
    shape = tuple(int(d) for d in entry["shape"])
    begin, end = (int(v) for v in entry["data_offsets"])
    if end - begin != int(np.prod(shape)) * dtype.itemsize:
        raise DatasetError(f"tensor {name!r}: {end - begin} bytes do not match shape {shape} of {dtype_name}")
    if end == begin:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)


def read_safetensors(path: Path, limits: DatasetLimits) -> ArrayDataset:
    """Open a ``.safetensors`` file with tensors ``x`` (and optional ``y``), memory-mapped."""
    header, data_start = _safetensors_header(path, limits)
    names = sorted(k for k in header if k != "__metadata__")
    if "x" not in names:
        raise DatasetError(
            f"the safetensors file has no tensor named 'x' (found: {', '.join(names) or 'none'})"
        )
    bfloat16 = header["x"].get("dtype") == "BF16"
    x = _safetensors_map(path, header, data_start, "x")
    if not bfloat16 and x.dtype.kind != "f":
        raise DatasetError(f"x must be a float tensor (already preprocessed), got {header['x']['dtype']}")
    y = _safetensors_map(path, header, data_start, "y") if "y" in names else None
    if y is not None:
        y = np.asarray(y)
    validate_arrays(x, y, limits, bfloat16=bfloat16)
    return ArrayDataset("safetensors", x, None if y is None else y.astype(np.int64), bfloat16=bfloat16)

"""Resource limits applied while reading untrusted dataset files."""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class DatasetLimits:
    """Bounds on what reading one dataset may cost; the service fills them from its settings.

    - ``max_bytes``: decompressed bytes read from an archive or compressed npz, counted as they stream.
    - ``max_members``: entries in an archive (files, folders, anything).
    - ``max_member_bytes``: size of one image file.
    - ``max_image_pixels``: width x height of one image, checked from its header before decoding
      (Pillow's own bomb limit is 89.5M pixels; this default matches it).
    - ``max_header_bytes``: size of a safetensors JSON header.
    - ``scan_chunk_bytes``: how much of ``x`` the NaN/Inf check holds in memory at once.
    """

    max_bytes: int = 16 * GiB
    max_members: int = 2_000_000
    max_member_bytes: int = 64 * MiB
    max_image_pixels: int = 89_478_485
    max_header_bytes: int = 100 * MiB
    scan_chunk_bytes: int = 4 * MiB

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"dataset limit {name} must be a positive integer, got {value!r}")

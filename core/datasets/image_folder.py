"""Image-folder datasets: ``<split>/<class>/<image>`` or ``<class>/<image>`` inside an archive.

Labels are class-folder indices, class names sorted (the torchvision ``ImageFolder`` convention), over
the union of all splits. One wrapping folder around everything (``cifar10/train/cat/1.jpg``) is
unwrapped. With ``check_images`` (at upload) every image header is read when the dataset opens, so a
corrupt image, an image over the pixel limit or a shape mismatch is reported at once; without it (a
worker re-opening a validated upload) only the first is, and the rest are checked as they decode.
Pixels are decoded only batch by batch.
"""

from __future__ import annotations

import io
from collections import defaultdict

import numpy as np
from PIL import Image

from core.datasets.archives import Member, MemberStore
from core.datasets.base import Dataset
from core.datasets.errors import (
    DatasetError,
    DatasetTooLargeError,
    EmptyDatasetError,
    ImageDecodeError,
    PreprocessError,
)
from core.datasets.preprocess import Preprocess

KNOWN_SPLITS = frozenset(
    {"train", "training", "calibration", "calib", "test", "testing", "val", "valid", "validation", "eval"}
)


def _unwrap(paths: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Drop folders that wrap everything (``data/train/cat/1.jpg`` -> ``train/cat/1.jpg``)."""
    while (
        paths
        and all(len(p) > 2 for p in paths)
        and len({p[0] for p in paths}) == 1
        and paths[0][0].lower() not in KNOWN_SPLITS
    ):
        paths = [p[1:] for p in paths]
    return paths


def arrange(members: list[Member]) -> tuple[list[str], list[tuple[str | None, int, Member]]]:
    """(sorted class names, [(split or None, class index, member)] sorted by split, class and name)."""
    if not members:
        raise EmptyDatasetError(
            "the archive holds no images (expected <class>/<image> or <split>/<class>/<image>, with image "
            "files such as .jpg or .png)"
        )
    paths = _unwrap([m.parts for m in members])
    depths = {len(p) for p in paths}
    if len(depths) > 1 or not depths <= {2, 3}:
        shallow = min(paths, key=len)
        deep = max(paths, key=len)
        raise DatasetError(
            "images must all lie at <class>/<image> or all at <split>/<class>/<image>; found "
            f"{'/'.join(shallow)!r} and {'/'.join(deep)!r}"
        )
    with_splits = depths == {3}
    if with_splits:
        unknown = sorted({p[0] for p in paths if p[0].lower() not in KNOWN_SPLITS})
        if unknown:
            raise DatasetError(
                f"split folders must be named train, test, val, calibration, ...; found {', '.join(unknown)}"
            )
    classes = sorted({p[-2] for p in paths})
    index = {name: i for i, name in enumerate(classes)}
    rows = [
        (p[0].lower() if with_splits else None, index[p[-2]], m) for p, m in zip(paths, members, strict=True)
    ]
    rows.sort(key=lambda r: (r[0] or "", r[1], r[2].parts))
    return classes, rows


def open_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """A lazily decoded Pillow image; its header must parse and its size stay under ``max_pixels``."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise DatasetTooLargeError(f"{name}: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"{name} is not an image Pillow can read: {e}") from e
    width, height = image.size
    if width * height > max_pixels:
        raise DatasetTooLargeError(f"{name} is {width}x{height} pixels, over the {max_pixels:,}-pixel limit")
    return image


class ImageFolderDataset(Dataset):
    """Images in class folders inside an archive; ``read`` decodes and preprocesses just the batch."""

    def __init__(
        self,
        format: str,
        store: MemberStore,
        members: list[Member],
        preprocess: Preprocess,
        check_images: bool = True,
    ):
        self.format = format
        self.preprocess = preprocess
        self._store = store
        try:
            classes, rows = arrange(members)
            self.classes = classes
            self._members = [m for _, _, m in rows]
            self._labels = np.array([label for _, label, _ in rows], dtype=np.int64)
            self._splits = self._group_splits([split for split, _, _ in rows])
            self.input_shape = self._scan_shapes(self._members if check_images else self._members[:1])
        except BaseException:
            store.close()
            raise

    @staticmethod
    def _group_splits(splits: list[str | None]) -> dict[str, np.ndarray]:
        groups: dict[str, list[int]] = defaultdict(list)
        for i, split in enumerate(splits):
            if split is not None:
                groups[split].append(i)
        return {name: np.array(idx, dtype=np.int64) for name, idx in groups.items()}

    def _scan_shapes(self, members: list[Member]) -> tuple[int, ...]:
        """Read the headers of ``members``; all must preprocess to one shape. Returns that shape."""
        first: tuple[tuple[int, ...], str] | None = None
        for member in members:
            with open_image(
                self._store.read(member), member.name, self._store.limits.max_image_pixels
            ) as image:
                try:
                    shape = self.preprocess.output_shape(*image.size)
                except PreprocessError as e:
                    raise PreprocessError(f"{member.name}: {e}") from e
            if first is None:
                first = (shape, member.name)
            elif shape != first[0]:
                raise ImageDecodeError(
                    f"images preprocess to different shapes: {first[1]} -> {list(first[0])}, {member.name} -> "
                    f"{list(shape)}; give preprocess resize and center_crop to make them uniform"
                )
        assert first is not None, "arrange() refuses archives without images"
        return first[0]

    @property
    def samples(self) -> int:
        return len(self._members)

    def labels(self) -> np.ndarray | None:
        return self._labels

    def split_indices(self) -> dict[str, np.ndarray]:
        return dict(self._splits)

    def source_name(self, index: int) -> str:
        """The archive path of sample ``index`` (wrapping folders removed), for reports and errors."""
        return self._members[index].name

    def decode(self, index: int) -> np.ndarray:
        """One preprocessed sample, float32 of ``input_shape``."""
        member = self._members[index]
        with open_image(self._store.read(member), member.name, self._store.limits.max_image_pixels) as image:
            try:
                image.load()
                x = self.preprocess.apply(image)
            except (OSError, SyntaxError, ValueError) as e:
                raise ImageDecodeError(f"{member.name} cannot be decoded: {e}") from e
        if x.shape != self.input_shape:
            raise ImageDecodeError(f"{member.name} decodes to {list(x.shape)}, not {list(self.input_shape)}")
        return x

    def read(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x = np.empty((len(indices), *self.input_shape), dtype=np.float32)  # (B, *input_shape)
        for row, index in enumerate(indices):
            x[row] = self.decode(int(index))
        return x, self._labels[indices]

    def close(self) -> None:
        self._store.close()

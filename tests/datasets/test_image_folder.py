"""Image-folder archives: layouts, labels, decoded values, and refusal of unsafe or broken archives."""

from __future__ import annotations

import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from core.datasets import (
    DatasetError,
    DatasetLimits,
    DatasetTooLargeError,
    EmptyDatasetError,
    ImageDecodeError,
    Preprocess,
    UnsafeArchiveError,
    open_dataset,
)
from tests.datasets.builders import image_bytes, image_folder, random_pixels, write_archive

KINDS = ["zip", "tar", "tar.gz"]


@pytest.mark.parametrize("kind", KINDS)
def test_split_layout(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(1)
    files, pixels = image_folder(rng, {"train": {"dog": 3, "cat": 2}, "test": {"cat": 1, "dog": 2, "emu": 1}})
    path = write_archive(tmp_path / "upload.bin", files, kind)
    with open_dataset(path, work_dir=tmp_path) as ds:
        assert ds.format == kind
        assert (ds.samples, ds.input_shape) == (9, (3, 8, 8))
        assert ds.classes == ["cat", "dog", "emu"]
        assert ds.splits == {"train", "test"} and ds.split_counts() == {"test": 4, "train": 5}
        names = [ds.source_name(i) for i in range(ds.samples)]  # type: ignore[attr-defined]
        assert names == sorted(names, key=lambda n: (n.split("/")[0], n.split("/")[1], n))
        batches = list(ds.iter_batches(np.arange(ds.samples), batch_size=4))
        assert [len(x) for x, _ in batches] == [4, 4, 1]
        x = np.concatenate([b[0].numpy() for b in batches])
        y = np.concatenate([b[1].numpy() for b in batches])  # type: ignore[union-attr]
    for i, name in enumerate(names):
        np.testing.assert_allclose(x[i], pixels[name].transpose(2, 0, 1) / 255.0, rtol=1e-6)
        assert ["cat", "dog", "emu"][y[i]] == name.split("/")[1]
    assert [p for p in tmp_path.iterdir() if p.name.startswith("specprune-dataset-")] == []


@pytest.mark.parametrize("kind", KINDS)
def test_class_layout_without_splits(tmp_path: Path, kind: str) -> None:
    files, _ = image_folder(np.random.default_rng(2), {None: {"b": 2, "a": 3}})
    with open_dataset(write_archive(tmp_path / "d", files, kind)) as ds:
        assert ds.classes == ["a", "b"] and ds.splits == frozenset()
        np.testing.assert_array_equal(ds.labels(), [0, 0, 0, 1, 1])


def test_wrapping_folder_and_junk_are_ignored(tmp_path: Path) -> None:
    files, _ = image_folder(np.random.default_rng(3), {"train": {"a": 2}, "val": {"a": 1}})
    files = {f"cifar/{k}": v for k, v in files.items()}
    files["cifar/README.txt"] = b"notes"
    files["__MACOSX/cifar/train/a/._0000.png"] = b"resource fork"
    files["cifar/train/a/.DS_Store"] = b"finder"
    with open_dataset(write_archive(tmp_path / "d.zip", files, "zip")) as ds:
        assert ds.samples == 3 and ds.split_counts() == {"train": 2, "val": 1}


def test_preprocess_makes_mixed_sizes_uniform(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    files = {
        "a/0.png": image_bytes(random_pixels(rng, 10, 12)),
        "b/0.jpg": image_bytes(random_pixels(rng, 20, 16), "JPEG"),
    }
    path = write_archive(tmp_path / "d.tar", files, "tar")
    with pytest.raises(ImageDecodeError, match="different shapes"):
        open_dataset(path)
    with open_dataset(path, Preprocess(resize=9, center_crop=8, layout="NHWC")) as ds:
        x, y = next(ds.iter_batches([0, 1], 2))
    assert tuple(x.shape) == (2, 8, 8, 3) and y is not None and y.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"README.md": b"no images here"}, "holds no images"),
        ({"a/0.png": b"png?", "train/a/0.png": b"png?"}, "all lie at"),
        ({"x.png": b"png?"}, "all lie at"),
        ({"animals/cat/0.png": b"1", "vehicles/car/0.png": b"2"}, "split folders must be named"),
    ],
)
def test_bad_layouts(tmp_path: Path, files: dict[str, bytes], message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        open_dataset(write_archive(tmp_path / "d.tar.gz", files, "tar.gz"))


def test_empty_archive_code(tmp_path: Path) -> None:
    with pytest.raises(EmptyDatasetError) as err:
        open_dataset(write_archive(tmp_path / "d.zip", {"notes.txt": b"x"}, "zip"))
    assert err.value.code == "empty_dataset"


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    files, _ = image_folder(np.random.default_rng(5), {None: {"a": 2}})
    files["a/9999.png"] = b"\x89PNG\r\n\x1a\n but then garbage"
    with pytest.raises(ImageDecodeError, match=r"a/9999\.png") as err:
        open_dataset(write_archive(tmp_path / "d.zip", files, "zip"))
    assert err.value.code == "invalid_image"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["../escape/a/0.png", "/etc/a/0.png", "a/../../0.png", "C:/a/0.png"])
def test_traversal_members_refuse_the_archive(tmp_path: Path, kind: str, name: str) -> None:
    files, _ = image_folder(np.random.default_rng(6), {None: {"a": 1}})
    files[name] = files["a/0000.png"]
    with pytest.raises(UnsafeArchiveError) as err:
        open_dataset(write_archive(tmp_path / "d", files, kind))
    assert err.value.code == "unsafe_archive"


@pytest.mark.parametrize("link", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_links_refuse_the_archive(tmp_path: Path, link: bytes) -> None:
    with tarfile.open(tmp_path / "d.tar", "w") as tar:
        info = tarfile.TarInfo("a/0.png")
        info.type, info.linkname = link, "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="link"):
        open_dataset(tmp_path / "d.tar")


def test_zip_symlink_refuses_the_archive(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:
        info = zipfile.ZipInfo("a/0.png")
        info.external_attr = (0o120777 << 16) | 0x20  # S_IFLNK
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        open_dataset(tmp_path / "d.zip")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels but that carries almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    )  # fmt: skip


def test_pixel_bombs_are_refused_before_decoding(tmp_path: Path) -> None:
    files = {"a/0.png": png_header_only(60_000, 60_000)}  # 3.6 gigapixels in 80 bytes
    with pytest.raises(DatasetTooLargeError, match="pixel"):
        open_dataset(write_archive(tmp_path / "d.tar", files, "tar"))
    small, _ = image_folder(np.random.default_rng(7), {None: {"a": 1}}, size=(20, 20))
    with pytest.raises(DatasetTooLargeError, match="20x20 pixels, over the 100-pixel limit"):
        open_dataset(
            write_archive(tmp_path / "e.tar", small, "tar"), limits=DatasetLimits(max_image_pixels=100)
        )


def test_decompression_is_bounded(tmp_path: Path) -> None:
    zeros = b"\x00" * (1 << 20)  # 1 MiB of zeros compresses to about 1 KiB
    files, _ = image_folder(np.random.default_rng(8), {None: {"a": 2}})
    files["a/padding.bin"] = zeros
    work = tmp_path / "work"
    work.mkdir()
    path = write_archive(tmp_path / "d.tar.gz", files, "tar.gz")
    assert path.stat().st_size < 10_000
    with pytest.raises(DatasetTooLargeError, match="decompresses to more than"):
        open_dataset(path, limits=DatasetLimits(max_bytes=512 * 1024), work_dir=work)
    assert list(work.iterdir()) == []  # the partial extraction is removed
    big = {"a/0.png": image_bytes(random_pixels(np.random.default_rng(9), 64, 64))}
    for kind in KINDS:
        with pytest.raises(DatasetTooLargeError, match="-byte limit"):
            open_dataset(
                write_archive(tmp_path / f"big.{kind}", big, kind), limits=DatasetLimits(max_member_bytes=100)
            )


def test_member_count_is_bounded(tmp_path: Path) -> None:
    files, _ = image_folder(np.random.default_rng(10), {None: {"a": 5}})
    for kind in KINDS:
        with pytest.raises(DatasetTooLargeError, match="more than 3 members"):
            open_dataset(
                write_archive(tmp_path / f"d.{kind}", files, kind), limits=DatasetLimits(max_members=3)
            )


def test_truncated_tar_gz(tmp_path: Path) -> None:
    files, _ = image_folder(np.random.default_rng(11), {None: {"a": 20}})
    data = write_archive(tmp_path / "d.tar.gz", files, "tar.gz").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="not readable"):
        open_dataset(tmp_path / "cut.tar.gz")


def test_grayscale_and_palette_images_become_rgb(tmp_path: Path) -> None:
    gray = np.full((4, 4), 128, dtype=np.uint8)
    files = {
        "a/0.png": image_bytes(gray),
        "a/1.gif": image_bytes(random_pixels(np.random.default_rng(0), 4, 4), "GIF"),
    }
    with open_dataset(write_archive(tmp_path / "d.zip", files, "zip")) as ds:
        x, _ = ds.read(np.array([0, 1]))
    assert x.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(x[0], 128 / 255.0, rtol=1e-6)


def test_image_bytes_helper_is_real_png() -> None:
    from PIL import Image

    with Image.open(io.BytesIO(image_bytes(np.zeros((3, 5, 3), np.uint8)))) as image:
        assert (image.format, image.size) == ("PNG", (5, 3))


def test_unchecked_open_reports_bad_images_when_they_decode(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    files = {
        "a/0.png": image_bytes(random_pixels(rng, 8, 8)),
        "a/1.png": image_bytes(random_pixels(rng, 9, 8)),
    }
    files["a/2.png"] = b"not a png"
    path = write_archive(tmp_path / "d.zip", files, "zip")
    with pytest.raises(ImageDecodeError):
        open_dataset(path)
    with open_dataset(path, check_images=False) as ds:
        assert ds.input_shape == (3, 8, 8)
        assert tuple(next(ds.iter_batches([0], 1))[0].shape) == (1, 3, 8, 8)
        with pytest.raises(ImageDecodeError, match=r"a/1\.png decodes to"):
            ds.read(np.array([1]))
        with pytest.raises(ImageDecodeError, match=r"a/2\.png"):
            ds.read(np.array([2]))

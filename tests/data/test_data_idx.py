"""IDX reader/writer: round trips, gzip detection and malformed files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from sop_plugin.data import IdxFormatError, read_idx, read_idx_images, read_idx_labels, write_idx


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_uint8_round_trip_plain_and_gzip(tmp_path: Path, name: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, images)
    out = read_idx_images(tmp_path / name)
    assert out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(out, images)
    assert (tmp_path / name).read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\x00\x00")


def test_gzip_detected_from_content_not_name(tmp_path: Path) -> None:
    labels = np.arange(7, dtype=np.uint8)
    write_idx(tmp_path / "labels-idx1-ubyte", labels, compress=True)
    np.testing.assert_array_equal(read_idx_labels(tmp_path / "labels-idx1-ubyte"), labels)


def test_multibyte_types_are_big_endian_on_disk(tmp_path: Path) -> None:
    values = np.array([[1, -2], [300000, 4]], dtype=np.int32)
    write_idx(tmp_path / "x.idx", values)
    assert (tmp_path / "x.idx").read_bytes()[:12] == bytes([0, 0, 0x0C, 2, 0, 0, 0, 2, 0, 0, 0, 2])
    out = read_idx(tmp_path / "x.idx")
    assert out.dtype == np.dtype("int32") and out.dtype.isnative
    np.testing.assert_array_equal(out, values)


def test_bad_magic_and_truncation_raise(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(IdxFormatError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "full", np.zeros((4, 3, 3), dtype=np.uint8))
    data = (tmp_path / "full").read_bytes()
    (tmp_path / "short.gz").write_bytes(gzip.compress(data[:-5]))
    with pytest.raises(IdxFormatError, match="truncated"):
        read_idx(tmp_path / "short.gz")


def test_shape_checks(tmp_path: Path) -> None:
    write_idx(tmp_path / "labels", np.arange(3, dtype=np.uint8))
    with pytest.raises(IdxFormatError, match=r"\[N, H, W\]"):
        read_idx_images(tmp_path / "labels")
    write_idx(tmp_path / "images", np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(IdxFormatError, match=r"labels \[N\]"):
        read_idx_labels(tmp_path / "images")

"""IDX reader against files built byte by byte with struct."""

import gzip
import struct

import numpy as np
import pytest

from efficientdl.data import read_idx
from efficientdl.errors import DataError


def idx_bytes(type_code: int, dims: list[int], fmt: str, values: list) -> bytes:
    """An IDX file by hand: 00 00 type ndim, big-endian uint32 dims, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, type_code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    return header + struct.pack(f">{len(values)}{fmt}", *values)


CASES = [
    (0x08, "B", [0, 1, 127, 128, 255, 7], np.uint8),
    (0x09, "b", [-128, -1, 0, 1, 127, 5], np.int8),
    (0x0B, "h", [-32768, -2, 0, 3, 32767, 258], np.int16),
    (0x0C, "i", [-(2**31), -70000, 0, 70000, 2**31 - 1, 16909060], np.int32),
    (0x0D, "f", [-1.5, 0.0, 0.25, 3.0e10, 1.0, -7.0], np.float32),
    (0x0E, "d", [-1.5e300, 0.0, 0.1, 2.0, 1e-300, -7.25], np.float64),
]


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("type_code,fmt,values,dtype", CASES, ids=[c[3].__name__ for c in CASES])
def test_reads_every_dtype_raw_and_gzip(tmp_path, compress, type_code, fmt, values, dtype):
    data = idx_bytes(type_code, [2, 3], fmt, values)
    path = tmp_path / "file.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    array = read_idx(path)
    assert array.shape == (2, 3)
    assert array.dtype == dtype
    assert array.dtype.isnative
    if dtype is np.float32:  # values rounded to single precision
        assert array.ravel().tolist() == pytest.approx(values, rel=1e-7)
    else:
        assert array.ravel().tolist() == values
    assert array[1, 0] == pytest.approx(values[3], rel=1e-7)  # row-major order


def test_float_values_exact(tmp_path):
    values = [0.1, -2.5, 1e-300]
    path = tmp_path / "doubles"
    path.write_bytes(idx_bytes(0x0E, [3], "d", values))
    assert read_idx(path).tolist() == values  # doubles round-trip bit for bit


def test_compression_detected_by_magic_not_name(tmp_path):
    data = idx_bytes(0x08, [1, 2, 2], "B", [1, 2, 3, 4])
    gz_without_suffix = tmp_path / "train-images-idx3-ubyte"
    gz_without_suffix.write_bytes(gzip.compress(data))
    raw_with_suffix = tmp_path / "raw.gz"
    raw_with_suffix.write_bytes(data)
    assert read_idx(gz_without_suffix).tolist() == [[[1, 2], [3, 4]]]
    assert read_idx(raw_with_suffix).tolist() == [[[1, 2], [3, 4]]]


def test_labels_file_one_dimension(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(gzip.compress(idx_bytes(0x08, [5], "B", [9, 0, 3, 3, 1])))
    assert read_idx(str(path)).tolist() == [9, 0, 3, 3, 1]


def test_truncated_raw_data(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(idx_bytes(0x08, [2, 3], "B", [1, 2, 3, 4, 5, 6])[:-1])
    with pytest.raises(DataError, match=r"short.*6 data bytes.*holds 5"):
        read_idx(path)


def test_extra_raw_data(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(idx_bytes(0x08, [2, 2], "B", [1, 2, 3, 4]) + b"\x00")
    with pytest.raises(DataError, match="long"):
        read_idx(path)


@pytest.mark.parametrize("delta", [-1, 1], ids=["short", "long"])
def test_size_mismatch_inside_gzip(tmp_path, delta):
    values = [1, 2, 3, 4, 5, 6]
    data = idx_bytes(0x08, [2, 3], "B", values)
    data = data[:-1] if delta < 0 else data + b"\x07"
    path = tmp_path / "mismatch.gz"
    path.write_bytes(gzip.compress(data))
    with pytest.raises(DataError, match="mismatch.gz"):
        read_idx(path)


def test_truncated_gzip_stream(tmp_path):
    data = idx_bytes(0x08, [10, 10], "B", list(range(100)))
    compressed = gzip.compress(data)
    path = tmp_path / "cut.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match=r"cut\.gz.*gzip"):
        read_idx(path)


def test_gzip_with_bad_crc(tmp_path):
    data = idx_bytes(0x08, [4], "B", [1, 2, 3, 4])
    compressed = bytearray(gzip.compress(data))
    compressed[-8] ^= 0xFF  # the CRC32 trailer
    path = tmp_path / "crc.gz"
    path.write_bytes(bytes(compressed))
    with pytest.raises(DataError, match="crc.gz"):
        read_idx(path)


def test_gzip_magic_followed_by_garbage(tmp_path):
    path = tmp_path / "garbage.gz"
    path.write_bytes(b"\x1f\x8b" + bytes(range(200, 256)) * 3)
    with pytest.raises(DataError, match="garbage.gz"):
        read_idx(path)


def test_not_idx_garbage(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"hello, this is not an IDX file\n")
    with pytest.raises(DataError, match=r"notes.txt.*magic"):
        read_idx(path)


def test_bad_magic_second_byte(tmp_path):
    path = tmp_path / "magic"
    path.write_bytes(b"\x00\x01\x08\x01" + struct.pack(">I", 1) + b"\x05")
    with pytest.raises(DataError, match="magic"):
        read_idx(path)


def test_unknown_type_code(tmp_path):
    path = tmp_path / "type"
    path.write_bytes(b"\x00\x00\x0a\x01" + struct.pack(">I", 1) + b"\x05")
    with pytest.raises(DataError, match="0x0A"):
        read_idx(path)


def test_zero_dimensions(tmp_path):
    path = tmp_path / "scalar"
    path.write_bytes(b"\x00\x00\x08\x00")
    with pytest.raises(DataError, match="0 dimensions"):
        read_idx(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "header"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 2))  # promises 3 dims, gives 1
    with pytest.raises(DataError, match="header"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_huge_declared_size_refused_without_allocating(tmp_path, compress):
    # 4e9 x 4e9 doubles would be ~1.3e20 bytes: must be refused, not attempted.
    data = b"\x00\x00\x0e\x02" + struct.pack(">II", 4_000_000_000, 4_000_000_000) + b"\x00" * 16
    path = tmp_path / "huge"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DataError, match="huge"):
        read_idx(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        read_idx(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="absent.idx"):
        read_idx(tmp_path / "absent.idx")
    with pytest.raises(DataError, match="directory"):
        read_idx(tmp_path)


def test_error_messages_are_one_line(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, [50], "B", list(range(50))))[:15])
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert "\n" not in str(info.value)

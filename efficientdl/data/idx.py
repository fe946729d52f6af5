"""Reader for the IDX file format of the MNIST family of data sets.

An IDX file (LeCun et al., the MNIST distribution format) is a tiny header followed
by a dense big-endian array::

    byte 0, 1   0x00 0x00                    magic
    byte 2      type code                    0x08 ubyte, 0x09 byte, 0x0B short,
                                             0x0C int, 0x0D float, 0x0E double
    byte 3      ndim                         number of dimensions
    4 * ndim    dimension sizes              unsigned 32-bit big-endian each
    rest        prod(dims) * itemsize bytes  the data, row-major, big-endian

Files are usually distributed gzip-compressed; :func:`read_idx` recognises gzip by
its magic bytes (``1f 8b``), not by the file name.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from efficientdl.errors import DataError

#: IDX type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK_BYTES = 1 << 20


def _read_exact(stream: BinaryIO, size_bytes: int) -> bytes:
    """Read up to ``size_bytes`` bytes, looping over short reads; fewer means end of data."""
    parts: list[bytes] = []
    remaining = size_bytes
    while remaining > 0:
        part = stream.read(min(remaining, _CHUNK_BYTES))
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return b"".join(parts)


def _parse(stream: BinaryIO, path: Path, compressed: bool, file_size_bytes: int) -> np.ndarray:
    """Parse an IDX stream (already positioned at its first byte)."""
    head = _read_exact(stream, 4)
    if len(head) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(head)} header bytes, expected 4 or more)")
    if head[0] != 0 or head[1] != 0:
        raise DataError(f"{path}: not an IDX file (magic starts with {head[:2].hex()}, expected 0000)")
    type_code, ndim = head[2], head[3]
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
        raise DataError(f"{path}: unknown IDX type code 0x{type_code:02X} (expected one of {known})")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions (expected at least 1)")
    dims_raw = _read_exact(stream, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header (expected {ndim} dimension sizes of 4 bytes)")
    dims = struct.unpack(f">{ndim}I", dims_raw)
    dtype = IDX_DTYPES[type_code]
    data_size_bytes = math.prod(dims) * dtype.itemsize
    header_size_bytes = 4 + 4 * ndim
    shape_text = "x".join(str(d) for d in dims)
    if not compressed and header_size_bytes + data_size_bytes != file_size_bytes:
        # Raw files: the length is known up front, so refuse before allocating anything.
        have = file_size_bytes - header_size_bytes
        raise DataError(
            f"{path}: IDX header declares {shape_text} {dtype.name} = {data_size_bytes} data bytes "
            f"but the file holds {have}"
        )
    # Compressed files: read incrementally, so memory never exceeds what the stream
    # really decompresses to, then require the stream to end exactly there.
    data = _read_exact(stream, data_size_bytes)
    if len(data) < data_size_bytes:
        raise DataError(
            f"{path}: IDX header declares {shape_text} {dtype.name} = {data_size_bytes} data bytes "
            f"but the file holds {len(data)}"
        )
    if stream.read(1):
        raise DataError(
            f"{path}: IDX header declares {shape_text} {dtype.name} = {data_size_bytes} data bytes "
            f"but the file holds more"
        )
    array = np.frombuffer(data, dtype=dtype).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (MNIST / Fashion-MNIST format), gzip-compressed or raw.

    Compression is detected from the gzip magic bytes ``1f 8b``, never from the file
    name.  The header is validated: magic ``00 00``, a known type code
    (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int, 0x0D float, 0x0E double, all
    big-endian), at least one dimension, and a data length of exactly
    ``prod(dims) * itemsize`` bytes.  A raw file whose header promises more data than
    the file holds is refused before any allocation; a gzip stream is read
    incrementally and refused as soon as it ends early or runs long.

    Args:
        path: the file to read.

    Returns:
        A C-contiguous array in native byte order with the shape the header declares.

    Raises:
        DataError: missing or unreadable file, bad magic, unknown type code, size
            mismatch, or a truncated / corrupt gzip stream.  The message is one line
            naming the path.
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            file_size_bytes = os.fstat(raw.fileno()).st_size
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if not compressed:
                return _parse(raw, path, False, file_size_bytes)
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                return _parse(stream, path, True, file_size_bytes)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected an IDX file)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory (expected an IDX file)") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"{path}: truncated or corrupt gzip data ({message})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
